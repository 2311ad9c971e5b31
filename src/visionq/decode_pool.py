"""Decoding in disposable processes: an image that crashes the decoder kills a decode process, not
the worker (VISIONQ_DECODE_PROCESSES > 0).

A native crash in a codec (a segfault in libjpeg, libpng, libwebp...) takes down whatever process
runs it. In the worker's own process it takes every message the worker holds with it: they come
back with one more receive, and an image that crashes every time drags its batch-mates towards the
dead-letter queue. Here the pool breaks instead; every decode it held is retried alone, in a
process of its own: the innocent ones succeed, the one that crashes again is that image's fault
and its job ends FAILED (``decoder_crashed``) while the worker goes on.

Processes are started by a fork server (never ``fork`` from a process with threads), which
imports the decoder once. The decoded pixels come back through shared memory: each decode in
flight holds a slot of a segment the worker made (sized for the models' input, ``slot_side``), the
process writes the pixels there, and the worker copies them out (one memcpy; pickling them
through the pool's pipe cost 1.4 ms more per 640 px image, bench/RESULTS.md run 11). A slot is
reused only once no process can still write into it.
An image that does not fit a slot (a model without an input size) still comes back pickled.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from visionq.child_process import child_of
from visionq.errors import ImageRejected
from visionq.images import DecodedImage, ImageLimits, decode_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Slot:
    segment: str  # the shared memory segment's name
    offset: int
    size: int


@dataclass(frozen=True)
class _InSlot:
    """What a decode process answers when the pixels are in the slot: the image less its pixels."""

    shape: tuple[int, ...]
    format: str
    original_width: int
    original_height: int


_segments: dict[str, shared_memory.SharedMemory] = {}  # in a decode process: the segments it has opened


def _decode(
    data: bytes, limits: ImageLimits, max_side: int | None, crash_marker: bytes | None, slot: _Slot | None = None
) -> DecodedImage | _InSlot:
    # Fault injection (faults.Failpoints.crash_decoder_on): bytes holding the marker kill this
    # process as a native crash in a codec would, before decoding.
    if crash_marker and crash_marker in data:
        os.abort()
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

    def release_when_done(self, index: int, calls: list[concurrent.futures.Future[Any]]) -> None:
        """Free ``index`` now if none of ``calls`` can still write into it, else once it ends. Only
        the last submission can still be running: each earlier one ended when its pool broke."""
        for call in calls:
            call.cancel()  # one still queued is dropped; one already running cannot be stopped
        if not calls or calls[-1].done():
            self.release(index)
            return
        loop = asyncio.get_running_loop()

        def ended(_: concurrent.futures.Future[Any]) -> None:  # on the pool's thread
            try:
                loop.call_soon_threadsafe(self.release, index)
            except RuntimeError:  # the loop is closed: nobody waits on it any more
                self._free.append(index)

        calls[-1].add_done_callback(ended)

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


Call = functools.partial[DecodedImage | _InSlot]


async def _submit(
    pool: ProcessPoolExecutor, call: Call, calls: list[concurrent.futures.Future[Any]]
) -> DecodedImage | _InSlot:
    """``call`` in ``pool``; its future is added to ``calls`` (whoever holds its slot must know
    whether it can still run)."""
    future = pool.submit(call)
    calls.append(future)
    return await asyncio.wrap_future(future)


class DecodePool:
    def __init__(self, processes: int, *, crash_marker: str | None = None, slot_side: int | None = None) -> None:
        """``slot_side``: the longest side the images are decoded to (the models' largest input
        size); None passes every image back pickled."""
        self.processes = processes
        # Two slots a process: one being written while the worker copies the other out.
        self._slots = _Slots(2 * processes, slot_side * slot_side * 3) if slot_side else None
        self._crash_marker = crash_marker.encode() if crash_marker else None
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["visionq.decode_pool"])
        self._pool = self._new_pool(processes)
        self.crashes = 0  # pools lost to a crash, for the log and the tests
        # After a crash every decode in flight is retried alone; a few at a time, not all at once.
        self._solo: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        # Start the fork server and the processes now, not on the first image (about a second).
        for _ in range(processes):
            self._pool.submit(int)

    def _solo_semaphore(self) -> asyncio.Semaphore:
        # An asyncio semaphore belongs to the loop that first waits on it: one per loop (the worker
        # runs one; tests run several in turn).
        loop = asyncio.get_running_loop()
        if self._solo is None or self._solo[0] is not loop:
            self._solo = (loop, asyncio.Semaphore(self.processes))
        return self._solo[1]

    def _new_pool(self, processes: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(processes, mp_context=self._context, initializer=child_of, initargs=(os.getpid(),))

    async def decode(self, data: bytes, limits: ImageLimits, *, max_side: int | None) -> DecodedImage:
        calls: list[concurrent.futures.Future[Any]] = []  # every submission of this image
        if self._slots is None:
            image = await self._decode(functools.partial(_decode, data, limits, max_side, self._crash_marker), calls)
            assert isinstance(image, DecodedImage)
            return image
        index = await self._slots.acquire()
        try:
            slot = self._slots.slot(index)
            call = functools.partial(_decode, data, limits, max_side, self._crash_marker, slot)
            return self._slots.take(slot, await self._decode(call, calls))
        finally:
            self._slots.release_when_done(index, calls)

    async def _decode(self, call: Call, calls: list[concurrent.futures.Future[Any]]) -> DecodedImage | _InSlot:
        pool = self._pool
        try:
            return await _submit(pool, call, calls)
        except BrokenProcessPool:
            self._replace(pool)
        # Alone, in a process of its own: was it this image, or a batch-mate?
        async with self._solo_semaphore():
            return await self._decode_alone(call, calls)

    async def _decode_alone(self, call: Call, calls: list[concurrent.futures.Future[Any]]) -> DecodedImage | _InSlot:
        solo = self._new_pool(1)
        try:
            return await _submit(solo, call, calls)
        except BrokenProcessPool:
            logger.warning("an image crashed the decoder twice, alone the second time: failing its job")
            raise ImageRejected(
                "the image crashes the decoder (the process decoding it died); it cannot be read",
                code="decoder_crashed",
            ) from None
        finally:
            solo.shutdown(wait=False)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for everyone, once per broken pool (many decodes learn of it at once)."""
        if self._pool is broken:
            self.crashes += 1
            logger.warning("a decode process died; starting new ones (the images it held are retried alone)")
            self._pool = self._new_pool(self.processes)
            broken.shutdown(wait=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._slots is not None:
            self._slots.close()
