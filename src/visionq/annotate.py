"""Drawing a result onto the image it came from, for people to look at (the demo, ``visionq render``).

One code path for every output kind (``visionq.outputs``) and for stills and video frames alike:
``draw_result`` takes a result as stored (``Output.as_dict()``, or the job record's summary of it)
and draws boxes with their label and confidence (detections), outlines filled lightly (segments),
rotated boxes as polygons (oriented boxes), keypoints as dots joined by a skeleton (poses), and
classes and captions as lines of text in a banner across the top. Coordinates are the pixels of the
upright image the model saw; when the result says it described an image of another size
(``result["image"]``), they are scaled to the one drawn on.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

# Saturated colours that stand out on photos and on the synthetic shapes scenes alike (a red box
# on the red square would vanish); indexed by class id.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 200, 0),  # amber
    (0, 230, 255),  # cyan
    (255, 0, 200),  # magenta
    (150, 255, 0),  # lime
    (255, 120, 0),  # orange
    (150, 90, 255),  # violet
    (0, 255, 150),  # spring green
    (255, 255, 255),  # white
)
_PALETTE = PALETTE  # the name older callers know

# COCO's 17-keypoint skeleton (what Ultralytics pose models produce), as index pairs.
_COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
_KEYPOINT_MIN_CONFIDENCE = 0.5
_BANNER_MAX_LINES = 6
_SEGMENT_FILL_ALPHA = 70

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def colour_for(class_id: int | None) -> tuple[int, int, int]:
    return PALETTE[int(class_id or 0) % len(PALETTE)]


def open_upright(image_path: Path) -> Image.Image:
    """The image as RGB, turned by its EXIF orientation, as the worker turned it before inference."""
    with Image.open(image_path) as opened:
        return (ImageOps.exif_transpose(opened) or opened).convert("RGB")


def draw_detections(image_path: Path, detections: Sequence[dict[str, Any]], out_path: Path) -> Path:
    """Save ``image_path`` with boxes and labels; coordinates are original-image pixels."""
    return save_annotated(image_path, {"detections": list(detections)}, out_path)


def save_annotated(image_path: Path, result: Mapping[str, Any], out_path: Path) -> Path:
    """Save an upright copy of ``image_path`` with ``result`` drawn on it (format from ``out_path``'s suffix)."""
    image = draw_result(open_upright(image_path), result)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(out_path, quality=95, subsampling=0)  # full-resolution colour keeps thin lines crisp
    else:
        image.save(out_path)
    return out_path


def draw_result(image: Image.Image, result: Mapping[str, Any], *, min_line: int = 2) -> Image.Image:
    """A copy of ``image`` (as RGB) with every item of ``result`` drawn on it; ``image`` is untouched.

    Lines are ``min_line`` pixels wide or more on big images. Video wants 3: with yuv420p's colour at
    half resolution a 2-pixel line off the 2x2 grid keeps only half its colour, while 3 pixels always
    cover one whole 2x2 column or row.
    """
    canvas = image.convert("RGB")  # a copy, even when the image is RGB already
    _Painter(canvas, result, min_line).paint()
    return canvas


class _Painter:
    def __init__(self, canvas: Image.Image, result: Mapping[str, Any], min_line: int) -> None:
        self.canvas = canvas
        self.result = result
        # "RGBA" on an RGB image: fills with an alpha blend instead of replacing pixels.
        self.draw = ImageDraw.Draw(canvas, "RGBA")
        width, height = canvas.size
        self.line = max(min_line, round(max(width, height) / 300))
        self.font = _font(max(10, round(max(width, height) / 60)))
        self.sx, self.sy = 1.0, 1.0
        described = result.get("image")
        if isinstance(described, Mapping) and described.get("width") and described.get("height"):
            self.sx = width / float(described["width"])
            self.sy = height / float(described["height"])
        self.labels: list[tuple[float, float, str, tuple[int, int, int]]] = []

    def paint(self) -> None:
        r = self.result
        for seg in _items(r, "segments"):
            self._segment(seg)
        for obb in _items(r, "oriented_boxes"):
            self._oriented_box(obb)
        for pose in _items(r, "poses"):
            self._pose(pose)
        for det in _items(r, "detections"):
            self._box(det, det)
        floor = self._banner()
        for x, y, text, colour in self.labels:  # last, so no outline crosses a label
            self._label(x, y, text, colour, floor)

    def _xy(self, x: Any, y: Any) -> tuple[float, float]:
        return float(x) * self.sx, float(y) * self.sy

    def _box(self, item: Mapping[str, Any], box: Mapping[str, Any], *, width: int | None = None) -> None:
        colour = colour_for(item.get("class_id"))
        x1, y1 = self._xy(box["x1"], box["y1"])
        x2, y2 = self._xy(box["x2"], box["y2"])
        if x2 < x1 or y2 < y1:
            return
        self.draw.rectangle((x1, y1, x2, y2), outline=colour, width=width or self.line)
        self.labels.append((x1, y1, _caption(item), colour))

    def _segment(self, seg: Mapping[str, Any]) -> None:
        colour = colour_for(seg.get("class_id"))
        points = [self._xy(x, y) for x, y in seg.get("polygon", [])]
        if len(points) >= 3:
            self.draw.polygon(points, fill=(*colour, _SEGMENT_FILL_ALPHA))
            self.draw.line([*points, points[0]], fill=colour, width=self.line, joint="curve")
        box = seg.get("box")
        if isinstance(box, Mapping):
            x1, y1 = self._xy(box["x1"], box["y1"])
        elif points:
            x1, y1 = min(p[0] for p in points), min(p[1] for p in points)
        else:
            return
        self.labels.append((x1, y1, _caption(seg), colour))

    def _oriented_box(self, obb: Mapping[str, Any]) -> None:
        colour = colour_for(obb.get("class_id"))
        points = [self._xy(x, y) for x, y in obb.get("corners", [])]
        if len(points) < 3:
            return
        self.draw.line([*points, points[0]], fill=colour, width=self.line, joint="curve")
        top = min(points, key=lambda p: (p[1], p[0]))
        self.labels.append((top[0], top[1], _caption(obb), colour))

    def _pose(self, pose: Mapping[str, Any]) -> None:
        colour = colour_for(pose.get("class_id"))
        box = pose.get("box")
        if isinstance(box, Mapping):
            self._box(pose, box, width=max(1, self.line // 2))
        keypoints = [(*self._xy(x, y), float(c)) for x, y, c in pose.get("keypoints", [])]
        seen = [c >= _KEYPOINT_MIN_CONFIDENCE for _, _, c in keypoints]
        if len(keypoints) == 17:
            for a, b in _COCO_SKELETON:
                if seen[a] and seen[b]:
                    self.draw.line([keypoints[a][:2], keypoints[b][:2]], fill=colour, width=max(1, self.line // 2))
        radius = self.line + 1
        for (x, y, _), visible in zip(keypoints, seen, strict=True):
            if visible:
                self.draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(0, 0, 0))

    def _label(self, x: float, y: float, text: str, colour: tuple[int, int, int], floor: float) -> None:
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=self.font)
        w, h = right - left + 4, bottom - top + 4
        # Above the box when there is room below the banner (``floor``), else just inside the box's
        # top, or under the banner; never off the right edge.
        ty = y - h if y - h >= floor else max(y, min(floor, self.canvas.height - h))
        tx = min(max(0.0, x), max(0.0, self.canvas.width - w))
        self.draw.rectangle((tx, ty, tx + w, ty + h), fill=colour)
        self.draw.text((tx + 2 - left, ty + 2 - top), text, fill=_ink(colour), font=self.font)

    def _banner(self) -> float:
        """Draw the classes and captions across the top; returns the banner's height (0: none)."""
        lines: list[str] = []
        for caption in _items(self.result, "captions"):
            lines.append(f"“{caption.get('text', '')}”")
        for cls in _items(self.result, "classes"):
            lines.append(f"{cls.get('label', '?')} {float(cls.get('score', 0.0)):.2f}")
        if not lines:
            return 0.0
        size = getattr(self.font, "size", 10)
        per_line = max(12, int(self.canvas.width / (0.55 * size)))
        wrapped = [part for line in lines for part in (textwrap.wrap(line, per_line) or [""])]
        if len(wrapped) > _BANNER_MAX_LINES:
            wrapped = [*wrapped[: _BANNER_MAX_LINES - 1], "…"]
        step = int(size * 1.25) + 2
        height = 4 + step * len(wrapped)
        self.draw.rectangle((0, 0, self.canvas.width, height), fill=(0, 0, 0, 160))
        for row, text in enumerate(wrapped):
            self.draw.text((4, 2 + row * step), text, fill=(255, 255, 255), font=self.font)
        return float(height + 1)


def _items(result: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    items = result.get(name) or []
    return [item for item in items if isinstance(item, Mapping)]


def _caption(item: Mapping[str, Any]) -> str:
    label = str(item.get("label", ""))
    confidence = item.get("confidence")
    return f"{label} {float(confidence):.2f}" if confidence is not None else label


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``colour``."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


@lru_cache(maxsize=16)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)
