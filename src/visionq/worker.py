"""The worker loop: receive ▸ fetch ▸ decode ▸ batch ▸ infer ▸ write ▸ acknowledge.

Each received SQS message carries one or more S3 records. Every object becomes a ``WorkItem``
that ends in one of three outcomes:

- done: its job reached a terminal state (or already had one: a duplicate) — the message may go;
- retry: a store was unavailable — the message stays and comes back after a backoff;
- (a message is acknowledged only when all its items are done, and only after their writes
  committed, so a crash anywhere before the delete means redelivery, never loss).

Results are written with the object's identity as a unique key, so redelivery rewrites the
same row instead of adding one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from visionq.config import WorkerSettings
from visionq.detector import Detector, Prediction
from visionq.errors import PermanentError, TransientError, TransitionRejected
from visionq.events import ObjectCreated, parse_s3_event
from visionq.images import DecodedImage, ImageLimits, decode_image
from visionq.jobs import JobError, JobStatus, direct_upload_job_id, job_id_in_key, ttl_from_now
from visionq.stores.job_store import JobStore
from visionq.stores.object_store import S3ObjectReader
from visionq.stores.queue import Message, SqsQueue
from visionq.stores.result_store import ResultRecord, ResultStore

logger = logging.getLogger(__name__)

# DynamoDB items are capped at 400 KB; the full list always lands in PostgreSQL.
MAX_SUMMARY_DETECTIONS = 300


class Outcome(Enum):
    PENDING = "pending"
    DONE = "done"
    RETRY = "retry"


@dataclass
class WorkItem:
    message: Message
    obj: ObjectCreated
    job_id: str = ""
    outcome: Outcome = Outcome.PENDING
    image: DecodedImage | None = None
    etag: str = ""
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    def log_extra(self, **more: Any) -> dict[str, Any]:
        return {"job_id": self.job_id, "key": self.obj.key, **more}


@dataclass
class WorkerStats:
    messages: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0


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
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.objects = objects
        self.jobs = jobs
        self.results = results
        self.detector = detector
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.stats = WorkerStats()
        # Decoding is CPU work: keep it off the event loop. Store calls are blocking boto3/psycopg.
        self._decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")
        self._store_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and process until ``stop`` is set; work already received is finished first."""
        logger.info("worker started: queue=%s model=%s", self.queue.url, self.detector.version)
        while not stop.is_set():
            receive = asyncio.ensure_future(
                self.queue.receive(
                    max_messages=10,
                    wait_seconds=self.settings.poll_wait_seconds,
                    visibility_timeout=self.settings.visibility_timeout,
                )
            )
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if receive not in done:
                # Messages this poll may have taken reappear after their visibility timeout.
                receive.cancel()
                break
            try:
                messages = receive.result()
            except TransientError as exc:
                logger.warning("receive failed, backing off: %s", exc)
                await _sleep_unless(stop, 2.0)
                continue
            if messages:
                await self.process(messages)
        logger.info("worker stopped: %s", self.stats)

    def close(self) -> None:
        self._decode_pool.shutdown(wait=True)
        self._store_pool.shutdown(wait=True)
        self.results.close()

    async def process(self, messages: Sequence[Message]) -> None:
        """Take one received batch of messages to the point where each is deleted or left to retry."""
        self.stats.messages += len(messages)
        items: list[WorkItem] = []
        ack_now: list[Message] = []
        for message in messages:
            try:
                objects = parse_s3_event(message.body)
            except PermanentError as exc:
                logger.error("dropping malformed message %s: %s", message.message_id, exc)
                ack_now.append(message)
                continue
            if not objects:  # s3:TestEvent or a non-create event: nothing to do
                ack_now.append(message)
            items.extend(WorkItem(message=message, obj=obj) for obj in objects)

        await asyncio.gather(*(self._prepare(item) for item in items))
        ready = [item for item in items if item.outcome is Outcome.PENDING and item.image is not None]
        for start in range(0, len(ready), self.settings.max_batch):
            await self._infer_and_record(ready[start : start + self.settings.max_batch])
        await self._settle(messages=[*ack_now], items=items)

    async def _prepare(self, item: WorkItem) -> None:
        """Identify the job, move it to RUNNING, fetch and decode the object."""
        obj = item.obj
        prefix = self.settings.upload_prefix
        if not obj.key.startswith(prefix):
            logger.warning("ignoring object outside the upload prefix %r: %s", prefix, obj.key)
            item.outcome = Outcome.DONE
            return
        item.job_id = job_id_in_key(prefix, obj.key) or direct_upload_job_id(obj.bucket, obj.key, obj.version)
        try:
            job = await self._store(
                self.jobs.mark_queued,
                item.job_id,
                bucket=obj.bucket,
                key=obj.key,
                etag=obj.version,
                model=self.detector.version,
                expires_at=ttl_from_now(self.settings.job_ttl_days),
            )
            if job.status is JobStatus.QUEUED:
                self._log_state(item, JobStatus.QUEUED)
            if job.status.terminal:
                logger.info("duplicate event for a finished job", extra=item.log_extra(status=str(job.status)))
                self.stats.duplicates += 1
                item.outcome = Outcome.DONE
                return
            await self._store(self.jobs.mark_running, item.job_id)
            self._log_state(item, JobStatus.RUNNING)
            started = time.perf_counter()
            data, item.etag = await self.objects.read(obj.bucket, obj.key, max_bytes=self.limits.max_bytes)
            item.timings["fetch_ms"] = _ms_since(started)
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            item.image = await loop.run_in_executor(self._decode_pool, decode_image, data, self.limits)
            item.timings["decode_ms"] = _ms_since(started)
        except TransitionRejected:
            # Another delivery of the same object finished it between our two writes.
            self.stats.duplicates += 1
            item.outcome = Outcome.DONE
        except PermanentError as exc:
            await self._fail(item, JobError(code=exc.code, message=exc.message))
        except Exception as exc:  # noqa: BLE001 - any other fault: retry, then give up with a terminal state
            await self._retry_or_fail(item, exc)

    async def _infer_and_record(self, batch: list[WorkItem]) -> None:
        images = [item.image.rgb for item in batch if item.image is not None]
        started = time.perf_counter()
        try:
            predictions: list[Prediction] = await asyncio.to_thread(self.detector.predict, images)
        except Exception as exc:  # noqa: BLE001 - a model fault fails or retries the batch's items
            for item in batch:
                await self._retry_or_fail(item, exc)
            return
        per_image_ms = _ms_since(started) / len(batch)
        records = []
        for item, prediction in zip(batch, predictions, strict=True):
            item.timings["inference_ms"] = per_image_ms
            item.timings["batch_size"] = float(len(batch))
            item.timings["total_ms"] = _ms_since(item.started)
            item.image = None  # the pixels are no longer needed; let them go before the writes
            records.append(
                ResultRecord(
                    job_id=item.job_id,
                    bucket=item.obj.bucket,
                    key=item.obj.key,
                    etag=item.etag or item.obj.version,
                    model=self.detector.version,
                    prediction=prediction,
                    timings=item.timings,
                )
            )
        try:
            await self._store(self.results.record_results, records)
        except Exception as exc:  # noqa: BLE001 - nothing committed: every item of the batch retries
            for item in batch:
                await self._retry_or_fail(item, exc)
            return
        await asyncio.gather(*(self._succeed(item, record) for item, record in zip(batch, records, strict=True)))

    async def _succeed(self, item: WorkItem, record: ResultRecord) -> None:
        summary = record.prediction.as_dict()
        summary["detection_count"] = len(record.prediction.detections)
        summary["detections"] = summary["detections"][:MAX_SUMMARY_DETECTIONS]
        summary["truncated"] = summary["detection_count"] > MAX_SUMMARY_DETECTIONS
        summary["model"] = record.model
        summary["inference_ms"] = round(item.timings["inference_ms"], 2)
        try:
            await self._store(self.jobs.mark_succeeded, item.job_id, summary)
        except TransitionRejected:
            item.outcome = Outcome.DONE  # finished by another delivery; our row is identical
            return
        except Exception as exc:  # noqa: BLE001 - the result is committed; redelivery rewrites it
            await self._retry_or_fail(item, exc)
            return
        item.outcome = Outcome.DONE
        self.stats.succeeded += 1
        self._log_state(item, JobStatus.SUCCEEDED, detections=summary["detection_count"])

    async def _fail(self, item: WorkItem, error: JobError) -> None:
        try:
            await self._store(self.jobs.mark_failed, item.job_id, error)
        except TransitionRejected:
            item.outcome = Outcome.DONE
            return
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not record failure, will retry: %s", exc, extra=item.log_extra())
            item.outcome = Outcome.RETRY
            return
        item.outcome = Outcome.DONE
        self.stats.failed += 1
        self._log_state(item, JobStatus.FAILED, error_code=error.code, error_message=error.message)

    async def _retry_or_fail(self, item: WorkItem, exc: Exception) -> None:
        """Transient or unexpected fault: retry with backoff, until the attempts are spent."""
        if item.message.receive_count >= self.settings.max_attempts:
            logger.error("giving up after %d attempts: %s", item.message.receive_count, exc, extra=item.log_extra())
            code = "store_unavailable" if isinstance(exc, TransientError) else "processing_error"
            await self._fail(
                item, JobError(code=code, message=f"processing failed after {item.message.receive_count} attempts")
            )
            return
        log = logger.warning if isinstance(exc, TransientError) else logger.exception
        log("attempt %d failed, will retry: %s", item.message.receive_count, exc, extra=item.log_extra())
        item.outcome = Outcome.RETRY

    async def _settle(self, *, messages: list[Message], items: Sequence[WorkItem]) -> None:
        """Delete messages whose items are all done; put the others back after a backoff."""
        by_message: dict[str, list[WorkItem]] = {}
        for item in items:
            by_message.setdefault(item.message.message_id, []).append(item)
        retry: list[Message] = []
        for group in by_message.values():
            if all(i.outcome is Outcome.DONE for i in group):
                messages.append(group[0].message)
            else:
                retry.append(group[0].message)
        try:
            if messages:
                await self.queue.delete(messages)
            for message in retry:
                self.stats.retried += 1
                await self.queue.release([message], delay_seconds=_backoff_seconds(message.receive_count))
        except TransientError as exc:
            # Undeleted messages come back after their visibility timeout; results are idempotent.
            logger.warning("could not settle messages: %s", exc)

    async def _store(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_pool, lambda: fn(*args, **kwargs))

    def _log_state(self, item: WorkItem, status: JobStatus, **more: Any) -> None:
        logger.info(
            "job %s",
            status,
            extra=item.log_extra(status=str(status), elapsed_ms=round(_ms_since(item.started), 1), **more),
        )


def _backoff_seconds(receive_count: int) -> int:
    return int(min(300, 2 ** min(receive_count, 8)))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def serve_worker(
    settings: WorkerSettings, *, detector: Detector | None = None, stop: asyncio.Event | None = None
) -> WorkerStats:
    """Build the worker's resources once (model, clients, stores), run until stopped, clean up.

    SIGTERM and SIGINT stop the receiving; work already received is finished before returning.
    """
    import signal

    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs, boto3_client
    from visionq.detector import load_detector
    from visionq.stores.job_store import DynamoJobStore
    from visionq.stores.result_store import PostgresResultStore

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Only possible in the main thread of a POSIX process; tests run the worker on a thread.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if detector is None:
        detector = await asyncio.to_thread(
            load_detector,
            settings.model,
            device=settings.device,
            image_size=settings.image_size,
            confidence=settings.confidence,
        )
    session = get_session()
    async with (
        session.create_client(**aio_client_kwargs("sqs", settings)) as sqs,
        session.create_client(**aio_client_kwargs("s3", settings, max_pool_connections=32)) as s3,
    ):
        worker = Worker(
            settings=settings,
            queue=SqsQueue(sqs, settings.queue_url),
            objects=S3ObjectReader(s3),
            jobs=DynamoJobStore(boto3_client("dynamodb", settings, max_pool_connections=16), settings.jobs_table),
            results=PostgresResultStore(settings.database_url),
            detector=detector,
        )
        try:
            await worker.run(stop)
        finally:
            worker.close()
    return worker.stats
