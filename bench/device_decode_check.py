"""The JPEG decode on a device (VISIONQ_DEVICE_DECODE), checked and timed in one short run: the
first thing to run on a machine with a GPU, before the pipeline benchmarks.

    .venv/bin/python bench/device_decode_check.py                    # cuda:0 when there is one
    .venv/bin/python bench/device_decode_check.py --device cpu       # the same code on the CPU

1. Verdicts: JPEGs of the kinds that differ between decoders (baseline 4:2:0, 4:4:4, progressive,
   gray, EXIF-rotated, restart markers, cut short behind a whole header (with and without its
   end-of-image marker put back), corrupted in the middle,
   CMYK), each through the CPU path (``images.decode_image``) and the device path (the worker's
   ``inspect_jpeg``, then ``device_decode.decode_frames``): accepted or the rejection code, the
   shapes, and the mean pixel difference. The two should agree on every row the worker hands the
   device ("--" marks a row it never does, forced past its end-of-image check: on an H200, nvjpeg
   accepted such a file cut short, which the CPU path refuses; bench/RESULTS.md, run 23).
2. Speed: the bench's JPEGs decoded in batches on the device (the decode alone, and with the
   reduction and the copy back to the host, as the model's process does it): images per second
   and this process's CPU per image, against ``decode_image`` on one CPU thread.
Writes bench/out/device_decode_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from PIL import Image  # noqa: E402
from run_bench import machine, make_images  # noqa: E402

from visionq.errors import ImageRejected  # noqa: E402
from visionq.images import ImageLimits, decode_image, inspect_jpeg  # noqa: E402
from visionq.models.device_decode import _as_tensor, decode_frames, works_on  # noqa: E402

LIMITS = ImageLimits()
MAX_SIDE = 640


def scene(width: int = 1280, height: int = 960) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=2)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (230, 20, 20)
    return Image.fromarray(pixels.astype(np.uint8))


def encoded(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **{"quality": 90, **params})
    return buffer.getvalue()


def cases() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, whether to force them to the device past the worker's header check)."""
    base = scene()
    rotated = Image.Exif()
    rotated[0x0112] = 6
    whole = encoded(base)
    middle = bytearray(whole)
    middle[len(middle) // 2 : len(middle) // 2 + 64] = bytes(range(64))
    return {
        "baseline 4:2:0": (whole, False),
        "4:4:4": (encoded(base, subsampling=0), False),
        "progressive": (encoded(base, progressive=True), False),
        "gray": (encoded(base.convert("L")), False),
        "EXIF orientation 6": (encoded(base, exif=rotated.tobytes()), False),
        "small (fits, not reduced)": (encoded(scene(320, 240)), False),
        "restart markers": (encoded(base, restart_marker_blocks=4) if _has_restart_option() else whole, False),
        "cut short (header whole; forced past the worker's EOI check)": (whole[: len(whole) * 2 // 3], True),
        "cut short, its end-of-image marker put back": (whole[: len(whole) * 2 // 3] + b"\xff\xd9", False),
        "corrupted in the middle": (bytes(middle), False),
        "CMYK (the worker decodes it)": (encoded(base.convert("CMYK")), False),
    }


def _has_restart_option() -> bool:
    try:
        encoded(scene(64, 64), restart_marker_blocks=4)
    except TypeError:
        return False
    return True


def verdict(run: Any) -> tuple[str, np.ndarray | None]:
    try:
        pixels = run()
    except ImageRejected as exc:
        return exc.code, None
    return "ok", pixels


def check(device: str) -> list[dict[str, Any]]:
    rows = []
    for name, (data, forced) in cases().items():
        cpu, cpu_pixels = verdict(lambda d=data: decode_image(d, LIMITS, max_side=MAX_SIDE).rgb)
        jpeg = inspect_jpeg(data, LIMITS, max_side=MAX_SIDE) if not forced else None
        if forced:
            header = inspect_jpeg(encoded(scene()), LIMITS, max_side=MAX_SIDE)
            assert header is not None
            jpeg = dataclasses.replace(header, data=data)
        if jpeg is None:
            path, dev, dev_pixels = "worker (CPU)", cpu, cpu_pixels
        else:
            path = "device"
            dev, dev_pixels = verdict(lambda j=jpeg: decode_frames([j], device)[0])
        same_shape = cpu_pixels is not None and dev_pixels is not None and cpu_pixels.shape == dev_pixels.shape
        difference = (
            round(float(np.abs(cpu_pixels.astype(np.int16) - dev_pixels.astype(np.int16)).mean()), 2)
            if same_shape
            else None
        )
        rows.append(
            {
                "case": name,
                "path": path,
                "cpu": cpu,
                "device": dev,
                "agree": cpu == dev and (cpu != "ok" or same_shape),
                # Bytes the worker never hands the device (its end-of-image check refuses them
                # first): what the device would say is reported, and does not fail the check.
                "guarded": forced,
                "mean_pixel_difference": difference,
            }
        )
    return rows


def speed(device: str, n: int, batch: int) -> dict[str, Any]:
    from torchvision.io import ImageReadMode, decode_jpeg

    images = make_images(n)
    jpegs = [inspect_jpeg(data, LIMITS, max_side=MAX_SIDE) for data in images]
    usable = [j for j in jpegs if j is not None]
    batches = [usable[i : i + batch] for i in range(0, len(usable), batch)]
    figures: dict[str, Any] = {"images": len(usable), "batch": batch}

    def timed(label: str, work: Any) -> None:
        work(batches[0])  # warm up (CUDA context, nvjpeg handles)
        wall, cpu = time.perf_counter(), time.process_time()
        for group in batches:
            work(group)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        figures[label] = {
            "images_per_second": round(len(usable) / wall, 1),
            "cpu_ms_per_image": round(cpu * 1000 / len(usable), 3),
        }

    def decode_only(group: list[Any]) -> None:
        decoded = decode_jpeg([_as_tensor(j.data) for j in group], mode=ImageReadMode.RGB, device=device)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        del decoded

    timed("device_decode_only", decode_only)
    timed("device_decode_reduce_to_host", lambda group: decode_frames(group, device))
    timed("cpu_decode_image_one_thread", lambda group: [decode_image(j.data, LIMITS, max_side=MAX_SIDE) for j in group])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda:0 when there is one, else cpu")
    parser.add_argument("--n", type=int, default=200, help="the bench's JPEGs to time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the model's process on a CPU is given its threads; one, to compare with decode_image
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {
        "command": "bench/device_decode_check.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "device": device,
        "works_on": works_on(device),
        "verdicts": check(device),
        "speed": speed(device, args.n, args.batch),
    }
    for row in report["verdicts"]:
        mark = "  " if row["agree"] else "--" if row["guarded"] else "!!"
        print(
            f"{mark} {row['case']:<62} {row['path']:<13} cpu {row['cpu']:<18} device {row['device']:<18} "
            f"diff {row['mean_pixel_difference']}",
            flush=True,
        )
    print(json.dumps({k: report[k] for k in ("device", "works_on", "speed")}, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_decode_check.json").write_text(json.dumps(report, indent=2))
    agree = all(row["agree"] or row["guarded"] for row in report["verdicts"])
    return 0 if agree and report["works_on"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
