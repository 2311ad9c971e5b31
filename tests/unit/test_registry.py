"""The model registry: the file, the names, which model a key asks for, and loading with bad models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import FakeModel
from visionq.errors import ConfigError, ModelUnavailable
from visionq.models import Model
from visionq.models.registry import (
    ModelNotLoaded,
    Registry,
    UnknownModel,
    load_models,
    registry_from_settings,
)
from visionq.models.spec import ModelSpec

REGISTRY = """
default = "detect"

[models.detect]
weights = "yolo11n.pt"
confidence = 0.4

[models.caption]
family = "blip"
weights = "s3://models/blip/"
max_new_tokens = 12
"""


def _registry(tmp_path: Path, text: str = REGISTRY) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return Registry.from_toml(path)


def test_a_registry_file_names_models_with_their_family_weights_and_options(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.names == ["caption", "detect"] and registry.default == "detect"
    detect, caption = registry.spec("detect"), registry.spec("caption")
    assert (detect.family, detect.weights, detect.option("confidence")) == ("ultralytics", "yolo11n.pt", 0.4)
    assert (caption.family, caption.weights, caption.option("max_new_tokens")) == ("blip", "s3://models/blip/", 12)
    with pytest.raises(UnknownModel, match="no model named 'nosuch' \\(known: caption, detect\\)"):
        registry.spec("nosuch")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("default = 'x'\n", "no \\[models.<name>\\] entries"),
        ("[models.a]\nfamily = 'keras'\nweights = 'w'\n", "family 'keras'"),
        ("[models.a]\nfamily = 'blip'\n", "needs weights"),
        ("[models.Bad_Name]\nweights = 'w'\n", "model name 'Bad_Name'"),
        (f"[models.{'a' * 32}]\nweights = 'w'\n", "model name"),  # would look like a job id in a key
        ("default = 'b'\n[models.a]\nweights = 'w'\n", "default model 'b' is not among"),
        ("[models.a\n", "cannot read the model registry"),
    ],
)
def test_a_bad_registry_stops_with_what_is_wrong(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        _registry(tmp_path, text)


def test_direct_uploads_name_their_model_by_key(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.model_for_key("uploads/", "uploads/models/caption/a.jpg") == "caption"
    assert registry.model_for_key("uploads/", "uploads/models/nosuch/a.jpg") == "nosuch"  # fails unknown_model
    for key in ("uploads/cam1/a.jpg", "uploads/models/a.jpg", "uploads/models//a.jpg", "elsewhere/models/x/a"):
        assert registry.model_for_key("uploads/", key) == "detect"


def test_without_a_file_there_is_one_model_from_the_settings() -> None:
    class Settings:
        models_file = None
        model = "weights/best.pt"
        confidence = 0.5
        image_size = None

    registry = registry_from_settings(Settings())
    assert registry.names == ["default"]
    spec = registry.spec("default")
    assert (spec.weights, dict(spec.options)) == ("weights/best.pt", {"confidence": 0.5})


def _loader(broken: set[str]) -> Any:
    def load(spec: ModelSpec, weights: str, device: str | None) -> Model:
        if spec.name in broken:
            raise ModelUnavailable(f"model {spec.name!r}: the weights {weights!r} are corrupt")
        return FakeModel()

    return load


def test_each_model_is_told_the_largest_batch_the_worker_hands_it(tmp_path: Path) -> None:
    """A GPU's warm-up runs every batch size up to it (models/yolo.py, input_defaults)."""
    told: dict[str, int | None] = {}

    def load(spec: ModelSpec, weights: str, device: str | None) -> Model:
        told[spec.name] = spec.max_batch
        return FakeModel()

    load_models(_registry(tmp_path), loader=load, max_batch=16)
    assert told == {"detect": 16, "caption": 16}
    load_models(_registry(tmp_path), loader=load)
    assert told == {"detect": None, "caption": None}


def test_a_model_may_set_its_own_batch_which_wins_over_the_workers(tmp_path: Path) -> None:
    """A captioner whose call costs about the same at any size on a GPU wants larger batches than a
    detector beside it: its entry's ``max_batch`` is its own; the worker's is the others'."""
    registry = _registry(tmp_path, REGISTRY + "max_batch = 32\n")  # the caption entry's
    assert registry.spec("caption").max_batch == 32 and "max_batch" not in registry.spec("caption").options
    told: dict[str, int | None] = {}

    def load(spec: ModelSpec, weights: str, device: str | None) -> Model:
        told[spec.name] = spec.max_batch
        return FakeModel()

    loaded = load_models(registry, loader=load, max_batch=8)
    assert told == {"detect": 8, "caption": 32}
    assert loaded.own_batches == {"caption": 32}
    load_models(registry, loader=load)
    assert told == {"detect": None, "caption": 32}


@pytest.mark.parametrize("value", ["0", "-1", "'8'", "2.5", "true"])
def test_a_models_batch_must_be_a_positive_whole_number(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="model 'a': max_batch must be a whole number of at least 1"):
        _registry(tmp_path, f"[models.a]\nweights = 'w'\nmax_batch = {value}\n")


def test_a_worker_tells_its_models_the_batch_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.fakes import settings
    from visionq.models import registry

    told: list[int | None] = []

    def load(spec: ModelSpec, weights: str, device: str | None) -> Model:
        told.append(spec.max_batch)
        return FakeModel()

    monkeypatch.setattr(registry, "_load_family", load)
    registry.load_served_models(settings(max_batch=16, model="yolo11n.pt"))
    assert told == [16]


def test_a_worker_serving_one_model_refuses_to_start_when_it_cannot_load(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    with pytest.raises(ModelUnavailable, match="model 'caption': the weights 's3://models/blip/' are corrupt"):
        load_models(registry, names=["caption"], loader=_loader({"caption"}))


def test_a_worker_serving_several_keeps_the_others_and_says_why_one_is_unavailable(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    resolved: list[str] = []

    def resolve(weights: str) -> str:
        resolved.append(weights)
        return f"/cache/{weights.rsplit('/', 2)[-2] if weights.endswith('/') else weights}"

    models = load_models(registry, loader=_loader({"caption"}), resolve=resolve)
    assert list(models.models) == ["detect"] and "corrupt" in models.unavailable["caption"]
    assert sorted(resolved) == ["s3://models/blip/", "yolo11n.pt"]  # weights fetched before loading
    assert isinstance(models.get("detect"), FakeModel)
    with pytest.raises(ModelNotLoaded, match=r"model 'caption' is unavailable: .*corrupt"):
        models.get("caption")
    with pytest.raises(UnknownModel):
        models.get("nosuch")
