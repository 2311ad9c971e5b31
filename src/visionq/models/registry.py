"""The registry of named models: which models exist, how each is loaded, which one a job gets.

One TOML file (``VISIONQ_MODELS_FILE``) names them; every key of an entry other than ``family``,
``weights``, ``task`` and ``max_batch`` (the largest batch the model is handed, its own instead of
the worker's ``VISIONQ_MAX_BATCH``) is an option of that family::

    default = "detect"

    [models.detect]
    family = "ultralytics"          # ultralytics | blip | transformers
    weights = "yolo11n.pt"          # a path, s3://bucket/key (or .../prefix/ for a directory), a hub name
    confidence = 0.25

    [models.caption]
    family = "blip"
    weights = "s3://my-models/blip-base/"
    max_new_tokens = 30
    num_beams = 3
    max_batch = 32                  # its own batch size (a GPU's generation costs about the same at any)

Without a file there is one model, ``default``, an Ultralytics model from ``VISIONQ_MODEL``.

Which model a job gets: the one named when it was created through the API (``"model"`` in
``POST /v1/jobs``), or, for an object put into the bucket directly, the one its key names
(``<upload prefix>models/<name>/...``), else the registry's default (see ``model_for_key``).
"""

from __future__ import annotations

import logging
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from visionq import metrics
from visionq.errors import ConfigError, ModelUnavailable, PermanentError
from visionq.jobs import MODELS_SEGMENT
from visionq.models import Model, pick_device
from visionq.models.spec import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "default"
FAMILIES = ("ultralytics", "blip", "transformers", "synthetic")
# Names share the key space with the API's job ids (32 hex digits), so they must not look like one.
_NAME = re.compile(r"^(?![0-9a-f]{32}$)[a-z0-9][a-z0-9_.-]{0,62}$")


class UnknownModel(PermanentError):
    code = "unknown_model"


class ModelNotLoaded(PermanentError):
    """The model is registered but could not be loaded in this worker."""

    code = "model_unavailable"


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelSpec]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.models:
            raise ConfigError(f"the default model {self.default!r} is not among the models ({', '.join(self.models)})")

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"no model named {name!r} (known: {', '.join(self.names)})") from None

    def model_for_key(self, upload_prefix: str, key: str) -> str:
        """The model an object put into the bucket directly asks for by its key: ``<prefix>models/
        <name>/...`` names one (unknown names included: the job then fails ``unknown_model``)."""
        rest = key[len(upload_prefix) :] if key.startswith(upload_prefix) else ""
        if rest.startswith(MODELS_SEGMENT):
            name, slash, _ = rest[len(MODELS_SEGMENT) :].partition("/")
            if slash and name:
                return name
        return self.default

    @classmethod
    def single(cls, weights: str, **options: Any) -> Registry:
        spec = ModelSpec(name=DEFAULT_MODEL_NAME, family="ultralytics", weights=weights, options=options)
        return cls(models={spec.name: spec}, default=spec.name)

    @classmethod
    def from_toml(cls, path: Path) -> Registry:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the model registry {path}: {exc}") from exc
        entries = data.get("models")
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(f"the model registry {path} has no [models.<name>] entries")
        models = {name: _spec(name, entry, path) for name, entry in entries.items()}
        return cls(models=models, default=str(data.get("default") or next(iter(models))))


def _spec(name: str, entry: Any, path: Path) -> ModelSpec:
    if not _NAME.match(name):
        raise ConfigError(f"{path}: model name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    if not isinstance(entry, dict) or "weights" not in entry:
        raise ConfigError(f'{path}: model {name!r} needs weights = "..."')
    family = str(entry.get("family", "ultralytics"))
    if family not in FAMILIES:
        raise ConfigError(f"{path}: model {name!r} has family {family!r}; one of {', '.join(FAMILIES)}")
    options = {k: v for k, v in entry.items() if k not in ("family", "weights", "task", "max_batch")}
    task = entry.get("task")
    max_batch = entry.get("max_batch")
    if max_batch is not None and (type(max_batch) is not int or max_batch < 1):
        raise ConfigError(f"{path}: model {name!r}: max_batch must be a whole number of at least 1, not {max_batch!r}")
    return ModelSpec(
        name=name,
        family=family,
        weights=str(entry["weights"]),
        task=str(task) if task else None,
        options=MappingProxyType(options),
        max_batch=max_batch,
    )


def registry_from_settings(settings: Any) -> Registry:
    """The registry the settings name (``models_file``), else the one model ``settings.model``."""
    if settings.models_file is not None:
        return Registry.from_toml(Path(settings.models_file))
    options = {
        name: getattr(settings, name)
        for name in ("confidence", "image_size", "backend", "onnx_sessions")
        if getattr(settings, name, None) is not None
    }
    return Registry.single(settings.model, **options)


# --- loading ------------------------------------------------------------------------------------

# How a family is loaded: (spec, local weights, requested device) -> the loaded model.
Loader = Callable[[ModelSpec, str, str | None], Model]


def _load_family(spec: ModelSpec, weights: str, requested_device: str | None) -> Model:
    if spec.family == "synthetic":  # no weights, no torch: the worker's own cost (bench/ceiling.py)
        from visionq.models.synthetic import load_synthetic

        return load_synthetic(spec)
    device = pick_device(requested_device)
    # Imported on use: transformers alone takes seconds to import, and a worker may not need it.
    if spec.family == "ultralytics":
        from visionq.models.yolo import load_ultralytics

        return load_ultralytics(spec, weights, device=device)
    if spec.family == "blip":
        from visionq.models.blip import load_blip

        return load_blip(spec, weights, device=device)
    from visionq.models.hf_pipeline import load_hf_pipeline

    return load_hf_pipeline(spec, weights, device=device)


@dataclass
class LoadedModels:
    """The models one worker serves, by name; a model that failed to load keeps its error, so its
    jobs fail ``model_unavailable`` while the others are served."""

    registry: Registry
    models: dict[str, Model] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Model:
        """The loaded model ``name``; UnknownModel or ModelNotLoaded (both permanent) otherwise."""
        if name in self.models:
            return self.models[name]
        spec = self.registry.spec(name)  # raises UnknownModel
        reason = self.unavailable.get(name, "this worker does not serve it")
        raise ModelNotLoaded(f"model {spec.name!r} is unavailable: {reason}")

    @property
    def device(self) -> str:
        return next(iter(self.models.values())).device if self.models else "cpu"

    def close(self) -> None:
        """Stop what the models hold outside this process (a model's own process), every one even
        if one fails to stop."""
        for name, model in self.models.items():
            close = getattr(model, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("model %s did not stop cleanly", name)

    @property
    def own_batches(self) -> dict[str, int]:
        """The served models whose registry entry sets their own ``max_batch``: name -> that batch
        (the others take the worker's, ``VISIONQ_MAX_BATCH`` or the device's default)."""
        sizes = {name: self.registry.spec(name).max_batch for name in self.models}
        return {name: size for name, size in sizes.items() if size is not None}

    @property
    def largest_input_size(self) -> int | None:
        """The longest side any served model decodes images to; None when none has a size."""
        return max((m.input_size for m in self.models.values() if m.input_size), default=None)

    @classmethod
    def of(cls, model: Model) -> LoadedModels:
        """One model already loaded, as "default" (tests, benchmarks)."""
        return cls.named({DEFAULT_MODEL_NAME: model})

    @classmethod
    def named(cls, models: Mapping[str, Model], *, unavailable: Mapping[str, str] | None = None) -> LoadedModels:
        """Models already loaded, by name (the first is the default); ``unavailable``: name -> why."""
        names = [*models, *(unavailable or {})]
        specs = {name: ModelSpec(name=name, family="ultralytics", weights=name) for name in names}
        return cls(
            registry=Registry(models=specs, default=names[0]),
            models=dict(models),
            unavailable=dict(unavailable or {}),
        )


def load_models(
    registry: Registry,
    *,
    names: Iterable[str] | None = None,
    device: str | None = None,
    resolve: Callable[[str], str] = lambda weights: weights,
    loader: Loader = _load_family,
    max_batch: int | None = None,
) -> LoadedModels:
    """Load ``names`` (default: every registered model) once each, each told the largest batch it
    will be handed: its registry entry's own, else ``max_batch`` (None: its device's default). A
    worker serving one model refuses to start when it cannot load it (ModelUnavailable, one
    sentence); a worker serving several keeps the others and records why that one is unavailable."""
    wanted = list(names) if names is not None else registry.names
    loaded = LoadedModels(registry=registry)
    for name in wanted:
        spec = registry.spec(name)
        spec = replace(spec, max_batch=spec.max_batch or max_batch)
        try:
            started = time.perf_counter()
            loaded.models[name] = loader(spec, resolve(spec.weights), device)
            metrics.WORKER.model_loaded(name, time.perf_counter() - started)
        except ModelUnavailable as exc:
            if len(wanted) == 1:
                raise
            logger.error("model %s is unavailable; its jobs will fail: %s", name, exc.message)
            loaded.unavailable[name] = exc.message
    return loaded


def load_served_models(settings: Any) -> LoadedModels:
    """What a worker serves, by its settings: the registry's models (or those in ``serve_models``),
    their weights fetched from where they are (``models/weights.py``)."""
    registry = registry_from_settings(settings)
    names = [n.strip() for n in settings.serve_models.split(",") if n.strip()] if settings.serve_models else None
    loader: Loader = _load_family
    if getattr(settings, "model_process_wanted", False):
        from visionq.models.own_process import process_loader

        cpus = settings.model_cpu_split
        loader = process_loader(
            torch_threads=settings.torch_threads,
            cpus=cpus[0] if cpus else None,
            answer_timeout=settings.job_deadline_seconds,
            device_decode=settings.device_decode != "off",
            device_letterbox=settings.device_letterbox,
        )
    resolve = _weights_resolver(settings)
    return load_models(
        registry, names=names, device=settings.device, resolve=resolve, loader=loader, max_batch=settings.max_batch
    )


def _weights_resolver(settings: Any) -> Callable[[str], str]:
    from visionq.aws import boto3_client
    from visionq.models.weights import default_cache_dir, resolve_weights

    cache_dir = settings.weights_cache or default_cache_dir()
    s3: list[Any] = []  # made on first use: only s3:// weights need a client

    def resolve(weights: str) -> str:
        if weights.startswith("s3://") and not s3:
            s3.append(boto3_client("s3", settings))
        return resolve_weights(weights, cache_dir=cache_dir, s3_client=s3[0] if s3 else None)

    return resolve
