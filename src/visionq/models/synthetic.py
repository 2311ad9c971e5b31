"""Models that cost (next to) nothing, to measure the worker itself (bench/ceiling.py).

``null``: returns one fixed box per image at once. ``delay``: sleeps ``delay_ms`` per batch plus
``per_image_ms`` per image, as a GPU's forward pass would (the sleeping thread holds no CPU and no
GIL), then answers like ``null``. Neither touches the pixels, so what a worker spends per image
with them is the worker's own cost: receive, claim, fetch, decode, write, acknowledge, bookkeeping.

In a registry: ``family = "synthetic"``, ``weights = "null"`` or ``"delay"``, options ``delay_ms``,
``per_image_ms`` and ``input_size`` (the longer side images are decoded to; default 640, as YOLO).
For fault injection, ``crash_on_value``: an image whose first pixel's red value is this number
kills the process running the model, as a native crash in a model's code would. For tests of the
hand-over, ``label_from_pixel``: the box is labelled ``v<first red value>``, so which pixels the
model saw shows in its answer. ``device`` (default "cpu"): the device it says it runs on; on
"cuda:..." a worker with ``VISIONQ_DEVICE_DECODE`` hands it JPEGs and its process decodes them on
that GPU, so the ceiling bench can measure the device decode with a model that costs nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.spec import ModelSpec
from visionq.outputs import Box, Detections

if TYPE_CHECKING:
    import numpy as np

KINDS = ("null", "delay")


@dataclass(frozen=True)
class SyntheticModel:
    kind: str
    delay_ms: float = 0.0
    per_image_ms: float = 0.0
    side: int | None = 640
    crash_on_value: int | None = None
    label_from_pixel: bool = False
    on: str = "cpu"

    @property
    def version(self) -> str:
        return f"synthetic-{self.kind}-{self.delay_ms:g}-{self.per_image_ms:g}"

    @property
    def untrained(self) -> bool:
        return False  # its answers are fixed on purpose; nothing to warn about

    @property
    def device(self) -> str:
        return self.on

    @property
    def input_size(self) -> int | None:
        return self.side

    def predict(self, images: Sequence[np.ndarray]) -> Sequence[Detections]:
        if self.crash_on_value is not None and any(int(image[0, 0, 0]) == self.crash_on_value for image in images):
            os.abort()
        wait = self.delay_ms + self.per_image_ms * len(images)
        if wait > 0:
            time.sleep(wait / 1000)
        return [self._one_box(image) for image in images]

    def _one_box(self, image: np.ndarray) -> Detections:
        height, width = image.shape[:2]
        label = f"v{int(image[0, 0, 0])}" if self.label_from_pixel else "thing"
        box = Box(class_id=0, label=label, confidence=0.5, x1=0.0, y1=0.0, x2=width / 2, y2=height / 2)
        return Detections(width=width, height=height, items=(box,))


def cuda_usable() -> bool:
    import torch  # only for a model said to run on a GPU: the others never import it

    return bool(torch.cuda.is_available())


def load_synthetic(spec: ModelSpec) -> SyntheticModel:
    if spec.weights not in KINDS:
        raise ConfigError(f"model {spec.name!r}: synthetic weights must be one of {', '.join(KINDS)}")
    options = dict(spec.options)
    device = str(options.get("device", "cpu"))
    if device != "cpu" and not (device.startswith("cuda") and cuda_usable()):
        # Refused as a real model is, at load: its process would die on every batch otherwise.
        raise ModelUnavailable(f"model {spec.name!r}: device {device!r} cannot be used here (no CUDA device).")
    side = options.get("input_size", 640)
    return SyntheticModel(
        kind=spec.weights,
        delay_ms=float(options.get("delay_ms", 0.0)) if spec.weights == "delay" else 0.0,
        per_image_ms=float(options.get("per_image_ms", 0.0)) if spec.weights == "delay" else 0.0,
        side=int(side) if side else None,
        crash_on_value=int(options["crash_on_value"]) if "crash_on_value" in options else None,
        label_from_pixel=bool(options.get("label_from_pixel", False)),
        on=device,
    )
