"""`visionq demo`: the whole flow once, on the local stack, as a user would drive it.

With network (or weights on disk) it runs ``yolo11n.pt`` on Ultralytics' sample photos. Without,
it says so in one line and runs the small detector of shapes that ships with visionq on scenes it
draws, so a first run on any machine shows real detections, and how many of the true shapes
they found.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SHAPE_SCENES = ((640, 480), (480, 640), (800, 450), (640, 480))
_FIRST_SCENE_SEED = 20_000  # scenes the detector never trained on (its training seeds are 0-479)


@dataclass
class DemoPlan:
    model: str  # weights (or an architecture yaml) for the worker
    images: list[Path]
    untrained: bool = False
    truth: dict[str, list[tuple[int, float, float, float, float]]] = field(default_factory=dict)  # by file name


def sample_images() -> list[Path]:
    from ultralytics.utils import ASSETS

    return sorted(Path(ASSETS).glob("*.jpg"))


def weights_on_disk(requested: str) -> str | None:
    """``requested`` as a file the worker can load (downloaded where there is network), or None.

    Only makes sure the weights are on disk; the worker is the one process that loads the model.
    """
    from ultralytics.utils.downloads import attempt_download_asset

    if Path(requested).exists():
        return requested
    try:
        found = Path(attempt_download_asset(requested))
    except Exception as exc:  # noqa: BLE001 - Ultralytics raises plain exceptions for failed downloads
        logger.debug("weights %r cannot be had: %s", requested, exc)
        return None
    return str(found) if found.exists() else None


def plan_demo(requested: str, images: list[Path], out_dir: Path) -> DemoPlan | str:
    """What the demo runs, or the one sentence saying why it cannot."""
    from visionq.client import expand_image_paths

    if requested.endswith((".yaml", ".yml")):  # asked for explicitly: a smoke test of the plumbing
        return DemoPlan(requested, expand_image_paths(images) if images else sample_images(), untrained=True)
    weights = weights_on_disk(requested)
    if weights is not None:
        return DemoPlan(weights, expand_image_paths(images) if images else sample_images())
    if images:
        return (
            f"the weights {requested!r} cannot be downloaded here and are not on disk; "
            "pass a weights file with --model to run them on your images"
        )
    return _shapes_plan(requested, out_dir / "scenes")


def _shapes_plan(requested: str, scene_dir: Path) -> DemoPlan:
    from visionq.shapes import WEIGHTS_PATH, draw_scene

    scene_dir.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan(str(WEIGHTS_PATH), [])
    for i, size in enumerate(SHAPE_SCENES):
        image, boxes = draw_scene(_FIRST_SCENE_SEED + i, size)
        path = scene_dir / f"scene-{i + 1}.png"
        image.save(path)
        plan.images.append(path)
        plan.truth[path.name] = boxes
    print(
        f"{requested} cannot be downloaded here (no network?): showing visionq's built-in shapes detector "
        f"on {len(plan.images)} generated scenes instead (use --model to choose weights)."
    )
    return plan


def run_demo(*, model: str, images: list[Path], out_dir: Path, state_dir: Path) -> int:
    from visionq.annotate import draw_detections
    from visionq.client import VisionqClient, format_results
    from visionq.local_stack import LocalStack

    plan = plan_demo(model, images, out_dir)
    if isinstance(plan, str):
        print(f"visionq demo: {plan}")
        return 2
    if plan.untrained:
        _banner(
            f"WARNING: running the UNTRAINED architecture {plan.model!r}, as asked.",
            "Its detections are meaningless: the pipeline runs end to end, the boxes mean nothing.",
        )
    stack = LocalStack(state_dir=state_dir, model=plan.model)
    started = time.monotonic()
    try:
        stack.start()
        env = stack.env
        print(
            f"stack up in {time.monotonic() - started:.1f}s: API {env['API_URL']}, "
            f"AWS {env['AWS_ENDPOINT_URL']} (DynamoDB {env['AWS_ENDPOINT_URL_DYNAMODB']})"
        )
        client = VisionqClient(env["API_URL"], env["VISIONQ_API_KEY"])
        submitted = [client.submit_file(path) for path in plan.images]
        print(f"submitted {len(submitted)} image(s); waiting for the worker...")
        jobs = client.wait([s.job_id for s in submitted], timeout=600)
        print(format_results([(s.path.name, jobs[s.job_id]) for s in submitted]))
        for item in submitted:
            job = jobs[item.job_id]
            if job["status"] == "SUCCEEDED":
                out = draw_detections(item.path, job["result"]["detections"], out_dir / item.path.name)
                print(f"annotated: {out}")
        if plan.truth:
            found, total = _shapes_found(plan, {s.path.name: jobs[s.job_id] for s in submitted})
            print(f"the detector found {found} of the {total} shapes drawn (right class, IoU > 0.5)")
        _print_database_summary(stack.env["DATABASE_URL"], [s.job_id for s in submitted])
        print(f"done in {time.monotonic() - started:.1f}s")
        return 0 if all(job["status"] == "SUCCEEDED" for job in jobs.values()) else 1
    finally:
        stack.stop()


def _shapes_found(plan: DemoPlan, jobs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    from visionq.shapes import CLASS_NAMES

    found = total = 0
    for name, truth in plan.truth.items():
        detections = (jobs[name].get("result") or {}).get("detections", [])
        total += len(truth)
        found += sum(
            any(
                d["label"] == CLASS_NAMES[cls] and _iou((d["x1"], d["y1"], d["x2"], d["y2"]), box) > 0.5
                for d in detections
            )
            for cls, *box in truth
        )
    return found, total


def _iou(a: tuple[float, ...], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


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
