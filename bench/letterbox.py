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
each call ends with a synchronize, so the wall time is the work's. Writes bench/out/letterbox.json.
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
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "letterbox.json").write_text(json.dumps(report, indent=2))
    print(f"`{report['command']}`  \n{report['machine']}; device {device}, batches of {args.batch}, {images} images")
    print(f"largest difference between the two paths' tensors, in levels: {apart}\n")
    print("| from | letterbox | CPU ms per image | wall ms per image |\n|---|---|---|---|")
    for name, figures in report["per_image_ms"].items():
        source, where = name.split(", ")
        print(f"| {source} | {where} | {figures['cpu']:.3f} | {figures['wall']:.3f} |")


def _levels_apart(paths: dict[str, Any], batch: list[Any]) -> float:
    host, device = (path(batch).float().cpu() for path in paths.values())
    assert host.shape == device.shape, (host.shape, device.shape)
    return round(float((host - device).abs().max()) * 255, 3)


if __name__ == "__main__":
    main()
