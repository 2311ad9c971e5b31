"""Ultralytics YOLO behind the ``Model`` interface: boxes for a batch of images.

Loaded once per process (``load_detector``) and handed to the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionq.errors import ModelUnavailable
from visionq.models import pick_device
from visionq.models.digest import weights_digest
from visionq.outputs import Box, Detections

logger = logging.getLogger(__name__)

# What Ultralytics uses for a model that does not say what size it was trained at.
_ULTRALYTICS_DEFAULT_SIZE = 640


class UltralyticsDetector:
    def __init__(
        self,
        model: Any,
        *,
        version: str,
        untrained: bool,
        device: str,
        image_size: int | None = None,
        confidence: float = 0.25,
    ) -> None:
        self._model = model
        self._version = version
        self._untrained = untrained
        self._device = device
        self.image_size = image_size
        self.confidence = confidence
        self.half = device.startswith("cuda")  # fp16 on a GPU: twice the throughput, same boxes

    @property
    def version(self) -> str:
        return self._version

    @property
    def untrained(self) -> bool:
        return self._untrained

    @property
    def device(self) -> str:
        return self._device

    def warm_up(self) -> None:
        """One throwaway pass: Ultralytics builds its predictor and fuses layers on the first call,
        which would otherwise land on the first real job (seconds, on a CPU)."""
        self.predict([np.full((480, 640, 3), 114, dtype=np.uint8)])

    @property
    def input_size(self) -> int:
        """The longer side the network sees (letterboxed to this): images are decoded down to it."""
        if self.image_size:
            return self.image_size
        trained = getattr(self._model, "overrides", {}).get("imgsz")
        return int(trained) if isinstance(trained, int) else _ULTRALYTICS_DEFAULT_SIZE

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        # Ultralytics treats numpy arrays as BGR (OpenCV's order); ours are RGB.
        bgr = [np.ascontiguousarray(img[:, :, ::-1]) for img in images]
        results = self._model.predict(
            bgr,
            imgsz=self.input_size,
            conf=self.confidence,
            device=self.device,
            quantize=16 if self.half else None,
            verbose=False,
        )
        predictions = []
        for image, result in zip(images, results, strict=True):
            names = result.names
            boxes = result.boxes
            xyxy = boxes.xyxy.cpu().numpy().tolist()
            confs = boxes.conf.cpu().numpy().tolist()
            classes = boxes.cls.cpu().numpy().astype(int).tolist()
            boxes = tuple(
                Box(
                    class_id=c,
                    label=str(names.get(c, c)) if isinstance(names, dict) else str(names[c]),
                    confidence=round(float(p), 5),
                    x1=round(b[0], 2),
                    y1=round(b[1], 2),
                    x2=round(b[2], 2),
                    y2=round(b[3], 2),
                )
                for b, p, c in zip(xyxy, confs, classes, strict=True)
            )
            predictions.append(Detections(width=image.shape[1], height=image.shape[0], items=boxes))
        return predictions


def load_detector(
    spec: str,
    *,
    device: str | None = None,
    image_size: int | None = None,
    confidence: float = 0.25,
    seed: int = 0,
) -> UltralyticsDetector:
    """Load a YOLO model from a weights path, an Ultralytics model name, or a model yaml.

    A yaml builds the untrained architecture (seeded, so every process builds the same one).
    A name whose weights are not on disk is downloaded by Ultralytics where there is network;
    where there is none, this fails with a message saying how to supply the weights.
    """
    from ultralytics import YOLO  # type: ignore[attr-defined]

    device = pick_device(device)
    untrained = spec.endswith((".yaml", ".yml"))
    started = time.perf_counter()
    if untrained:
        import torch

        torch.manual_seed(seed)
        model = YOLO(spec, task="detect")
        version = f"{Path(spec).name}@seed{seed}"
    else:
        try:
            model = YOLO(spec, task="detect")
        except Exception as exc:  # Ultralytics raises plain exceptions for failed downloads
            raise ModelUnavailable(_how_to_supply(spec) + f" ({type(exc).__name__}: {exc})") from exc
        weights = Path(getattr(model, "ckpt_path", None) or spec)
        version = f"{weights.name}@{weights_digest(weights)}" if weights.exists() else weights.name
    model.to(device)
    network: Any = model.model
    network.eval()
    detector = UltralyticsDetector(
        model, version=version, untrained=untrained, device=device, image_size=image_size, confidence=confidence
    )
    detector.warm_up()
    logger.info(
        "model loaded: %s on %s in %.0f ms%s",
        version,
        device,
        (time.perf_counter() - started) * 1000,
        " (UNTRAINED architecture: detections are meaningless)" if untrained else "",
    )
    return detector


def _how_to_supply(spec: str) -> str:
    return (
        f"model weights {spec!r} are not on disk and cannot be downloaded here. Supply them: "
        f"download {spec} on a machine with network and pass its path with --model/VISIONQ_MODEL, "
        "or choose an untrained architecture explicitly (e.g. --model yolo11n.yaml) for a smoke test."
    )
