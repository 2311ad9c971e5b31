"""ONNX Runtime on a CPU: one session on every core against one single-threaded session per core,
each running a batch at once (models/replicas.py), without and with the solo session that takes a
batch arriving alone; with and without other work on the machine.

    .venv/bin/python bench/onnx_sessions.py                       # idle machine
    .venv/bin/python bench/onnx_sessions.py --busy 0.5            # another process takes half a core

Both are loaded by the worker's own loader (``load_detector``: yolo11n built from its yaml with a
fixed seed, saved as weights and exported as real weights would be) and called as the worker's
core calls them: ``predict`` on batches of ``--batch`` of Ultralytics' ``bus.jpg`` and
``zidane.jpg`` decoded to 640, from as many threads as the model takes batches at once. ``--busy F``
starts a process that spins F of every 5 ms (the worker's own threads, the emulator and PostgreSQL
take a share of the cores in the pipeline). The settings are interleaved over ``--rounds``; the
ratio (the second setting over the first) is per round. Images per second and the process's CPU per
image (all threads) are printed, and the median time of ``--lone`` calls made one at a time, 20 ms
apart (an image arriving while nothing else runs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: it must never reach the network

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from visionq.images import ImageLimits, decode_image  # noqa: E402
from visionq.models import batches_in_flight  # noqa: E402
from visionq.models.yolo import load_detector  # noqa: E402


def _busy(fraction: float, stop: Any) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.005 * fraction:
            pass
        time.sleep(0.005 * (1 - fraction))


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    return names[0] if names else platform.machine()


def _images() -> list[np.ndarray]:
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    return [decode_image((assets / n).read_bytes(), ImageLimits(), max_side=640).rgb for n in ("bus.jpg", "zidane.jpg")]


def _rate(model: Any, images: list[np.ndarray], batch: int, seconds: float) -> tuple[float, float]:
    """(images per second, CPU ms per image) with the model's batches_in_flight calls at once."""
    lanes = batches_in_flight(model)
    deadline = time.perf_counter() + seconds

    def lane(k: int) -> int:
        done = 0
        while time.perf_counter() < deadline:
            model.predict([images[(k + done + j) % len(images)] for j in range(batch)])
            done += batch
        return done

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        done = sum(pool.map(lane, range(lanes)))
    return done / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / done


def _lone_ms(model: Any, images: list[np.ndarray], batch: int, calls: int) -> list[float]:
    """Milliseconds per call, each made while nothing else runs."""
    times = []
    for k in range(calls):
        started = time.perf_counter()
        model.predict([images[(k + j) % len(images)] for j in range(batch)])
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(ROOT / "bench/out/yolo11n-seed0.pt"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=float, default=0.0, help="fraction of one core another process spins")
    parser.add_argument("--lone", type=int, default=20, help="lone calls timed per setting and round")
    args = parser.parse_args()
    weights = Path(args.weights)
    if not weights.exists():
        import torch
        from ultralytics import YOLO  # type: ignore[attr-defined]

        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        YOLO("yolo11n.yaml").save(str(weights))
    print(f"machine: {_cpu_model()}, {len(os.sched_getaffinity(0))} cores;", end=" ")
    print(f"batch {args.batch}, {args.seconds:.0f} s per setting, busy {args.busy}", flush=True)
    settings = {
        "one session, every core": load_detector(str(weights), device="cpu", backend="onnx", onnx_sessions=1),
        "a 1-thread session per core": load_detector(str(weights), device="cpu", backend="onnx", onnx_solo=False),
        "and a solo session": load_detector(str(weights), device="cpu", backend="onnx"),
    }
    images = _images()
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_busy, args=(args.busy, stop), daemon=True) if args.busy else None
    if busy:
        busy.start()
    ratios = []
    try:
        for model in settings.values():
            _rate(model, images, args.batch, 1.0)  # warm
        for r in range(args.rounds):
            rates = {}
            for name, model in settings.items():
                rates[name], cpu = _rate(model, images, args.batch, args.seconds)
                lone = statistics.median(_lone_ms(model, images, args.batch, args.lone))
                print(
                    f"round {r + 1}: {name} ({batches_in_flight(model)} at once): {rates[name]:.2f} img/s,"
                    f" {cpu:.1f} ms CPU/img; a lone call {lone:.1f} ms",
                    flush=True,
                )
            first, second, *_ = rates.values()
            ratios.append(second / first)
            print(f"round {r + 1}: ratio {ratios[-1]:.3f}", flush=True)
    finally:
        stop.set()
        if busy:
            busy.join()
    print(
        f"sessions per core / one session: median {statistics.median(ratios):.3f}"
        f" (range {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
