"""The worker's own ceiling: the pipeline with models that cost nothing, in one run (issue 11).

    .venv/bin/python bench/ceiling.py                 # N=300 JPEGs from Ultralytics' samples (0.69 MP)
    .venv/bin/python bench/ceiling.py --megapixels 1  # the same JPEGs at 1 MP (issue 11's target's size)

Runs, one after another, each a `visionq worker` process draining N objects already in the bucket
(moto server and PostgreSQL co-located, as in bench/run_bench.py):
  (a) null model, pipelined (batch 8): the model answers at once, so the worker's CPU per image is
      its own cost (receive, claim, fetch, decode, write, acknowledge, bookkeeping);
  (b) null model, naive (one message at a time, batch 1, no overlap);
  (c) delay model, pipelined: a GPU stand-in that sleeps DELAY ms per batch of 8 plus PER_IMAGE ms
      per image (its own ceiling: 8 / (DELAY + 8 * PER_IMAGE) ms), against that ceiling. With
      --delay-at-null-rate [FRACTION] its rate is instead set to what (a) reached in this run (times
      FRACTION), the highest rate the co-located emulator carries (it sleeps 1000 / that rate ms per
      image, whatever the batch): can the worker keep a model of that speed busy? (issue 11: >= 0.85 x).
Reported per run: images/s, worker CPU ms per image (and images/s per worker core), the emulator's
and PostgreSQL's CPU ms per image, AWS requests per image, the wall time per image of each stage
(from the worker's /metrics), the steady worker CPU per image by thread (its main thread, each named
pool, its child processes, the model's own process apart: with VISIONQ_DEVICE_DECODE it holds the
JPEG decode) and that of each store call in the store threads (claim, mark_succeeded,
record_results: /metrics), and the cost of one job-state log line.
Target (issue 11): worker CPU outside the model <= 5 ms per image, i.e. >= 200 images/s per core.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import (  # noqa: E402
    BenchStack,
    add_emulator_layout_option,
    emulator_layout,
    machine,
    make_images,
    throughput_run,
)

from visionq.local_stack import free_port  # noqa: E402


def registry(directory: Path, delay_ms: float, per_image_ms: float, device: str = "cpu") -> Path:
    path = directory / "ceiling-models.toml"
    path.write_text(
        'default = "null"\n'
        f'[models.null]\nfamily = "synthetic"\nweights = "null"\ndevice = "{device}"\n'
        '[models.delay]\nfamily = "synthetic"\nweights = "delay"\n'
        f'delay_ms = {delay_ms}\nper_image_ms = {per_image_ms}\ndevice = "{device}"\n'
    )
    return path


def pixel_count(data: bytes) -> int:
    width, height = Image.open(io.BytesIO(data)).size
    return width * height


def by_label(metrics_text: str, series: str, label: str) -> dict[str, float]:
    """The value of each line of ``series`` in the Prometheus text, by its ``label``'s value."""
    prefix, marker = series + "{", f'{label}="'
    return {
        line.split(marker, 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith(prefix)
    }


def stage_means_ms(metrics_text: str) -> dict[str, float]:
    """Mean wall time per image of each stage, from visionq_stage_seconds' sum and count."""
    sums = by_label(metrics_text, "visionq_stage_seconds_sum", "stage")
    counts = by_label(metrics_text, "visionq_stage_seconds_count", "stage")
    return {s: round(sums[s] / counts[s] * 1000, 3) for s in sums if counts.get(s)}


def store_cpu_ms_per_image(metrics_text: str, images: int) -> dict[str, float]:
    """CPU ms per image of each store call in the worker's store threads (visionq_store_cpu_seconds),
    over the whole run."""
    spent = by_label(metrics_text, "visionq_store_cpu_seconds_total", "call")
    return {call: round(seconds * 1000 / images, 3) for call, seconds in sorted(spent.items())}


def log_line_cost_us(lines: int = 20000) -> float:
    """What one job-state log line costs (the JSON formatter, to a stream): microseconds."""
    from visionq.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("ceiling.logcost")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    extra = {"job_id": "0" * 32, "key": "uploads/bench/000001.jpg", "model": "default", "status": "SUCCEEDED"}
    started = time.perf_counter()
    for _ in range(lines):
        log.info("job %s", "SUCCEEDED", extra={**extra, "elapsed_ms": 12.5, "detection_count": 3})
    return (time.perf_counter() - started) / lines * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--delay-ms", type=float, default=16.0, help="delay model: ms per batch")
    parser.add_argument("--per-image-ms", type=float, default=1.0, help="delay model: ms per image")
    parser.add_argument(
        "--delay-at-null-rate",
        type=float,
        nargs="?",
        const=1.0,
        metavar="FRACTION",
        help="the delay model's rate set to the null pipeline's in this run (times FRACTION, default 1;"
        " per image, no per-batch delay)",
    )
    parser.add_argument(
        "--megapixels",
        type=float,
        default=None,
        help="each JPEG resized to this many MP (default: the sample crops as they are, 0.68 MP on average)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--only",
        action="append",
        choices=["null_pipeline", "null_naive", "delay_pipeline"],
        help="this run only (repeat for several, run in the order given)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the workers (e.g. settings to compare)"
    )
    parser.add_argument(
        "--model-device",
        default="cpu",
        help="the device the synthetic models say they run on: with cuda:0, VISIONQ_DEVICE_DECODE decodes"
        " the JPEGs on that GPU (with cpu, on the CPU in the model's process)",
    )
    parser.add_argument(
        "--stock-emulator", action="store_true", help="moto's own server, without moto_server.py's changes"
    )
    add_emulator_layout_option(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    state = args.out / "state"
    state.mkdir(parents=True, exist_ok=True)
    models = registry(args.out, args.delay_ms, args.per_image_ms, args.model_device)
    report: dict[str, Any] = {
        "command": ("bench/ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "machine": machine(),
        "n": args.n,
    }
    images = make_images(args.n, megapixels=args.megapixels)
    report["mean_jpeg_kb"] = round(sum(map(len, images)) / len(images) / 1024, 1)
    report["mean_megapixels"] = round(sum(pixel_count(data) for data in images) / len(images) / 1e6, 3)
    report["emulator"] = "moto.server (stock)" if args.stock_emulator else "visionq.moto_server"
    report["emulator_servers"] = emulator_layout(args.one_emulator)
    stack = BenchStack(state, stock_emulator=args.stock_emulator, one_emulator=args.one_emulator)
    runs = {
        "null_pipeline": {"VISIONQ_SERVE_MODELS": "null", "VISIONQ_MAX_BATCH": "8"},
        "null_naive": {"VISIONQ_SERVE_MODELS": "null", "VISIONQ_NAIVE": "1"},
        "delay_pipeline": {"VISIONQ_SERVE_MODELS": "delay", "VISIONQ_MAX_BATCH": "8"},
    }
    extra = dict(item.split("=", 1) for item in args.env)
    report["worker_env"] = extra
    if args.only:
        runs = {name: runs[name] for name in args.only}  # in the order given
    order = list(runs)
    if args.delay_at_null_rate is not None and not (
        {"null_pipeline", "delay_pipeline"} <= runs.keys()
        and order.index("null_pipeline") < order.index("delay_pipeline")
    ):
        parser.error("--delay-at-null-rate needs the null pipeline run, then the delay pipeline run")
    delay_model_rate = 8 / ((args.delay_ms + 8 * args.per_image_ms) / 1000)
    try:
        for name, env in runs.items():
            env = {**env, **extra}
            port = free_port()
            model = env["VISIONQ_SERVE_MODELS"]
            if name == "delay_pipeline" and args.delay_at_null_rate is not None:
                delay_model_rate = report["null_pipeline"]["steady_images_per_second"] * args.delay_at_null_rate
                if delay_model_rate <= 0:
                    raise SystemExit("the null pipeline has no steady rate to set the delay model to (more --n)")
                registry(args.out, 0.0, 1000 / delay_model_rate, args.model_device)
                print(
                    f"  the delay model at {args.delay_at_null_rate:g} x the null pipeline's rate:"
                    f" {delay_model_rate:.1f} img/s",
                    flush=True,
                )
            env = {**env, "VISIONQ_MODELS_FILE": str(models), "VISIONQ_METRICS_PORT": str(port)}
            print(f"({name})", flush=True)
            scraped: list[str] = []

            def scrape(port: int = port, scraped: list[str] = scraped) -> None:
                import httpx

                scraped.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)

            figures = throughput_run(
                stack,
                images,
                "unused",
                0.0,
                args.out / f"worker-{name}.log",
                env,
                key_for=lambda i, m=model: f"uploads/models/{m}/ceiling/{i:06d}.jpg",
                before_stop=scrape,
            )
            run = asdict(figures)
            run.pop("worker_stats", None)
            # No steady window when the 20 % and 90 % marks fall in one poll (a small --n): no figure.
            steady_ms = figures.steady_cpu_ms_per_image
            run["images_per_second_per_worker_core"] = round(1000 / steady_ms, 1) if steady_ms else None
            run["stage_wall_ms_per_image"] = stage_means_ms(scraped[0]) if scraped else {}
            run["store_call_cpu_ms_per_image"] = store_cpu_ms_per_image(scraped[0], len(images)) if scraped else {}
            report[name] = run
            print(
                f"  steady: {figures.steady_images_per_second:.1f} img/s, worker CPU "
                f"{figures.steady_cpu_ms_per_image:.2f} ms/img, emulator {figures.steady_emulator_cpu_ms_per_image:.2f}"
                " ms/img; whole run: "
                f"{figures.images_per_second:.1f} img/s, worker CPU {figures.cpu_ms_per_image:.2f} ms/img, "
                f"emulator {figures.emulator_cpu_ms_per_image:.2f} ms/img, "
                f"requests {figures.aws_requests_per_image:.2f}/img",
                flush=True,
            )
            print(f"  steady emulator CPU ms/img by server: {figures.steady_emulator_cpu_ms_per_image_by_server}")
            print(f"  steady worker CPU ms/img by thread: {figures.steady_cpu_ms_per_image_by_thread}", flush=True)
            if "model_process" in figures.steady_cpu_ms_per_image_by_thread:
                # The model's own process (VISIONQ_MODEL_PROCESS) is the model's side: with
                # VISIONQ_DEVICE_DECODE it holds the JPEG decode, which a GPU would do.
                run["steady_cpu_ms_per_image_outside_model_process"] = outside = round(
                    figures.steady_cpu_ms_per_image - figures.steady_cpu_ms_per_image_by_thread["model_process"], 2
                )
                print(f"  steady worker CPU ms/img outside the model's process: {outside}", flush=True)
            print(f"  store calls' CPU ms/img (whole run): {run['store_call_cpu_ms_per_image']}", flush=True)
    finally:
        stack.stop()
    report["delay_model_images_per_second"] = round(delay_model_rate, 1)
    if "delay_pipeline" in report:
        for figure in ("images_per_second", "steady_images_per_second"):
            report[f"delay_pipeline_over_model_{figure}"] = round(
                report["delay_pipeline"][figure] / delay_model_rate, 3
            )
    # What the co-located emulator can carry at this request mix, its busiest process on one core:
    # the pipeline cannot go faster on AWS's behalf here, whatever the worker does.
    for name in runs:
        by_server = report[name]["steady_emulator_cpu_ms_per_image_by_server"]
        emulator_ms = max(by_server.values()) if by_server else 0.0
        report[name]["emulator_core_images_per_second"] = round(1000 / emulator_ms, 1) if emulator_ms else None
    report["log_line_us"] = round(log_line_cost_us(), 2)
    (args.out / "ceiling.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=2))
    print(f"written: {args.out / 'ceiling.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    raise SystemExit(main())
