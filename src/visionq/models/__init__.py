"""The model interface: what the processing core needs of any model family.

A family (Ultralytics YOLO today) is one module in this package behind ``Model``: loaded once per
process, it takes a batch of decoded RGB images and returns one typed output (``visionq.outputs``)
per image, in the coordinates of the array it was given; the core maps them to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from visionq.outputs import ModelOutput

if TYPE_CHECKING:  # numpy is a worker dependency; the API imports this package without it
    import numpy as np

# The largest batch a worker hands its models on a GPU unless VISIONQ_MAX_BATCH says otherwise (on a
# CPU it is 1: batching was measured to lose there, bench/RESULTS.md).
GPU_BATCH = 8


class Model(Protocol):
    @property
    def version(self) -> str:
        """Identifies the weights: part of a result's identity."""

    @property
    def untrained(self) -> bool:
        """True when built from an architecture alone: its outputs mean nothing."""

    @property
    def device(self) -> str:
        """Where it runs: "cpu", "cuda:0", ..."""

    @property
    def input_size(self) -> int | None:
        """The longer side the model looks at; images are decoded no larger (None: full size)."""

    def predict(self, images: Sequence[np.ndarray]) -> Sequence[ModelOutput]:
        """One forward pass over ``images`` (RGB, H x W x 3, uint8); one output each, in order."""


def batches_in_flight(model: Model) -> int:
    """How many ``predict`` calls the model takes at once: 1, or more for a model that can take its
    next batch while it runs one (a model in a process of its own, whose pipe holds the next)."""
    return max(1, int(getattr(model, "batches_in_flight", 1)))


def ends_its_own_hangs(model: Model) -> bool:
    """Whether a ``predict`` call that hangs is ended by the model itself (a model in a process of
    its own: the process is killed after its answer timeout). A model in the worker's process that
    hangs holds its thread for good: the worker notices and stops (``Processor.stuck_model``)."""
    return bool(getattr(model, "ends_its_own_hangs", False))


def runs_batches_side_by_side(model: Model) -> bool:
    """Whether the batches a model holds at once all run at once (copies side by side,
    models/replicas.py), rather than queue behind the one it runs (a model in its own process)."""
    return bool(getattr(model, "runs_batches_side_by_side", False))


def decodes_on_device(model: Model, setting: str) -> bool:
    """Whether the worker hands ``model`` JPEGs to decode on its device rather than pixels
    (``VISIONQ_DEVICE_DECODE``: "auto", "on", "off"; models/device_decode.py). Only a model in a
    process of its own takes them: a decoder that crashes there kills that process, not the worker."""
    if setting == "off" or not getattr(model, "decodes_jpegs", False):
        return False
    return setting == "on" or model.device.startswith("cuda")


def pick_device(requested: str | None = None) -> str:
    """CUDA when available, else CPU; an explicit request wins."""
    if requested:
        return requested
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
