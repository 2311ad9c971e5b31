"""The worker loop: receive ▸ fetch ▸ decode ▸ batch ▸ infer ▸ write ▸ acknowledge, overlapped.

Stages run concurrently, joined by bounded queues, so the model never waits on a network round
trip: while one batch is in the forward pass, the next is being fetched and decoded and the one
before is being written.

    receivers (long-polls) ─▶ prepare (claim job, GET, decode in a pool) ─▶ ready queue
        ─▶ batcher (full, or oldest waited max_wait_ms, or nothing else coming) ─▶ infer thread
        ─▶ writer (one PostgreSQL transaction per batch, then the jobs SUCCEEDED) ─▶ acknowledger

Every object in a message is a ``WorkItem`` that ends DONE (its job is terminal, or already was)
or RETRY (a store was unavailable). A message is deleted only when all its items are DONE, and
only after their writes committed; otherwise it is put back after a backoff. The worker never
holds more than ``prefetch`` messages, which bounds memory and the time a message waits.

``naive`` mode (one message at a time, batch of one) is the same code with the concurrency
turned off: prefetch 1, one receiver, max_batch 1, no wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from visionq import dead_letters
from visionq.batching import MicroBatcher
from visionq.config import WorkerSettings
from visionq.detector import Detector, Prediction
from visionq.errors import PermanentError, TransientError, TransitionRejected
from visionq.events import ObjectCreated, parse_s3_event
from visionq.faults import Failpoints
from visionq.images import DecodedImage, ImageLimits, decode_image
from visionq.jobs import JobError, JobStatus, job_id_for_object, ttl_from_now
from visionq.stores.job_store import JobStore
from visionq.stores.object_store import S3ObjectReader
from visionq.stores.queue import Message, SqsQueue
from visionq.stores.result_store import ResultRecord, ResultStore
from visionq.waiting import wait_event

logger = logging.getLogger(__name__)

T = TypeVar("T")

# DynamoDB items are capped at 400 KB; the full list always lands in PostgreSQL.
MAX_SUMMARY_DETECTIONS = 300


class Outcome(Enum):
    PENDING = "pending"
    DONE = "done"
    RETRY = "retry"


@dataclass
class Pipeline:
    """The knobs, resolved: naive mode is the pipelined one with the concurrency set to one."""

    max_batch: int
    max_wait: float  # seconds
    prefetch: int
    receivers: int
    # Requests are billed (and cost the emulator CPU): poll only when room for several messages
    # has freed up, and let settled messages linger briefly so deletes go ten at a time. Results
    # are committed before this wait, so it delays no answer, only the delete.
    min_receive: int = field(init=False, default=1)
    delete_linger: float = 0.0  # seconds

    def __post_init__(self) -> None:
        self.min_receive = max(1, min(10, self.prefetch // 3))

    @classmethod
    def from_settings(cls, settings: WorkerSettings, device: str) -> Pipeline:
        if settings.naive:
            return cls(max_batch=1, max_wait=0.0, prefetch=1, receivers=1)
        max_batch = settings.max_batch or (8 if device.startswith("cuda") else 1)
        return cls(
            max_batch=max_batch,
            max_wait=settings.max_wait_ms / 1000,
            prefetch=max(settings.prefetch, max_batch),
            receivers=settings.receivers,
            delete_linger=0.5,
        )


@dataclass
class InFlight:
    """A received message and the items it carries; settled once all of them are."""

    message: Message
    remaining: int
    retry: bool = False
    received_at: float = field(default_factory=time.monotonic)
    items: list[WorkItem] = field(default_factory=list)


@dataclass
class WorkItem:
    flight: InFlight
    obj: ObjectCreated
    job_id: str = ""
    claimed: bool = False  # this item holds the job's place in Worker._active_jobs
    outcome: Outcome = Outcome.PENDING
    image: DecodedImage | None = None
    etag: str = ""
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def message(self) -> Message:
        return self.flight.message

    def log_extra(self, **more: Any) -> dict[str, Any]:
        return {"job_id": self.job_id, "key": self.obj.key, **more}


@dataclass
class WorkerStats:
    messages: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0
    batches: int = 0
    batched_images: int = 0
    model_seconds: float = 0.0
    aws_requests: dict[str, int] = field(default_factory=dict)  # by "service.Operation"


class Worker:
    """Drains the queue with resources built once and passed in (model, clients, stores)."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        queue: SqsQueue,
        objects: S3ObjectReader,
        jobs: JobStore,
        results: ResultStore,
        detector: Detector,
        failpoints: Failpoints | None = None,
        dead_letters: SqsQueue | None = None,
    ) -> None:
        self.settings = settings
        self.failpoints = failpoints or Failpoints()
        self.dead_letters = dead_letters
        self.pipeline = Pipeline.from_settings(settings, detector.device)
        self.queue = queue
        self.objects = objects
        self.jobs = jobs
        self.results = results
        self.detector = detector
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.stats = WorkerStats()
        # Decoding is CPU work and store calls block (boto3, psycopg): both stay off the event loop.
        # The model gets a thread of its own, so forward passes never queue behind anything else.
        self._decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self._store_pool = ThreadPoolExecutor(8, thread_name_prefix="store")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._free_slots = self.pipeline.prefetch
        # Slots are counted on the event loop's one thread, so a counter and an Event suffice.
        self._slots_freed = asyncio.Event()
        self._preparing = 0  # items between receive and the ready queue
        self._batcher: MicroBatcher[WorkItem] = MicroBatcher(
            max_batch=self.pipeline.max_batch, max_wait=self.pipeline.max_wait, more_coming=lambda: self._preparing > 0
        )
        self._to_write: asyncio.Queue[tuple[list[WorkItem], list[Prediction]]] = asyncio.Queue(maxsize=2)
        self._to_delete: list[Message] = []
        self._delete_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._active_jobs: set[str] = set()  # claimed here and not yet finished
        self._held: dict[str, InFlight] = {}  # by message id: received, not yet settled
        self._draining = False

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set; then take no more, finish what is held, and return."""
        logger.info(
            "worker started: queue=%s model=%s pipeline=%s", self.queue.url, self.detector.version, self.pipeline
        )
        stages = [
            asyncio.create_task(self._batch_loop(), name="batcher"),
            asyncio.create_task(self._write_loop(), name="writer"),
            asyncio.create_task(self._delete_loop(), name="acknowledger"),
            asyncio.create_task(self._lease_loop(), name="leases"),
        ]
        if self.dead_letters is not None:
            stages.append(asyncio.create_task(self._sweep_loop(self.dead_letters), name="dlq-sweeper"))
        receivers = [
            asyncio.create_task(self._receive_loop(stop), name=f"receiver-{i}") for i in range(self.pipeline.receivers)
        ]
        try:
            await asyncio.gather(*receivers)
            self._draining = True
            self._delete_wanted.set()
            await self._drain(self.settings.shutdown_grace_seconds)
        finally:
            await _cancel_all([*stages, *receivers])
        logger.info("worker stopped")

    def close(self) -> None:
        for pool in (self._decode_pool, self._infer_pool, self._store_pool):
            pool.shutdown(wait=True)
        self.results.close()

    # --- receive -------------------------------------------------------------------------------

    async def _receive_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wanted = await self._take_slots(stop)
            if not wanted:
                return
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
                # Whatever this poll took reappears after its visibility timeout.
                receive.cancel()
                self._give_slots(wanted)
                return
            try:
                messages = receive.result()
            except TransientError as exc:
                self._give_slots(wanted)
                logger.warning("receive failed, backing off: %s", exc)
                await _sleep_unless(stop, 2.0)
                continue
            self._give_slots(wanted - len(messages))
            if messages:
                self.failpoints.hit("after_receive")
            for message in messages:
                self._accept(message)

    def _accept(self, message: Message) -> None:
        """Turn a message into work items and start preparing them."""
        self.stats.messages += 1
        try:
            objects = parse_s3_event(message.body)
        except PermanentError as exc:
            logger.error("dropping malformed message %s: %s", message.message_id, exc)
            objects = []
        flight = InFlight(message=message, remaining=len(objects))
        if not objects:  # s3:TestEvent, a non-create event, or unparseable: nothing to do
            self._settle(flight)
            return
        self._held[message.message_id] = flight
        for obj in objects:
            item = WorkItem(flight=flight, obj=obj)
            flight.items.append(item)
            self._preparing += 1
            self._spawn(self._prepare(item))

    async def _prepare(self, item: WorkItem) -> None:
        """Claim the job (RUNNING), fetch and decode the object, hand it to the batcher."""
        try:
            if await self._claim(item):
                self.failpoints.check_key(item.obj.key)
                started = time.perf_counter()
                data, item.etag = await self.objects.read(
                    item.obj.bucket, item.obj.key, max_bytes=self.limits.max_bytes
                )
                item.timings["fetch_ms"] = _ms_since(started)
                started = time.perf_counter()
                item.image = await self._in(self._decode_pool, decode_image, data, self.limits)
                item.timings["decode_ms"] = _ms_since(started)
                self._batcher.put(item)
        except PermanentError as exc:
            await self._fail(item, JobError(code=exc.code, message=exc.message))
        except Exception as exc:  # noqa: BLE001 - any other fault: retry, then a terminal state
            await self._retry_or_fail(item, exc)
        finally:
            self._preparing -= 1
            self._batcher.poke()  # the batcher may stop waiting for company

    async def _claim(self, item: WorkItem) -> bool:
        """Record the object as seen; False (and the item done) when there is nothing to run."""
        obj = item.obj
        prefix = self.settings.upload_prefix
        if not obj.key.startswith(prefix):
            logger.warning("ignoring object outside the upload prefix %r: %s", prefix, obj.key)
            self._finish(item, Outcome.DONE)
            return False
        item.job_id = job_id_for_object(prefix, obj.bucket, obj.key, obj.version)
        if item.job_id in self._active_jobs:
            # Another delivery of this object is in hand here; it alone will finish the job. Safe to
            # acknowledge this one now: the other's message stays until its result is committed.
            self.stats.duplicates += 1
            self._finish(item, Outcome.DONE)
            return False
        self._active_jobs.add(item.job_id)
        item.claimed = True
        job = await self._in(
            self._store_pool,
            self.jobs.claim,
            item.job_id,
            bucket=obj.bucket,
            key=obj.key,
            etag=obj.version,
            model=self.detector.version,
            expires_at=ttl_from_now(self.settings.job_ttl_days),
        )
        if job.status.terminal:
            logger.info("duplicate event for a finished job", extra=item.log_extra(status=str(job.status)))
            self.stats.duplicates += 1
            self._finish(item, Outcome.DONE)
            return False
        self._log_state(item, job.status)
        return True

    # --- batch and infer -----------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while True:
            await self._infer(await self._batcher.next_batch())

    async def _infer(self, running: list[WorkItem]) -> None:
        images = [item.image.rgb for item in running if item.image is not None]
        started = time.perf_counter()
        try:
            predictions = await self._in(self._infer_pool, self.detector.predict, images)
        except Exception as exc:  # noqa: BLE001 - a model fault fails or retries the batch's items
            for item in running:
                await self._retry_or_fail(item, exc)
            return
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.batched_images += len(running)
        self.stats.model_seconds += elapsed
        for item in running:
            item.image = None  # the pixels are no longer needed
            item.timings["inference_ms"] = elapsed * 1000 / len(running)
            item.timings["batch_size"] = float(len(running))
        await self._to_write.put((running, predictions))

    # --- write and acknowledge -----------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch, predictions = await self._to_write.get()
            await self._write(batch, predictions)

    async def _write(self, batch: list[WorkItem], predictions: list[Prediction]) -> None:
        self.failpoints.hit("after_inference")
        records = [
            ResultRecord(
                job_id=item.job_id,
                bucket=item.obj.bucket,
                key=item.obj.key,
                etag=item.etag or item.obj.version,
                model=self.detector.version,
                prediction=prediction,
                timings={**item.timings, "total_ms": _ms_since(item.started)},
                object_created_at=item.obj.event_time,
            )
            for item, prediction in zip(batch, predictions, strict=True)
        ]
        try:
            # One transaction for the batch: all its rows commit, or none do and all retry.
            await self._in(self._store_pool, self.results.record_results, records)
        except Exception as exc:  # noqa: BLE001 - nothing committed: redelivery writes the same rows
            for item in batch:
                await self._retry_or_fail(item, exc)
            return
        await asyncio.gather(*(self._succeed(item, record) for item, record in zip(batch, records, strict=True)))
        self.failpoints.hit("after_write")

    async def _succeed(self, item: WorkItem, record: ResultRecord) -> None:
        try:
            await self._in(self._store_pool, self.jobs.mark_succeeded, item.job_id, _summary(item, record))
        except TransitionRejected:
            self.stats.duplicates += 1  # finished by another delivery meanwhile; our row is the same
        except Exception as exc:  # noqa: BLE001 - the row is committed; redelivery rewrites it
            await self._retry_or_fail(item, exc)
            return
        else:
            self.stats.succeeded += 1
            self._log_state(item, JobStatus.SUCCEEDED, detections=len(record.prediction.detections))
        self._finish(item, Outcome.DONE)

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
                    failed = await self.queue.delete(chunk)
                except TransientError as exc:
                    # They come back after their visibility timeout; results are idempotent.
                    logger.warning("could not delete %d messages: %s", len(chunk), exc)
                    failed = []
                if failed:
                    logger.warning("SQS did not delete %d messages; they will be redelivered", len(failed))
                self._give_slots(len(chunk))

    async def _lease_loop(self) -> None:
        """Keep held messages invisible while their work goes on; fail jobs past their deadline.

        Without this, a long batch would outlive the visibility timeout and SQS would hand the
        same message to another worker mid-run.
        """
        interval = max(1.0, self.settings.visibility_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            extend = []
            for flight in list(self._held.values()):
                if now - flight.received_at > self.settings.job_deadline_seconds:
                    for item in flight.items:
                        if item.outcome is Outcome.PENDING:
                            error = JobError(
                                code="deadline_exceeded",
                                message=f"not finished within {self.settings.job_deadline_seconds:.0f} s",
                            )
                            await self._fail(item, error)
                else:
                    extend.append(flight.message)
            if extend:
                try:
                    await self.queue.release(extend, delay_seconds=self.settings.visibility_timeout)
                except TransientError as exc:
                    logger.warning("could not extend %d leases: %s", len(extend), exc)

    async def _sweep_loop(self, dlq: SqsQueue) -> None:
        """Give the jobs of messages SQS parked in the dead-letter queue their terminal state."""
        while True:
            try:
                await dead_letters.sweep(dlq, self.jobs, self.settings.upload_prefix)
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive store outages
                logger.warning("dead-letter sweep failed: %s", exc)
            await asyncio.sleep(self.settings.dlq_sweep_seconds)

    # --- outcomes ------------------------------------------------------------------------------

    def _finish(self, item: WorkItem, outcome: Outcome) -> None:
        if item.outcome is not Outcome.PENDING:
            return
        item.outcome = outcome
        item.image = None
        if item.claimed:
            self._active_jobs.discard(item.job_id)
        flight = item.flight
        flight.retry |= outcome is Outcome.RETRY
        flight.remaining -= 1
        if flight.remaining == 0:
            self._settle(flight)

    def _settle(self, flight: InFlight) -> None:
        self._held.pop(flight.message.message_id, None)
        if flight.retry:
            self.stats.retried += 1
            self._spawn(self._release(flight.message))
        else:
            self._to_delete.append(flight.message)
            self._delete_wanted.set()

    async def _release(self, message: Message) -> None:
        try:
            await self.queue.release([message], delay_seconds=_backoff_seconds(message.receive_count))
        except TransientError as exc:
            logger.warning("could not release a message for retry: %s", exc)
        finally:
            self._give_slots(1)

    async def _fail(self, item: WorkItem, error: JobError) -> None:
        try:
            await self._in(self._store_pool, self.jobs.mark_failed, item.job_id, error)
        except TransitionRejected:
            self._finish(item, Outcome.DONE)
            return
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not record failure, will retry: %s", exc, extra=item.log_extra())
            self._finish(item, Outcome.RETRY)
            return
        self.stats.failed += 1
        self._log_state(item, JobStatus.FAILED, error_code=error.code, error_message=error.message)
        self._finish(item, Outcome.DONE)

    async def _retry_or_fail(self, item: WorkItem, exc: Exception) -> None:
        """Transient or unexpected fault: retry with backoff until the attempts are spent."""
        attempts = item.message.receive_count
        if attempts >= self.settings.max_attempts:
            logger.error("giving up after %d attempts: %s", attempts, exc, extra=item.log_extra())
            code = "store_unavailable" if isinstance(exc, TransientError) else "processing_error"
            await self._fail(item, JobError(code=code, message=f"processing failed after {attempts} attempts"))
            return
        log = logger.warning if isinstance(exc, TransientError) else logger.exception
        log("attempt %d failed, will retry: %s", attempts, exc, extra=item.log_extra())
        self._finish(item, Outcome.RETRY)

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
        unsettled = [flight.message for flight in self._held.values()]
        if unsettled:
            logger.warning("shutdown grace of %.0fs passed; releasing %d messages", grace, len(unsettled))
            with contextlib.suppress(TransientError):  # if SQS is down they return after their timeout
                await self.queue.release(unsettled, delay_seconds=0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kwargs))

    def _log_state(self, item: WorkItem, status: JobStatus, **more: Any) -> None:
        logger.info(
            "job %s",
            status,
            extra=item.log_extra(status=str(status), elapsed_ms=round(_ms_since(item.started), 1), **more),
        )


def _summary(item: WorkItem, record: ResultRecord) -> dict[str, Any]:
    """The result as the jobs table keeps it (what GET /v1/jobs/{id} returns)."""
    summary = record.prediction.as_dict()
    count = len(record.prediction.detections)
    summary["detections"] = summary["detections"][:MAX_SUMMARY_DETECTIONS]
    summary.update(
        detection_count=count,
        truncated=count > MAX_SUMMARY_DETECTIONS,
        model=record.model,
        inference_ms=round(item.timings["inference_ms"], 2),
    )
    return summary


def _arm_exit_watchdog(seconds: float) -> None:
    """If shutdown has not finished ``seconds`` after the signal, dump every thread's stack and exit.

    Shutdown is bounded by the grace period, but a store call that hangs (a socket with no answer)
    would hold the process past it; an orchestrator would SIGKILL it then anyway. This makes the
    end certain, and leaves the stacks in the log for whoever finds out why.
    """
    import faulthandler
    import os
    import sys
    import threading

    def expire() -> None:
        logger.error("shutdown still not finished %.0f s after the signal; dumping stacks and exiting", seconds)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that swallowed the first request."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)


def _backoff_seconds(receive_count: int) -> int:
    return int(min(300, 2 ** min(receive_count, 8)))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)


async def serve_worker(
    settings: WorkerSettings, *, detector: Detector | None = None, stop: asyncio.Event | None = None
) -> WorkerStats:
    """Build the worker's resources once (model, clients, stores), run until stopped, clean up.

    SIGTERM and SIGINT stop the receiving; messages already held are finished first.
    """
    import signal

    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs, boto3_client, count_requests
    from visionq.detector import load_detector
    from visionq.stores.job_store import DynamoJobStore
    from visionq.stores.result_store import PostgresResultStore

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        _arm_exit_watchdog(settings.shutdown_grace_seconds + 30)

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only possible in the main thread of a POSIX process; tests run the worker on a thread.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
    if detector is None:
        detector = await asyncio.to_thread(
            load_detector,
            settings.model,
            device=settings.device,
            image_size=settings.image_size,
            confidence=settings.confidence,
        )
    if settings.torch_threads:
        import torch

        # After loading: Ultralytics sets torch to cpu_count - 1 threads when it builds its predictor.
        torch.set_num_threads(settings.torch_threads)
    session = get_session()
    requests: dict[str, int] = {}
    async with (
        session.create_client(**aio_client_kwargs("sqs", settings, max_pool_connections=16)) as sqs,
        session.create_client(**aio_client_kwargs("s3", settings, max_pool_connections=64)) as s3,
    ):
        dynamodb = boto3_client("dynamodb", settings, max_pool_connections=16)
        for client in (sqs, s3, dynamodb):
            count_requests(client, requests)
        worker = Worker(
            settings=settings,
            queue=SqsQueue(sqs, settings.queue_url),
            objects=S3ObjectReader(s3),
            jobs=DynamoJobStore(dynamodb, settings.jobs_table),
            results=PostgresResultStore(settings.database_url),
            detector=detector,
            failpoints=Failpoints.from_env(),
            dead_letters=SqsQueue(sqs, settings.dlq_url) if settings.dlq_url else None,
        )
        try:
            await worker.run(stop)
        finally:
            worker.close()
            worker.stats.aws_requests = dict(sorted(requests.items()))
            logger.info("worker totals", extra={"stats": vars(worker.stats)})
    return worker.stats
