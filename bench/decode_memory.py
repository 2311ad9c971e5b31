"""Memory and time of decoding and holding a worker's worth of large JPEGs: full size vs. max_side.

    .venv/bin/python bench/decode_memory.py                  # 16 x 24 MP JPEGs, max_side 640
    .venv/bin/python bench/decode_memory.py --n 8 --max-side 1280

The worker holds up to ``prefetch`` decoded images while they wait for the model. This generates
N large, noisy (so realistically sized, ~10 MB) JPEGs, then, in a fresh process per setting,
decodes them one after another with ``decode_image`` and keeps every result, as the worker would,
and reports that process's peak resident memory and the decode time per image. Prints a Markdown
section (command, machine, date, table) for bench/RESULTS.md.

The JPEGs are generated in a process of their own, and this parent imports neither numpy nor
Pillow: on Linux a child's ``ru_maxrss`` starts at its parent's high-water mark (it survives fork
and exec), so a fat parent would inflate every figure. VmHWM (``/proc/self/status``), which starts
afresh at exec, is reported beside it as a check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Decode to the model's size (issue 7, hole 10)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="images decoded and held (the worker's prefetch)")
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated images")
    parser.add_argument("--max-side", type=int, default=640, help="the model's input size")
    parser.add_argument("--title", default=TITLE, help="heading of the printed section")
    # Internal: the two kinds of child process.
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--decode", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.generate is not None:
        generate(args.generate, args.n, args.width, args.height, args.quality)
    elif args.decode is not None:
        print(json.dumps(decode_and_hold(args.decode, args.max_side or None)))
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    me = [sys.executable, str(Path(__file__).resolve())]
    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        subprocess.run([*me, "--generate", str(folder), *_shape_args(args)], check=True)
        generated_s = time.perf_counter() - started
        sizes = [p.stat().st_size for p in sorted(folder.glob("*.jpg"))]
        results = []
        for max_side in (0, args.max_side):  # 0: no max_side, the full-size decode of before
            out = subprocess.run(
                [*me, "--decode", str(folder), "--max-side", str(max_side)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results.append(json.loads(out))
    print(report(args, results, sizes, generated_s))


def _shape_args(args: argparse.Namespace) -> list[str]:
    return [
        "--n",
        str(args.n),
        "--width",
        str(args.width),
        "--height",
        str(args.height),
        "--quality",
        str(args.quality),
    ]


def generate(folder: Path, n: int, width: int, height: int, quality: int) -> None:
    """N photographs' worth of JPEG: smooth random shapes (a scene) under per-pixel noise (sensor grain)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    # One grain field shared by all images (generating 24 M random values per image costs more
    # than the rest); shifted per image so no two files are alike.
    grain = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
    for i in range(n):
        scene = Image.fromarray(rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8))
        base = np.asarray(scene.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + np.roll(grain, i * 997, axis=1), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", "JPEG", quality=quality)


def decode_and_hold(folder: Path, max_side: int | None) -> dict[str, Any]:
    """Decode every JPEG in ``folder`` and keep them all; this process's peak memory and timings."""
    import resource

    sys.path.insert(0, str(ROOT / "src"))
    import PIL
    from PIL import features

    from visionq.images import DecodedImage, ImageLimits, decode_image

    limits = ImageLimits()  # the worker's defaults
    paths = sorted(folder.glob("*.jpg"))
    rss_before_mb = _vm_kb("VmRSS") / 1024
    held: list[DecodedImage] = []
    decode_ms: list[float] = []
    for path in paths:
        data = path.read_bytes()
        started = time.perf_counter()
        held.append(decode_image(data, limits, max_side=max_side))
        decode_ms.append((time.perf_counter() - started) * 1000)
        del data  # the worker keeps the decoded image, not the object's bytes
    usage = resource.getrusage(resource.RUSAGE_SELF)
    first = held[0]
    return {
        "max_side": max_side,
        "n": len(held),
        "rgb": f"{first.width}x{first.height}",
        "original": f"{first.original_width}x{first.original_height}",
        "held_mb": sum(d.rgb.nbytes for d in held) / 1e6,
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        "ru_maxrss_mb": usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024),
        "vmhwm_mb": _vm_kb("VmHWM") / 1024,
        "rss_before_mb": rss_before_mb,
        "decode_ms": decode_ms,
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
    }


def _vm_kb(field: str) -> float:
    """A field of /proc/self/status in KiB; NaN where there is no /proc."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(args: argparse.Namespace, results: list[dict[str, Any]], sizes: list[int], generated_s: float) -> str:
    command = " ".join([".venv/bin/python bench/decode_memory.py", *map(shlex.quote, sys.argv[1:])])
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    first = results[0]
    lines = [
        f"## {args.title}",
        "",
        f"`{command}` — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {platform.platform()}, {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, {memory_gb:.1f} GB; Python {platform.python_version()}, Pillow {first['pillow']} "
        f"(libjpeg-turbo {first['libjpeg_turbo']}).",
        "",
        f"{len(sizes)} noisy {args.width}x{args.height} JPEGs (quality {args.quality}, "
        f"{statistics.mean(sizes) / 1e6:.1f} MB each on average; generated in {generated_s:.1f} s), each decoded with "
        "`decode_image` and all of them held, as the worker holds `prefetch` images; one fresh process per row. "
        "Peak RSS is the process's `ru_maxrss`, VmHWM its `/proc` high-water mark (a cross-check); "
        "the process's RSS before the first decode (interpreter, numpy, Pillow) is in both.",
        "",
        "| max_side | rgb held (original) | decoded arrays held | RSS before decoding | peak RSS (ru_maxrss) "
        "| VmHWM | decode ms/image, median (min–max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = r["decode_ms"]
        lines.append(
            f"| {r['max_side'] or 'None'} | {r['rgb']} ({r['original']}) "
            f"| {r['n']} × {r['held_mb'] / r['n']:.2f} = {r['held_mb']:.0f} MB "
            f"| {r['rss_before_mb']:.0f} MB | {r['ru_maxrss_mb']:.0f} MB | {r['vmhwm_mb']:.0f} MB "
            f"| {statistics.median(ms):.0f} ({min(ms):.0f}–{max(ms):.0f}) |"
        )
    full, reduced = results[0], results[-1]
    lines += [
        "",
        f"Peak RSS {full['ru_maxrss_mb']:.0f} → {reduced['ru_maxrss_mb']:.0f} MB "
        f"({full['ru_maxrss_mb'] / reduced['ru_maxrss_mb']:.1f}× less); decode "
        f"{statistics.median(full['decode_ms']):.0f} → {statistics.median(reduced['decode_ms']):.0f} ms per image.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
