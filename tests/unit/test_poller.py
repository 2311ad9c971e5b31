"""The long-running driver: supervision of its stages, and messages SQS hands out twice."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tests.unit.fakes import FakeModel, FakeQueue, MemoryJobStore, MemoryObjects, MemoryResults, message, png, settings
from visionq.core import Processor
from visionq.jobs import JobStatus, direct_upload_job_id
from visionq.models.registry import LoadedModels
from visionq.poller import Pipeline, Poller
from visionq.stores.queue import Message


class Rig:
    def __init__(self, model: FakeModel | None = None, pipeline: Pipeline | None = None, **overrides: Any) -> None:
        self.settings = settings(**overrides)
        self.jobs, self.objects, self.results = MemoryJobStore(), MemoryObjects(), MemoryResults()
        self.model = model or FakeModel()
        self.queue = FakeQueue()
        pipeline = pipeline or Pipeline(max_batch=1, max_wait=0.0, prefetch=4, receivers=1)
        self.processor = Processor(
            settings=self.settings,
            jobs=self.jobs,
            objects=self.objects,
            results=self.results,
            models=LoadedModels.of(self.model),
            max_batch=pipeline.max_batch,
            max_wait=pipeline.max_wait,
        )
        self.poller = Poller(settings=self.settings, processor=self.processor, queue=self.queue, pipeline=pipeline)

    def status(self, key: str, etag: str) -> JobStatus:
        return self.jobs.jobs[direct_upload_job_id("bkt", key, etag)].status


async def _until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_an_unexpected_error_in_the_acknowledger_ends_the_worker_instead_of_stalling_it() -> None:
    """Hole 2: a non-transient error in the delete (or lease) loop ended that task silently; slots
    were never returned and the worker stopped receiving while looking alive."""
    rig = Rig()
    obj = rig.objects.put("uploads/cam/a.png", png(1))
    rig.queue.inbox.append(message(obj))
    rig.queue.delete_error = RuntimeError("a bug in the acknowledger")

    async def main() -> None:
        async with asyncio.timeout(20):  # a stall fails the test instead of hanging it
            await rig.poller.run(asyncio.Event())

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(main())
    assert caught.group_contains(RuntimeError, match="a bug in the acknowledger")
    rig.processor.close()


def test_an_unexpected_error_in_the_lease_loop_ends_the_worker() -> None:
    rig = Rig(visibility_timeout=3)
    rig.model.gate = threading.Event()  # keep a message held so the lease loop has work
    obj = rig.objects.put("uploads/cam/b.png", png(2))
    rig.queue.inbox.append(message(obj))
    rig.queue.lease_error = KeyError("a bug in the lease loop")

    async def main() -> None:
        async with asyncio.timeout(20):
            await rig.poller.run(asyncio.Event())

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(main())
    rig.model.gate.set()
    assert caught.group_contains(KeyError)
    rig.processor.close()


def test_a_message_redelivered_while_held_is_not_acknowledged_early_and_its_new_receipt_is_used() -> None:
    """Hole 3: the redelivery overwrote the held entry and was acknowledged at once, deleting the
    message while the first run was still in flight; if that run then failed, the job stayed
    RUNNING forever. Now the new receipt handle is adopted and the work runs once."""
    rig = Rig(visibility_timeout=3)
    obj = rig.objects.put("uploads/cam/c.png", png(3))
    first = message(obj, message_id="m1", receipt="r1")
    again = Message("m1", "r2", first.body, 2)
    rig.model.gate = threading.Event()
    rig.queue.inbox.append(first)
    rig.queue.refuse_visibility.add("m1")  # its lease extension fails, so SQS hands it out again
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(rig.poller.run(stop))
        await asyncio.to_thread(rig.model.entered.wait, 5)
        await _until(lambda: rig.queue.released)  # the failed lease extension was tried (and refused)
        rig.queue.inbox.append(again)
        await _until(lambda: rig.poller.redelivered_in_hand == 1)
        await asyncio.sleep(0.8)  # longer than the delete linger: an early ack would show now
        assert rig.queue.deleted == []
        rig.model.gate.set()
        await _until(lambda: rig.queue.deleted)
        stop.set()
        await task

    asyncio.run(main())
    rig.processor.close()
    assert [m.receipt_handle for m in rig.queue.deleted] == ["r2"]
    assert len(rig.model.batches) == 1
    assert rig.status(obj.key, obj.etag) is JobStatus.SUCCEEDED


def test_a_retried_message_is_given_back_with_a_backoff_and_a_done_one_deleted() -> None:
    rig = Rig(max_attempts=5)
    ok = rig.objects.put("uploads/cam/ok.png", png(4))
    missing_bucket_read = rig.objects.put("uploads/cam/flaky.png", png(5))
    from visionq.errors import TransientError

    rig.objects.faults.fail("read", TransientError("S3 slow down"))
    rig.queue.inbox.extend([message(missing_bucket_read, message_id="f", receive_count=2)])
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(rig.poller.run(stop))
        await _until(lambda: rig.queue.released)
        rig.queue.inbox.append(message(ok, message_id="k"))
        await _until(lambda: rig.queue.deleted)
        stop.set()
        await task

    asyncio.run(main())
    rig.processor.close()
    assert [(m.message_id, delay) for m, delay in rig.queue.released] == [("f", 4)]
    assert [m.message_id for m in rig.queue.deleted] == ["k"]


class AnswerOnCue(FakeQueue):
    """A long poll that answers when told: SQS hands out messages as the worker is told to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.polling = asyncio.Event()
        self.answer = asyncio.Event()

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]:
        self.polling.set()
        await self.answer.wait()
        taken, self.inbox = self.inbox[:max_messages], self.inbox[max_messages:]
        return taken


def test_messages_a_long_poll_brings_after_the_stop_are_given_back_at_once_not_dropped() -> None:
    """Cancelling the poll would leave them hidden for their visibility timeout; they are released
    at once instead, untouched."""
    rig = Rig()
    rig.queue = queue = AnswerOnCue()
    rig.poller.queue = queue
    late = rig.objects.put("uploads/cam/late.png", png(6))
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(rig.poller.run(stop))
        await asyncio.wait_for(queue.polling.wait(), 5)
        stop.set()
        await asyncio.sleep(0.1)
        queue.inbox.append(message(late, message_id="late"))
        queue.answer.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    rig.processor.close()
    assert [(m.message_id, delay) for m, delay in queue.released] == [("late", 0)]
    assert queue.deleted == [] and rig.jobs.jobs == {} and rig.model.batches == []


def test_a_long_poll_that_never_answers_holds_the_stop_no_longer_than_its_wait() -> None:
    rig = Rig()  # poll_wait_seconds=1
    rig.queue = queue = AnswerOnCue()
    rig.poller.queue = queue
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(rig.poller.run(stop))
        await asyncio.wait_for(queue.polling.wait(), 5)
        stop.set()
        await asyncio.wait_for(task, 10)  # SQS never answers (queue.answer is never set): no hang

    asyncio.run(main())
    rig.processor.close()
    assert queue.released == []


def test_a_model_stuck_on_a_batch_stops_the_worker_and_gives_back_the_jobs_waiting_for_it() -> None:
    """A model in the worker's process that never returns (a device hang, a loop): the jobs queued
    behind its batch are not its fault and go back to the queue unfailed (they ended FAILED
    deadline_exceeded, one after another, while the worker took more); the worker stops by itself,
    saying why, for its supervisor to start a new one. The stuck batch's own job ends by its deadline."""
    rig = Rig(job_deadline_seconds=2, shutdown_grace_seconds=1)
    rig.model.gate = threading.Event()  # never set while the worker runs: the model hangs
    objects = [rig.objects.put(f"uploads/cam/{i}.png", png(i + 1)) for i in range(3)]
    rig.queue.inbox += [message(o, message_id=f"m{i}", receipt=f"r{i}") for i, o in enumerate(objects)]

    async def main() -> None:
        async with asyncio.timeout(30):
            await rig.poller.run(asyncio.Event())  # returns: nothing told it to stop

    try:
        asyncio.run(main())
    finally:
        rig.model.gate.set()
        rig.processor.close()
    assert rig.poller.stuck is not None and "model 'default' has run one batch for" in rig.poller.stuck
    statuses = {f"m{i}": rig.jobs.status(direct_upload_job_id("bkt", o.key, o.etag)) for i, o in enumerate(objects)}
    [stuck] = [m for m, status in statuses.items() if status == (JobStatus.FAILED, "deadline_exceeded")]
    waiting = set(statuses) - {stuck}  # the first image prepared went to the model; the others waited
    assert {statuses[m] for m in waiting} == {(JobStatus.RUNNING, None)}  # not failed...
    leases = rig.settings.visibility_timeout  # the lease loop's extensions are recorded as releases too
    assert {m.message_id for m, delay in rig.queue.released if delay != leases} == waiting  # ...but given back
    assert [m.message_id for m in rig.queue.deleted] == [stuck]


def test_a_model_in_its_own_process_is_not_watched_for_hangs() -> None:
    """Such a model ends its own hangs (the process is killed after its answer timeout)."""
    from visionq.models import ends_its_own_hangs
    from visionq.models.own_process import ModelProcess

    assert ends_its_own_hangs(ModelProcess.__new__(ModelProcess))
    assert not ends_its_own_hangs(FakeModel())


class LaunchBoundModel(FakeModel):
    """A model in a process of its own, as its pipe makes it: it takes a second batch while it runs
    one, runs them one after the other, and a call costs the same whatever its size (a GPU's
    captioning, whose generation is bound by kernel launches: bench/RESULTS.md run 25)."""

    def __init__(self, seconds_per_call: float) -> None:
        super().__init__(batches_in_flight=2)
        self.seconds_per_call = seconds_per_call
        self._one_at_a_time = threading.Lock()

    def _predict(self, images: Any) -> Any:
        with self._one_at_a_time:
            time.sleep(self.seconds_per_call)
            return super()._predict(images)


def test_the_default_prefetch_makes_room_for_the_largest_batch_of_any_model() -> None:
    pipeline = Pipeline.from_settings(settings(max_batch=8), "cuda:0", {"caption": 32})
    assert (pipeline.max_batch, pipeline.model_batches, pipeline.prefetch) == (8, {"caption": 32}, 3 * 32 + 20)
    # A prefetch set by hand is kept, but never under a batch some model may be handed.
    assert Pipeline.from_settings(settings(max_batch=8, prefetch=20), "cuda:0", {"caption": 32}).prefetch == 32
    # Naive: one message at a time, whatever a model's entry says.
    naive = Pipeline.from_settings(settings(naive=True), "cuda:0", {"caption": 32})
    assert (naive.max_batch, naive.model_batches, naive.prefetch) == (1, {}, 1)


def test_a_busy_model_gets_full_batches_from_the_default_prefetch() -> None:
    """Run 25 on a GPU: with 32 messages held, a model with a batch running, one queued behind it
    and one being written left a batch being formed too few messages, so batches of 8 went out with
    6.7 images on average and captioning ran at 0.69 x its raw rate. The default now holds room
    for all of them and a receive's ten."""
    model = LaunchBoundModel(seconds_per_call=0.05)
    pipeline = Pipeline.from_settings(settings(max_batch=8), "cuda:0")
    rig = Rig(model=model, pipeline=pipeline, max_batch=8)
    n = 160
    for i in range(n):
        obj = rig.objects.put(f"uploads/cam/{i:03d}.png", png(i % 250))
        rig.queue.inbox.append(message(obj, message_id=f"m{i}", receipt=f"r{i}"))
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(rig.poller.run(stop))
        await _until(lambda: len(rig.queue.deleted) == n, timeout=30)
        stop.set()
        await task

    asyncio.run(main())
    rig.processor.close()
    sizes = [len(batch) for batch in model.batches]
    assert sum(sizes) == n
    # The first batches go out while the first receives come in, and the last holds what is left.
    steady = sizes[2:-1]
    assert sum(steady) / len(steady) >= 7.5, sizes
