"""The HuggingFace families (``visionq.models.blip``, ``visionq.models.hf_pipeline``) on tiny models
built here: nothing is downloaded.

The models are random (seeded), so what they say means nothing; these tests check what the rest of
visionq relies on: one typed output per image in the given image's pixels, batches that give what
single images give, options honoured, versions that name the weights, and bad weights refused with
a ``ModelUnavailable`` that says why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tiny_models import (
    CLASS_LABELS,
    DETECTION_LABELS,
    build_tiny_blip,
    build_tiny_clip,
    build_tiny_detr,
    build_tiny_image_classifier,
)
from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.blip import BlipCaptioner, load_blip
from visionq.models.digest import weights_digest
from visionq.models.hf_pipeline import HFDetector, PipelineClassifier, load_hf_pipeline
from visionq.models.spec import ModelSpec
from visionq.outputs import Captions, Classifications, Detections

# Different sizes and aspect ratios: the processors resize, the outputs must not.
SIZES = ((48, 64), (120, 60), (33, 33))


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No hub. huggingface_hub reads HF_HUB_OFFLINE once, on import (maybe before this module's
    tests run), and transformers asks it at each load: the environment for anything started from
    here, the constant for this process."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-hf-models")
    return {
        "blip": build_tiny_blip(root),
        "classifier": build_tiny_image_classifier(root),
        "detr": build_tiny_detr(root),
        "clip": build_tiny_clip(root),
    }


def images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def spec(family: str, weights: Path | str, task: str | None = None, **options: Any) -> ModelSpec:
    return ModelSpec(name="m", family=family, weights=str(weights), task=task, options=options)


def blip(weights: Path | str, **options: Any) -> BlipCaptioner:
    return load_blip(spec("blip", weights, **options), str(weights), device="cpu")


def hf(weights: Path | str, task: str | None, **options: Any) -> PipelineClassifier | HFDetector:
    return load_hf_pipeline(spec("transformers", weights, task, **options), str(weights), device="cpu")


@pytest.fixture(scope="module")
def captioner(tiny: Mapping[str, Path]) -> BlipCaptioner:
    return blip(tiny["blip"])


# --- BLIP -----------------------------------------------------------------------------------------


def test_blip_captions_each_image_of_a_batch(captioner: BlipCaptioner, tiny: Mapping[str, Path]) -> None:
    batch = images()
    outputs = captioner.predict(batch)

    assert len(outputs) == len(batch)
    for image, output in zip(batch, outputs, strict=True):
        assert isinstance(output, Captions)
        assert (output.width, output.height) == (image.shape[1], image.shape[0])
        [caption] = output.items
        assert caption.text.strip()
        assert isinstance(caption.score, float)
        assert caption.score <= 0.0  # a mean log-probability
    assert captioner.predict([]) == []
    assert captioner.version == f"tiny-blip@{weights_digest(tiny['blip'])}"
    assert (captioner.untrained, captioner.device, captioner.input_size) == (False, "cpu", 32)


def test_blip_batch_gives_what_single_images_give(captioner: BlipCaptioner) -> None:
    # The black image's caption ends early (two words and the end token) while the others run to
    # max_new_tokens: its score must not count the padding that follows it in the batch.
    batch = [*images(seed=1), np.zeros((40, 40, 3), dtype=np.uint8)]
    together = captioner.predict(batch)
    alone = [captioner.predict([image])[0] for image in batch]

    assert [o.items[0].text for o in together] == [o.items[0].text for o in alone]
    for a, b in zip(together, alone, strict=True):
        assert a.items[0].score == pytest.approx(b.items[0].score, abs=1e-3)
    # The images differ, and so do the captions (else the check above would prove little).
    assert len({o.items[0].text for o in together}) > 1


def test_blip_generation_options(tiny: Mapping[str, Path]) -> None:
    # The tiny vocabulary is whole words, one token each.
    short = blip(tiny["blip"], max_new_tokens=3).predict(images())
    assert all(1 <= len(o.items[0].text.split()) <= 3 for o in short)

    prompted = blip(tiny["blip"], prompt="a photo of", max_new_tokens=4, num_beams=2).predict(images())
    for output in prompted:
        [caption] = output.items
        assert caption.text.startswith("a photo of")  # reported as generated, prompt included
        assert len(caption.text.split()) <= 3 + 4
        assert isinstance(caption.score, float)

    with pytest.raises(ConfigError, match="max_new_tokens"):
        blip(tiny["blip"], max_new_tokens=0)


# --- transformers pipelines -----------------------------------------------------------------------


def test_image_classifier_gives_top_k_classes_best_first(tiny: Mapping[str, Path]) -> None:
    model = hf(tiny["classifier"], "image-classification", top_k=3)
    batch = images()
    outputs = model.predict(batch)

    assert len(outputs) == len(batch)
    for image, output in zip(batch, outputs, strict=True):
        assert isinstance(output, Classifications)
        assert (output.width, output.height) == (image.shape[1], image.shape[0])
        assert len(output.items) == 3
        scores = [c.score for c in output.items]
        assert scores == sorted(scores, reverse=True)
        for c in output.items:
            assert c.class_id is not None and CLASS_LABELS[c.class_id] == c.label
    assert model.input_size == 32
    assert model.version == f"tiny-vit-classifier@{weights_digest(tiny['classifier'])}"
    # top_k beyond the classes there are: all of them.
    assert len(hf(tiny["classifier"], "image-classification", top_k=50).predict(batch[:1])[0].items) == len(
        CLASS_LABELS
    )


def test_detr_gives_boxes_inside_each_image(tiny: Mapping[str, Path]) -> None:
    model = hf(tiny["detr"], "object-detection", threshold=0.3)
    batch = images()
    outputs = model.predict(batch)

    assert len(outputs) == len(batch)
    assert any(o.items for o in outputs)
    for image, output in zip(batch, outputs, strict=True):
        assert isinstance(output, Detections)
        height, width = image.shape[:2]
        assert (output.width, output.height) == (width, height)
        confidences = [box.confidence for box in output.items]
        assert confidences == sorted(confidences, reverse=True)
        for box in output.items:
            assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
            assert DETECTION_LABELS[box.class_id] == box.label
            assert box.confidence >= 0.3
    # Each image gets the boxes it gets alone, whatever else is in its batch.
    twice = model.predict([batch[0], batch[1], batch[0]])
    for together, alone in ((outputs[1], model.predict(batch[1:2])[0]), (twice[2], outputs[0])):
        assert [b.label for b in together.items] == [b.label for b in alone.items]
        for a, b in zip(together.items, alone.items, strict=True):
            assert (a.x1, a.y1, a.x2, a.y2) == pytest.approx((b.x1, b.y1, b.x2, b.y2), abs=0.05)
    assert model.input_size == 96  # the processor's longest edge
    assert all(not o.items for o in hf(tiny["detr"], "object-detection", threshold=1.0).predict(batch))


def test_zero_shot_scores_exactly_the_given_labels(tiny: Mapping[str, Path]) -> None:
    labels = ["cat", "dog", "red car"]
    model = hf(tiny["clip"], "zero-shot-image-classification", labels=labels, hypothesis_template="a {}")
    batch = images()
    outputs = model.predict(batch)

    assert len(outputs) == len(batch)
    for image, output in zip(batch, outputs, strict=True):
        assert isinstance(output, Classifications)
        assert (output.width, output.height) == (image.shape[1], image.shape[0])
        assert sorted(c.label for c in output.items) == sorted(labels)
        assert all(c.class_id is None for c in output.items)
        scores = [c.score for c in output.items]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-3)
    assert model.input_size is None  # CLIP resizes the shorter side: no longer side to decode to


def test_task_comes_from_the_checkpoint_when_the_spec_names_none(tiny: Mapping[str, Path]) -> None:
    assert isinstance(hf(tiny["classifier"], None).predict(images()[:1])[0], Classifications)
    assert isinstance(hf(tiny["detr"], None).predict(images()[:1])[0], Detections)
    assert isinstance(hf(tiny["clip"], None, labels=["a", "b"]).predict(images()[:1])[0], Classifications)
    with pytest.raises(ConfigError, match="which task"):
        hf(tiny["blip"], None)


def test_input_size_option_overrides_the_processor(tiny: Mapping[str, Path]) -> None:
    assert hf(tiny["classifier"], "image-classification", input_size=0).input_size is None
    assert blip(tiny["blip"], input_size=640).input_size == 640


# --- bad weights, bad options ---------------------------------------------------------------------


def test_zero_shot_without_labels_is_refused(tiny: Mapping[str, Path]) -> None:
    with pytest.raises(ModelUnavailable, match="labels"):
        hf(tiny["clip"], "zero-shot-image-classification")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        blip(tmp_path / "nowhere")
    with pytest.raises(ModelUnavailable, match=r"no config\.json"):
        hf(tmp_path, "image-classification")


def test_hub_id_that_cannot_be_had_offline() -> None:
    with pytest.raises(ModelUnavailable, match=r"'visionq-tests/no-such-model'.*hub id"):
        hf("visionq-tests/no-such-model", "image-classification")


def test_wrong_family(tiny: Mapping[str, Path]) -> None:
    with pytest.raises(ModelUnavailable, match="'vit' model, not BLIP"):
        blip(tiny["classifier"])
    with pytest.raises(ModelUnavailable, match="AutoModelForObjectDetection"):
        hf(tiny["classifier"], "object-detection")
    # A CLIP checkpoint has no classification head: refused, not loaded with a random one.
    with pytest.raises(ModelUnavailable, match=r"classifier\.weight"):
        hf(tiny["clip"], "image-classification")


def test_corrupt_weights(tiny: Mapping[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny["classifier"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelUnavailable, match=r"cannot load the model from model directory .*broken"):
        hf(broken, "image-classification")


def test_bad_options(tiny: Mapping[str, Path]) -> None:
    with pytest.raises(ConfigError, match="top_k"):
        hf(tiny["classifier"], "image-classification", top_k=0)
    with pytest.raises(ConfigError, match="threshold"):
        hf(tiny["detr"], "object-detection", threshold=2)
    with pytest.raises(ConfigError, match="not 'depth-estimation'"):
        hf(tiny["classifier"], "depth-estimation")


def test_hub_id_is_versioned_by_its_commit(
    tiny: Mapping[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id loads from the local hub cache offline; its version names the commit it resolved to."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--visionq-tests--tiny-vit"
    shutil.copytree(tiny["classifier"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    model = hf("visionq-tests/tiny-vit", "image-classification")

    assert model.version == f"visionq-tests/tiny-vit@{commit}"
    assert len(model.predict(images())) == len(SIZES)
    pinned = hf("visionq-tests/tiny-vit", "image-classification", revision=commit)
    assert pinned.version == model.version


def test_tiny_builds_are_deterministic(tiny: Mapping[str, Path], tmp_path: Path) -> None:
    again = {"classifier": build_tiny_image_classifier(tmp_path), "detr": build_tiny_detr(tmp_path)}
    for name, directory in again.items():
        assert weights_digest(directory) == weights_digest(tiny[name])
