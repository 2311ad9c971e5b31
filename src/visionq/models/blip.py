"""BLIP captioning, the ``blip`` family (task ``image-to-text``): ``load_blip``. One ``generate``
call per batch; each image gets one ``Caption`` with the mean log-probability of its generated
tokens."""

from __future__ import annotations

import time
from collections.abc import Sequence
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
from visionq.outputs import Caption, Captions

IMAGE_TO_TEXT: Final = "image-to-text"

# The options the family reads (anything else in a spec's options is logged and ignored).
BLIP_OPTIONS = ("max_new_tokens", "min_new_tokens", "num_beams", "prompt", "input_size", "revision")


class BlipCaptioner(HFModel):
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
        inputs = self._processor(images=to_pil(images), text=text, return_tensors="pt")
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
    warn_unknown_options(spec, BLIP_OPTIONS)
    max_new_tokens = positive_int(spec, "max_new_tokens", 30)
    # At least this many tokens before the end may come (benchmarks fix the length with it).
    min_new_tokens = min(int(spec.option("min_new_tokens", 0)), max_new_tokens)
    num_beams = positive_int(spec, "num_beams", 1)
    prompt = spec.option("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"model {spec.name!r}: option 'prompt' must be a string, not {prompt!r}.")
    started = time.perf_counter()
    source = WeightsSource.of(weights, spec.option("revision"))
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
        input_size=input_size_of(spec, processor.image_processor),
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        num_beams=num_beams,
        prompt=prompt or None,
    )
    captioner.warm_up()
    log_loaded(captioner, IMAGE_TO_TEXT, started)
    return captioner


if TYPE_CHECKING:
    from visionq.models import Model

    def _is_a_model(blip: BlipCaptioner) -> Model:
        return blip  # mypy checks that it satisfies the protocol
