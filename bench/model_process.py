"""A model in a process of its own, fed as fast as it takes batches, against the same model called
in this process: what the hand-over costs (the frames through shared memory, or the JPEGs decoded
on its device; the pipe; the answer), with no emulator, queue or database to bound it.

    .venv/bin/python bench/model_process.py                      # yolo11n (its yaml), the device's batch
    .venv/bin/python bench/model_process.py --caption --n 64     # BLIP-base's architecture, random weights

The pipeline's figures on a GPU (bench/RESULTS.md runs 23 and 25) are bound by the co-located
emulator; this measures the worker's model side alone. Phases, one after another, each run once
untimed first (a GPU's first call at a shape is slow):
  (a) raw: the model loaded in this process by the worker's loader, ``predict`` on images already
      decoded to its input size, one batch after another;
  (b) own process, frames: ``ModelProcess`` as ``VISIONQ_MODEL_PROCESS=1`` makes it with
      ``VISIONQ_DEVICE_DECODE=off``, the same decoded images, from as many threads as it takes
      batches at once (two: one running, the next in its pipe), as the worker's core calls it;
  (c) own process, JPEGs: the same, with the images' JPEG bytes checked as the worker checks them
      (``inspect_jpeg``) and decoded in the process, on its device (a GPU's default; on a CPU, the
      same libjpeg decode moved into the model's process); skipped where the process says its
      device's decoder does not work.
Prints img/s, ms per batch, the share of each batch's time its process spent in ``predict``, CPU
per image (this process and its children), and (b)/(a), (c)/(a). Writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
from run_bench import cpu_seconds, machine, make_images  # noqa: E402

from visionq.images import ImageLimits, decode_image, inspect_jpeg  # noqa: E402
from visionq.models import GPU_BATCH, batches_in_flight, pick_device  # noqa: E402
from visionq.models.spec import ModelSpec  # noqa: E402


def timed(
    predict: Callable[[Sequence[Any]], Any],
    frames: list[Any],
    batch: int,
    at_once: int,
    threads: int,
    predict_seconds: Callable[[], float] | None = None,
) -> dict[str, float]:
    """``predict`` over every frame in batches of ``batch``, from ``at_once`` threads; once untimed
    (warm-up at this shape), then timed; each thread runs torch on ``threads`` threads (in a model's
    own process, that process sets its own). ``predict_seconds``: the model process's own count of its
    time in ``predict``, read around the timed run (the share of it in the batches' time)."""
    import torch

    batches = [frames[i : i + batch] for i in range(0, len(frames) - batch + 1, batch)]

    def run() -> float:
        lanes = [batches[lane::at_once] for lane in range(at_once)]
        errors: list[BaseException] = []

        def lane_run(mine: list[list[Any]]) -> None:
            try:
                torch.set_num_threads(threads)
                for one in mine:
                    predict(one)
            except BaseException as exc:  # noqa: BLE001 - raised again below, in the caller
                errors.append(exc)

        callers = [threading.Thread(target=lane_run, args=(lane,)) for lane in lanes]
        started = time.perf_counter()
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - started

    run()
    me = psutil.Process()
    cpu, in_predict = cpu_seconds(me), predict_seconds() if predict_seconds else 0.0
    elapsed = run()
    images = len(batches) * batch
    figures = {
        "images": images,
        "images_per_second": images / elapsed,
        "ms_per_batch": elapsed * 1000 / len(batches),
        "cpu_ms_per_image": (cpu_seconds(me) - cpu) * 1000 / images,
    }
    if predict_seconds:  # the process answers one batch at a time: its batches' time is the run's
        figures["predict_share"] = (predict_seconds() - in_predict) / elapsed
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caption", action="store_true", help="BLIP-base's architecture instead of yolo11n")
    parser.add_argument("--n", type=int, default=None, help="images a phase (default: 40 batches, 16 captioning)")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on a GPU, 1 on a CPU (4 captioning)")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="both sides alike (default: the cores less one, at most 8)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "model_process.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    device = pick_device(os.environ.get("VISIONQ_DEVICE"))
    batch = args.batch or (GPU_BATCH if device.startswith("cuda") else (4 if args.caption else 1))
    n = args.n or batch * (16 if args.caption else 40)
    if args.caption:
        from models_bench import build_blip_base, caption_options

        weights = str(build_blip_base(ROOT / "bench" / "out" / "models"))
        spec = ModelSpec(name="caption", family="blip", weights=weights, options=caption_options(), max_batch=batch)
    else:
        weights = "yolo11n.yaml"
        spec = ModelSpec(name="detect", family="ultralytics", weights=weights, max_batch=batch)
    # The same count on both sides, set in every thread that calls the model: Ultralytics sets
    # torch's count when it loads a model on a CPU (the cores less one, at most 8, the default here
    # too), and its import sets OMP_NUM_THREADS=1 for the processes started after it.
    threads = args.torch_threads or min(8, max(1, (os.cpu_count() or 1) - 1))
    command = shlex.join([".venv/bin/python", "bench/model_process.py", *(argv if argv is not None else sys.argv[1:])])
    report: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "model": spec.name,
        "batch": batch,
        "torch_threads": threads,
    }
    print(
        f"`{command}`\n{report['machine']}; {spec.name} on {device}, batch {batch}, {n} images a phase,"
        f" torch threads {threads}",
        flush=True,
    )
    jpegs = make_images(n)

    from visionq.models.registry import _load_family

    model = _load_family(spec, weights, device)
    side = model.input_size
    decoded = [decode_image(data, ImageLimits(), max_side=side).rgb for data in jpegs]
    report["raw"] = timed(model.predict, decoded, batch, batches_in_flight(model), threads)
    print(f"(a) raw: {line(report['raw'])}", flush=True)
    del model

    from visionq.models.own_process import ModelProcess

    for phase, device_decode in (("frames", False), ("jpegs", True)):
        process = ModelProcess(
            spec, weights, device, torch_threads=threads, batch_room=batch, device_decode=device_decode
        )
        try:
            if device_decode and not process.decodes_jpegs:
                print("(c) own process, JPEGs: skipped (its device's decoder does not work here)", flush=True)
                break
            frames: list[Any] = decoded
            if device_decode:
                frames = [inspect_jpeg(data, ImageLimits(), max_side=process.input_size) for data in jpegs]
            figures = timed(
                process.predict, frames, batch, batches_in_flight(process), threads, lambda p=process: p.predict_seconds
            )
            figures["over_raw"] = figures["images_per_second"] / report["raw"]["images_per_second"]
            report[phase] = figures
            label = "(b) own process, frames" if phase == "frames" else "(c) own process, JPEGs"
            print(
                f"{label}: {line(figures)}; {figures['predict_share']:.2f} of it in predict;"
                f" {figures['over_raw']:.3f} x raw",
                flush=True,
            )
        finally:
            process.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


def line(figures: dict[str, float]) -> str:
    return (
        f"{figures['images_per_second']:.2f} img/s, {figures['ms_per_batch']:.1f} ms a batch,"
        f" {figures['cpu_ms_per_image']:.1f} ms CPU per image"
    )


if __name__ == "__main__":
    raise SystemExit(main())
