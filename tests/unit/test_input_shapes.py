"""The input shapes an Ultralytics model meets (models/yolo.py). On an H200 the first call at each
new input shape (batch size x letterboxed size) took about 1.2 s (bench/RESULTS.md, run 23), and a
worker batching 1-8 images of any aspect meets many. ``square_input`` letterboxes every batch to a
square, so a batch's size alone makes its shape; ``warm_batches`` runs each batch size once at
load. Both default on for a GPU and off for a CPU (where a square costs compute: a 4:3 frame is
padded by a third). No GPU here: the options are checked on the CPU, and the defaults by device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from visionq.models.letterbox import to_device
from visionq.models.spec import ModelSpec
from visionq.models.yolo import UltralyticsModel, input_defaults, load_ultralytics
from visionq.shapes import WEIGHTS_PATH


def shapes_model(**options: Any) -> UltralyticsModel:
    options = {"backend": "torch", **options}  # the CPU's default is ONNX Runtime
    spec = ModelSpec(name="shapes", family="ultralytics", weights=str(WEIGHTS_PATH), options=options)
    model = load_ultralytics(spec, str(WEIGHTS_PATH), device="cpu")
    assert isinstance(model, UltralyticsModel) and model.input_size == 320
    return model


def test_square_input_letterboxes_a_batch_of_one_shape_to_a_square(draw_scene: Callable[..., Any]) -> None:
    images = [np.asarray(draw_scene(seed, (320, 240))[0]) for seed in (11, 12)]
    fit, square = shapes_model(), shapes_model(square_input=True)
    assert tuple(fit.reference_input(images).shape) == (2, 3, 256, 320)  # the nearest stride multiple
    assert tuple(square.reference_input(images).shape) == (2, 3, 320, 320)
    # The input made on the device follows the same setting.
    assert tuple(square.prepare([to_device(image, "cpu") for image in images]).pixels.shape) == (2, 3, 320, 320)
    # The same shapes are found, in each image's own pixels, whichever the padding.
    for got, want in zip(square.predict(images), fit.predict(images), strict=True):
        assert (got.width, got.height) == (want.width, want.height) == (320, 240)
        assert [b.class_id for b in got.items] == [b.class_id for b in want.items]  # type: ignore[attr-defined]
        for a, b in zip(got.items, want.items, strict=True):  # type: ignore[attr-defined]
            assert [a.x1, a.y1, a.x2, a.y2] == pytest.approx([b.x1, b.y1, b.x2, b.y2], abs=3)


def test_warm_batches_runs_each_batch_size_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = UltralyticsModel._predict

    def counting(self: UltralyticsModel, source: list[np.ndarray]) -> Any:
        sizes.append(len(source))
        return real(self, source)

    monkeypatch.setattr(UltralyticsModel, "_predict", counting)
    shapes_model(warm_batches=3)
    assert sizes == [1, 2, 3]
    sizes.clear()
    shapes_model()  # a CPU's default: the one pass that builds the predictor
    assert sizes == [1]


def test_a_gpu_gets_square_input_and_eight_warm_batch_sizes_by_default() -> None:
    assert input_defaults("cuda:0") == {"square_input": True, "warm_batches": 8}
    assert input_defaults("cpu") == {"square_input": False, "warm_batches": 1}


def test_a_gpu_warms_every_batch_size_the_worker_may_hand_the_model() -> None:
    """VISIONQ_MAX_BATCH=32 on a GPU: batches of 9-32 would each stall on their first call."""
    assert input_defaults("cuda:0", 32) == {"square_input": True, "warm_batches": 32}
    assert input_defaults("cpu", 32) == {"square_input": False, "warm_batches": 1}


def test_the_loader_takes_its_defaults_for_the_batch_the_worker_hands_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import visionq.models.yolo as yolo

    asked: list[tuple[str, int | None]] = []

    def recording(device: str, max_batch: int | None = None) -> dict[str, Any]:
        asked.append((device, max_batch))
        return input_defaults(device, max_batch)

    monkeypatch.setattr(yolo, "input_defaults", recording)
    spec = ModelSpec(
        name="shapes", family="ultralytics", weights=str(WEIGHTS_PATH), options={"backend": "torch"}, max_batch=16
    )
    load_ultralytics(spec, str(WEIGHTS_PATH), device="cpu")
    assert asked == [("cpu", 16)]
