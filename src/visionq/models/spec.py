"""What a named model is, before it is loaded: the registry's entries (see ``models/registry.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One named model: which family loads it, from which weights, for which task, with which options.

    ``weights`` is a local path (file or directory), an ``s3://bucket/key`` URI (fetched once into a
    local cache, see ``models/weights.py``), or a hub name (Ultralytics' ``yolo11n.pt``, a
    HuggingFace model id) where there is network. ``options`` are the family's own settings
    (confidence, image size, generation settings, zero-shot labels, backend...).
    """

    name: str
    family: str  # "ultralytics" | "blip" | "transformers"
    weights: str
    task: str | None = None  # None: what the weights say (Ultralytics), or the family's only task
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The largest batch the worker hands it: the registry entry's own ``max_batch``, else the
    # worker's VISIONQ_MAX_BATCH (set when it loads the model); None: the device's default. A GPU's
    # warm-up runs every batch size up to it.
    max_batch: int | None = None

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)
