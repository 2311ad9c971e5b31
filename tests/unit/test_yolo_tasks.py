"""Every Ultralytics task through the one loader, each into its typed output (models built from
their yaml with a fixed seed: untrained, so these check shapes and plumbing, not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from visionq.errors import ModelUnavailable
from visionq.models.spec import ModelSpec
from visionq.models.yolo import load_ultralytics
from visionq.outputs import Classifications, OrientedBoxes, Poses, Segments, output_from_dict

IMAGES = [np.random.default_rng(i).integers(0, 255, (120, 200, 3), dtype=np.uint8) for i in range(2)]


def _load(yaml: str, **options: object) -> object:
    spec = ModelSpec(name=yaml, family="ultralytics", weights=yaml, options={"image_size": 160, **options})
    return load_ultralytics(spec, yaml, device="cpu")


@pytest.mark.parametrize(
    ("yaml", "kind"),
    [
        ("yolo11n-seg.yaml", Segments),
        ("yolo11n-cls.yaml", Classifications),
        ("yolo11n-pose.yaml", Poses),
        ("yolo11n-obb.yaml", OrientedBoxes),
    ],
)
def test_each_task_gives_its_output_kind(yaml: str, kind: type) -> None:
    model = _load(yaml, confidence=0.0, top_k=3)
    outputs = model.predict(IMAGES)  # type: ignore[attr-defined]
    assert [type(o) for o in outputs] == [kind, kind]
    output = outputs[0]
    assert (output.width, output.height) == (200, 120) and output.count > 0
    if kind is Classifications:
        scores = [c.score for c in output.items]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    # What the stores write and read back is the same output.
    assert output_from_dict(json.loads(json.dumps(output.as_dict()))) == output
    # Scaled to the original image (the model saw it at half size): every point doubles.
    big = output.scaled_to(400, 240)
    assert (big.width, big.height) == (400, 240)
    if kind is Segments:
        (x, y), (bx, by) = output.items[0].polygon[0], big.items[0].polygon[0]
        assert (bx, by) == pytest.approx((2 * x, 2 * y), abs=0.02)
    if kind is Poses:
        assert big.items[0].keypoints[0][:2] == pytest.approx(tuple(2 * v for v in output.items[0].keypoints[0][:2]))


def test_a_task_other_than_configured_is_refused_with_one_sentence() -> None:
    with pytest.raises(ModelUnavailable, match="are a classify model, not detect"):
        spec = ModelSpec(name="wrong", family="ultralytics", weights="yolo11n-cls.yaml", task="detect")
        load_ultralytics(spec, spec.weights, device="cpu")


def test_missing_weights_name_the_model_and_how_to_supply_them(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pt")
    with pytest.raises(ModelUnavailable, match=r"model 'people'.*not on disk"):
        load_ultralytics(ModelSpec(name="people", family="ultralytics", weights=missing), missing, device="cpu")


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        load_ultralytics(ModelSpec(name="broken", family="ultralytics", weights=str(corrupt)), str(corrupt))


class _Handed(Exception):
    pass


def test_ultralytics_is_handed_our_rgb_arrays_in_its_bgr_order() -> None:
    """Ultralytics reads a numpy image as OpenCV's BGR; ours are RGB. A contiguous image and a
    strided view (a transposed frame) both reach it as contiguous BGR, pixel for pixel."""
    from visionq.models.yolo import UltralyticsModel

    handed: list[np.ndarray] = []

    class Spy:
        task = "detect"

        def predict(self, images: list[np.ndarray], **kwargs: object) -> list[object]:
            handed.extend(images)
            raise _Handed

    rgb = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    transposed = np.swapaxes(rgb, 0, 1)  # a view: not contiguous
    model = UltralyticsModel(Spy(), version="v", untrained=True, device="cpu", image_size=64)
    with pytest.raises(_Handed):
        model.predict([rgb, transposed])
    for ours, theirs in zip([rgb, transposed], handed, strict=True):
        assert theirs.flags.c_contiguous and theirs.dtype == np.uint8
        assert np.array_equal(theirs, ours[:, :, ::-1])
