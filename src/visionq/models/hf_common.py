"""What the HuggingFace families (``blip``, ``transformers``) share: the model base class, where
weights come from and how they load, option parsing, and logging.

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
from typing import Any, TypeVar

import numpy as np

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.digest import weights_digest
from visionq.models.spec import ModelSpec

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SNAPSHOT = re.compile(r"snapshots/([0-9a-f]{40})/")
_T = TypeVar("_T")


class HFModel:
    """What every HuggingFace family shares: identity, device, input size, the warm-up."""

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


# --- weights --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSource:
    """Where weights come from: a local directory, or a hub id (with an optional revision)."""

    weights: str
    location: str  # what from_pretrained gets
    local: Path | None
    revision: str | None

    @classmethod
    def of(cls, weights: str, revision: Any = None) -> WeightsSource:
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


# --- options --------------------------------------------------------------------------------------


def input_size_of(spec: ModelSpec, image_processor: Any) -> int | None:
    """The longer side worth decoding: the option ``input_size`` if given (0: full size), else
    what the image processor resizes to. A fixed height x width (BLIP, ViT: the larger of the two)
    or a longest edge (DETR's 1333: the shortest edge goes to 800 unless that makes the longest
    larger, so decoding no larger than 1333 loses nothing). A shortest edge alone (CLIP, ConvNeXt)
    depends on the aspect ratio: None, full size."""
    if "input_size" in spec.options:
        value = spec.options["input_size"]
        if value is None or value == 0:
            return None
        return positive_int(spec, "input_size", 0)
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


def positive_int(spec: ModelSpec, name: str, default: int) -> int:
    value = spec.option(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model {spec.name!r}: option {name!r} must be a positive integer, not {value!r}.")
    return value


def warn_unknown_options(spec: ModelSpec, known: Sequence[str]) -> None:
    unknown = sorted(set(spec.options) - set(known))
    if unknown:
        logger.warning(
            "model %s: ignoring options %s (the %s family reads %s)", spec.name, unknown, spec.family, list(known)
        )


# --- helpers --------------------------------------------------------------------------------------


def to_pil(images: Sequence[np.ndarray]) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(np.ascontiguousarray(image)) for image in images]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def log_loaded(model: HFModel, task: str, started: float) -> None:
    logger.info(
        "model loaded: %s (%s) on %s in %.0f ms",
        model.version,
        task,
        model.device,
        (time.perf_counter() - started) * 1000,
    )
