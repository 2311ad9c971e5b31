"""A model in a process of its own (``VISIONQ_MODEL_PROCESS=1``).

Two reasons to run the model outside the worker's process:
- **The GIL.** A model's pre- and post-processing is Python (Ultralytics' letterbox and NMS
  bookkeeping, a processor's resizing). In the worker's process it takes turns on the GIL with
  everything else the worker does (receiving, claiming, fetching, writing), so the forward pass
  waits on bookkeeping; in a process of its own it never does.
- **Crashes.** A native crash in the model's code (a kernel, a codec inside a processor) kills the
  model's process, not the worker. A batch that kills a process which had served batches before
  runs once more on a fresh one (the death may not be its fault: memory grown over time); a batch
  that kills a fresh process is the culprit, and the core runs its images one at a time, so the
  image that crashes the model fails alone (``model_error``) and the messages the worker holds are
  never redelivered because of it (in the worker's process, a crash-looping image would take its
  batch-mates towards the dead-letter queue with it). A process that does not answer within the
  job deadline is killed and counts as dead; one that cannot be started again makes the batch's
  messages come back later (``ModelRestartFailed``, transient), not fail.

The worker keeps a proxy that is a ``Model``. ``predict`` copies the batch's pixels into a shared
memory segment the worker made (room for a batch at the model's input size: one memcpy per image,
no pickling), sends their offsets and shapes down a pipe, and reads the outputs back (small
dataclasses, pickled). JPEGs the worker only checked (``VISIONQ_DEVICE_DECODE``) go down the pipe
as their bytes, and the process decodes them on the model's device before the forward pass
(``device_decode.py``); one that cannot be decoded comes back as ImageRejected with its code. The
model process loads the model with the loader every worker uses (``registry._load_family``),
once, and answers one batch at a time, in the order they came.

Two batches may be in flight (``batches_in_flight``; the core runs that many ``predict`` calls at
once, each in a thread): the next batch already waits in the pipe, in a region of the segment of
its own, while the model runs one, so the model goes from one forward pass straight to the next
instead of idling while the worker takes the answer and hands over the next batch (10–18 %
of the model's time with batches of one on this CPU, bench/RESULTS.md run 12). Answers are read
in turn, by the caller whose batch each one answers. In the process, a second thread takes the
next batch off the pipe and decodes its JPEGs while the model runs the one before, marking in a
shared integer which batch it is decoding. When the process dies, the culprit is: the batch whose
JPEGs it was decoding with nothing ahead of it; else, if it was decoding a batch queued behind the
one the model ran, neither (both run again); else the batch it was running, when the process had
answered nothing before. A batch whose death is not proven its fault runs again, up to three
times, on a new process, which decodes nothing ahead for its first batches, so a crash there is
the decode's or the model's for certain.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from visionq.child_process import end_process
from visionq.errors import ImageRejected, ModelUnavailable, TransientError
from visionq.images import EncodedJpeg
from visionq.models import GPU_BATCH, Model
from visionq.models.letterbox import Prepared, handed_over, letterbox_here
from visionq.models.spec import ModelSpec
from visionq.outputs import ModelOutput

logger = logging.getLogger(__name__)

RUNS_UNTIL_BLAMED = 3  # a batch is run this many times when each death is not proven its fault
CAREFUL_BATCHES = 8  # a process started after a death decodes no JPEG ahead for this many batches
LOAD_TIMEOUT_SECONDS = 900.0  # a first load may convert weights (an ONNX export takes minutes on a CPU)

# (offset, shape) in the segment, the pixels themselves, or a JPEG to decode on the model's device
Frame = tuple[int, tuple[int, ...]] | np.ndarray | EncodedJpeg


class ModelProcessDied(RuntimeError):
    """The model's process ended (or stopped answering) while it held a batch. ``fresh``: the batch
    is what killed it (the process had answered nothing before, or it died decoding this batch's
    JPEGs: ``decoding``)."""

    def __init__(self, message: str, *, fresh: bool = True, decoding: bool = False) -> None:
        super().__init__(message)
        self.fresh = fresh
        self.decoding = decoding


class ModelRestartFailed(TransientError):
    """The model's process died and a new one could not load the model: not the images' fault, so
    their messages are retried (on this worker later, or another), not failed."""

    code = "model_unavailable"


class ModelFailed(RuntimeError):
    """The model raised on a batch (in its own process); the message is its exception's repr."""


def _serve(
    conn: Connection,
    spec: dict[str, Any],
    weights: str,
    device: str | None,
    torch_threads: int | None,
    cpus: frozenset[int] | None,
    device_decode: bool,
    device_letterbox: str,
    parent: int,
    decoding: Any,
    careful_batches: int,
) -> None:
    """The model process: load, say what was loaded, then answer batches until the pipe closes.
    ``decoding``: a shared integer, the number (from 1) of the batch whose JPEGs the process is
    decoding, 0 when none: after a crash the worker reads which batch caused it. ``careful_batches``: for
    its first batches, a JPEG is decoded only once the batch before has been answered, so that a
    crash is known to be the decode's or the model's (a process started after a death).
    ``device_decode``: whether the worker may hand it JPEGs (VISIONQ_DEVICE_DECODE is not "off");
    only then is the device's decoder started and checked. ``device_letterbox``: VISIONQ_DEVICE_LETTERBOX
    ("auto", "on", "off"), whether the network's input is made on its device (letterbox.py)."""
    from visionq.child_process import child_of
    from visionq.models.device_decode import works_on
    from visionq.models.registry import _load_family

    if cpus:  # before any thread starts, so the model's threads all run there (cpus.py)
        os.sched_setaffinity(0, cpus)
    child_of(parent)
    try:
        model = _load_family(ModelSpec(**spec), weights, device)
    except ModelUnavailable as exc:
        conn.send(("unavailable", exc.message))
        return
    except Exception as exc:  # noqa: BLE001 - any failure to load is told to the worker in one line
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        conn.send(("unavailable", f"model {spec['name']!r} could not be loaded: {type(exc).__name__}: {first_line}"))
        return
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)  # after loading, as the worker does (Ultralytics resets it)
    info = {
        "version": model.version,
        "untrained": model.untrained,
        "device": model.device,
        # Checked where it matters (a GPU); the CPU's decoder is the one the tests run.
        "decodes_jpegs": device_decode and (works_on(model.device) if model.device.startswith("cuda") else True),
        "letterbox_on_device": letterbox_here(model, device_letterbox),
    }
    conn.send(("ready", {**info, "input_size": model.input_size}))
    prepared: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=1)
    answered = threading.Semaphore(0)  # released as each batch is answered
    # An Ultralytics model (letterbox.letterbox_here): it makes its input on its device.
    letterboxing: Any = model if info["letterbox_on_device"] else None
    preparer = letterboxing.prepare if letterboxing is not None else None
    args = (conn, model.device, prepared, decoding, answered, careful_batches, preparer)
    threading.Thread(target=_prepare, args=args, name="prepare", daemon=True).start()
    while (batch := prepared.get()) is not None:
        kind, payload = batch
        if kind in ("images", "prepared"):
            try:
                started = time.perf_counter()
                outputs = model.predict(payload) if kind == "images" else letterboxing.predict_prepared(payload)
                batch = ("ok", (list(outputs), time.perf_counter() - started))
            except Exception as exc:  # noqa: BLE001 - the worker decides what a failed batch means
                _exit_if_device_fault(exc)
                batch = ("error", repr(exc))
        conn.send(batch)
        answered.release()


def _exit_if_device_fault(exc: BaseException) -> None:
    """A CUDA error leaves this process's device unusable for good: end the process, so the worker
    starts a new one (and takes the batch for the culprit), instead of failing every batch after."""
    from visionq.models.device_decode import is_device_fault

    if is_device_fault(exc):
        logger.error("the model's device failed (%s); ending its process", exc)
        _exit_now()


def _exit_now() -> None:
    os._exit(70)


def _prepare(
    conn: Connection,
    device: str,
    prepared: queue.Queue[tuple[str, Any] | None],
    decoding: Any,
    answered: threading.Semaphore,
    careful_batches: int = 0,
    preparer: Callable[[list[Any]], Prepared] | None = None,
) -> None:
    """The model process's second thread: takes each batch off the pipe and makes its images (views
    of the shared memory; JPEGs decoded on the device, device_decode.py) while the model runs the
    batch before, so a forward pass never waits for the next batch's decode. With ``preparer``
    (the letterbox on the device), it makes the network's input itself. Ends with None, however
    it ends, so the model's loop never waits for a thread that is gone."""
    try:
        if device.startswith("cuda"):  # a stream of its own: decoding never queues behind a forward pass
            import torch

            torch.cuda.set_stream(torch.cuda.Stream(device))  # type: ignore[no-untyped-call]
        segments: dict[str, shared_memory.SharedMemory] = {}
        number = 0  # of the batch, from 1, as the worker counts them (its ticket + 1)
        while True:
            try:
                segment, frames = conn.recv()
            except (EOFError, OSError):  # the worker closed the pipe (or died): nothing more to do
                return
            number += 1
            if 1 < number <= careful_batches:
                answered.acquire()  # the batch before is answered: nothing else runs while this one decodes
            if segment is not None and segment not in segments:
                segments[segment] = shared_memory.SharedMemory(name=segment)
            images = [
                np.ndarray(frame[1], np.uint8, buffer=segments[segment].buf, offset=frame[0])
                if isinstance(frame, tuple)
                else frame
                for frame in frames
            ]
            prepared.put(_decoded(images, device, number, decoding, preparer))
    finally:
        prepared.put(None)


def _decoded(
    images: list[Any],
    device: str,
    number: int,
    decoding: Any,
    preparer: Callable[[list[Any]], Prepared] | None = None,
) -> tuple[str, Any]:
    """The batch's images with its JPEGs decoded (or, with ``preparer``, the network's input made
    from them on the device), or the answer that says why they cannot be.
    While its JPEGs are decoded, ``decoding`` holds the batch's number: a decoder that crashes the
    process is then known to have crashed on this batch, not on the one the model was running."""
    from visionq.models.device_decode import decode_frames, decode_frames_on_device

    jpegs = [image.data for image in images if isinstance(image, EncodedJpeg)]
    if jpegs:
        decoding.value = number
    try:
        _crash_on_marker(jpegs)
        if preparer is not None:
            return "prepared", handed_over(preparer(decode_frames_on_device(images, device)))
        return "images", decode_frames(images, device)
    except ImageRejected as exc:  # a JPEG that cannot be decoded: that image's fault, with its code
        return "rejected", (exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - the worker decides what a failed batch means
        _exit_if_device_fault(exc)
        return "error", repr(exc)
    finally:
        decoding.value = 0


SHARED_MEMORY = "/dev/shm"  # noqa: S108 - only its free space is read


def free_shared_memory(path: str = SHARED_MEMORY) -> int | None:
    """Bytes free in the machine's shared memory (a tmpfs); None where it cannot be told."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def shared_room(wanted: int) -> int:
    """``wanted`` bytes of shared memory for a model's frames, or half of what is free where that is
    less (a container's default is 64 MiB; VISIONQ_MAX_BATCH=32 at 640 px wants 79 MiB): a process
    that writes into a segment past what the tmpfs holds is killed (SIGBUS), and the decode
    processes' slots need room too. Frames that do not fit are pickled down the pipe instead."""
    free = free_shared_memory()
    return wanted if free is None else min(wanted, free // 2)


def _crash_on_marker(jpegs: list[bytes]) -> None:
    """Fault injection (faults.py, VISIONQ_CRASH_DECODER_ON): a JPEG holding the marker kills the
    process as a native crash in the device's decoder would."""
    marker = os.environ.get("VISIONQ_CRASH_DECODER_ON", "").encode()
    if marker and any(marker in data for data in jpegs):
        os.abort()


class ModelProcess:
    """A ``Model`` whose forward passes run in a process of its own (see the module's text)."""

    batches_in_flight = 2  # one running, the next waiting in the pipe
    ends_its_own_hangs = True  # a process with no answer within answer_timeout is killed

    def __init__(
        self,
        spec: ModelSpec,
        weights: str,
        device: str | None,
        *,
        torch_threads: int | None = None,
        cpus: frozenset[int] | None = None,
        batch_room: int = GPU_BATCH,
        answer_timeout: float = 600.0,
        device_decode: bool = True,
        device_letterbox: str = "auto",
    ) -> None:
        """``cpus``: the CPUs the process runs on (VISIONQ_MODEL_CPUS; None: any).
        ``device_decode``: False when the worker will never hand it JPEGs (VISIONQ_DEVICE_DECODE=off):
        its device's decoder is then neither started nor checked.
        ``device_letterbox``: VISIONQ_DEVICE_LETTERBOX, where the network's input is made (letterbox.py).
        ``answer_timeout``: the longest a batch may take once its turn has come (the job
        deadline); a process that takes longer is taken for hung, killed, and counts as dead on
        that batch."""
        self.spec = spec
        self._answer_timeout = answer_timeout
        # The spec as plain values: its options are a read-only mapping, which pickle refuses.
        plain = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        # The process answers one batch at a time: one ONNX Runtime session there, on all its cores
        # (several sessions take batches at once only in the worker's process, models/replicas.py).
        options = {**spec.options, "onnx_sessions": 1}
        self._args = (
            {**plain, "options": options},
            weights,
            device,
            torch_threads,
            cpus,
            device_decode,
            device_letterbox,
        )
        self._device_decode = device_decode
        self._context = multiprocessing.get_context("spawn")  # CUDA cannot be initialised in a forked child
        self._proc: Any = None
        self._conn: Connection | None = None
        self._info: dict[str, Any] = {}
        # Guards the process, the counters below and the free regions; held to start a process and
        # to send a batch, never while waiting for an answer.
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)  # an answer was read, or the process was lost
        self._generation = 0  # processes lost so far: a batch sent to a lost one is never answered
        # The number (from 1) of the batch whose JPEGs the process is decoding, 0 when none (_serve);
        # read when a process is lost: (its generation, that batch's ticket) when it died decoding.
        self._decoding = self._context.RawValue("q", 0)
        self._died_decoding: tuple[int, int | None] | None = None
        self._sent = self._received = 0  # batches sent to / answers read from the current process
        self.starts = 0  # processes started: 1, plus one after each death (for the log and the tests)
        # Time its process spent in ``predict``, as it reports it per batch: of the time the worker
        # waits for a batch, the rest is the hand-over (the pipe, the decode, the answer's trip).
        self.predict_seconds = 0.0
        self._closed = False
        self._start()
        side = self.input_size
        # Per batch in flight, room for a batch of images at the model's input size; beyond, pickled.
        wanted = self.batches_in_flight * batch_room * side * side * 3 if side else 0
        size = shared_room(wanted)
        if size < wanted:
            logger.warning(
                "too little shared memory is free for model %s (%.0f MiB wanted): its frames beyond %.0f MiB a "
                "batch are pickled, a copy each (give a container more: Docker's --shm-size, ECS SharedMemorySize)",
                spec.name,
                wanted / 2**20,
                size / self.batches_in_flight / 2**20,
            )
        room = size // self.batches_in_flight
        self._room = room if side and room >= side * side * 3 else 0  # less than one image: all pickled
        self._segment = (
            shared_memory.SharedMemory(create=True, size=self.batches_in_flight * self._room) if self._room else None
        )
        self._regions = list(range(self.batches_in_flight)) if self._room else []

    def _start(self) -> None:
        ours, theirs = self._context.Pipe()
        self._decoding.value = 0
        proc = self._context.Process(
            target=_serve,
            # After a death, its first batches one at a time: the crash, if it comes again, is known
            # to be the decode's or the model's (see _lose_process).
            args=(theirs, *self._args, os.getpid(), self._decoding, CAREFUL_BATCHES if self.starts else 0),
            name=f"visionq-model-{self.spec.name}",
        )
        proc.start()
        theirs.close()
        self.starts += 1
        try:
            if not ours.poll(LOAD_TIMEOUT_SECONDS):
                raise ModelUnavailable(f"model {self.spec.name!r} did not load within {LOAD_TIMEOUT_SECONDS:.0f} s")
            try:
                kind, payload = ours.recv()
            except (EOFError, OSError):
                proc.join(5)
                raise ModelUnavailable(
                    f"model {self.spec.name!r}: its process ended while loading (exit code {proc.exitcode})"
                ) from None
            if kind != "ready":
                raise ModelUnavailable(str(payload))
        except BaseException:
            ours.close()
            end_process(proc)
            raise
        self._proc, self._conn, self._info = proc, ours, payload
        if (
            self._device_decode
            and payload["device"].startswith("cuda")
            and not payload["decodes_jpegs"]
            and self.starts == 1
        ):
            logger.warning("model %s: its device cannot decode JPEGs here; the worker decodes them", self.spec.name)
        if payload["letterbox_on_device"] and self.starts == 1:
            logger.info("model %s: its input is letterboxed on %s", self.spec.name, payload["device"])
        self._sent = self._received = 0

    @property
    def version(self) -> str:
        return str(self._info["version"])

    @property
    def untrained(self) -> bool:
        return bool(self._info["untrained"])

    @property
    def device(self) -> str:
        return str(self._info["device"])

    @property
    def decodes_jpegs(self) -> bool:
        """Whether it takes EncodedJpeg frames: its device decoded a test JPEG as the CPU path does
        when the process started (device_decode.works_on)."""
        return bool(self._info["decodes_jpegs"])

    @property
    def letterboxes_on_device(self) -> bool:
        """Whether its process makes the network's input on its device (letterbox.letterbox_here)."""
        return bool(self._info["letterbox_on_device"])

    @property
    def input_size(self) -> int | None:
        size = self._info["input_size"]
        return int(size) if size else None

    def predict(self, images: Sequence[np.ndarray | EncodedJpeg]) -> Sequence[ModelOutput]:
        for attempt in range(1, RUNS_UNTIL_BLAMED + 1):
            try:
                return self._predict_once(images)
            except ModelProcessDied as died:
                if died.fresh and died.decoding and len(images) == 1:  # that image's fault, as decode_pool says
                    raise ImageRejected("the JPEG decoder crashed on this image", code="decoder_crashed") from None
                if died.fresh or attempt == RUNS_UNTIL_BLAMED:
                    raise
            # The process died while this batch was queued, or running on a process that had served
            # batches before, or beside a JPEG being decoded: not proof against it (memory grown over
            # time, the OOM killer, the batch ahead of it or behind it). Again, on a process started
            # for it.
            logger.warning("the process of model %s died; running the batch again on a new one", self.spec.name)
        raise AssertionError("unreachable")

    def _predict_once(self, images: Sequence[np.ndarray | EncodedJpeg]) -> Sequence[ModelOutput]:
        with self._lock:
            conn, generation = self._enqueue()
            region = self._regions.pop() if self._regions else None
            try:
                frames = self._frames(images, region)
            except BaseException:  # nothing sent: no place in the queue taken
                self._free(region)
                raise
            try:
                conn.send((self._segment.name if self._segment else None, frames))
            except OSError:  # the pipe is broken: the process is gone, taking the batch ahead of this one
                self._lose_process(generation)
                self._free(region)
                raise ModelProcessDied(self._died("died", len(images)), fresh=False) from None
            except BaseException:
                # Memory, or anything else, midway: whether part of it is in the pipe is unknown, so
                # the stream is not to be trusted; the batches behind get a new process, not a wait
                # for an answer to a batch never sent.
                self._lose_process(generation)
                self._free(region)
                raise
            # Its place in the queue, once it is in the pipe: answers come in the order batches went.
            ticket = self._sent
            self._sent += 1
        try:
            with self._lock:
                # Answers come in the order the batches went: wait for this one's turn to read.
                self._turn.wait_for(lambda: self._received == ticket or self._generation != generation)
                if self._generation != generation:  # lost while this batch waited behind another
                    culprit = self._died_decoding == (generation, ticket)  # ...unless decoding it killed it
                    raise ModelProcessDied(self._died("died", len(images)), fresh=culprit, decoding=culprit)
            kind, payload = self._answer(conn, generation, ticket, len(images))
        finally:
            with self._lock:
                self._free(region)  # the process is done reading it: answered, or gone
        if kind == "rejected":
            code, message = payload
            raise ImageRejected(message, code=code)
        if kind != "ok":
            raise ModelFailed(str(payload))
        outputs: list[ModelOutput]
        outputs, seconds = payload
        with self._lock:
            self.predict_seconds += seconds
        return outputs

    def _answer(self, conn: Connection, generation: int, ticket: int, count: int) -> tuple[str, Any]:
        """Read this batch's answer (its turn has come); then it is the next batch's turn."""
        try:
            if not conn.poll(self._answer_timeout):
                raise TimeoutError
            answer: tuple[str, Any] = conn.recv()
            return answer
        except (EOFError, OSError, TimeoutError) as exc:
            with self._lock:
                code = self._lose_process(generation)
                # It died decoding a batch's JPEGs: that batch killed it, whichever it is. Otherwise the
                # batch it was running did, for certain only when it had answered nothing before.
                blamed = self._died_decoding
                decoding = blamed == (generation, ticket)
                fresh = decoding if blamed is not None and blamed[0] == generation else ticket == 0
            what = f"gave no answer within {self._answer_timeout:.0f} s" if isinstance(exc, TimeoutError) else None
            message = self._died(what or f"died (exit code {code})", count)
            raise ModelProcessDied(message, fresh=fresh, decoding=decoding) from None
        finally:
            with self._lock:
                if self._generation == generation:  # read (or failed to unpickle): the stream moves on
                    self._received += 1
                    self._turn.notify_all()

    def _enqueue(self) -> tuple[Connection, int]:
        """(Under the lock.) The pipe to send on, started afresh if the last process died, and the
        process's generation."""
        if self._closed:
            raise ModelRestartFailed(f"model {self.spec.name!r} is closed (the worker is stopping)")
        if self._conn is None:
            logger.warning("starting a new process for model %s (the last one died)", self.spec.name)
            try:
                self._start()
            except ModelUnavailable as exc:
                raise ModelRestartFailed(
                    f"model {self.spec.name!r} could not be started again: {exc.message}"
                ) from None
        assert self._conn is not None
        return self._conn, self._generation

    def _died(self, what: str, count: int) -> str:
        return f"the process of model {self.spec.name!r} {what} on a batch of {count}"

    def _lose_process(self, generation: int) -> int | None:
        """(Under the lock.) The process of ``generation`` is dead or hung: make sure it is gone
        (before the regions it reads are written again), wake the batches queued behind; its exit
        code, or None when another caller already did this."""
        if generation != self._generation or self._proc is None or self._conn is None:
            return None
        self._conn.close()
        code = end_process(self._proc, wait=5)
        number = int(self._decoding.value)  # read once the process is gone: its last word
        # Decoding the JPEGs of the next batch to be answered, nothing ahead of it: that batch is the
        # culprit. Decoding one queued behind a batch the model was running: either may be; neither
        # is condemned, both run again on a new process, which takes its first batches one at a time.
        ticket = number - 1
        self._died_decoding = None if not number else (generation, ticket if ticket == self._received else None)
        self._proc, self._conn = None, None
        self._generation += 1
        self._turn.notify_all()
        return code

    def _free(self, region: int | None) -> None:
        if region is not None:
            self._regions.append(region)

    def _frames(self, images: Sequence[np.ndarray | EncodedJpeg], region: int | None) -> list[Frame]:
        frames: list[Frame] = []
        offset = 0
        for image in images:
            if isinstance(image, EncodedJpeg):  # its bytes go down the pipe (one copy, as pixels would)
                frames.append(image)
                continue
            fits = offset + image.nbytes <= self._room
            if self._segment is not None and region is not None and image.dtype == np.uint8 and fits:
                at = region * self._room + offset
                np.ndarray(image.shape, np.uint8, buffer=self._segment.buf, offset=at)[...] = image
                frames.append((at, image.shape))
                offset += image.nbytes
            else:
                frames.append(np.ascontiguousarray(image))
        return frames

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()  # the model process sees the pipe close and returns
            if self._proc is not None:
                end_process(self._proc, wait=10)
            self._proc, self._conn = None, None
            self._generation += 1
            self._turn.notify_all()
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
            self._segment = None


def process_loader(
    *,
    torch_threads: int | None,
    cpus: frozenset[int] | None,
    answer_timeout: float,
    device_decode: bool = True,
    device_letterbox: str = "auto",
) -> Callable[[ModelSpec, str, str | None], Model]:
    """A ``load_models`` loader that puts each model in a process of its own."""

    def load(spec: ModelSpec, weights: str, device: str | None) -> Model:
        return ModelProcess(
            spec,
            weights,
            device,
            torch_threads=torch_threads,
            cpus=cpus,
            # The largest batch it is handed: its entry's, else the worker's (load_models set it).
            batch_room=spec.max_batch or GPU_BATCH,
            answer_timeout=answer_timeout,
            device_decode=device_decode,
            device_letterbox=device_letterbox,
        )

    return load
