"""Drawing detections onto the image they came from (for the demo and for people to look at)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230)]


def draw_detections(image_path: Path, detections: Sequence[dict[str, Any]], out_path: Path) -> Path:
    """Save ``image_path`` with boxes and labels; coordinates are original-image pixels."""
    with Image.open(image_path) as opened:
        # The worker applied EXIF orientation before inference, so the boxes are in that frame.
        image = (ImageOps.exif_transpose(opened) or opened).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for det in detections:
        colour = _PALETTE[int(det["class_id"]) % len(_PALETTE)]
        box = (det["x1"], det["y1"], det["x2"], det["y2"])
        draw.rectangle(box, outline=colour, width=width)
        caption = f"{det['label']} {det['confidence']:.2f}"
        left, top, right, bottom = draw.textbbox((det["x1"], det["y1"]), caption)
        lift = bottom - top + 4
        draw.rectangle((left, top - lift, right + 4, bottom - lift + 2), fill=colour)
        draw.text((det["x1"] + 2, det["y1"] - lift), caption, fill=(255, 255, 255))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)
    return out_path
