"""Decoding in disposable processes: an image that crashes the decoder fails alone; the images
decoded beside it, and every image after it, are decoded as usual, and the test process lives."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.fakes import no_shared_memory
from visionq.decode_pool import DecodePool
from visionq.errors import ImageRejected
from visionq.images import DecodedImage, ImageLimits

LIMITS = ImageLimits(max_bytes=10_000_000, max_pixels=50_000_000)
MARKER = "visionq-test-crash-the-decoder"
HANG = "visionq-test-hang-the-decoder"


def png(value: int, *, crash: bool = False, hang: bool = False) -> bytes:
    image = Image.fromarray(np.full((48, 64, 3), value, np.uint8))
    buf = io.BytesIO()
    info = None
    if crash or hang:  # the marker rides in a text chunk: a valid PNG whose decoding kills (hangs) its process
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_text("Comment", MARKER if crash else HANG)
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture(params=["pickled", "shared-memory", "no-dev-shm"])
def pool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[DecodePool]:
    if request.param == "no-dev-shm":
        no_shared_memory(monkeypatch)
    decode_pool = DecodePool(2, crash_marker=MARKER, slot_side=None if request.param == "pickled" else 64)
    yield decode_pool
    decode_pool.close()


def test_without_shared_memory_the_pixels_come_back_through_the_socket(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_shared_memory(monkeypatch)
    with caplog.at_level("INFO", logger="visionq.decode_pool"):
        pool = DecodePool(2, slot_side=64)
    try:
        assert pool._slots is None
        images = asyncio.run(_decoded_all(pool, range(10)))
    finally:
        pool.close()
    assert [(int(image.rgb[-1, -1, 2]), image.rgb.shape) for image in images] == [(v, (48, 64, 3)) for v in range(10)]
    assert [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()] == [
        "no shared memory here ([Errno 38] Function not implemented): decoded pixels come back through"
        " the decode processes' sockets"
    ]


async def _decoded_all(pool: DecodePool, values: range) -> list[DecodedImage]:
    return list(await asyncio.gather(*(pool.decode(png(v), LIMITS, max_side=64) for v in values)))


def test_many_images_through_few_slots_each_keep_their_own_pixels() -> None:
    pool = DecodePool(2, slot_side=64)  # 4 slots for 40 images decoded at once
    segment = pool._slots.segment.name if pool._slots else ""

    async def run() -> list[tuple[int, tuple[int, ...]]]:
        images = await asyncio.gather(*(pool.decode(png(v), LIMITS, max_side=64) for v in range(40)))
        return [(int(image.rgb[-1, -1, 2]), image.rgb.shape) for image in images]

    try:
        assert asyncio.run(run()) == [(v, (48, 64, 3)) for v in range(40)]
    finally:
        pool.close()
    assert segment and not Path("/dev/shm", segment).exists()  # closed: the segment is gone


def test_an_image_larger_than_a_slot_comes_back_whole() -> None:
    pool = DecodePool(1, slot_side=16)  # a slot holds 16 x 16; this image is decoded to 32 x 24
    try:
        image = asyncio.run(pool.decode(png(7), LIMITS, max_side=32))
    finally:
        pool.close()
    assert image.rgb.shape == (24, 32, 3) and int(image.rgb[5, 5, 1]) == 7


def test_images_decode_in_processes(pool: DecodePool) -> None:
    async def run() -> list[int]:
        images = await asyncio.gather(*(pool.decode(png(v), LIMITS, max_side=32) for v in (10, 20, 30)))
        return [int(image.rgb[0, 0, 0]) for image in images]

    assert asyncio.run(run()) == [10, 20, 30]


def test_an_image_that_crashes_the_decoder_fails_alone(pool: DecodePool) -> None:
    async def run() -> list[object]:
        data = [png(1), png(2, crash=True), png(3), png(4)]
        return await asyncio.gather(*(pool.decode(d, LIMITS, max_side=None) for d in data), return_exceptions=True)

    results = asyncio.run(run())
    error = results[1]
    assert isinstance(error, ImageRejected) and error.code == "decoder_crashed"
    assert [int(r.rgb[0, 0, 0]) for r in (results[0], results[2], results[3])] == [1, 3, 4]  # type: ignore[union-attr]
    assert pool.crashes == 1

    async def after() -> int:
        return int((await pool.decode(png(5), LIMITS, max_side=None)).rgb[0, 0, 0])

    assert asyncio.run(after()) == 5  # a new pool serves what comes next


def test_an_image_that_hangs_the_decoder_fails_alone_and_the_pool_recovers() -> None:
    """A decode that never ends: its process is killed after the timeout, the image queued behind
    it on that process is decoded again elsewhere, the one that hangs again alone fails with
    decode_timeout, and the pool is whole again for what comes next."""
    pool = DecodePool(2, slot_side=64, timeout=0.5, hang_marker=HANG)

    async def run() -> list[object]:
        data = [png(1), png(2, hang=True), png(3), png(4), png(5)]
        return await asyncio.gather(*(pool.decode(d, LIMITS, max_side=64) for d in data), return_exceptions=True)

    async def after() -> list[int]:
        images = await asyncio.gather(*(pool.decode(png(v), LIMITS, max_side=64) for v in (6, 7, 8, 9)))
        return [int(image.rgb[0, 0, 0]) for image in images]

    try:
        results = asyncio.run(asyncio.wait_for(run(), 30))
        error = results[1]
        assert isinstance(error, ImageRejected) and error.code == "decode_timeout"
        assert [int(r.rgb[0, 0, 0]) for i, r in enumerate(results) if i != 1] == [1, 3, 4, 5]  # type: ignore[union-attr]
        assert pool.crashes == 1
        assert asyncio.run(asyncio.wait_for(after(), 30)) == [6, 7, 8, 9]
    finally:
        pool.close()


def test_a_bad_image_is_still_a_plain_rejection(pool: DecodePool) -> None:
    with pytest.raises(ImageRejected) as raised:
        asyncio.run(pool.decode(b"not an image at all", LIMITS, max_side=None))
    assert raised.value.code == "unsupported_format"
    assert pool.crashes == 0


def test_a_slot_is_free_again_only_once_no_process_can_write_into_it() -> None:
    """A decode whose caller gave up (a deadline) goes on in its process: its slot must not be
    handed to the next image before that process is done with it."""
    from visionq.decode_pool import _Request, _Slots

    async def run() -> list[str]:
        slots = _Slots(1, 16)
        seen: list[str] = []
        try:
            index = await slots.acquire()
            running = _Request(0, b"", b"")  # in a decode process, its caller gone
            slots.release_when_done(index, running)
            waiting = asyncio.ensure_future(slots.acquire())
            await asyncio.sleep(0.05)
            seen.append("waiting" if not waiting.done() else "handed out too early")
            running.end()  # the process answers (or dies)
            await asyncio.wait_for(waiting, 5)
            seen.append("handed out")
            answered = _Request(1, b"", b"")
            answered.end()
            slots.release_when_done(waiting.result(), answered)
            seen.append("free at once" if await asyncio.wait_for(slots.acquire(), 1) == 0 else "?")
        finally:
            slots.close()
        return seen

    assert asyncio.run(run()) == ["waiting", "handed out", "free at once"]


def test_a_caller_that_gives_up_leaves_its_slot_to_the_process_until_it_answers() -> None:
    """Through the pool: two callers cancelled while their images are in the decode process; their
    slots stay taken until the process has answered, then serve the next images."""
    pool = DecodePool(1, slot_side=64)  # 2 slots
    assert pool._slots is not None
    slots = pool._slots

    async def run() -> tuple[int, int, list[int]]:
        first = [asyncio.ensure_future(pool.decode(png(200 + v), LIMITS, max_side=64)) for v in range(2)]
        await asyncio.sleep(0)  # both sent to the process
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        free_after_cancel = len(slots._free)
        for _ in range(500):  # the process answers both within a few ms
            if len(slots._free) == 2:
                break
            await asyncio.sleep(0.01)
        images = await asyncio.gather(*(pool.decode(png(v), LIMITS, max_side=64) for v in range(6)))
        return free_after_cancel, len(slots._free), [int(image.rgb[0, 0, 0]) for image in images]

    try:
        assert asyncio.run(run()) == (0, 2, list(range(6)))
    finally:
        pool.close()
