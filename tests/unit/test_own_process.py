"""A model in a process of its own: the same answers as in the worker's process; a model that
cannot load says why in one sentence; a model that crashes its process fails that batch only, and
the next batch gets a fresh process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from visionq.errors import ModelUnavailable, TransientError
from visionq.models.own_process import ModelProcess, ModelProcessDied, ModelRestartFailed
from visionq.models.registry import _load_family
from visionq.models.spec import ModelSpec

CRASH = 13  # an image whose first pixel's red value is this kills the model's process


def spec(**options: object) -> ModelSpec:
    return ModelSpec(name="null", family="synthetic", weights="null", options={"crash_on_value": CRASH, **options})


def image(value: int, height: int = 48, width: int = 64) -> np.ndarray:
    pixels = np.full((height, width, 3), 7, np.uint8)
    pixels[0, 0, 0] = value
    return pixels


@pytest.fixture
def model() -> Iterator[ModelProcess]:
    process = ModelProcess(spec(input_size=64), "null", None, batch_room=2)
    yield process
    process.close()


def test_answers_as_the_model_does_in_this_process(model: ModelProcess) -> None:
    here = _load_family(spec(input_size=64), "null", None)
    images = [image(1), image(2, 30, 40), image(3, 64, 20)]  # the third does not fit the room for 2: pickled
    assert list(model.predict(images)) == list(here.predict(images))
    assert (model.version, model.input_size, model.device) == (here.version, 64, "cpu")


def test_a_crash_fails_the_batch_and_a_fresh_process_serves_the_next(model: ModelProcess) -> None:
    with pytest.raises(ModelProcessDied, match=r"died \(exit code -6\) on a batch of 3"):
        model.predict([image(1), image(CRASH), image(2)])  # on the process started for it: no second try
    assert [len(model.predict([image(v)])) for v in (1, 2)] == [1, 1]  # one by one, the innocent ones pass
    with pytest.raises(ModelProcessDied):
        # It dies on a process that served batches before, so once more on a fresh one, and again.
        model.predict([image(CRASH)])
    assert len(model.predict([image(4)])) == 1
    assert model.starts == 4  # the first, one after the first death, two for the guilty image


def test_a_hung_model_process_is_killed_and_counts_as_dead() -> None:
    slow = ModelSpec(name="slow", family="synthetic", weights="delay", options={"delay_ms": 5000})
    model = ModelProcess(slow, "delay", None, answer_timeout=0.5)
    try:
        process = model._proc
        with pytest.raises(ModelProcessDied, match="gave no answer within 0 s"):
            model.predict([image(1)])
        assert process is not None and not process.is_alive()
    finally:
        model.close()


def test_a_model_that_cannot_be_started_again_is_a_transient_failure(
    model: ModelProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ModelProcessDied):
        model.predict([image(CRASH)])

    def cannot_start() -> None:
        raise ModelUnavailable("the GPU is out of memory")

    monkeypatch.setattr(model, "_start", cannot_start)
    with pytest.raises(ModelRestartFailed, match="could not be started again: the GPU is out of memory") as raised:
        model.predict([image(1)])
    assert isinstance(raised.value, TransientError)  # its messages are retried, not failed


def test_a_model_that_cannot_load_says_why() -> None:
    bad = ModelSpec(name="broken", family="synthetic", weights="nonsense")
    with pytest.raises(ModelUnavailable, match="synthetic weights must be one of"):
        ModelProcess(bad, "nonsense", None)


def test_closing_removes_the_shared_memory(model: ModelProcess) -> None:
    segment = model._segment.name if model._segment else ""
    assert segment and Path("/dev/shm", segment).exists()
    model.close()
    assert not Path("/dev/shm", segment).exists()
