"""The network's input made on the host (Ultralytics' letterbox) or on the model's device
(``VISIONQ_DEVICE_LETTERBOX``, models/letterbox.py): this process's CPU and the wall time per image.

    .venv/bin/python bench/letterbox.py                          # cuda:0 when there is one, else the CPU
    .venv/bin/python bench/letterbox.py --device cpu --rounds 5

yolo11n's architecture at 640 (seeded; only its input is made, no forward pass). The bench's JPEGs,
in batches, each path interleaved batch by batch, from what the model's process holds:
- **pixels**: decoded RGB arrays in host memory (the worker decoded them; the shared-memory path).
  Host: ``UltralyticsModel.reference_input`` (the channel swap, Ultralytics' letterbox, stack, copy
  to the device, reorder, scale), as ``predict`` makes it. Device: each array copied as it is, then
  ``UltralyticsModel.prepare``.
- **JPEGs**: the bytes, decoded on the device (``VISIONQ_DEVICE_DECODE``). Host: the pixels back to
  the host (``decode_frames``), then as above. Device: ``decode_frames_on_device``, then ``prepare``.
Both paths give the same tensor (checked first: the largest difference, in levels of 255). On CUDA
each call ends with a synchronize, so the wall time is the work's.

Then the flow as the model's process runs it, for the answers: the shapes detector (the tests',
trained; fp16 on a GPU) on generated scenes of mixed sizes as JPEGs; a second thread (on CUDA, on
a stream of its own) decodes and prepares each batch and hands it over (``letterbox.handed_over``)
while the main thread runs the batch before (``predict_prepared``); every answer is compared, box
for box, with the host path's (``decode_frames`` then ``predict``). Writes bench/out/letterbox.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import machine, make_images  # noqa: E402

from visionq.images import ImageLimits, decode_image, inspect_jpeg  # noqa: E402
from visionq.models.device_decode import decode_frames, decode_frames_on_device  # noqa: E402
from visionq.models.letterbox import to_device  # noqa: E402
from visionq.models.yolo import UltralyticsModel, load_detector  # noqa: E402

SIZE = 640


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda:0 when there is one, else cpu")
    parser.add_argument("--n", type=int, default=64, help="JPEGs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (the model process's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    model = load_detector("yolo11n.yaml", device=device, image_size=SIZE)
    assert isinstance(model, UltralyticsModel)
    torch.set_num_threads(args.threads)  # after loading: Ultralytics sets it
    limits = ImageLimits()
    jpegs = [inspect_jpeg(data, limits, max_side=SIZE) for data in make_images(args.n)]
    pixels = [decode_image(data, limits, max_side=SIZE).rgb for data in make_images(args.n)]
    assert all(jpeg is not None for jpeg in jpegs)

    def done(tensor: Any) -> Any:
        if tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
        return tensor

    paths = {
        "pixels, host letterbox": lambda batch: done(model.reference_input(batch)),
        "pixels, device letterbox": lambda batch: done(model.prepare([to_device(a, device) for a in batch]).pixels),
    }
    jpeg_paths = {
        "JPEGs, host letterbox": lambda batch: done(model.reference_input(decode_frames(batch, device))),
        "JPEGs, device letterbox": lambda batch: done(model.prepare(decode_frames_on_device(batch, device)).pixels),
    }
    batches = [pixels[i : i + args.batch] for i in range(0, len(pixels), args.batch)]
    jpeg_batches = [jpegs[i : i + args.batch] for i in range(0, len(jpegs), args.batch)]
    apart = {
        "pixels": _levels_apart(paths, batches[0]),
        "JPEGs": _levels_apart(jpeg_paths, jpeg_batches[0]),
    }
    cpu = dict.fromkeys([*paths, *jpeg_paths], 0.0)
    wall = dict.fromkeys(cpu, 0.0)
    for _ in range(args.rounds):
        for group, group_batches in ((paths, batches), (jpeg_paths, jpeg_batches)):
            for batch in group_batches:
                for name, path in group.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    path(batch)
                    cpu[name] += time.process_time() - c0
                    wall[name] += time.perf_counter() - w0
    images = args.rounds * len(pixels)
    answers = _answers_through_the_hand_over(device)
    report = {
        "command": shlex.join([".venv/bin/python", "bench/letterbox.py", *sys.argv[1:]]),
        "machine": machine(),
        "device": device,
        "half": model.half,
        "batch": args.batch,
        "images": images,
        "torch_threads": args.threads,
        "largest_difference_levels": apart,
        "per_image_ms": {name: {"cpu": cpu[name] * 1000 / images, "wall": wall[name] * 1000 / images} for name in cpu},
        "answers_through_the_hand_over": answers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "letterbox.json").write_text(json.dumps(report, indent=2))
    print(f"`{report['command']}`  \n{report['machine']}; device {device}, batches of {args.batch}, {images} images")
    print(f"largest difference between the two paths' tensors, in levels: {apart}\n")
    print("| from | letterbox | CPU ms per image | wall ms per image |\n|---|---|---|---|")
    for name, figures in report["per_image_ms"].items():
        source, where = name.split(", ")
        print(f"| {source} | {where} | {figures['cpu']:.3f} | {figures['wall']:.3f} |")
    print(f"\nanswers through the hand-over, against the host path: {answers}")


def _answers_through_the_hand_over(device: str, batches: int = 6, batch_size: int = 4) -> dict[str, Any]:
    """The model process's flow (own_process._prepare and _serve) on the shapes detector: batches
    prepared on a second thread, answered on this one, compared with the host path's answers."""
    import io
    import queue
    import threading

    import torch

    from visionq.models.letterbox import Prepared, handed_over
    from visionq.shapes import WEIGHTS_PATH, draw_scene

    # PyTorch, as on a GPU (an ONNX export would be written beside the repository's weights).
    model = load_detector(str(WEIGHTS_PATH), device=device, backend="torch")
    assert isinstance(model, UltralyticsModel)
    sizes = [(640, 480), (480, 640), (800, 600), (320, 240), (1280, 720), (300, 300)]
    jpegs = []
    for i in range(batches * batch_size):
        buffer = io.BytesIO()
        draw_scene(50_000 + i, sizes[i % len(sizes)])[0].save(buffer, "JPEG", quality=92)
        jpegs.append(inspect_jpeg(buffer.getvalue(), ImageLimits(), max_side=model.input_size))
    work = [jpegs[i : i + batch_size] for i in range(0, len(jpegs), batch_size)]
    made: queue.Queue[Prepared | None] = queue.Queue(maxsize=1)  # as the process's: one batch ahead

    def prepare() -> None:
        if device.startswith("cuda"):
            torch.cuda.set_stream(torch.cuda.Stream(device))  # type: ignore[no-untyped-call]
        for batch in work:
            made.put(handed_over(model.prepare(decode_frames_on_device(batch, device))))
        made.put(None)

    threading.Thread(target=prepare, daemon=True).start()
    got = []
    while (prepared := made.get()) is not None:
        got.extend(model.predict_prepared(prepared))
    want = [output for batch in work for output in model.predict(decode_frames(batch, device))]
    boxes = same_classes = 0
    worst_px = worst_conf = 0.0
    for have, expected in zip(got, want, strict=True):
        items, expected_items = have.items, expected.items  # type: ignore[union-attr]
        same = [b.class_id for b in items] == [b.class_id for b in expected_items]
        same_classes += same
        if same:
            for a, b in zip(items, expected_items, strict=True):
                boxes += 1
                worst_conf = max(worst_conf, abs(a.confidence - b.confidence))
                worst_px = max(worst_px, *(abs(u - v) for u, v in zip(_corners(a), _corners(b), strict=True)))
    return {
        "images": len(want),
        "images_with_the_same_classes": same_classes,
        "boxes_compared": boxes,
        "largest_box_difference_px": round(worst_px, 3),
        "largest_confidence_difference": round(worst_conf, 5),
    }


def _corners(box: Any) -> tuple[float, float, float, float]:
    return (box.x1, box.y1, box.x2, box.y2)


def _levels_apart(paths: dict[str, Any], batch: list[Any]) -> float:
    host, device = (path(batch).float().cpu() for path in paths.values())
    assert host.shape == device.shape, (host.shape, device.shape)
    return round(float((host - device).abs().max()) * 255, 3)


if __name__ == "__main__":
    main()
