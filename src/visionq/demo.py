"""`visionq demo`: the whole flow once, on the local stack, as a user would drive it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

UNTRAINED_FALLBACK = "yolo11n.yaml"


def sample_images() -> list[Path]:
    from ultralytics.utils import ASSETS

    return sorted(Path(ASSETS).glob("*.jpg"))


def choose_model(requested: str) -> tuple[str, bool]:
    """The model the demo can use here, and whether it is an untrained architecture.

    Only makes sure the weights are on disk (downloading them where there is network); the
    worker is the one process that loads the model.
    """
    from pathlib import Path

    from ultralytics.utils.downloads import attempt_download_asset

    if requested.endswith((".yaml", ".yml")):
        return requested, True
    if Path(requested).exists():
        return requested, False
    try:
        return str(attempt_download_asset(requested)), False
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises plain exceptions for failed downloads
        logger.warning("model weights %r cannot be had here (%s)", requested, exc)
        return UNTRAINED_FALLBACK, True


def run_demo(*, model: str, images: list[Path], out_dir: Path, state_dir: Path) -> int:
    from visionq.annotate import draw_detections
    from visionq.cli import format_results
    from visionq.client import VisionqClient, expand_image_paths
    from visionq.local_stack import LocalStack

    paths = expand_image_paths(images) if images else sample_images()
    model, untrained = choose_model(model)
    if untrained:
        _banner(
            f"WARNING: running the UNTRAINED architecture {model!r} (no weights could be had here).",
            "Its detections are meaningless: the pipeline runs end to end, the boxes mean nothing.",
            "For real detections: visionq demo --model /path/to/yolo11n.pt",
        )
    stack = LocalStack(state_dir=state_dir, model=model)
    started = time.monotonic()
    try:
        stack.start()
        env = stack.env
        print(f"stack up in {time.monotonic() - started:.1f}s: API {env['API_URL']}, AWS {env['AWS_ENDPOINT_URL']}")
        client = VisionqClient(env["API_URL"], env["VISIONQ_API_KEY"])
        submitted = [client.submit_file(path) for path in paths]
        print(f"submitted {len(submitted)} image(s); waiting for the worker...")
        jobs = client.wait([s.job_id for s in submitted], timeout=600)
        print(format_results([(s.path.name, jobs[s.job_id]) for s in submitted]))
        for item in submitted:
            job = jobs[item.job_id]
            if job["status"] == "SUCCEEDED":
                out = draw_detections(item.path, job["result"]["detections"], out_dir / item.path.name)
                print(f"annotated: {out}")
        _print_database_summary(stack.env["DATABASE_URL"], [s.job_id for s in submitted])
        print(f"done in {time.monotonic() - started:.1f}s")
        return 0 if all(job["status"] == "SUCCEEDED" for job in jobs.values()) else 1
    finally:
        stack.stop()


def _print_database_summary(database_url: str, job_ids: list[str]) -> None:
    """Read the results back from PostgreSQL, as a user with psql would."""
    import psycopg

    query = (
        "SELECT r.key, r.width, r.height, count(d.idx) AS boxes, round(r.inference_ms::numeric, 1) AS ms"
        " FROM results r LEFT JOIN detections d ON d.result_id = r.id"
        " WHERE r.job_id = ANY(%s) GROUP BY r.id ORDER BY r.key"
    )
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(query, (job_ids,)).fetchall()
    print(f"\nPostgreSQL ({database_url}):\n  {query.replace('%s', 'ARRAY[...]')}")
    for key, width, height, boxes, ms in rows:
        print(f"  {key}  {width}x{height}  {boxes} box(es)  {ms} ms")


def _banner(*lines: str) -> None:
    rule = "!" * max(len(line) for line in lines)
    print("\n".join([rule, *lines, rule]))
