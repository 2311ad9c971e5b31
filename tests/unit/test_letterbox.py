"""The letterbox on the model's device (models/letterbox.py). No GPU here: the device is the CPU,
through the same torch calls a GPU runs. What must hold: the input made from tensors is the one
Ultralytics makes on the host from the same pixels (the same geometry, whatever its predictor
decides), the boxes come back in each image's own pixels, and JPEGs decoded and turned upright on
the device are the pixels the host path gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.unit.test_device_decode import inspected, mean_difference, photo
from visionq.images import ImageLimits, inspect_jpeg, upright_pixels
from visionq.models.device_decode import decode_frames, decode_frames_on_device
from visionq.models.letterbox import (
    Prepared,
    handed_over,
    letterbox_here,
    matches_ultralytics,
    to_device,
    upright_tensor,
)
from visionq.models.spec import ModelSpec
from visionq.models.yolo import UltralyticsModel, load_detector, load_ultralytics
from visionq.outputs import ModelOutput
from visionq.shapes import WEIGHTS_PATH


@pytest.fixture(scope="module")
def shapes() -> UltralyticsModel:
    model = load_detector(str(WEIGHTS_PATH), device="cpu", backend="torch")
    assert isinstance(model, UltralyticsModel) and model.input_size == 320
    return model


def tensors(images: list[np.ndarray]) -> list[Any]:
    return [to_device(image, "cpu") for image in images]


def levels_apart(a: Any, b: Any) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float(torch.max(torch.abs(a.float() - b.float()))) * 255


def assert_same_outputs(got: list[ModelOutput], want: list[ModelOutput], *, px: float, conf: float) -> None:
    for have, expected in zip(got, want, strict=True):
        assert (have.width, have.height) == (expected.width, expected.height)
        assert [item.class_id for item in have.items] == [item.class_id for item in expected.items]  # type: ignore[attr-defined]
        for a, b in zip(have.items, expected.items, strict=True):  # type: ignore[attr-defined]
            assert a.confidence == pytest.approx(b.confidence, abs=conf)
            assert _points(a) == pytest.approx(_points(b), abs=px)


def _points(item: Any) -> list[float]:
    """Every coordinate an output item gives, in the image's pixels."""
    if hasattr(item, "corners"):  # an oriented box
        return [item.cx, item.cy, item.width, item.height, *(v for xy in item.corners for v in xy)]
    box = item.box if hasattr(item, "box") else item
    points = [box.x1, box.y1, box.x2, box.y2]
    points += [v for x, y, _ in getattr(item, "keypoints", ()) for v in (x, y)]
    return points + [v for xy in getattr(item, "polygon", ()) for v in xy]


# --- the input: Ultralytics' own, from tensors ---------------------------------------------------


def test_a_batch_at_the_models_size_is_ultralytics_input_exactly(
    shapes: UltralyticsModel, draw_scene: Callable[..., Any]
) -> None:
    # One shape: Ultralytics pads to the nearest multiple of the stride (a .pt model).
    images = [np.asarray(draw_scene(seed, (320, 240))[0]) for seed in (1, 2, 3)]
    prepared = shapes.prepare(tensors(images))
    want = shapes.reference_input(images)
    assert tuple(prepared.pixels.shape) == (3, 3, 256, 320)
    assert levels_apart(prepared.pixels, want) < 1e-3
    assert prepared.shapes == ((240, 320),) * 3


def test_a_lone_image_needing_no_pad_is_handed_over_contiguous(shapes: UltralyticsModel) -> None:
    # 320 x 256 into the 320 model: nothing to pad or resize, so only the conversion copies it.
    image = np.random.default_rng(2).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    prepared = shapes.prepare(tensors([image]))
    assert tuple(prepared.pixels.shape) == (1, 3, 256, 320) and prepared.pixels.is_contiguous()
    assert levels_apart(prepared.pixels, shapes.reference_input([image])) < 1e-3


def test_a_batch_of_mixed_shapes_is_padded_square_as_ultralytics_pads_it(
    shapes: UltralyticsModel, draw_scene: Callable[..., Any]
) -> None:
    images = [np.asarray(draw_scene(4, (320, 240))[0]), np.asarray(draw_scene(5, (200, 320))[0])]
    prepared = shapes.prepare(tensors(images))
    want = shapes.reference_input(images)
    assert tuple(prepared.pixels.shape) == (2, 3, 320, 320)
    assert levels_apart(prepared.pixels, want) < 1e-3


def test_an_image_to_resize_differs_by_a_level_at_most(
    shapes: UltralyticsModel, draw_scene: Callable[..., Any]
) -> None:
    # Larger and smaller than the model's size: bilinear on the device, fixed-point OpenCV on the host.
    images = [np.asarray(draw_scene(6, (640, 480))[0]), np.asarray(draw_scene(7, (131, 97))[0])]
    for image in images:
        prepared = shapes.prepare(tensors([image]))
        assert levels_apart(prepared.pixels, shapes.reference_input([image])) <= 1.0 + 1e-3


# --- the outputs ---------------------------------------------------------------------------------


def test_boxes_from_a_prepared_batch_are_the_hosts_and_land_on_the_shapes(
    shapes: UltralyticsModel, draw_scene: Callable[..., Any]
) -> None:
    scenes = [draw_scene(seed, size) for seed, size in ((11, (640, 480)), (12, (320, 240)), (13, (300, 420)))]
    images = [np.asarray(image) for image, _ in scenes]
    want = shapes.predict(images)
    got = shapes.predict_prepared(shapes.prepare(tensors(images)))
    assert_same_outputs(got, want, px=0.5, conf=0.01)
    for output, (_, truth) in zip(got, scenes, strict=True):  # in each image's own pixels
        assert len(output.items) == len(truth) > 0  # type: ignore[attr-defined]
        for cls, x1, _y1, _x2, y2 in truth:
            assert any(
                b.class_id == cls and abs(b.x1 - x1) < 8 and abs(b.y2 - y2) < 8
                for b in output.items  # type: ignore[attr-defined]
            ), (truth, output)


def test_the_predictor_is_itself_again_after_a_prepared_batch(shapes: UltralyticsModel) -> None:
    predictor = shapes._model.predictor
    image = np.full((240, 320, 3), 200, np.uint8)
    shapes.predict_prepared(shapes.prepare(tensors([image])))
    assert "preprocess" not in vars(predictor)
    broken = Prepared(pixels=torch.zeros(1, 3, 7, 7), shapes=((240, 320),))  # not a size the network takes
    with pytest.raises(Exception):  # noqa: B017 - whatever the network raises
        shapes.predict_prepared(broken)
    assert "preprocess" not in vars(predictor)
    assert len(shapes.predict([image])) == 1  # and the host path still works


@pytest.mark.parametrize("yaml", ["yolo11n-seg.yaml", "yolo11n-pose.yaml", "yolo11n-obb.yaml"])
@pytest.mark.parametrize("heights", [(120, 120), (120, 90)], ids=["one shape", "mixed shapes"])
def test_every_letterboxing_task_gives_the_hosts_outputs(yaml: str, heights: tuple[int, int]) -> None:
    spec = ModelSpec(name=yaml, family="ultralytics", weights=yaml, options={"image_size": 160, "confidence": 0.0})
    model = load_ultralytics(spec, yaml, device="cpu")
    assert isinstance(model, UltralyticsModel) and model.letterboxes
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (height, 160, 3), dtype=np.uint8) for height in heights]
    want = model.predict(images)
    got = model.predict_prepared(model.prepare(tensors(images)))
    assert sum(len(o.items) for o in want) > 0  # type: ignore[attr-defined]
    assert_same_outputs(got, want, px=0.05, conf=1e-4)  # boxes, and keypoints, polygons, corners
    assert len(_points(want[0].items[0])) > 4 + 4 * yaml.endswith("obb.yaml")  # type: ignore[attr-defined]


def test_an_empty_batch_gives_no_outputs(shapes: UltralyticsModel) -> None:
    assert shapes.predict_prepared(shapes.prepare([])) == []


def test_a_predictor_replaced_during_a_prepared_batch_is_an_error_not_empty_answers(
    shapes: UltralyticsModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ultralytics builds a new predictor when a setting changes; that one would letterbox the
    stand-ins (no pixels) and find nothing."""
    batch = shapes.prepare(tensors([np.full((240, 320, 3), 200, np.uint8)]))
    original = shapes._model.predictor
    monkeypatch.setattr(shapes._model, "predictor", original)  # put back after the test
    replacing = shapes._predict

    def predict_on_a_new_predictor(source: list[np.ndarray]) -> Any:
        shapes._model.predictor = type(original)(overrides={"imgsz": 320})
        return replacing(source)

    monkeypatch.setattr(shapes, "_predict", predict_on_a_new_predictor)
    with pytest.raises(RuntimeError, match="replaced its predictor"):
        shapes.predict_prepared(batch)


def test_a_predictor_that_makes_its_own_input_is_left_to_do_so(
    shapes: UltralyticsModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = shapes._model.predictor
    assert shapes.letterboxes

    class OwnInput(type(predictor)):  # type: ignore[misc]
        def preprocess(self, im: Any) -> Any:
            return super().preprocess(im)

    monkeypatch.setattr(predictor, "__class__", OwnInput)
    assert not shapes.letterboxes and not letterbox_here(shapes, "on")


def test_a_classifier_does_not_letterbox() -> None:
    spec = ModelSpec(name="cls", family="ultralytics", weights="yolo11n-cls.yaml", options={"image_size": 64})
    model = load_ultralytics(spec, "yolo11n-cls.yaml", device="cpu")
    assert not model.letterboxes  # type: ignore[union-attr]
    assert not letterbox_here(model, "on")


# --- when it is used -----------------------------------------------------------------------------


def test_where_the_input_is_made(shapes: UltralyticsModel, monkeypatch: pytest.MonkeyPatch) -> None:
    assert letterbox_here(shapes, "on")
    assert not letterbox_here(shapes, "off")
    assert not letterbox_here(shapes, "auto")  # on a CPU: Ultralytics' host path
    assert matches_ultralytics(shapes)
    # On a GPU "auto" takes it once the check passes, and not when it fails.
    on_gpu = _Pretending(shapes, "cuda:0")
    monkeypatch.setattr("visionq.models.letterbox.to_device", lambda array, device: to_device(array, "cpu"))
    assert letterbox_here(on_gpu, "auto")
    monkeypatch.setattr(on_gpu, "prepare", lambda images: _brighter(shapes.prepare(images)))
    assert not matches_ultralytics(on_gpu) and not letterbox_here(on_gpu, "auto")
    monkeypatch.setattr(on_gpu, "prepare", lambda images: (_ for _ in ()).throw(RuntimeError("no kernel")))
    assert not letterbox_here(on_gpu, "auto")


class _Pretending:
    """``model`` that says it runs on ``device`` (its tensors stay on the CPU)."""

    def __init__(self, model: UltralyticsModel, device: str) -> None:
        self._inner, self.device = model, device
        self.letterboxes, self.input_size = model.letterboxes, model.input_size
        self.prepare, self.reference_input = model.prepare, model.reference_input


def _brighter(batch: Prepared) -> Prepared:
    return Prepared(pixels=(batch.pixels + 3 / 255).clamp(0, 1), shapes=batch.shapes)


def test_the_model_process_prepares_any_batch_it_is_sent(shapes: UltralyticsModel) -> None:
    """``own_process._decoded`` with a preparer, as the process's second thread runs it: a batch of
    a JPEG and pixels, and an empty one; what it hands over the model answers."""
    from types import SimpleNamespace

    from tests.unit.test_images import encode
    from visionq.models import own_process
    from visionq.shapes import draw_scene

    scene, truth = draw_scene(41, (640, 480))
    jpeg = inspect_jpeg(encode(scene, "JPEG", quality=95), ImageLimits(), max_side=320)
    pixels = np.full((100, 120, 3), 90, np.uint8)
    decoding = SimpleNamespace(value=0)
    kind, batch = own_process._decoded([jpeg, pixels], "cpu", 1, decoding, shapes.prepare)
    assert kind == "prepared" and batch.shapes == ((240, 320), (100, 120)) and decoding.value == 0
    found = shapes.predict_prepared(batch)[0]
    assert len(found.items) == len(truth)  # type: ignore[attr-defined]
    assert own_process._decoded([], "cpu", 2, decoding, shapes.prepare) == ("prepared", Prepared(None, ()))
    assert shapes.predict_prepared(handed_over(Prepared(None, ()))) == []


# --- pixels on the device ------------------------------------------------------------------------


@pytest.mark.parametrize("method", [None, *Image.Transpose])
def test_upright_on_the_device_is_upright_on_the_host(method: Image.Transpose | None) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    got = upright_tensor(to_device(rgb, "cpu"), method).permute(1, 2, 0).numpy()
    assert np.array_equal(got, upright_pixels(rgb, method))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_jpegs_decoded_to_tensors_are_the_arrays_decode_frames_gives(orientation: int) -> None:
    stored = Image.open(__import__("io").BytesIO(photo(1000, 700)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = __import__("io").BytesIO()
    stored.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    jpeg = inspected(buffer.getvalue(), max_side=320)
    pixels = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    want = decode_frames([jpeg, pixels], "cpu")
    got = [t.permute(1, 2, 0).numpy() for t in decode_frames_on_device([jpeg, pixels], "cpu")]
    assert got[0].shape == want[0].shape and mean_difference(got[0], want[0]) == 0
    assert np.array_equal(got[1], pixels)


def test_a_jpeg_the_device_refuses_is_the_cpus_to_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = inspect_jpeg(photo(800, 600), ImageLimits(), max_side=64)
    assert jpeg is not None

    def refuses(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the device cannot decode this")

    monkeypatch.setattr("torchvision.io.decode_jpeg", refuses)
    (got,) = decode_frames_on_device([jpeg], "cpu")
    assert tuple(got.shape) == (3, 48, 64) and got.dtype == torch.uint8
