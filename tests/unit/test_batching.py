from __future__ import annotations

import asyncio
import random
import time

import pytest

from visionq.batching import BatcherClosed, MicroBatcher


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_full_batch_is_released_at_once() -> None:
    async def main() -> list[int]:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=4, max_wait=60, more_coming=lambda: True)
        for i in range(6):
            batcher.put(i)
        started = time.monotonic()
        batch = await batcher.next_batch()
        assert time.monotonic() - started < 1
        return batch

    assert run(main()) == [0, 1, 2, 3]


def test_a_partial_batch_waits_at_most_max_wait_while_more_is_coming() -> None:
    async def main() -> tuple[list[int], float]:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=8, max_wait=0.2, more_coming=lambda: True)
        batcher.put(1)
        started = time.monotonic()
        batch = await batcher.next_batch()
        return batch, time.monotonic() - started

    batch, waited = run(main())  # type: ignore[misc]
    assert batch == [1]
    assert 0.15 <= waited < 2


def test_items_arriving_within_the_wait_join_the_batch() -> None:
    async def main() -> list[int]:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=3, max_wait=5, more_coming=lambda: True)
        batcher.put(1)

        async def later() -> None:
            await asyncio.sleep(0.05)
            batcher.put(2)
            batcher.put(3)

        task = asyncio.create_task(later())
        batch = await batcher.next_batch()
        await task
        return batch

    assert run(main()) == [1, 2, 3]


def test_no_wait_when_nothing_else_is_coming() -> None:
    async def main() -> float:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=8, max_wait=30, more_coming=lambda: False)
        batcher.put(1)
        started = time.monotonic()
        assert await batcher.next_batch() == [1]
        return time.monotonic() - started

    assert run(main()) < 1  # type: ignore[operator]


def test_close_flushes_what_is_queued_then_reports_closed() -> None:
    async def main() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=2, max_wait=60, more_coming=lambda: True)
        for i in range(3):
            batcher.put(i)
        batcher.close()
        assert await batcher.next_batch() == [0, 1]
        assert await batcher.next_batch() == [2]
        with pytest.raises(BatcherClosed):
            await batcher.next_batch()
        with pytest.raises(BatcherClosed):
            batcher.put(9)

    run(main())


def test_close_wakes_a_waiting_consumer() -> None:
    async def main() -> None:
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=2, max_wait=60, more_coming=lambda: True)
        waiting = asyncio.create_task(batcher.next_batch())
        await asyncio.sleep(0.05)
        batcher.close()
        with pytest.raises(BatcherClosed):
            await asyncio.wait_for(waiting, 2)

    run(main())


def test_concurrent_producers_lose_and_duplicate_nothing() -> None:
    async def main() -> list[list[int]]:
        producing = 3
        batcher: MicroBatcher[int] = MicroBatcher(max_batch=5, max_wait=0.01, more_coming=lambda: producing > 0)

        async def produce(start: int) -> None:
            nonlocal producing
            rng = random.Random(start)
            for i in range(start, start + 100):
                batcher.put(i)
                await asyncio.sleep(rng.random() / 1000)
            producing -= 1
            batcher.poke()

        tasks = [asyncio.create_task(produce(s)) for s in (0, 1000, 2000)]
        batches = []
        while sum(len(b) for b in batches) < 300:
            batches.append(await batcher.next_batch())
        await asyncio.gather(*tasks)
        return batches

    batches = run(main())
    seen = [i for b in batches for i in b]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted([*range(100), *range(1000, 1100), *range(2000, 2100)])
    assert all(1 <= len(b) <= 5 for b in batches)  # type: ignore[attr-defined]
