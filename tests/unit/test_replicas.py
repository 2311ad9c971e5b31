"""A model loaded several times (models/replicas.py), and how many ONNX Runtime sessions a model
gets (models/onnx_export.onnx_sessions)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.unit.fakes import FakeModel
from visionq.errors import ConfigError
from visionq.models import batches_in_flight
from visionq.models.onnx_export import MAX_SESSIONS, onnx_sessions
from visionq.models.replicas import Replicas
from visionq.models.spec import ModelSpec
from visionq.outputs import ModelOutput


def _image(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.uint8)


def test_calls_at_once_each_get_a_copy_of_their_own_and_their_own_answers() -> None:
    copies = [FakeModel(), FakeModel(), FakeModel()]
    model = Replicas(copies)
    gate = threading.Event()
    for copy in copies:
        copy.gate = gate
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(model.predict, [_image(v)]) for v in (1, 2, 3)]
        for copy in copies:
            assert copy.entered.wait(5)  # all three copies running at once
        gate.set()
        answers = [f.result(5) for f in futures]
    assert [a[0].items[0].label for a in answers] == ["v1", "v2", "v3"]  # type: ignore[attr-defined]
    assert [copy.most_at_once for copy in copies] == [1, 1, 1]
    assert model.batches_in_flight == batches_in_flight(model) == 3


def test_a_call_beyond_the_copies_waits_for_one_to_be_free() -> None:
    first, second = FakeModel(), FakeModel()
    model = Replicas([first, second])
    gate = threading.Event()
    first.gate = second.gate = gate
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(model.predict, [_image(v)]) for v in (1, 2, 3)]
        assert first.entered.wait(5) and second.entered.wait(5)
        assert not futures[2].done()
        gate.set()
        assert [f.result(5)[0].items[0].label for f in futures] == ["v1", "v2", "v3"]  # type: ignore[attr-defined]
    assert first.most_at_once == second.most_at_once == 1
    assert len(first.batches) + len(second.batches) == 3


class _Failing(FakeModel):
    def predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        raise RuntimeError("the session failed")


def test_a_copy_that_raises_is_free_again_for_the_next_batch() -> None:
    model = Replicas([_Failing()])
    for _ in range(3):  # with the copy not given back, the second call would wait for ever
        with pytest.raises(RuntimeError, match="the session failed"):
            model.predict([_image(1)])


def test_it_is_the_model_it_copies() -> None:
    copy = FakeModel(input_size=320)
    copy.task = "detect"  # type: ignore[attr-defined]
    model = Replicas([copy, FakeModel(input_size=320)])
    assert (model.version, model.untrained, model.device, model.input_size) == ("fake@1", False, "cpu", 320)
    assert model.task == "detect"
    with pytest.raises(ValueError):
        Replicas([])


def test_a_lone_batch_runs_on_the_solo_copy_and_overlapping_ones_on_the_others() -> None:
    solo, first, second = FakeModel(), FakeModel(), FakeModel()
    model = Replicas([first, second], solo=solo)
    assert model.batches_in_flight == 2  # the solo copy takes no batch of its own beyond these
    model.predict([_image(1)])
    assert (len(solo.batches), len(first.batches) + len(second.batches)) == (1, 0)

    gate = threading.Event()
    solo.gate = first.gate = second.gate = gate
    with ThreadPoolExecutor(2) as pool:
        lone = pool.submit(model.predict, [_image(2)])
        assert solo.entered.wait(5)  # nothing else ran: the solo copy took it
        overlapping = pool.submit(model.predict, [_image(3)])
        assert first.entered.wait(5)  # the solo copy is busy: the first free copy takes it
        gate.set()
        assert [lone.result(5)[0].items[0].label, overlapping.result(5)[0].items[0].label] == ["v2", "v3"]  # type: ignore[attr-defined]
    assert (len(solo.batches), len(first.batches) + len(second.batches)) == (2, 1)
    assert (solo.most_at_once, first.most_at_once, second.most_at_once) == (1, 1, 0)

    model.predict([_image(4)])  # alone again: the solo copy
    assert len(solo.batches) == 3


def test_the_solo_copy_is_not_held_by_a_call_that_raised() -> None:
    model = Replicas([FakeModel()], solo=_Failing())
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the session failed"):
            model.predict([_image(1)])  # alone each time: the solo copy, which raises


def _spec(**options: Any) -> ModelSpec:
    return ModelSpec(name="m", family="ultralytics", weights="m.pt", options=options)


@pytest.mark.parametrize(
    "cores, options, expected",
    [
        pytest.param(2, {}, (2, 1, 2), id="unset: a one-thread session per core, and a solo one"),
        pytest.param(1, {}, (1, 0, 0), id="one core: one session, as ONNX Runtime has it"),
        pytest.param(32, {}, (MAX_SESSIONS, 32 // MAX_SESSIONS, 32), id="past the cap: more threads each"),
        pytest.param(4, {"onnx_threads": 0}, (1, 0, 0), id="threads 0: one session on every core"),
        pytest.param(8, {"onnx_threads": 2}, (4, 2, 8), id="threads given: as many sessions as fit"),
        pytest.param(4, {"onnx_sessions": 1}, (1, 0, 0), id="one session: on every core"),
        pytest.param(2, {"onnx_sessions": 3}, (3, 1, 2), id="sessions given"),
        pytest.param(8, {"onnx_sessions": 2, "onnx_threads": 3}, (2, 3, 8), id="both given"),
        pytest.param(4, {"onnx_sessions": 2, "onnx_threads": 4}, (2, 4, 0), id="no solo: each on every core"),
        pytest.param(2, {"onnx_solo": False}, (2, 1, 0), id="no solo session"),
    ],
)
def test_sessions_and_threads(
    monkeypatch: pytest.MonkeyPatch, cores: int, options: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert onnx_sessions(_spec(**options)) == expected


@pytest.mark.parametrize(
    "options", [{"onnx_sessions": -1}, {"onnx_threads": "2"}, {"onnx_sessions": True}, {"onnx_solo": "yes"}]
)
def test_bad_session_options_are_a_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="must be"):
        onnx_sessions(_spec(**options))
