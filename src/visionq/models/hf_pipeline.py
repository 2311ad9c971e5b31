"""Transformers vision tasks, the ``transformers`` family, by model id or directory:
``load_hf_pipeline``. ``image-classification`` and ``zero-shot-image-classification`` run through
transformers' ``pipeline`` (one call per batch); ``object-detection`` runs the model and its image
processor directly (one forward pass per shape the processor resizes to; see ``HFDetector``),
because the pipeline cannot batch images of different sizes."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.hf_common import (
    HFModel,
    WeightsSource,
    input_size_of,
    log_loaded,
    positive_int,
    to_pil,
    warn_unknown_options,
)
from visionq.models.spec import ModelSpec
from visionq.outputs import Box, Classifications, ClassScore, Detections

IMAGE_CLASSIFICATION: Final = "image-classification"
OBJECT_DETECTION: Final = "object-detection"
ZERO_SHOT: Final = "zero-shot-image-classification"
PIPELINE_TASKS = (IMAGE_CLASSIFICATION, OBJECT_DETECTION, ZERO_SHOT)

# The options each task reads (anything else in a spec's options is logged and ignored).
PIPELINE_OPTIONS = {
    IMAGE_CLASSIFICATION: ("top_k", "input_size", "revision"),
    OBJECT_DETECTION: ("threshold", "input_size", "revision"),
    ZERO_SHOT: ("labels", "hypothesis_template", "input_size", "revision"),
}


class PipelineClassifier(HFModel):
    """Image classification (a trained head: top-k classes) or zero-shot image classification
    (CLIP-like: scores over the spec's labels), through transformers' ``pipeline``."""

    def __init__(
        self,
        pipe: Any,
        *,
        task: str,
        version: str,
        device: str,
        input_size: int | None,
        top_k: int = 5,
        labels: Sequence[str] = (),
        hypothesis_template: str | None = None,
    ) -> None:
        super().__init__(version=version, device=device, input_size=input_size)
        self._pipe = pipe
        self.task = task
        self.top_k = top_k
        self.labels = tuple(labels)
        self.hypothesis_template = hypothesis_template
        id2label: Mapping[int, str] = pipe.model.config.id2label or {}
        # The pipeline names classes by id2label; their ids are the inverse of it.
        self._class_ids = {str(label): int(i) for i, label in id2label.items()}

    def predict(self, images: Sequence[np.ndarray]) -> list[Classifications]:
        if not images:
            return []
        kwargs: dict[str, Any] = {"batch_size": len(images)}
        if self.task == ZERO_SHOT:
            kwargs["candidate_labels"] = list(self.labels)
            if self.hypothesis_template:
                kwargs["hypothesis_template"] = self.hypothesis_template
        else:
            kwargs["top_k"] = self.top_k
        results = self._pipe(to_pil(images), **kwargs)
        outputs = []
        for image, result in zip(images, results, strict=True):
            items = tuple(
                ClassScore(
                    class_id=None if self.task == ZERO_SHOT else self._class_ids.get(str(r["label"])),
                    label=str(r["label"]),
                    score=round(float(r["score"]), 5),
                )
                for r in sorted(result, key=lambda r: -float(r["score"]))
            )
            outputs.append(Classifications(width=image.shape[1], height=image.shape[0], items=items))
        return outputs


class HFDetector(HFModel):
    """DETR-style object detection: the model and its image processor, run directly.

    Images the processor resizes to the same shape go through one forward pass together; images
    of other shapes, in a pass of their own. Padding a mixed batch (what the processor would do)
    changes what the backbone sees at the borders, so an image's boxes would depend on which
    other images shared its batch; and checkpoints fine-tuned in transformers learnt boxes relative
    to their padded training batches while converted ones did not. Without padding, an image gets
    the boxes it gets alone, whatever the batch. (transformers' object-detection pipeline cannot
    batch images of different shapes at all.)
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        *,
        version: str,
        device: str,
        input_size: int | None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(version=version, device=device, input_size=input_size)
        self._model = model
        self._processor = image_processor
        self.threshold = threshold

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        import torch

        processed = [self._processor(images=[image], return_tensors="pt") for image in to_pil(images)]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, inputs in enumerate(processed):
            by_shape.setdefault(tuple(inputs["pixel_values"].shape), []).append(i)
        results: list[Any] = [None] * len(images)
        with torch.inference_mode():
            for indices in by_shape.values():
                batch = {key: torch.cat([processed[i][key] for i in indices]) for key in processed[indices[0]]}
                sizes = [(images[i].shape[0], images[i].shape[1]) for i in indices]
                for i, result in zip(indices, self._forward(batch, sizes), strict=True):
                    results[i] = result
        return [self._detections(image, result) for image, result in zip(images, results, strict=True)]

    def _forward(self, batch: dict[str, Any], sizes: list[tuple[int, int]]) -> list[Any]:
        import torch
        from transformers import BatchFeature

        model = self._model
        inputs = BatchFeature(batch).to(device=self._device, dtype=model.dtype)
        outputs = model(**inputs)
        for key, value in outputs.items():  # post-process in fp32: fp16 boxes are off by a pixel
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                outputs[key] = value.float()
        results: list[Any] = self._processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes
        )
        return results

    def _detections(self, image: np.ndarray, result: Mapping[str, Any]) -> Detections:
        height, width = image.shape[:2]
        id2label: Mapping[int, str] = self._model.config.id2label or {}
        scores = result["scores"].tolist()
        labels = result["labels"].tolist()
        boxes = result["boxes"].clamp(min=0).tolist()
        items = []
        for score, class_id, (x1, y1, x2, y2) in sorted(zip(scores, labels, boxes, strict=True), key=lambda d: -d[0]):
            x1, x2 = min(x1, width), min(x2, width)
            y1, y2 = min(y1, height), min(y2, height)
            if x2 <= x1 or y2 <= y1:
                continue  # entirely outside the image
            items.append(
                Box(
                    class_id=int(class_id),
                    label=str(id2label.get(int(class_id), class_id)),
                    confidence=round(float(score), 5),
                    x1=round(x1, 2),
                    y1=round(y1, 2),
                    x2=round(x2, 2),
                    y2=round(y2, 2),
                )
            )
        return Detections(width=width, height=height, items=tuple(items))


def load_hf_pipeline(spec: ModelSpec, weights: str, *, device: str) -> PipelineClassifier | HFDetector:
    """A transformers vision model for ``spec.task`` from a local directory or a hub id.

    ``spec.task``: ``image-classification`` (option ``top_k``, 5), ``object-detection`` (option
    ``threshold``, 0.5), ``zero-shot-image-classification`` (option ``labels``, required, and
    ``hypothesis_template``, the pipeline's "This is a photo of {}." by default); None takes it from
    the checkpoint's architecture. Every task also reads ``input_size`` and ``revision``.
    """
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        AutoModelForObjectDetection,
        AutoModelForZeroShotImageClassification,
        AutoTokenizer,
        pipeline,
    )

    started = time.perf_counter()
    source = WeightsSource.of(weights, spec.option("revision"))
    config = source.config()
    task = spec.task or _task_of(config, weights)
    if task not in PIPELINE_TASKS:
        raise ConfigError(
            f"model {spec.name!r}: the transformers family serves {', '.join(PIPELINE_TASKS)}, not {task!r}."
        )
    warn_unknown_options(spec, PIPELINE_OPTIONS[task])

    auto_image_processor: Any = AutoImageProcessor  # its from_pretrained is untyped

    def image_processor(**kw: Any) -> Any:
        return auto_image_processor.from_pretrained(source.location, **kw)

    if task == OBJECT_DETECTION:
        threshold = _fraction(spec, "threshold", 0.5)
        model = source.model(AutoModelForObjectDetection, device=device)
        processor = source.load("image processor", image_processor)
        loaded: PipelineClassifier | HFDetector = HFDetector(
            model,
            processor,
            version=source.version(),
            device=device,
            input_size=input_size_of(spec, processor),
            threshold=threshold,
        )
    elif task == IMAGE_CLASSIFICATION:
        top_k = positive_int(spec, "top_k", 5)
        model = source.model(AutoModelForImageClassification, device=device)
        processor = source.load("image processor", image_processor)
        pipe: Any = pipeline(IMAGE_CLASSIFICATION, model=model, image_processor=processor, device=torch.device(device))
        loaded = PipelineClassifier(
            pipe,
            task=task,
            version=source.version(),
            device=device,
            input_size=input_size_of(spec, processor),
            top_k=top_k,
        )
    else:
        labels = _labels(spec)
        template = spec.option("hypothesis_template")
        if template is not None and (not isinstance(template, str) or "{}" not in template):
            raise ConfigError(
                f"model {spec.name!r}: option 'hypothesis_template' must be a string with a {{}} "
                f"for the label, not {template!r}."
            )
        model = source.model(AutoModelForZeroShotImageClassification, device=device)
        processor = source.load("image processor", image_processor)
        tokenizer = source.load("tokenizer", lambda **kw: AutoTokenizer.from_pretrained(source.location, **kw))
        pipe = pipeline(
            ZERO_SHOT, model=model, image_processor=processor, tokenizer=tokenizer, device=torch.device(device)
        )
        loaded = PipelineClassifier(
            pipe,
            task=task,
            version=source.version(),
            device=device,
            input_size=input_size_of(spec, processor),
            labels=labels,
            hypothesis_template=template,
        )
    loaded.warm_up()
    log_loaded(loaded, task, started)
    return loaded


def _task_of(config: Any, weights: str) -> str:
    """The task a checkpoint's architecture serves, for a spec that names none."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES

    zero_shot = set(MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES.values())
    architectures = [str(a) for a in getattr(config, "architectures", None) or []]
    for architecture in architectures:
        if architecture.endswith("ForImageClassification"):
            return IMAGE_CLASSIFICATION
        if architecture.endswith("ForObjectDetection"):
            return OBJECT_DETECTION
        if architecture in zero_shot:
            return ZERO_SHOT
    raise ConfigError(
        f"model weights {weights!r} ({', '.join(architectures) or config.model_type}) do not say which task "
        f"they serve: name one of {', '.join(PIPELINE_TASKS)}."
    )


def _fraction(spec: ModelSpec, name: str, default: float) -> float:
    value = spec.option(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"model {spec.name!r}: option {name!r} must be a number from 0 to 1, not {value!r}.")
    return float(value)


def _labels(spec: ModelSpec) -> tuple[str, ...]:
    labels = spec.option("labels")
    if not labels:
        raise ModelUnavailable(
            f"model {spec.name!r} is a zero-shot classifier and needs its candidate labels: "
            "set the option 'labels' to a list of class names."
        )
    if isinstance(labels, str) or not all(isinstance(label, str) and label.strip() for label in labels):
        raise ConfigError(f"model {spec.name!r}: option 'labels' must be a list of non-empty strings, not {labels!r}.")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"model {spec.name!r}: option 'labels' names a label twice: {labels!r}.")
    return tuple(labels)


if TYPE_CHECKING:
    from visionq.models import Model

    def _is_a_model(classifier: PipelineClassifier, detector: HFDetector) -> list[Model]:
        return [classifier, detector]  # mypy checks that each satisfies the protocol
