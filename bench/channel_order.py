"""Reordering an image's pixels: numpy's copy of a reversed or swapped view against OpenCV's own
function, per image (issue 11: the model's path and the decode's, on every image or every turned one).

    .venv/bin/python bench/channel_order.py [--rounds 3] [--n 300]

For a 640 x 480 RGB image (what the decode hands a 640 model): RGB to BGR (Ultralytics reads BGR),
each EXIF transposition (a phone's photo usually needs one), gray to RGB, and channels-first to
channels-last. Each figure is the
mean wall time of N calls on this thread, in ms; the outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import cv2
import numpy as np

RGB = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
GRAY = np.ascontiguousarray(RGB[:, :, 0])
CHW = np.ascontiguousarray(RGB.transpose(2, 0, 1))

# name -> (numpy's way, OpenCV's way), each taking nothing and returning the reordered image.
CASES: dict[str, tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]] = {
    "rgb_to_bgr": (lambda: np.ascontiguousarray(RGB[:, :, ::-1]), lambda: cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)),
    "flip_left_right": (lambda: np.ascontiguousarray(RGB[:, ::-1]), lambda: cv2.flip(RGB, 1)),
    "flip_top_bottom": (lambda: np.ascontiguousarray(RGB[::-1]), lambda: cv2.flip(RGB, 0)),
    "rotate_180": (lambda: np.ascontiguousarray(RGB[::-1, ::-1]), lambda: cv2.flip(RGB, -1)),
    "rotate_90": (
        lambda: np.ascontiguousarray(np.rot90(RGB, 1)),
        lambda: cv2.rotate(RGB, cv2.ROTATE_90_COUNTERCLOCKWISE),
    ),
    "rotate_270": (lambda: np.ascontiguousarray(np.rot90(RGB, -1)), lambda: cv2.rotate(RGB, cv2.ROTATE_90_CLOCKWISE)),
    "transpose": (lambda: np.ascontiguousarray(np.swapaxes(RGB, 0, 1)), lambda: cv2.transpose(RGB)),
    "transverse": (
        lambda: np.ascontiguousarray(np.rot90(RGB, 2).swapaxes(0, 1)),
        lambda: cv2.transpose(cv2.flip(RGB, -1)),
    ),
    "gray_to_rgb": (lambda: np.repeat(GRAY[:, :, None], 3, axis=2), lambda: cv2.cvtColor(GRAY, cv2.COLOR_GRAY2RGB)),
    # A C x H x W image (a decoder's tensor) made channels-last on the host, as the device decode did
    # before it reordered on the device.
    "chw_to_hwc": (lambda: np.ascontiguousarray(CHW.transpose(1, 2, 0)), lambda: cv2.merge(list(CHW))),
}


def ms_per_call(call: Callable[[], np.ndarray], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(0)  # as the worker runs it (images.py)
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, OpenCV {cv2.__version__}")
    for name, (with_numpy, with_opencv) in CASES.items():
        assert np.array_equal(with_numpy(), with_opencv()), name
    for round_ in range(1, args.rounds + 1):
        for name, (with_numpy, with_opencv) in CASES.items():
            a, b = ms_per_call(with_numpy, args.n), ms_per_call(with_opencv, args.n)
            print(f"round {round_} {name:16s} numpy {a:6.3f} ms  OpenCV {b:6.3f} ms  ({b / a:.3f} x)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
