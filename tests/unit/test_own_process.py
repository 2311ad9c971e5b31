"""A model in a process of its own: the same answers as in the worker's process; a model that
cannot load says why in one sentence; a model that crashes its process fails that batch only, and
the next batch gets a fresh process."""

from __future__ import annotations

import dataclasses
import io
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from visionq.errors import ImageRejected, ModelUnavailable, TransientError
from visionq.images import ImageLimits, inspect_jpeg
from visionq.models import decodes_on_device, own_process
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


@pytest.mark.parametrize("where", ["_frames", "send"])
def test_a_batch_that_could_not_be_sent_holds_up_none_after_it(
    model: ModelProcess, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Memory running out (or any error) while a batch is put in the pipe: that batch fails, and the
    next is answered (it waited for ever for an answer to a batch never sent)."""
    assert len(model.predict([image(1)])) == 1
    failed = {"once": False}

    def fails_once(original: Any) -> Any:
        def call(*args: Any) -> Any:
            if not failed["once"]:
                failed["once"] = True
                raise MemoryError
            return original(*args)

        return call

    if where == "_frames":
        monkeypatch.setattr(model, "_frames", fails_once(model._frames))
    else:
        assert model._conn is not None
        monkeypatch.setattr(model._conn, "send", fails_once(model._conn.send))
    with pytest.raises(MemoryError):
        model.predict([image(2)])
    pool = ThreadPoolExecutor(1)
    try:
        assert len(pool.submit(model.predict, [image(3)]).result(timeout=30)) == 1
    finally:
        pool.shutdown(wait=False)  # a call stuck for ever is woken by the fixture's close


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


def labelled(**options: object) -> ModelSpec:
    """The delay model whose box is labelled with each image's first red value (which pixels it saw)."""
    return ModelSpec(
        name="echo",
        family="synthetic",
        weights="delay",
        options={"label_from_pixel": True, "crash_on_value": CRASH, **options},
    )


def labels(outputs: object) -> list[str]:
    return [output.items[0].label for output in outputs]  # type: ignore[attr-defined]


def test_two_batches_in_flight_each_get_their_own_answers() -> None:
    """The next batch waits in the model's pipe while one runs (no gap between forward passes):
    each caller's pixels stay its own, and each gets its own answers back."""
    model = ModelProcess(labelled(delay_ms=2, input_size=64), "delay", None, batch_room=2)
    assert model.batches_in_flight == 2

    def caller(first: int) -> list[tuple[list[str], list[str]]]:
        seen = []
        for n in range(15):
            values = [first + 2 * n, first + 2 * n + 1]
            answer = labels(model.predict([image(v) for v in values]))
            seen.append(([f"v{v}" for v in values], answer))
        return seen

    try:
        with ThreadPoolExecutor(2) as threads:
            runs = list(threads.map(caller, (20, 120)))
    finally:
        model.close()
    assert all(answer == asked for run in runs for asked, answer in run)


def test_the_process_reports_the_time_its_model_spent_on_each_batch() -> None:
    """What the worker waits for a batch is the model's time plus the hand-over; the process says
    the first part (run 25: on a GPU the caption model's batches took longer in the pipeline than
    in a loop of their own, and this tells which part grew)."""
    model = ModelProcess(labelled(delay_ms=60, input_size=64), "delay", None)
    try:
        started = time.perf_counter()
        for value in range(3):
            model.predict([image(value)])
        waited = time.perf_counter() - started
    finally:
        model.close()
    assert 3 * 0.06 <= model.predict_seconds <= waited


@pytest.mark.parametrize(("free_images", "in_shared_memory"), [(9, 2), (3, 0)])
def test_with_little_shared_memory_free_the_frames_that_do_not_fit_are_pickled(
    monkeypatch: pytest.MonkeyPatch, free_images: int, in_shared_memory: int
) -> None:
    """A segment larger than what /dev/shm holds kills the process that writes past it (SIGBUS;
    a container's default is 64 MiB). The room is cut to half of what is free, and the answers stay
    the same: 9 images' worth free leaves 2 a batch in shared memory; 3 leave less than one each."""
    one = 64 * 64 * 3
    monkeypatch.setattr(own_process, "free_shared_memory", lambda path=own_process.SHARED_MEMORY: free_images * one)
    model = ModelProcess(labelled(delay_ms=1, input_size=64), "delay", None, batch_room=4)
    try:
        sent: list[Any] = []
        send = model._frames

        def recorded(images: Any, region: int | None) -> Any:
            frames = send(images, region)
            sent.append(frames)
            return frames

        monkeypatch.setattr(model, "_frames", recorded)
        answers = [labels(model.predict([image(v, 64) for v in range(first, first + 3)])) for first in (10, 20)]
    finally:
        model.close()
    assert answers == [["v10", "v11", "v12"], ["v20", "v21", "v22"]]
    assert [sum(isinstance(frame, tuple) for frame in frames) for frames in sent] == [in_shared_memory] * 2


def test_a_crash_with_two_batches_in_flight_fails_only_the_batch_that_caused_it() -> None:
    """The batch queued behind the one that killed the process did not kill it: it runs again on
    a fresh process and succeeds; the guilty batch fails as a crash on a fresh process."""
    model = ModelProcess(labelled(delay_ms=50, input_size=64), "delay", None, batch_room=2)
    try:
        with ThreadPoolExecutor(2) as threads:
            guilty = threads.submit(model.predict, [image(CRASH)])
            time.sleep(0.01)  # queued behind it, in the same process
            innocent = threads.submit(model.predict, [image(5), image(6)])
            assert labels(innocent.result(30)) == ["v5", "v6"]
            with pytest.raises(ModelProcessDied) as died:
                guilty.result(30)
        assert died.value.fresh
        assert labels(model.predict([image(7)])) == ["v7"]
    finally:
        model.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_the_model_process_runs_on_its_own_cpus() -> None:
    last = max(os.sched_getaffinity(0))
    model = ModelProcess(spec(input_size=64), "null", None, cpus=frozenset({last}))
    try:
        assert model._proc is not None and os.sched_getaffinity(model._proc.pid) == {last}
        assert len(model.predict([image(1)])) == 1
    finally:
        model.close()


# --- JPEGs decoded in the model's process (VISIONQ_DEVICE_DECODE) -------------------------------


def test_a_process_that_will_never_get_jpegs_takes_none() -> None:
    """VISIONQ_DEVICE_DECODE=off: its device's decoder is neither started nor checked."""
    process = ModelProcess(spec(input_size=64), "null", None, device_decode=False)
    try:
        assert not process.decodes_jpegs
        assert not decodes_on_device(process, "on")
    finally:
        process.close()


def test_jpegs_go_to_the_process_and_come_back_as_the_models_answers(model: ModelProcess) -> None:
    from tests.unit.test_device_decode import photo

    jpeg = inspect_jpeg(photo(800, 600), ImageLimits(), max_side=64)
    assert jpeg is not None and model.decodes_jpegs
    outputs = model.predict([jpeg, image(200)])
    assert [(o.width, o.height) for o in outputs] == [(64, 48), (64, 48)]  # decoded and reduced there


def test_a_jpeg_the_process_cannot_decode_is_rejected_with_its_code(model: ModelProcess) -> None:
    from tests.unit.test_device_decode import photo

    whole = photo(800, 600)
    checked = inspect_jpeg(whole, ImageLimits(), max_side=64)
    assert checked is not None
    # Its data cut short after the header was checked (the worker sends only JPEGs that end whole).
    cut = dataclasses.replace(checked, data=whole[: len(whole) // 2])
    with pytest.raises(ImageRejected) as info:
        model.predict([cut])
    assert info.value.code == "undecodable_image"
    assert len(model.predict([image(200)])) == 1 and model.starts == 1  # the process lives on


class Pipe:
    """A model process's end of the pipe: hands out ``batches``, then EOF; counts the reads."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.reads = 0

    def recv(self) -> Any:
        self.reads += 1
        if not self.batches:
            raise EOFError
        return self.batches.pop(0)


def test_the_next_batch_is_decoded_while_the_model_runs_one() -> None:
    from tests.unit.test_device_decode import photo

    jpegs = [inspect_jpeg(photo(800, 600, seed), ImageLimits(), max_side=64) for seed in range(2)]
    pipe = Pipe([(None, [jpegs[0]]), (None, [jpegs[1]])])
    prepared: queue.Queue[Any] = queue.Queue(maxsize=1)
    args = (pipe, "cpu", prepared, SimpleNamespace(value=0), threading.Semaphore(0))
    thread = threading.Thread(target=own_process._prepare, args=args, daemon=True)
    thread.start()
    kind, first = prepared.get(timeout=30)  # the model takes the first batch and runs it...
    assert kind == "images" and first[0].shape == (48, 64, 3)
    deadline = time.monotonic() + 30
    while pipe.reads < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    # ...meanwhile the second was read and decoded (the third read found the pipe closed), before
    # the model asked for it.
    assert pipe.reads == 3 and prepared.full()
    kind, second = prepared.get(timeout=5)
    assert kind == "images" and second[0].shape == (48, 64, 3)
    assert prepared.get(timeout=5) is None
    thread.join(5)


class BrokenPipe(Pipe):
    def recv(self) -> Any:
        raise ConnectionResetError("the worker went away with an answer unread")


def test_the_model_loop_ends_when_the_pipe_breaks_under_the_reading_thread() -> None:
    prepared: queue.Queue[Any] = queue.Queue(maxsize=1)
    own_process._prepare(BrokenPipe([]), "cpu", prepared, SimpleNamespace(value=0), threading.Semaphore(0))  # type: ignore[arg-type]
    assert prepared.get(timeout=1) is None  # the model's loop is told to end, not left waiting


def test_a_device_fault_while_decoding_ends_the_process_for_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_device_decode import photo

    class AcceleratorError(RuntimeError):
        """As torch names it: a CUDA error that leaves the process's device unusable."""

    def faulty(*args: Any, **kwargs: Any) -> Any:
        raise AcceleratorError("CUDA error: an illegal memory access was encountered")

    def exit_now() -> None:
        raise SystemExit(70)

    monkeypatch.setattr("visionq.models.device_decode.decode_frames", faulty)
    monkeypatch.setattr(own_process, "_exit_now", exit_now)
    jpeg = inspect_jpeg(photo(800, 600), ImageLimits(), max_side=64)
    decoding = SimpleNamespace(value=0)
    with pytest.raises(SystemExit):
        own_process._decoded([jpeg], "cpu", 1, decoding)
    monkeypatch.setattr(
        "visionq.models.device_decode.decode_frames", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other"))
    )
    assert own_process._decoded([jpeg], "cpu", 3, decoding)[0] == "error"  # any other failure: an answer
    assert decoding.value == 0


CRASHES_DECODER = b"VISIONQ-CRASH-DECODER"


def test_a_jpeg_that_crashes_the_decoder_fails_alone_even_queued_behind_an_innocent_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process decodes a queued batch while the model runs the one before: a crash then may be
    either's. Neither is condemned on that; on the new process (which decodes nothing ahead for its
    first batches) the JPEG crashes it again alone and fails with decoder_crashed, and the innocent
    batch gets its answer."""
    from PIL import Image

    from tests.unit.test_device_decode import photo

    monkeypatch.setenv("VISIONQ_CRASH_DECODER_ON", CRASHES_DECODER.decode())
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo(400, 300))).save(buffer, "JPEG", comment=CRASHES_DECODER)
    poison = inspect_jpeg(buffer.getvalue(), ImageLimits(), max_side=64)
    assert poison is not None
    model = ModelProcess(labelled(delay_ms=1500, input_size=64), "delay", None, batch_room=2)
    try:
        with ThreadPoolExecutor(2) as threads:
            innocent = threads.submit(model.predict, [image(77)])
            time.sleep(0.5)  # the innocent batch is running when the poisoned one arrives behind it
            poisoned = threads.submit(model.predict, [poison])
            assert labels(innocent.result(timeout=120)) == ["v77"]
            with pytest.raises(ImageRejected) as info:
                poisoned.result(timeout=120)
        assert info.value.code == "decoder_crashed"
        assert model.starts >= 2
        assert labels(model.predict([image(78)])) == ["v78"]  # and the model goes on
    finally:
        model.close()


@pytest.mark.parametrize("letterbox", ["on", "auto"])
def test_the_input_made_on_the_device_gives_the_models_answers(letterbox: str, draw_scene: Any) -> None:
    """VISIONQ_DEVICE_LETTERBOX: "on" makes the network's input in the prepare thread, from JPEGs
    decoded there and from shared-memory pixels alike; "auto" does so on a GPU only."""
    from tests.unit.test_images import encode
    from visionq.models.device_decode import decode_frames
    from visionq.shapes import WEIGHTS_PATH

    shapes = ModelSpec(name="shapes", family="ultralytics", weights=str(WEIGHTS_PATH), options={"backend": "torch"})
    process = ModelProcess(shapes, str(WEIGHTS_PATH), "cpu", device_letterbox=letterbox)
    try:
        assert process.letterboxes_on_device == (letterbox == "on")
        scenes = [draw_scene(seed, (640, 480)) for seed in (31, 32)]
        jpeg = inspect_jpeg(encode(scenes[0][0], "JPEG", quality=95), ImageLimits(), max_side=320)
        assert jpeg is not None
        pixels = np.asarray(scenes[1][0].resize((320, 240)))
        got = process.predict([jpeg, pixels])
        in_this_process = _load_family(shapes, str(WEIGHTS_PATH), "cpu")
        want = in_this_process.predict(decode_frames([jpeg, pixels], "cpu"))
        for have, expected, (_, truth) in zip(got, want, scenes, strict=True):
            assert (have.width, have.height) == (expected.width, expected.height) == (320, 240)
            assert [b.class_id for b in have.items] == [b.class_id for b in expected.items]  # type: ignore[attr-defined]
            assert len(truth) == len(have.items)  # type: ignore[attr-defined]
            for a, b in zip(have.items, expected.items, strict=True):  # type: ignore[attr-defined]
                assert [a.x1, a.y1, a.x2, a.y2] == pytest.approx([b.x1, b.y1, b.x2, b.y2], abs=0.5)
        cut = dataclasses.replace(jpeg, data=jpeg.data[: len(jpeg.data) // 2])
        with pytest.raises(ImageRejected) as info:
            process.predict([cut])
        assert info.value.code == "undecodable_image" and process.starts == 1
    finally:
        process.close()
