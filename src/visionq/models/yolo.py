"""Ultralytics YOLO behind the ``Model`` interface: detect, segment, classify, pose and oriented
boxes from one loader, each task's results turned into its typed output.

Loaded once per process (``load_ultralytics``) and handed to the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2  # opencv-python, an Ultralytics dependency
import numpy as np

from visionq.errors import ModelUnavailable
from visionq.models import GPU_BATCH, pick_device
from visionq.models.digest import weights_digest
from visionq.models.letterbox import Prepared, geometry, letterboxed, shape_only
from visionq.models.onnx_export import choose_backend, onnx_sessions, onnx_weights, set_onnx_threads
from visionq.models.replicas import Replicas
from visionq.models.spec import ModelSpec
from visionq.outputs import (
    Box,
    Classifications,
    ClassScore,
    Detections,
    ModelOutput,
    OrientedBox,
    OrientedBoxes,
    Pose,
    Poses,
    Segment,
    Segments,
)

logger = logging.getLogger(__name__)

# What Ultralytics uses for a model that does not say what size it was trained at.
_ULTRALYTICS_DEFAULT_SIZE = 640
TASKS = ("detect", "segment", "classify", "pose", "obb")


class UltralyticsModel:
    def __init__(
        self,
        model: Any,
        *,
        version: str,
        untrained: bool,
        device: str,
        image_size: int | None = None,
        confidence: float = 0.25,
        top_k: int = 5,
        square_input: bool = False,
        warm_batches: int = 1,
    ) -> None:
        self._model = model
        self._version = version
        self._untrained = untrained
        self._device = device
        self.task: str = model.task
        self.image_size = image_size
        self.confidence = confidence
        self.top_k = top_k
        self.square_input = square_input
        self.warm_batches = max(1, warm_batches)
        self.half = device.startswith("cuda")  # fp16 on a GPU: twice the throughput, same boxes
        self._convert: Callable[[Any, np.ndarray], ModelOutput] = getattr(self, f"_{self.task}")

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
        """Throwaway passes: Ultralytics builds its predictor and fuses layers on the first call,
        which would otherwise land on the first real job (seconds, on a CPU). With ``warm_batches``
        (a GPU's default), each batch size up to it once: the first call at each input shape took
        about 1.2 s on an H200 (bench/RESULTS.md, run 23), and with ``square_input`` a batch's size
        alone makes its shape."""
        blank = np.full((480, 640, 3), 114, dtype=np.uint8)
        for size in range(1, self.warm_batches + 1):
            self.predict([blank] * size)

    @property
    def input_size(self) -> int:
        """The longer side the network sees (letterboxed to this): images are decoded down to it."""
        return self.image_size or _trained_size(self._model)

    def predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        if not images:
            return []
        # Ultralytics treats numpy arrays as BGR (OpenCV's order); ours are RGB. OpenCV swaps the
        # channels in about 0.03 ms per 640 x 480 image, numpy's copy of a reversed view took
        # 1.3-1.7 ms (bench/channel_order.py, bench/RESULTS.md run 19): on the model's path, every image.
        bgr = [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in images]
        results = self._predict(bgr)
        return [self._convert(result, image) for image, result in zip(images, results, strict=True)]

    def _predict(self, source: list[np.ndarray]) -> Any:
        return self._model.predict(
            source,
            imgsz=self.input_size,
            conf=self.confidence,
            device=self.device,
            quantize=16 if self.half else None,
            rect=not self.square_input,  # Ultralytics' default (True): a batch of one shape, not padded square
            verbose=False,
        )

    # --- the letterbox on the model's device (models/letterbox.py) ---------------------------------

    @property
    def letterboxes(self) -> bool:
        """Whether its input is Ultralytics' plain letterbox (every task but classify, which crops,
        with a predictor that makes its input as the base predictor does), so that ``prepare`` can
        make it on the device."""
        from ultralytics.engine.predictor import BasePredictor

        kind = type(self._model.predictor)  # built by warm_up
        return (
            self.task != "classify"
            and kind.preprocess is BasePredictor.preprocess
            and kind.pre_transform is BasePredictor.pre_transform
        )

    def prepare(self, images: Sequence[Any]) -> Prepared:
        """The network's input for ``images`` (3 x H x W uint8 RGB tensors on its device), made
        there as Ultralytics would make it from the same pixels on the host."""
        predictor = self._model.predictor  # built by warm_up
        shapes = tuple((int(image.shape[1]), int(image.shape[2])) for image in images)
        if not shapes:
            return Prepared(pixels=None, shapes=())
        dtype = torch_dtype(half=bool(predictor.model.fp16))
        return Prepared(pixels=letterboxed(images, geometry(predictor, shapes), dtype), shapes=shapes)

    def reference_input(self, images: Sequence[np.ndarray]) -> Any:
        """The network's input as Ultralytics makes it on the host from ``images`` (RGB arrays)."""
        return self._model.predictor.preprocess([cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in images])

    def predict_prepared(self, batch: Prepared) -> list[ModelOutput]:
        """``predict`` of the images ``batch`` was prepared from: outputs in their pixels."""
        if not batch.shapes:
            return []
        predictor = self._model.predictor
        stand_ins = [shape_only(shape) for shape in batch.shapes]
        # The predictor's pre-processing, for this call only, is the batch already made; the
        # stand-ins carry each image's shape to its post-processing, which maps boxes back.
        predictor.preprocess = lambda _images: batch.pixels
        try:
            results = self._predict(stand_ins)
        finally:
            del predictor.preprocess  # the class's method again
        if self._model.predictor is not predictor:
            # Ultralytics built a new one for this call (changed settings): it letterboxed the
            # stand-ins, which have no pixels, so its answers are not the images'.
            raise RuntimeError("Ultralytics replaced its predictor during a prepared batch")
        return [self._convert(result, image) for image, result in zip(stand_ins, results, strict=True)]

    # --- one converter per task: Ultralytics' result for one image -> its typed output ----------

    def _detect(self, result: Any, image: np.ndarray) -> Detections:
        return Detections(width=image.shape[1], height=image.shape[0], items=tuple(_boxes(result.boxes, result.names)))

    def _segment(self, result: Any, image: np.ndarray) -> Segments:
        boxes = _boxes(result.boxes, result.names)
        # masks.xy: each instance's outline in the pixels of the image given (empty when none found).
        polygons = result.masks.xy if result.masks is not None else []
        segments = tuple(
            Segment(
                class_id=box.class_id,
                label=box.label,
                confidence=box.confidence,
                box=box,
                polygon=tuple((round(float(x), 2), round(float(y), 2)) for x, y in polygon),
            )
            for box, polygon in zip(boxes, polygons, strict=True)
        )
        return Segments(width=image.shape[1], height=image.shape[0], items=segments)

    def _classify(self, result: Any, image: np.ndarray) -> Classifications:
        probs = result.probs.data.float().cpu().numpy()
        best = np.argsort(-probs)[: self.top_k]
        classes = tuple(
            ClassScore(class_id=int(c), label=_label(result.names, int(c)), score=round(float(probs[c]), 5))
            for c in best
        )
        return Classifications(width=image.shape[1], height=image.shape[0], items=classes)

    def _pose(self, result: Any, image: np.ndarray) -> Poses:
        boxes = _boxes(result.boxes, result.names)
        points = result.keypoints.data.cpu().numpy().tolist() if result.keypoints is not None else []
        poses = tuple(
            Pose(
                class_id=box.class_id,
                label=box.label,
                confidence=box.confidence,
                box=box,
                keypoints=tuple(_keypoint(p) for p in instance),
            )
            for box, instance in zip(boxes, points, strict=True)
        )
        return Poses(width=image.shape[1], height=image.shape[0], items=poses)

    def _obb(self, result: Any, image: np.ndarray) -> OrientedBoxes:
        obb = result.obb
        xywhr = obb.xywhr.cpu().numpy().tolist()
        corners = obb.xyxyxyxy.cpu().numpy().tolist()
        confs = obb.conf.cpu().numpy().tolist()
        classes = obb.cls.cpu().numpy().astype(int).tolist()
        boxes = tuple(
            OrientedBox(
                class_id=c,
                label=_label(result.names, c),
                confidence=round(float(p), 5),
                cx=round(r[0], 2),
                cy=round(r[1], 2),
                width=round(r[2], 2),
                height=round(r[3], 2),
                angle=round(r[4], 5),
                corners=tuple((round(x, 2), round(y, 2)) for x, y in quad),
            )
            for r, quad, p, c in zip(xywhr, corners, confs, classes, strict=True)
        )
        return OrientedBoxes(width=image.shape[1], height=image.shape[0], items=boxes)


def torch_dtype(*, half: bool) -> Any:
    import torch

    return torch.float16 if half else torch.float32


def _trained_size(model: Any) -> int:
    trained = getattr(model, "overrides", {}).get("imgsz")
    return int(trained) if isinstance(trained, int) else _ULTRALYTICS_DEFAULT_SIZE


def _label(names: Any, class_id: int) -> str:
    return str(names.get(class_id, class_id)) if isinstance(names, dict) else str(names[class_id])


def _keypoint(point: list[float]) -> tuple[float, float, float]:
    x, y, *rest = point
    return (round(x, 2), round(y, 2), round(rest[0], 4) if rest else 1.0)


def _boxes(boxes: Any, names: Any) -> list[Box]:
    xyxy = boxes.xyxy.cpu().numpy().tolist()
    confs = boxes.conf.cpu().numpy().tolist()
    classes = boxes.cls.cpu().numpy().astype(int).tolist()
    return [
        Box(
            class_id=c,
            label=_label(names, c),
            confidence=round(float(p), 5),
            x1=round(b[0], 2),
            y1=round(b[1], 2),
            x2=round(b[2], 2),
            y2=round(b[3], 2),
        )
        for b, p, c in zip(xyxy, confs, classes, strict=True)
    ]


def input_defaults(device: str, max_batch: int | None = None) -> dict[str, Any]:
    """The input-shape options' defaults on ``device``. On a GPU: every batch padded square, and
    each batch size the worker may hand the model (``max_batch``; 8, its default there) run once at
    load, so no job meets a shape's first call (up to 1.96 s each on an H200, and at most 11 ms
    with these defaults: bench/RESULTS.md, runs 23 and 25). On a CPU: Ultralytics' own (a batch of
    one shape padded only to the stride; square would cost compute) and one pass."""
    gpu = device.startswith("cuda")
    return {"square_input": gpu, "warm_batches": (max_batch or GPU_BATCH) if gpu else 1}


def load_ultralytics(
    spec: ModelSpec, weights: str, *, device: str | None = None, seed: int = 0
) -> UltralyticsModel | Replicas:
    """Load a YOLO model of any task from a weights path, an Ultralytics model name, or a model yaml.

    A yaml builds the untrained architecture (seeded, so every process builds the same one). A
    name whose weights are not on disk is downloaded by Ultralytics where there is network; where
    there is none, this fails with one sentence saying how to supply the weights. ``spec.task``
    (when given) must match what the weights are.
    """
    from ultralytics import YOLO  # type: ignore[attr-defined]

    device = pick_device(device)
    untrained = weights.endswith((".yaml", ".yml"))
    started = time.perf_counter()
    if spec.task is not None and spec.task not in TASKS:
        raise ModelUnavailable(f"model {spec.name!r}: Ultralytics has no task {spec.task!r} (one of {TASKS})")
    try:
        if untrained:
            import torch

            torch.manual_seed(seed)
            model = YOLO(weights)  # the task is what the weights say; checked below
            version = f"{Path(weights).name}@seed{seed}"
        else:
            model = YOLO(weights)  # the task is what the weights say; checked below
            path = Path(getattr(model, "ckpt_path", None) or weights)
            version = f"{path.name}@{weights_digest(path)}" if path.exists() else path.name
    except Exception as exc:  # Ultralytics raises plain exceptions for failed downloads and bad files
        raise ModelUnavailable(_how_to_supply(spec, weights, exc)) from exc
    if spec.task is not None and model.task != spec.task:
        raise ModelUnavailable(
            f"model {spec.name!r}: the weights {weights!r} are a {model.task} model, not {spec.task} as configured"
        )
    # An architecture yaml has no weights file to export: it stays on PyTorch.
    backend = "torch" if untrained else choose_backend(str(spec.option("backend", "auto")), device)
    image_size = spec.option("image_size") or _trained_size(model)
    shapes = input_defaults(device, spec.max_batch)

    def wrapped(network: Any) -> UltralyticsModel:
        return UltralyticsModel(
            network,
            version=version,  # the .pt's: an export of the same weights gives the same results
            untrained=untrained,
            device=device,
            image_size=image_size,
            confidence=float(spec.option("confidence", 0.25)),
            top_k=int(spec.option("top_k", 5)),
            square_input=bool(spec.option("square_input", shapes["square_input"])),
            warm_batches=int(spec.option("warm_batches", shapes["warm_batches"])),
        )

    loaded: UltralyticsModel | Replicas
    if backend == "onnx":
        onnx_path = onnx_weights(Path(getattr(model, "ckpt_path", None) or weights), image_size=image_size)
        sessions, threads, solo_threads = onnx_sessions(spec)
        # In a worker the model shares the CPU with decoding and I/O: ONNX Runtime's threads do not
        # spin-wait between operators unless asked (bench/RESULTS.md, run 8).
        spinning = bool(spec.option("onnx_spinning", False))

        def session(threads: int) -> UltralyticsModel:
            # task= is needed: Ultralytics would guess it from the file name, and guess detect.
            copy = wrapped(YOLO(str(onnx_path), task=model.task))
            copy.warm_up()  # builds the predictor, whose session is then rebuilt with our options
            if threads or not spinning:
                set_onnx_threads(copy._model, onnx_path, threads, spinning=spinning)
            return copy

        copies = [session(threads) for _ in range(sessions)]
        solo = session(solo_threads) if solo_threads else None
        loaded = copies[0] if sessions == 1 else Replicas(copies, solo=solo)
        backend = f"onnx, {sessions} session{'s' if sessions > 1 else ''} x {threads or 'all'} thread(s)"
        backend += f" and a solo session x {solo_threads}" if solo else ""
    else:
        model.to(device)
        network: Any = model.model
        network.eval()
        loaded = wrapped(model)
        loaded.warm_up()
    logger.info(
        "model %s loaded: %s (%s, %s) on %s in %.0f ms%s",
        spec.name,
        version,
        loaded.task,
        backend,
        device,
        (time.perf_counter() - started) * 1000,
        " (UNTRAINED architecture: its outputs are meaningless)" if untrained else "",
    )
    return loaded


def load_detector(
    weights: str,
    *,
    device: str | None = None,
    image_size: int | None = None,
    confidence: float = 0.25,
    seed: int = 0,
    backend: str = "auto",
    onnx_sessions: int | None = None,
    onnx_solo: bool = True,
) -> UltralyticsModel | Replicas:
    """One Ultralytics model from its weights alone (the single-model worker, the benchmarks)."""
    options: dict[str, Any] = {"confidence": confidence, "backend": backend}
    if image_size:
        options["image_size"] = image_size
    if onnx_sessions is not None:
        options["onnx_sessions"] = onnx_sessions
    options["onnx_solo"] = onnx_solo
    spec = ModelSpec(name=Path(weights).stem, family="ultralytics", weights=weights, options=options)
    return load_ultralytics(spec, weights, device=device, seed=seed)


def _how_to_supply(spec: ModelSpec, weights: str, exc: Exception) -> str:
    if Path(weights).exists():
        return f"model {spec.name!r}: the weights {weights!r} could not be loaded ({type(exc).__name__}: {exc})"
    return (
        f"model {spec.name!r}: the weights {weights!r} are not on disk and cannot be downloaded here "
        f"({type(exc).__name__}); supply a weights file (--model or VISIONQ_MODEL; `weights` in a registry), "
        "or an architecture yaml such as yolo11n.yaml for an untrained smoke test"
    )
