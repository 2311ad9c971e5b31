"""Decoding in disposable processes: an image that crashes the decoder kills a decode process, not
the worker (VISIONQ_DECODE_PROCESSES > 0).

A native crash in a codec (a segfault in libjpeg, libpng, libwebp...) takes down whatever process
runs it. In the worker's own process it takes every message the worker holds with it: they come
back with one more receive, and an image that crashes every time drags its batch-mates towards the
dead-letter queue. Here the pool breaks instead; every decode it held is retried alone, in a
process of its own: the innocent ones succeed, the one that crashes again is that image's fault
and its job ends FAILED (``decoder_crashed``) while the worker goes on.

Processes are started by a fork server (never ``fork`` from a process with threads), which
imports the decoder once. The decoded pixels come back pickled: one copy per image (measured in
bench/ceiling.py against decoding in threads).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from visionq.errors import ImageRejected
from visionq.images import DecodedImage, ImageLimits, decode_image

logger = logging.getLogger(__name__)


def _watch_parent(parent: int) -> None:
    """In each decode process: exit once the worker that started the pool is gone (a SIGKILLed
    worker cannot shut its pool down, and its decode processes would otherwise linger)."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # a process of another user took the pid: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _decode(data: bytes, limits: ImageLimits, max_side: int | None, crash_marker: bytes | None) -> DecodedImage:
    # Fault injection (faults.Failpoints.crash_decoder_on): bytes holding the marker kill this
    # process as a native crash in a codec would, before decoding.
    if crash_marker and crash_marker in data:
        os.abort()
    return decode_image(data, limits, max_side=max_side)


class DecodePool:
    def __init__(self, processes: int, *, crash_marker: str | None = None) -> None:
        self.processes = processes
        self._crash_marker = crash_marker.encode() if crash_marker else None
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["visionq.decode_pool"])
        self._pool = self._new_pool(processes)
        self.crashes = 0  # pools lost to a crash, for the log and the tests
        # After a crash every decode in flight is retried alone; a few at a time, not all at once.
        self._solo = asyncio.Semaphore(processes)
        # Start the fork server and the processes now, not on the first image (about a second).
        for _ in range(processes):
            self._pool.submit(int)

    def _new_pool(self, processes: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            processes, mp_context=self._context, initializer=_watch_parent, initargs=(os.getpid(),)
        )

    async def decode(self, data: bytes, limits: ImageLimits, *, max_side: int | None) -> DecodedImage:
        loop = asyncio.get_running_loop()
        pool = self._pool
        call = functools.partial(_decode, data, limits, max_side, self._crash_marker)
        try:
            return await loop.run_in_executor(pool, call)
        except BrokenProcessPool:
            self._replace(pool)
        # Alone, in a process of its own: was it this image, or a batch-mate?
        async with self._solo:
            return await self._decode_alone(call)

    async def _decode_alone(self, call: functools.partial[DecodedImage]) -> DecodedImage:
        solo = self._new_pool(1)
        try:
            return await asyncio.get_running_loop().run_in_executor(solo, call)
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
