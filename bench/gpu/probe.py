"""Where yolo11n's time goes in one predict call on the model's device: the network's parameters'
device and dtype, Ultralytics' own split (preprocess, inference, postprocess) and the boxes per image
at batch 1 and 8, then a profile of a few batch-8 calls (the 20 costliest functions by own time);
then the first and the second call at each batch size (1-8) and letterboxed shape the worker can
meet: on the H200 a new shape's first call took about 1.2 s (bench/RESULTS.md, run 23). All of that
with Ultralytics' own input shapes and one warm-up pass (square_input off, warm_batches 1); last,
the same table for a model loaded with the device's defaults (models/yolo.py, input_defaults: on a
GPU every batch square and batch sizes 1-8 warmed at load), and how long that load took.

    python bench/gpu/probe.py        # on the device machine, from bench/gpu/run.sh (step probe)
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src")]
os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import torch  # noqa: E402
from run_bench import make_images  # noqa: E402

from visionq.images import ImageLimits, decode_image  # noqa: E402
from visionq.models import pick_device  # noqa: E402
from visionq.models.spec import ModelSpec  # noqa: E402
from visionq.models.yolo import UltralyticsModel, input_defaults, load_ultralytics  # noqa: E402


def load(**options: object) -> UltralyticsModel:
    spec = ModelSpec(name="yolo11n", family="ultralytics", weights="yolo11n.yaml", options=options)
    model = load_ultralytics(spec, "yolo11n.yaml", device=os.environ.get("VISIONQ_DEVICE"))
    assert isinstance(model, UltralyticsModel)
    return model


def main() -> int:
    detector = load(square_input=False, warm_batches=1)  # as before run 23
    parameter = next(detector._model.model.parameters())
    print(
        f"device {detector.device}, parameters on {parameter.device} as {parameter.dtype}, "
        f"torch threads {torch.get_num_threads()}, cudnn.benchmark {torch.backends.cudnn.benchmark}",
        flush=True,
    )
    decoded = [decode_image(b, ImageLimits(), max_side=detector.input_size).rgb for b in make_images(16)]
    bgr = [cv2.cvtColor(image, cv2.COLOR_RGB2BGR) for image in decoded]
    print("shapes:", sorted({image.shape for image in decoded}), flush=True)
    for size in (1, 8):
        detector._predict(bgr[:size])  # warm at this size
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started, speeds, boxes = time.perf_counter(), [], []
        for call in range(10):
            results = detector._predict([bgr[(call + k) % len(bgr)] for k in range(size)])
            speeds += [r.speed for r in results]
            boxes += [len(r.boxes) for r in results]
        wall = (time.perf_counter() - started) * 1000 / (10 * size)
        split = {k: round(sum(s[k] for s in speeds) / len(speeds), 2) for k in speeds[0]}
        per_image = sum(boxes) / len(boxes)
        print(f"batch {size}: {wall:.1f} ms/img wall; Ultralytics' ms/img {split}; boxes/img {per_image:.0f}")
        started = time.perf_counter()
        for call in range(10):
            detector.predict([decoded[(call + k) % len(decoded)] for k in range(size)])
        wall = (time.perf_counter() - started) * 1000 / (10 * size)
        print(f"batch {size}, through visionq's predict: {wall:.1f} ms/img")
    first_calls(detector)
    profile = cProfile.Profile()
    profile.enable()
    for call in range(5):
        detector.predict([decoded[(call + k) % len(decoded)] for k in range(8)])
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
    print(text.getvalue()[-6000:])
    defaults = input_defaults(pick_device(os.environ.get("VISIONQ_DEVICE")))
    started = time.perf_counter()
    warmed = load()
    print(f"with the device's defaults {defaults}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
    first_calls(warmed)
    return 0


def first_calls(detector: UltralyticsModel) -> None:
    """ms of the first and the second call at each (batch, images): with Ultralytics' own shapes,
    360 x 640 frames letterbox to 384 x 640, 480 x 640 ones to 480 x 640, and a batch mixing both
    to 640 x 640; with ``square_input`` all of them to 640 x 640."""
    import numpy as np

    kinds = {"360x640 frames": [(360, 640)], "480x640 frames": [(480, 640)], "both, mixed": [(360, 640), (480, 640)]}
    print(f"square_input {detector.square_input}, warm_batches {detector.warm_batches}", flush=True)
    print("batch | images | first call ms | second call ms", flush=True)
    for size in range(1, 9):
        for name, shapes in kinds.items():
            if size == 1 and len(shapes) > 1:
                continue
            batch = [np.full((*shapes[k % len(shapes)], 3), 114, np.uint8) for k in range(size)]
            times = []
            for _ in range(2):
                started = time.perf_counter()
                detector._predict(batch)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - started) * 1000)
            print(f"{size} | {name} | {times[0]:.1f} | {times[1]:.1f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
