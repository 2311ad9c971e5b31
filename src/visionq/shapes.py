"""Synthetic "shapes" scenes whose true boxes are known, and the tiny detector trained on them.

The tests use them to check that boxes land where the objects are; the demo uses them to show real
detections on a machine that cannot download real weights. Only PIL, numpy and the standard library.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# class id -> name. Each class has its own shape AND its own colour family.
CLASS_NAMES: dict[int, str] = {0: "square", 1: "circle", 2: "triangle"}
CLASS_COLORS: dict[int, tuple[int, int, int]] = {
    0: (220, 35, 35),  # red square
    1: (35, 70, 220),  # blue circle
    2: (30, 165, 45),  # green triangle
}
DEFAULT_SIZE: tuple[int, int] = (320, 240)  # (width, height)

# Shape side length as a fraction of min(width, height), and the minimum free gap
# between two shapes (also as a fraction of min(width, height)).
MIN_FRAC, MAX_FRAC, GAP_FRAC = 0.18, 0.35, 0.06

TRAIN_IMGSZ = 320  # imgsz the detector is trained at
# A tiny YOLO detector trained on these scenes (tests/assets/make_shapes_detector.py trains it): the
# tests' detector whose answers are known, and the demo's when no real weights can be had.
WEIGHTS_PATH = Path(__file__).resolve().parent / "assets" / "shapes_detector.pt"


def draw_scene(
    seed: int, size: tuple[int, int] = DEFAULT_SIZE
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """Draw a deterministic synthetic scene.

    Args:
        seed: RNG seed; the same (seed, size) always gives the same image and boxes.
        size: (width, height) of the image in pixels.

    Returns:
        (image, boxes): an RGB ``PIL.Image`` of the given size and a list of 1-4
        ground-truth boxes ``(class_id, x1, y1, x2, y2)`` in pixels (x2/y2 exclusive,
        i.e. the box spans exactly the drawn pixels). class_id is 0 "square" (red),
        1 "circle" (blue) or 2 "triangle" (green, pointing up). Shapes are solid,
        axis-aligned, square-bounded (side 18-35% of min(width, height)) and do not
        touch or overlap each other.
    """
    width, height = int(size[0]), int(size[1])
    rng = random.Random(seed)
    short = min(width, height)

    # Light, slightly tinted grey background with mild per-pixel noise.
    base = np.array([rng.randint(200, 240) + rng.randint(-8, 8) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
    bg = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)

    gap = GAP_FRAC * short
    n_shapes = rng.randint(1, 4)
    placed: list[tuple[int, float, float, float, float]] = []
    for _ in range(n_shapes):
        cls = rng.randrange(len(CLASS_NAMES))
        for _attempt in range(100):
            side = round(rng.uniform(MIN_FRAC, MAX_FRAC) * short)
            margin = int(0.02 * short)
            x1 = rng.randint(margin, width - side - margin)
            y1 = rng.randint(margin, height - side - margin)
            x2, y2 = x1 + side, y1 + side
            if all(
                x1 >= bx2 + gap or bx1 >= x2 + gap or y1 >= by2 + gap or by1 >= y2 + gap
                for _, bx1, by1, bx2, by2 in placed
            ):
                break
        else:
            continue  # no room left for this shape; skip it
        color = tuple(int(np.clip(c + rng.randint(-12, 12), 0, 255)) for c in CLASS_COLORS[cls])
        # PIL's rectangle/ellipse include the end coordinate, so draw up to x2-1/y2-1.
        if cls == 0:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
        elif cls == 1:
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
        else:
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2.0, y1)], fill=color)
        placed.append((cls, float(x1), float(y1), float(x2), float(y2)))
    return img, placed
