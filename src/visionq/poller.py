"""The long-running driver of the core (`visionq worker`, ECS/GPU and local): long-polls SQS, holds
messages while the core processes them, keeps their leases, deletes or gives them back.

    receivers (long-polls) ─▶ Processor.process(message), one task per message, all in one
        TaskGroup ─▶ DONE: deleted ten at a time │ RETRY: visible again after a backoff
    leases: every held message kept invisible while its work goes on
    dead-letter sweeper: jobs of messages SQS parked get their terminal state

Every task has this driver's TaskGroup as parent: an unexpected error in any of them ends the
worker with the error logged (a supervisor restarts it), never a stage silently dead.

The worker never holds more than ``prefetch`` messages, which bounds memory and the time a message
waits. A message SQS hands out again while it is still held here (its visibility lapsed) is the
same work: its new receipt handle is adopted, and it is not processed twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from visionq import dead_letters, metrics
from visionq.config import WorkerSettings
from visionq.core import Processor
from visionq.dead_letters import BatchNotices
from visionq.errors import TransientError, VisionqError
from visionq.faults import Failpoints
from visionq.models import GPU_BATCH
from visionq.stores.job_store import JobStore
from visionq.stores.queue import EntryFailure, Message, Queue
from visionq.waiting import wait_event
from visionq.work_items import Expiry, Outcome

logger = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """The knobs, resolved: naive mode is the pipelined one with the concurrency set to one."""

    max_batch: int
    max_wait: float  # seconds
    prefetch: int
    receivers: int
    # The models whose registry entry sets a batch of their own (LoadedModels.own_batches): name ->
    # batch; the others get max_batch.
    model_batches: Mapping[str, int] = field(default_factory=dict)
    # Requests are billed (and cost the emulator CPU): poll only when room for several messages
    # has freed up, and let settled messages linger briefly so deletes go ten at a time. Results
    # are committed before this wait, so it delays no answer, only the delete.
    min_receive: int = field(init=False, default=1)
    delete_linger: float = 0.0  # seconds

    def __post_init__(self) -> None:
        self.min_receive = max(1, min(10, self.prefetch // 3))

    @classmethod
    def from_settings(
        cls, settings: WorkerSettings, device: str, model_batches: Mapping[str, int] | None = None
    ) -> Pipeline:
        if settings.naive:
            return cls(max_batch=1, max_wait=0.0, prefetch=1, receivers=1)
        max_batch = default_max_batch(settings, device)
        largest = max([max_batch, *(model_batches or {}).values()])
        return cls(
            max_batch=max_batch,
            max_wait=settings.max_wait_ms / 1000,
            prefetch=max(settings.prefetch or default_prefetch(largest), largest),
            receivers=settings.receivers,
            model_batches=dict(model_batches or {}),
            delete_linger=0.5,
        )


def default_prefetch(max_batch: int) -> int:
    """Room for every message a busy model keeps in hand, and for the next batch to fill up while it
    runs: two batches in its hands (one running, one queued behind it in its process's pipe), one
    being formed, up to ten settled ones lingering for a delete of ten, and a receive's ten. With 32
    and batches of 8 on a GPU, the batch being formed went out with 6.7 images on average, and a
    captioner whose call costs the same at any size ran at 0.69 x its raw rate (bench/RESULTS.md,
    run 25)."""
    return max(32, 3 * max_batch + 20)


def default_max_batch(settings: WorkerSettings, device: str) -> int:
    """8 on a GPU; 1 on a CPU, where batching was measured to lose (bench/RESULTS.md)."""
    return settings.max_batch or (GPU_BATCH if device.startswith("cuda") else 1)


@dataclass
class Held:
    message: Message  # the latest delivery: only its receipt handle is sure to work
    received_at: float = field(default_factory=time.monotonic)


class Poller:
    def __init__(
        self,
        *,
        settings: WorkerSettings,
        processor: Processor,
        queue: Queue,
        pipeline: Pipeline,
        jobs: JobStore | None = None,
        dead_letters: Queue | None = None,
        batch_notices: BatchNotices | None = None,
        failpoints: Failpoints | None = None,
        sampler: metrics.QueueSampler | None = None,
        emf: metrics.EmfReporter | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.sampler = sampler  # queue depths for the metrics, sampled while the worker runs
        self.emf = emf  # CloudWatch EMF lines, every emf_period seconds and once at the end
        self.emf_period = 60.0
        self.queue = queue
        self.pipeline = pipeline
        self.jobs = jobs
        self.dead_letters = dead_letters
        # For the sweep: poison members of batches whose notice is unclaimed are announced again.
        self._batch_notices = batch_notices
        self.failpoints = failpoints or Failpoints()
        self.redelivered_in_hand = 0
        self._free_slots = pipeline.prefetch
        # Slots are counted on the event loop's one thread, so a counter and an Event suffice.
        self._slots_freed = asyncio.Event()
        self._held: dict[str, Held] = {}  # by message id: received, not yet settled
        self._to_delete: list[Message] = []
        self._delete_wanted = asyncio.Event()
        self._draining = False
        self._messages: set[asyncio.Task[None]] = set()
        self._late: list[Message] = []  # what polls open at the stop brought (_give_back_late)
        # Why the worker stopped by itself (a model stuck on a batch), for its command to say.
        self.stuck: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; then take no more, finish what is held, and return."""
        served = {name: model.version for name, model in self.processor.models.models.items()}
        logger.info("worker started: queue=%s models=%s pipeline=%s", self.queue.url, served, self.pipeline)
        async with self.processor.running(), asyncio.TaskGroup() as group:
            self._group = group
            loops = [group.create_task(self._delete_loop(), name="acknowledger")]
            self._leases = group.create_task(self._lease_loop(), name="leases")
            loops.append(self._leases)
            loops.append(group.create_task(self._watch_models(stop), name="model-watch"))
            if self.dead_letters is not None and self.jobs is not None:
                loops.append(group.create_task(self._sweep_loop(self.dead_letters, self.jobs), name="dlq-sweeper"))
            if self.sampler is not None:
                loops.append(group.create_task(self.sampler.run(), name="queue-sampler"))
            if self.emf is not None:
                loops.append(group.create_task(self.emf.run(self.emf_period), name="emf"))
            receivers = [
                group.create_task(self._receive_loop(stop), name=f"receiver-{i}")
                for i in range(self.pipeline.receivers)
            ]
            await asyncio.wait(receivers)
            await self._release_late()
            self._draining = True
            self._delete_wanted.set()
            await self._drain(self.settings.shutdown_grace_seconds)
            for task in [*loops, *self._messages]:
                task.cancel()
        if self.emf is not None:
            self.emf.flush()  # the last period's numbers
        logger.info("worker stopped")

    # --- receive and settle --------------------------------------------------------------------

    async def _receive_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wanted = await self._take_slots(stop)
            if not wanted:
                return
            receive_started = time.perf_counter()
            receive = asyncio.ensure_future(
                self.queue.receive(
                    max_messages=wanted,
                    wait_seconds=self.settings.poll_wait_seconds,
                    visibility_timeout=self.settings.visibility_timeout,
                )
            )
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not receive.done():
                await self._give_back_late(receive)
                self._give_slots(wanted)
                return
            try:
                messages = receive.result()
            except TransientError as exc:
                self._give_slots(wanted)
                logger.warning("receive failed, backing off: %s", exc)
                await wait_event(stop, 2.0)
                continue
            self._give_slots(wanted - len(messages))
            metrics.WORKER.received(messages, time.perf_counter() - receive_started)
            if self.sampler is not None:
                self.sampler.seen(messages)
            if messages:
                self.failpoints.hit("after_receive")
            for message in messages:
                self._accept(message)

    async def _give_back_late(self, receive: asyncio.Future[list[Message]]) -> None:
        """A poll still open at the stop: let it answer, within its wait, and keep what it brings
        to be released once every receiver has stopped (``_release_late``). Cancelled, what SQS
        handed it would stay hidden for the visibility timeout."""
        try:
            messages = await asyncio.wait_for(asyncio.shield(receive), self.settings.poll_wait_seconds + 2)
        except TimeoutError:  # SQS did not answer in the poll's time: whatever it holds returns later
            receive.cancel()
            return
        except TransientError:
            return
        self._late.extend(messages)

    async def _release_late(self) -> None:
        """Release at once what polls open at the stop brought; after every receiver of this worker
        has stopped, so that none of them takes a message back (each receive is counted)."""
        if not self._late:
            return
        late, self._late = self._late, []
        logger.info("giving back %d messages received as the worker stopped", len(late))
        await self._release_now(late)

    async def _release_now(self, messages: list[Message]) -> None:
        """Make ``messages`` visible again at once (the stop's give-backs); if SQS is down or
        refuses, they return after their visibility timeout."""
        try:
            _log_failures("could not give back", await self.queue.release(messages, delay_seconds=0))
        except TransientError as exc:
            logger.warning("could not give back %d messages (they return after their timeout): %s", len(messages), exc)

    def _accept(self, message: Message) -> None:
        held = self._held.get(message.message_id)
        if held is not None:
            # Its visibility lapsed (a lease extension failed or came late) and SQS handed it out
            # again. The work is already under way: adopt the new receipt handle, which is the one
            # SQS will honour, and do not start it twice.
            logger.warning("message %s redelivered while held; adopting its new receipt", message.message_id)
            held.message = message
            self.redelivered_in_hand += 1
            self._give_slots(1)
            return
        held = self._held[message.message_id] = Held(message)
        task = self._group.create_task(self._run_message(held), name=f"message-{message.message_id}")
        self._messages.add(task)
        task.add_done_callback(self._messages.discard)

    async def _run_message(self, held: Held) -> None:
        deadline = held.received_at + self.settings.job_deadline_seconds
        outcome = await self.processor.process(held.message, deadline=deadline, on_expiry=Expiry.FAIL_JOB)
        metrics.WORKER.settled(outcome.value)
        self._held.pop(held.message.message_id, None)
        if outcome is Outcome.DONE:
            self._to_delete.append(held.message)
            self._delete_wanted.set()
        else:
            await self._release(held.message)

    async def _release(self, message: Message) -> None:
        try:
            failed = await self.queue.release([message], delay_seconds=_backoff_seconds(message.receive_count))
            _log_failures("could not give back for a retry", failed)
        except TransientError as exc:
            logger.warning("could not give back a message for retry (it returns after its timeout): %s", exc)
        finally:
            self._give_slots(1)

    async def _delete_loop(self) -> None:
        """Delete settled messages, ten per request, or fewer once the first has lingered."""
        while True:
            await self._delete_wanted.wait()
            self._delete_wanted.clear()
            lingering_until = time.monotonic() + self.pipeline.delete_linger
            while len(self._to_delete) < 10 and not self._draining and time.monotonic() < lingering_until:
                await wait_event(self._delete_wanted, lingering_until - time.monotonic())
                self._delete_wanted.clear()
            while self._to_delete:
                chunk, self._to_delete = self._to_delete[:10], self._to_delete[10:]
                try:
                    # Not deleted: redelivered later, and found finished (results are idempotent).
                    deleting = metrics.timed(self.queue.delete(chunk), "acknowledge", len(chunk))
                    _log_failures("SQS did not delete", await deleting)
                except TransientError as exc:
                    logger.warning("could not delete %d messages (they will be redelivered): %s", len(chunk), exc)
                self._give_slots(len(chunk))

    async def _lease_loop(self) -> None:
        """Keep held messages invisible while their work goes on (the core enforces deadlines).

        Without this, a long batch would outlive the visibility timeout and SQS would hand the
        same message to another worker mid-run.
        """
        interval = max(1.0, self.settings.visibility_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            held = [h.message for h in self._held.values()]
            if not held:
                continue
            try:
                failed = await self.queue.release(held, delay_seconds=self.settings.visibility_timeout)
                _log_failures("lease not extended; it may be redelivered", failed)
            except TransientError as exc:
                logger.warning("could not extend %d leases: %s", len(held), exc)

    async def _watch_models(self, stop: asyncio.Event) -> None:
        """Stop the worker when a model in its process has run one batch for longer than a job may
        take: that thread is not coming back. Its jobs end by their deadline; the messages waiting
        for the model go back to the queue; a supervisor (ECS, `visionq up`) starts a new worker."""
        bound = self.settings.job_deadline_seconds
        while not stop.is_set():
            await wait_event(stop, min(30.0, bound / 4))
            stuck = self.processor.stuck_model(bound)
            if stuck is not None and not stop.is_set():
                name, seconds = stuck
                self.stuck = f"model {name!r} has run one batch for {seconds:.0f} s (the job deadline: {bound:.0f} s)"
                logger.error("%s: it is stuck; the worker stops so that a new one takes its place", self.stuck)
                stop.set()

    async def _sweep_loop(self, dlq: Queue, jobs: JobStore) -> None:
        """Give the jobs of messages SQS parked in the dead-letter queue their terminal state."""
        while True:
            try:
                await dead_letters.sweep(
                    dlq,
                    jobs,
                    self.settings.upload_prefix,
                    announce=self.processor.announce,
                    discard=self.processor.results.discard,
                    batch_notices=self._batch_notices,
                )
            except VisionqError as exc:  # a store outage: the next sweep tries again
                logger.warning("dead-letter sweep failed: %s", exc)
            await asyncio.sleep(self.settings.dlq_sweep_seconds)

    # --- plumbing ------------------------------------------------------------------------------

    async def _take_slots(self, stop: asyncio.Event) -> int:
        """Wait for room to hold more messages; take up to ten slots (0 when stopping).

        While messages are held, wait until room for ``min_receive`` has freed up; when none are
        held, poll at once, so a lone message never waits for company.
        """
        while not stop.is_set() and (
            self._free_slots == 0
            or (self._free_slots < self.pipeline.min_receive and self._free_slots < self.pipeline.prefetch)
        ):
            self._slots_freed.clear()
            await wait_event(self._slots_freed, 1.0)  # rechecks stop each second
        if stop.is_set():
            return 0
        taken = min(10, self._free_slots)
        self._free_slots -= taken
        return taken

    def _give_slots(self, count: int) -> None:
        if count:
            self._free_slots += count
            self._slots_freed.set()

    async def _drain(self, grace: float) -> None:
        """Wait for every held message to settle, at most ``grace`` seconds; release the rest."""
        deadline = time.monotonic() + grace
        while self._free_slots < self.pipeline.prefetch and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        unsettled = [held.message for held in self._held.values()]
        if unsettled:
            # No lease may be extended after this release: it would hide the messages again.
            self._leases.cancel()
            logger.warning("shutdown grace of %.0fs passed; releasing %d messages", grace, len(unsettled))
            await self._release_now(unsettled)


def _log_failures(what: str, failed: list[EntryFailure]) -> None:
    for failure in failed:
        logger.warning("%s: message %s (%s: %s)", what, failure.message.message_id, failure.code, failure.reason)


def _backoff_seconds(receive_count: int) -> int:
    return int(min(300, 2 ** min(receive_count, 8)))
