"""HuggingFace transformers models behind the ``Model`` interface.

Two families:

- ``blip`` (task ``image-to-text``): BLIP captioning, ``load_blip``. One ``generate`` call per
  batch; each image gets one ``Caption`` with the mean log-probability of its generated tokens.
- ``transformers``: vision tasks by model id or directory, ``load_hf_pipeline``:
  ``image-classification`` and ``zero-shot-image-classification`` run through transformers'
  ``pipeline`` (one call per batch); ``object-detection`` runs the model and its image processor
  directly (one forward pass per shape the processor resizes to; see ``HFDetector``), because
  the pipeline cannot batch images of different sizes.

``weights`` is a local directory written by ``save_pretrained`` (its version is the directory's
name and ``weights_digest``) or a hub id where there is network (its version is the id and the
commit it resolved to). Weights that cannot be loaded, or that do not fit the family or task,
raise ``ModelUnavailable`` with one sentence naming them and the cause. Each model runs in fp16 on
a CUDA device and fp32 elsewhere.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.digest import weights_digest
from visionq.models.spec import ModelSpec
from visionq.outputs import Box, Caption, Captions, Classifications, ClassScore, Detections

logger = logging.getLogger(__name__)

IMAGE_TO_TEXT: Final = "image-to-text"
IMAGE_CLASSIFICATION: Final = "image-classification"
OBJECT_DETECTION: Final = "object-detection"
ZERO_SHOT: Final = "zero-shot-image-classification"
PIPELINE_TASKS = (IMAGE_CLASSIFICATION, OBJECT_DETECTION, ZERO_SHOT)

# The options each family reads (anything else in a spec's options is logged and ignored).
BLIP_OPTIONS = ("max_new_tokens", "min_new_tokens", "num_beams", "prompt", "input_size", "revision")
PIPELINE_OPTIONS = {
    IMAGE_CLASSIFICATION: ("top_k", "input_size", "revision"),
    OBJECT_DETECTION: ("threshold", "input_size", "revision"),
    ZERO_SHOT: ("labels", "hypothesis_template", "input_size", "revision"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})/")
_T = TypeVar("_T")


# --- the families ---------------------------------------------------------------------------------


class _HFModel:
    """What every family here shares: identity, device, input size, the warm-up."""

    def __init__(self, *, version: str, device: str, input_size: int | None) -> None:
        self._version = version
        self._device = device
        self._input_size = input_size

    @property
    def version(self) -> str:
        return self._version

    @property
    def untrained(self) -> bool:
        return False

    @property
    def device(self) -> str:
        return self._device

    @property
    def input_size(self) -> int | None:
        """The longer side the model looks at (from its image processor); None: full size."""
        return self._input_size

    def warm_up(self) -> None:
        """One throwaway pass, so that lazy initialisation (CUDA kernels, allocator) does not land
        on the first real job."""
        side = self._input_size or 640
        self.predict([np.full((side * 3 // 4, side, 3), 114, dtype=np.uint8)])

    def predict(self, images: Sequence[np.ndarray]) -> Sequence[Any]:
        raise NotImplementedError


class BlipCaptioner(_HFModel):
    """BLIP image captioning: one caption per image, batched through one ``generate`` call."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        version: str,
        device: str,
        input_size: int | None,
        max_new_tokens: int = 30,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        prompt: str | None = None,
    ) -> None:
        super().__init__(version=version, device=device, input_size=input_size)
        self._model = model
        self._processor = processor
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.num_beams = num_beams
        self.prompt = prompt

    def predict(self, images: Sequence[np.ndarray]) -> list[Captions]:
        if not images:
            return []
        import torch

        model = self._model
        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self._processor(images=_pil(images), text=text, return_tensors="pt")
        inputs = inputs.to(device=self._device, dtype=model.dtype)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                min_new_tokens=self.min_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                return_dict_in_generate=True,
                output_scores=True,
            )
            scores = _mean_log_probs(model, out, eos_token_id=model.config.text_config.sep_token_id)
        texts = self._processor.batch_decode(out.sequences, skip_special_tokens=True)
        return [
            Captions(width=image.shape[1], height=image.shape[0], items=(Caption(text=t.strip(), score=s),))
            for image, t, s in zip(images, texts, scores, strict=True)
        ]


def _mean_log_probs(model: Any, out: Any, *, eos_token_id: int) -> list[float]:
    """Each sequence's mean log-probability per generated token, its end-of-sequence token
    included, the padding after it not. Greedy scores are logits (normalised here); beam search's
    are log-probabilities already, tracked back through ``beam_indices``."""
    import torch

    scores = tuple(step.float() for step in out.scores)
    beam_indices = getattr(out, "beam_indices", None)
    transition = model.compute_transition_scores(
        out.sequences, scores, beam_indices, normalize_logits=beam_indices is None
    )
    generated = out.sequences[:, out.sequences.shape[1] - transition.shape[1] :]
    is_eos = generated == eos_token_id
    # Tokens up to and including the first end-of-sequence.
    keep = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) == 0
    if beam_indices is not None:
        keep &= beam_indices[:, : keep.shape[1]] >= 0
    counts = keep.sum(dim=1).clamp(min=1)
    means = (transition.masked_fill(~keep, 0.0).sum(dim=1) / counts).tolist()
    return [round(float(m), 4) for m in means]


class PipelineClassifier(_HFModel):
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
        results = self._pipe(_pil(images), **kwargs)
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


class HFDetector(_HFModel):
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

        processed = [self._processor(images=[image], return_tensors="pt") for image in _pil(images)]
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


# --- loading --------------------------------------------------------------------------------------


def load_blip(spec: ModelSpec, weights: str, *, device: str) -> BlipCaptioner:
    """A BLIP captioner (``BlipForConditionalGeneration`` + ``BlipProcessor``) from a local
    directory or a hub id (e.g. ``Salesforce/blip-image-captioning-base``).

    Options: ``max_new_tokens`` (30), ``min_new_tokens`` (0), ``num_beams`` (1), ``prompt`` (a text
    the caption continues, reported as part of it), ``input_size`` (override the processor's image size; 0: full size),
    ``revision`` (a hub branch, tag or commit).
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if spec.task not in (None, IMAGE_TO_TEXT):
        raise ConfigError(f"model {spec.name!r}: the blip family serves {IMAGE_TO_TEXT!r}, not {spec.task!r}.")
    _warn_unknown_options(spec, BLIP_OPTIONS)
    max_new_tokens = _positive_int(spec, "max_new_tokens", 30)
    # At least this many tokens before the end may come (benchmarks fix the length with it).
    min_new_tokens = min(int(spec.option("min_new_tokens", 0)), max_new_tokens)
    num_beams = _positive_int(spec, "num_beams", 1)
    prompt = spec.option("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"model {spec.name!r}: option 'prompt' must be a string, not {prompt!r}.")
    started = time.perf_counter()
    source = _Source.of(weights, spec.option("revision"))
    config = source.config()
    if config.model_type != "blip":
        raise ModelUnavailable(
            f"model weights {weights!r} hold a {config.model_type!r} model, not BLIP: the blip family "
            "loads BLIP captioning checkpoints (BlipForConditionalGeneration, e.g. "
            "Salesforce/blip-image-captioning-base)."
        )
    model = source.model(BlipForConditionalGeneration, device=device)
    processor = source.load("processor", lambda **kw: BlipProcessor.from_pretrained(source.location, **kw))
    captioner = BlipCaptioner(
        model,
        processor,
        version=source.version(),
        device=device,
        input_size=_input_size(spec, processor.image_processor),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        prompt=prompt or None,
    )
    captioner.warm_up()
    _log_loaded(captioner, IMAGE_TO_TEXT, started)
    return captioner


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
    source = _Source.of(weights, spec.option("revision"))
    config = source.config()
    task = spec.task or _task_of(config, weights)
    if task not in PIPELINE_TASKS:
        raise ConfigError(
            f"model {spec.name!r}: the transformers family serves {', '.join(PIPELINE_TASKS)}, not {task!r}."
        )
    _warn_unknown_options(spec, PIPELINE_OPTIONS[task])

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
            input_size=_input_size(spec, processor),
            threshold=threshold,
        )
    elif task == IMAGE_CLASSIFICATION:
        top_k = _positive_int(spec, "top_k", 5)
        model = source.model(AutoModelForImageClassification, device=device)
        processor = source.load("image processor", image_processor)
        pipe: Any = pipeline(IMAGE_CLASSIFICATION, model=model, image_processor=processor, device=torch.device(device))
        loaded = PipelineClassifier(
            pipe,
            task=task,
            version=source.version(),
            device=device,
            input_size=_input_size(spec, processor),
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
            input_size=_input_size(spec, processor),
            labels=labels,
            hypothesis_template=template,
        )
    loaded.warm_up()
    _log_loaded(loaded, task, started)
    return loaded


@dataclass(frozen=True)
class _Source:
    """Where weights come from: a local directory, or a hub id (with an optional revision)."""

    weights: str
    location: str  # what from_pretrained gets
    local: Path | None
    revision: str | None

    @classmethod
    def of(cls, weights: str, revision: Any = None) -> _Source:
        if revision is not None and not isinstance(revision, str):
            raise ConfigError(f"option 'revision' must be a string (a branch, tag or commit), not {revision!r}.")
        path = Path(weights).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelUnavailable(
                    f"model directory {weights!r} has no config.json: it is not a HuggingFace model "
                    "directory (one written by save_pretrained)."
                )
            return cls(weights=weights, location=str(path), local=path, revision=None)
        if path.exists():
            raise ModelUnavailable(
                f"model weights {weights!r} are a file; HuggingFace models load from a directory "
                "written by save_pretrained, or from a hub id."
            )
        if path.is_absolute() or weights.startswith((".", "~")) or not _HUB_ID.match(weights):
            raise ModelUnavailable(f"model directory {weights!r} does not exist.")
        return cls(weights=weights, location=weights, local=None, revision=revision)

    def load(self, what: str, load: Callable[..., _T]) -> _T:
        """``load(**hub_kwargs)``, its failure a ``ModelUnavailable`` naming the weights and the cause."""
        kwargs = {"revision": self.revision} if self.revision else {}
        try:
            return load(**kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, safetensors and JSON errors
            where = (
                f"model directory {self.weights!r}"
                if self.local
                else f"{self.weights!r} (no such local directory, and as a hub id it cannot be loaded here)"
            )
            raise ModelUnavailable(
                f"cannot load the {what} from {where}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc

    def config(self) -> Any:
        from transformers import AutoConfig

        return self.load("configuration", lambda **kw: AutoConfig.from_pretrained(self.location, **kw))

    def model(self, model_class: Any, *, device: str) -> Any:
        """The model in fp16 on a CUDA device, fp32 elsewhere, in eval mode; weights the checkpoint
        lacks (a checkpoint of another head: an ITM BLIP for a captioner, a CLIP for a classifier)
        are an error, not a randomly initialised layer."""
        import torch

        dtype = torch.float16 if device.startswith("cuda") else torch.float32

        def load(**kw: Any) -> Any:
            return model_class.from_pretrained(self.location, dtype=dtype, output_loading_info=True, **kw)

        model, info = self.load("model", load)
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            raise ModelUnavailable(
                f"model weights {self.weights!r} do not fit {type(model).__name__}: {len(missing)} of its "
                f"tensors are missing (e.g. {', '.join(missing[:3])}); they hold another kind of model."
            )
        return model.to(device).eval()

    def version(self) -> str:
        if self.local is not None:
            return f"{self.local.resolve().name}@{weights_digest(self.local)}"
        commit = _hub_commit(self.weights, self.revision)
        return f"{self.weights}@{commit}" if commit else self.weights


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub id resolved to, read from the local cache the load just used."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # best effort: the version is then the id alone
        logger.debug("no cached commit for %s", repo_id, exc_info=True)
        return None
    match = _SNAPSHOT.search(Path(cached).as_posix()) if isinstance(cached, str) else None
    return match.group(1) if match else None


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


# --- options --------------------------------------------------------------------------------------


def _input_size(spec: ModelSpec, image_processor: Any) -> int | None:
    """The longer side worth decoding: the option ``input_size`` if given (0: full size), else
    what the image processor resizes to. A fixed height x width (BLIP, ViT: the larger of the two)
    or a longest edge (DETR's 1333: the shortest edge goes to 800 unless that makes the longest
    larger, so decoding no larger than 1333 loses nothing). A shortest edge alone (CLIP, ConvNeXt)
    depends on the aspect ratio: None, full size."""
    if "input_size" in spec.options:
        value = spec.options["input_size"]
        if value is None or value == 0:
            return None
        return _positive_int(spec, "input_size", 0)
    if not getattr(image_processor, "do_resize", True):
        return None
    size = getattr(image_processor, "size", None)

    def side(name: str) -> int | None:
        value = size.get(name) if isinstance(size, Mapping) else getattr(size, name, None)
        return int(value) if isinstance(value, int | float) and value > 0 else None

    height, width = side("height"), side("width")
    if height and width:
        return max(height, width)
    return side("longest_edge")


def _positive_int(spec: ModelSpec, name: str, default: int) -> int:
    value = spec.option(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {spec.name!r}: option {name!r} must be a positive integer, not {value!r}.")
    return value


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


def _warn_unknown_options(spec: ModelSpec, known: Sequence[str]) -> None:
    unknown = sorted(set(spec.options) - set(known))
    if unknown:
        logger.warning(
            "model %s: ignoring options %s (the %s family reads %s)", spec.name, unknown, spec.family, list(known)
        )


# --- helpers --------------------------------------------------------------------------------------


def _pil(images: Sequence[np.ndarray]) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(image)) for image in images]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _log_loaded(model: _HFModel, task: str, started: float) -> None:
    logger.info(
        "model loaded: %s (%s) on %s in %.0f ms",
        model.version,
        task,
        model.device,
        (time.perf_counter() - started) * 1000,
    )


if TYPE_CHECKING:
    from visionq.models import Model

    def _is_a_model(blip: BlipCaptioner, classifier: PipelineClassifier, detector: HFDetector) -> list[Model]:
        return [blip, classifier, detector]  # mypy checks that each satisfies the protocol
