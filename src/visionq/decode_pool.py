"""Decoding in disposable processes: an image that crashes the decoder kills a decode process, not
the worker (VISIONQ_DECODE_PROCESSES > 0).

A native crash in a codec (a segfault in libjpeg, libpng, libwebp...) takes down whatever process
runs it. In the worker's own process it takes every message the worker holds with it: they come
back with one more receive, and an image that crashes every time drags its batch-mates towards the
dead-letter queue. Here only the decode process dies; every decode it held is retried alone, in a
process of its own: the innocent ones succeed, the one that crashes again is that image's fault
and its job ends FAILED (``decoder_crashed``) while the worker goes on. A decode process that
spends longer than ``timeout`` on one image (a codec caught in a loop) is killed and counts as
dead; an image that does it again alone fails with ``decode_timeout``. Without that, each such
image would keep a process and its slots for good, and the images queued behind it would wait
for their deadline.

Processes are started by a fork server (never ``fork`` from a process with threads), which
imports the decoder once. Each has a socket of its own to the worker, and the worker's event loop
does the talking: it writes a request (a small header, then the object's bytes, as they came) and
reads the answer when the socket is readable, no thread in between. (``concurrent.futures``'
process pool, used before, woke a manager thread and a feeder thread and pickled every call: 1.3
to 2.0 ms of the worker's CPU per image, bench/RESULTS.md run 13.) A process decodes one image at
a time; the worker keeps up to two waiting on it, so it goes from one straight to the next.

The decoded pixels come back through shared memory where there is some (not on AWS Lambda: there
they come back pickled, through the socket): each decode in flight holds a slot of a
segment the worker made (sized for the models' input, ``slot_side``), the process writes the pixels
there, and the worker copies them out (one memcpy; pickling them cost 1.4 ms more per 640 px
image, run 11). A slot is reused only once no process can still write into it: a decode whose
caller gave up (a deadline) goes on in its process until it answers or dies. An image that does
not fit a slot (a model without an input size) comes back pickled.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import multiprocessing
import os
import pickle
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from visionq.child_process import child_of, end_process
from visionq.errors import ImageRejected
from visionq.images import DecodedImage, ImageLimits, decode_image

logger = logging.getLogger(__name__)

# A frame on the socket is multiprocessing.Connection's: a signed 4-byte big-endian length, then
# that many bytes, so the decode process reads with Connection.recv_bytes. Answers start with the
# request's number, so one that cannot be unpickled still fails the right caller.
_LENGTH = struct.Struct("!i")
_REQUEST_ID = struct.Struct("!q")
_READ_CHUNK = 1 << 18
WAITING_PER_PROCESS = 2  # decodes handed to a process at once: one running, the next queued behind


@dataclass(frozen=True)
class _Slot:
    segment: str  # the shared memory segment's name
    offset: int
    size: int


@dataclass(frozen=True)
class _Markers:
    """Fault injection: the byte strings that make a decode process crash, or hang."""

    crash: bytes | None = None
    hang: bytes | None = None


@dataclass(frozen=True)
class _InSlot:
    """What a decode process answers when the pixels are in the slot: the image less its pixels."""

    shape: tuple[int, ...]
    format: str
    original_width: int
    original_height: int


_segments: dict[str, shared_memory.SharedMemory] = {}  # in a decode process: the segments it has opened


def _decode(
    data: bytes, limits: ImageLimits, max_side: int | None, markers: _Markers, slot: _Slot | None = None
) -> DecodedImage | _InSlot:
    # Fault injection (faults.Failpoints): bytes holding a marker kill this process as a native
    # crash in a codec would, or keep it busy for good, before decoding.
    if markers.crash and markers.crash in data:
        os.abort()
    if markers.hang and markers.hang in data:
        time.sleep(1e6)
    image = decode_image(data, limits, max_side=max_side)
    if slot is None or image.rgb.nbytes > slot.size:
        return image
    if slot.segment not in _segments:
        # Opened once per process. It registers with the worker's resource tracker (shared through
        # the fork server), which removes the segment should the worker die without closing it.
        _segments[slot.segment] = shared_memory.SharedMemory(name=slot.segment)
    buffer = _segments[slot.segment].buf
    np.ndarray(image.rgb.shape, np.uint8, buffer=buffer, offset=slot.offset)[...] = image.rgb
    return _InSlot(image.rgb.shape, image.format, image.original_width, image.original_height)


def _serve(conn: Connection, parent: int, markers: _Markers) -> None:
    """A decode process: answer requests, one at a time, until the worker closes the socket."""
    child_of(parent)
    while True:
        try:
            header = conn.recv_bytes()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        request_id, limits, max_side, slot = pickle.loads(header)  # noqa: S301 - from the worker that started it
        answer: tuple[str, Any]
        try:
            answer = ("ok", _decode(data, limits, max_side, markers, slot))
        except Exception as exc:  # noqa: BLE001 - the worker decides what a failed decode means
            answer = ("error", exc)
        try:
            payload = pickle.dumps(answer)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle, in one line
            payload = pickle.dumps(("error", RuntimeError(f"{type(answer[1]).__name__}: {exc}")))
        try:
            conn.send_bytes(_REQUEST_ID.pack(request_id) + payload)
        except OSError:
            return


class _Died(Exception):
    """The decode process ended while it held the request (``timed_out``: it was killed for
    spending too long on one image)."""

    def __init__(self, *, timed_out: bool = False) -> None:
        super().__init__()
        self.timed_out = timed_out


@dataclass(eq=False)
class _Request:
    id: int
    header: bytes
    data: bytes
    answer: asyncio.Future[Any] | None = None  # the caller's; None once nobody waits
    ended: bool = False  # answered, or its process is gone: nothing can write its slot any more
    on_end: list[Callable[[], None]] = field(default_factory=list)

    def end(self) -> None:
        self.ended = True
        for callback in self.on_end:
            callback()
        self.on_end.clear()


class _DecodeProcess:
    """One decode process and the worker's end of its socket, driven by the event loop."""

    def __init__(
        self,
        context: Any,
        markers: _Markers,
        on_death: Callable[[_DecodeProcess], None],
        timeout: float | None = None,
    ) -> None:
        ours, theirs = socket.socketpair()
        their_end = Connection(theirs.detach())
        self._proc = context.Process(target=_serve, args=(their_end, os.getpid(), markers), name="visionq-decode")
        try:
            self._proc.start()
        finally:
            # The process has its own copy now; ours must go, or its death would never read as the
            # end of the socket here.
            their_end.close()
        ours.setblocking(False)
        self._sock = ours
        self._on_death = on_death
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()  # what the socket could not take yet
        self._in = bytearray()
        self.pending: dict[int, _Request] = {}
        self.dead = False
        self._closed = False
        # The watchdog: since when the process has been on the image it is decoding now.
        self._timeout = timeout
        self._busy_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.timed_out = False

    def send(self, request: _Request) -> None:
        """Queue ``request``; its answer (or _Died) lands in ``request.answer``."""
        loop = asyncio.get_running_loop()
        if self.dead:
            request.end()  # never sent: nothing can write its slot
            raise _Died
        self._attach(loop)
        self.pending[request.id] = request
        if self._busy_since is None:
            self._busy_since = time.monotonic()
            self._watch(loop)
        parts = [_LENGTH.pack(len(request.header)), request.header, _LENGTH.pack(len(request.data)), request.data]
        if self._out:
            self._out += b"".join(parts)
            return
        try:
            sent = self._sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        except OSError:  # the process is gone; the reader finds out and fails what it held
            return
        total = sum(map(len, parts))
        if sent < total:
            self._out += b"".join(parts)[sent:]
            loop.add_writer(self._sock, self._flush)

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the socket on ``loop`` (the worker runs one loop; tests run several in turn)."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._cancel_watch()  # a timer of a loop that is gone would never fire
        self._loop = loop
        loop.add_reader(self._sock, self._readable)
        if self._out:
            loop.add_writer(self._sock, self._flush)
        self._watch(loop)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._out)  # gone: the reader sees the end
        del self._out[:sent]
        if not self._out and self._loop is not None:
            self._loop.remove_writer(self._sock)

    def _readable(self) -> None:
        try:
            chunk = self._sock.recv(_READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost()
            return
        self._in += chunk
        while len(self._in) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._in)
            if len(self._in) < _LENGTH.size + size:
                break
            frame = bytes(self._in[_LENGTH.size : _LENGTH.size + size])
            del self._in[: _LENGTH.size + size]
            self._answered(frame)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timeout is not None and self._timer is None and self._busy_since is not None:
            self._timer = loop.call_later(self._busy_since + self._timeout - time.monotonic(), self._check)

    def _cancel_watch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """The watchdog's turn: kill a process that has been on one image too long (its socket
        then ends, and ``_lost`` fails what it held); else look again when the current one is due."""
        self._timer = None
        if self.dead or self._busy_since is None or self._timeout is None or self._loop is None:
            return
        if time.monotonic() - self._busy_since >= self._timeout:
            logger.warning("a decode process spent over %.0f s on one image: killing it", self._timeout)
            self.timed_out = True
            self._proc.kill()
            return
        self._watch(self._loop)

    def _answered(self, frame: bytes) -> None:
        (request_id,) = _REQUEST_ID.unpack_from(frame)
        # Requests are answered in the order they were sent: the next one starts now.
        self._busy_since = time.monotonic() if len(self.pending) > 1 else None
        request = self.pending.pop(request_id, None)
        if request is None:
            return
        try:
            kind, payload = pickle.loads(frame[_REQUEST_ID.size :])  # noqa: S301 - from its own decode process
        except Exception as exc:  # noqa: BLE001 - a broken answer fails its request, not the worker
            kind, payload = "error", RuntimeError(f"a decode process's answer could not be read: {exc!r}")
        request.end()
        if request.answer is not None and not request.answer.done():
            if kind == "ok":
                request.answer.set_result(payload)
            else:
                request.answer.set_exception(payload)

    def _lost(self) -> None:
        """The socket ended: the process is gone. Fail what it held (its callers retry alone)."""
        if self.dead:
            return
        self.dead = True
        self.close()
        held, self.pending = list(self.pending.values()), {}
        for request in held:
            request.end()
            if request.answer is not None and not request.answer.done():
                request.answer.set_exception(_Died(timed_out=self.timed_out))
        self._on_death(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_watch()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._sock.close()  # the process reads the end of its socket and returns

    def end(self, wait: float) -> None:
        self.close()
        end_process(self._proc, wait=wait)


class _Slots:
    """A shared memory segment cut into slots, one per decode in flight.

    A slot is free again only once no decode process can still write into it: a decode whose
    caller was cancelled (a deadline, a shutdown) goes on running in its process, and its pixels
    must not land in a slot handed to another image meanwhile."""

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.size = slot_bytes
        self.segment = shared_memory.SharedMemory(create=True, size=count * slot_bytes)
        self._free = list(range(count))
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def slot(self, index: int) -> _Slot:
        return _Slot(self.segment.name, index * self.size, self.size)

    async def acquire(self) -> int:
        while not self._free:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # it was this one's turn: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        return self._free.pop()

    def release(self, index: int) -> None:
        self._free.append(index)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def release_when_done(self, index: int, request: _Request | None) -> None:
        """Free ``index`` now if ``request`` (its last submission) can no longer write into it,
        else once it ends."""
        if request is None or request.ended:
            self.release(index)
        else:
            request.on_end.append(lambda: self.release(index))

    def take(self, slot: _Slot, answer: DecodedImage | _InSlot) -> DecodedImage:
        """The decoded image, its pixels copied out of ``slot`` (which may then be reused)."""
        if isinstance(answer, DecodedImage):
            return answer
        view = np.ndarray(answer.shape, np.uint8, buffer=self.segment.buf, offset=slot.offset)
        return DecodedImage(
            rgb=view.copy(),
            format=answer.format,
            original_width=answer.original_width,
            original_height=answer.original_height,
        )

    def close(self) -> None:
        self.segment.close()
        self.segment.unlink()


def _shared_slots(count: int, slot_bytes: int) -> _Slots | None:
    """The slots, or None where no shared memory can be made (AWS Lambda has no /dev/shm): the
    pixels then come back pickled, through the socket, which costs the worker more CPU per image
    (bench/RESULTS.md run 11) but keeps the decoder's crashes out of its process."""
    try:
        return _Slots(count, slot_bytes)
    except OSError as exc:
        logger.info("no shared memory here (%s): decoded pixels come back through the decode processes' sockets", exc)
        return None


class DecodePool:
    def __init__(
        self,
        processes: int,
        *,
        slot_side: int | None = None,
        timeout: float | None = None,
        crash_marker: str | None = None,
        hang_marker: str | None = None,
    ) -> None:
        """``slot_side``: the longest side the images are decoded to (the models' largest input
        size); None passes every image back pickled. ``timeout``: the longest a process may spend
        on one image (None: no limit). The markers: fault injection (``faults.Failpoints``)."""
        self.processes = processes
        # A slot per decode a process can hold: one being written while the next waits.
        self._slots = _shared_slots(WAITING_PER_PROCESS * processes, slot_side * slot_side * 3) if slot_side else None
        self._markers = _Markers(
            crash=crash_marker.encode() if crash_marker else None, hang=hang_marker.encode() if hang_marker else None
        )
        self.timeout = timeout
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["visionq.decode_pool"])
        self._ids = itertools.count()
        self.crashes = 0  # decode processes lost to a crash, for the log and the tests
        # After a crash every decode the process held is retried alone; a few at a time, not all at once.
        self._solo: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._closed = False
        # Started now, not on the first image (the fork server imports the decoder: about a second).
        self._processes = [self._start() for _ in range(processes)]

    def _start(self) -> _DecodeProcess:
        return _DecodeProcess(self._context, self._markers, self._replace, self.timeout)

    def _replace(self, dead: _DecodeProcess) -> None:
        """A new process in place of one that died (it took only the decodes it held)."""
        if self._closed or dead not in self._processes:
            return
        self.crashes += 1
        logger.warning(
            "a decode process %s; starting a new one (the images it held are retried alone)",
            "was killed" if dead.timed_out else "died",
        )
        dead.end(wait=1)
        self._processes[self._processes.index(dead)] = self._start()

    def _solo_semaphore(self) -> asyncio.Semaphore:
        # An asyncio semaphore belongs to the loop that first waits on it: one per loop (the worker
        # runs one; tests run several in turn).
        loop = asyncio.get_running_loop()
        if self._solo is None or self._solo[0] is not loop:
            self._solo = (loop, asyncio.Semaphore(self.processes))
        return self._solo[1]

    async def decode(self, data: bytes, limits: ImageLimits, *, max_side: int | None) -> DecodedImage:
        submitted: list[_Request] = []  # every submission of this image; only the last can still run
        if self._slots is None:
            image = await self._decode(data, limits, max_side, None, submitted)
            assert isinstance(image, DecodedImage)
            return image
        index = await self._slots.acquire()
        try:
            slot = self._slots.slot(index)
            return self._slots.take(slot, await self._decode(data, limits, max_side, slot, submitted))
        finally:
            self._slots.release_when_done(index, submitted[-1] if submitted else None)

    async def _decode(
        self, data: bytes, limits: ImageLimits, max_side: int | None, slot: _Slot | None, submitted: list[_Request]
    ) -> DecodedImage | _InSlot:
        try:
            return await self._ask(
                min(self._processes, key=lambda p: len(p.pending)), data, (limits, max_side, slot), submitted
            )
        except _Died:
            pass
        # Alone, in a process of its own: was it this image, or one decoded beside it?
        async with self._solo_semaphore():
            solo = _DecodeProcess(self._context, self._markers, lambda _: None, self.timeout)
            try:
                return await self._ask(solo, data, (limits, max_side, slot), submitted)
            except _Died as died:
                if died.timed_out:
                    logger.warning(
                        "an image outlasted the decode timeout twice, alone the second time: failing its job"
                    )
                    raise ImageRejected(
                        f"the image takes longer than {self.timeout:.0f} s to decode; it cannot be read",
                        code="decode_timeout",
                    ) from None
                logger.warning("an image crashed the decoder twice, alone the second time: failing its job")
                raise ImageRejected(
                    "the image crashes the decoder (the process decoding it died); it cannot be read",
                    code="decoder_crashed",
                ) from None
            finally:
                if submitted[-1].ended:
                    solo.close()  # it reads the end of its socket and exits
                else:  # a cancelled caller: the process is still decoding; it goes once it answers
                    submitted[-1].on_end.append(solo.close)

    async def _ask(
        self,
        process: _DecodeProcess,
        data: bytes,
        how: tuple[ImageLimits, int | None, _Slot | None],
        submitted: list[_Request],
    ) -> DecodedImage | _InSlot:
        """Decode ``data`` in ``process`` (``how``: the limits, the longest side, the slot)."""
        request_id = next(self._ids)
        request = _Request(request_id, pickle.dumps((request_id, *how)), data)
        request.answer = asyncio.get_running_loop().create_future()
        submitted.append(request)
        process.send(request)
        try:
            answer: DecodedImage | _InSlot = await request.answer
            return answer
        finally:
            request.answer = None

    def close(self) -> None:
        self._closed = True
        for process in self._processes:
            process.close()
        for process in self._processes:
            process.end(wait=2)
        if self._slots is not None:
            self._slots.close()
