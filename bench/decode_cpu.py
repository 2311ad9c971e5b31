"""CPU per image of decoding a JPEG to the model's size: simplejpeg (the worker's path) vs Pillow.

    .venv/bin/python bench/decode_cpu.py                  # the bench's 200 JPEGs, max_side 640, 5 rounds

Both go through ``visionq.images.decode_image`` (header and size checks, EXIF, the reduction to
``max_side``); "Pillow" is the same call with the simplejpeg step turned off, which is the path a
JPEG takes when simplejpeg will not decode it (CMYK, a file libjpeg only warns about). The two are
interleaved image by image, each timed on the calling thread's CPU clock, so the machine's drift
falls on both alike. Then the worker's way, through the decode processes (``DecodePool``, two
processes, pixels back through shared memory, four decodes in flight), counting the children's CPU,
back to back with the same images decoded in this thread: the difference is what handing an image
to a process and back costs; and the same with the pixels pickled back through the socket (the
pool's way where there is no /dev/shm, as on AWS Lambda). Prints the command, the machine and the
figures.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import cpu_seconds, machine, make_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="distinct JPEGs (the bench's, from Ultralytics' samples)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--megapixels", type=float, default=None, help="each JPEG resized to this many MP first")
    args = parser.parse_args()

    import cv2

    from visionq import images

    cv2.setNumThreads(1)  # as in a decode process: one image a process at a time
    data = make_images(args.n, megapixels=args.megapixels)
    limits = images.ImageLimits()
    simplejpeg_path = images._jpeg_pixels

    def decode(use_simplejpeg: bool) -> Callable[[bytes], object]:
        def run(blob: bytes) -> object:
            images._jpeg_pixels = simplejpeg_path if use_simplejpeg else (lambda *_: None)  # type: ignore[assignment]
            return images.decode_image(blob, limits, max_side=args.max_side)

        return run

    paths = {"simplejpeg": decode(True), "Pillow": decode(False)}
    spent = dict.fromkeys(paths, 0)
    for _ in range(args.rounds):
        for blob in data:
            for name, run in paths.items():
                started = time.thread_time_ns()
                run(blob)
                spent[name] += time.thread_time_ns() - started
    images._jpeg_pixels = simplejpeg_path
    megapixels = sum(images.decode_image(b, limits).width * images.decode_image(b, limits).height for b in data)
    print(f"`{shlex.join(['.venv/bin/python', 'bench/decode_cpu.py', *sys.argv[1:]])}`  ")
    print(
        f"{machine()}; {args.n} JPEGs, {sum(map(len, data)) / len(data) / 1000:.0f} KB and "
        f"{megapixels / len(data) / 1e6:.2f} MP on average, decoded to {args.max_side} px, {args.rounds} rounds\n"
    )
    per_image = {name: ns / 1e6 / (args.rounds * len(data)) for name, ns in spent.items()}
    print("| decoder | CPU per image |\n|---|---|")
    for name, ms in per_image.items():
        print(f"| {name} | {ms:.2f} ms |")
    print(f"\nsimplejpeg / Pillow: {per_image['simplejpeg'] / per_image['Pillow']:.2f}")
    print(
        "\n| simplejpeg, round | in the decode processes (children counted) | of which this process |"
        " in this thread | the hand-over |"
        " pixels pickled through the socket, as on Lambda: all / this process / the hand-over |"
    )
    print("|---|---|---|---|---|---|")
    rounds = through_processes(data, limits, args.max_side, rounds=3)
    for round_, ((pooled, own, threaded), (pickled, pickled_own)) in enumerate(rounds, 1):
        print(
            f"| {round_} | {pooled:.2f} ms | {own:.2f} ms | {threaded:.2f} ms | {pooled - threaded:.2f} ms |"
            f" {pickled:.2f} / {pickled_own:.2f} / {pickled - threaded:.2f} ms |"
        )


def through_processes(
    data: list[bytes], limits: Any, max_side: int, rounds: int
) -> list[tuple[tuple[float, float, float], tuple[float, float]]]:
    """Per round, CPU ms per image through a DecodePool whose pixels come back through shared
    memory (this process and its live decode processes, read while they run; and this process
    alone, the worker's share), in this thread (its own CPU clock), and through a pool whose
    pixels come back pickled (the pool's way where there is no /dev/shm: AWS Lambda)."""
    import asyncio

    import psutil

    from visionq.decode_pool import DecodePool
    from visionq.images import decode_image

    me = psutil.Process()
    shared, pickled = DecodePool(2, slot_side=max_side), DecodePool(2, slot_side=None)

    async def drain(pool: DecodePool) -> None:
        in_flight = asyncio.Semaphore(4)

        async def one(blob: bytes) -> None:
            async with in_flight:
                await pool.decode(blob, limits, max_side=max_side)

        await asyncio.gather(*(one(blob) for blob in data))

    def through(pool: DecodePool) -> tuple[float, float]:
        before, own = cpu_seconds(me), time.process_time()
        asyncio.run(drain(pool))
        return (cpu_seconds(me) - before) * 1000 / len(data), (time.process_time() - own) * 1000 / len(data)

    figures = []
    try:
        for pool in (shared, pickled):
            asyncio.run(drain(pool))  # the processes started and warm
        for _ in range(rounds):
            started = time.thread_time()
            for blob in data:
                decode_image(blob, limits, max_side=max_side)
            threaded = (time.thread_time() - started) * 1000 / len(data)
            figures.append(((*through(shared), threaded), through(pickled)))
    finally:
        shared.close()
        pickled.close()
    return figures


if __name__ == "__main__":
    main()
