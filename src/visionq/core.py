"""The processing core: a message in, an outcome out, whoever received the message.

    process(message) ─▶ per object: claim the job (RUNNING) ▸ read exactly the announced version
        ▸ decode to the model's size ─▶ micro-batcher (shared by every message in hand)
        ─▶ infer stage (one forward pass per batch, item by item if the batch raises)
        ─▶ write stage (one PostgreSQL transaction per batch, then each job SUCCEEDED)

A message's outcome is DONE once every job it names is terminal, RETRY when a store was
unavailable or its deadline came in a driver that retries. The drivers (``poller.py``, the
long-running worker; ``functions/sqs_worker.py``, AWS Lambda) only receive, keep leases, and
delete or give back messages by that outcome.

Two rules hold whatever fails, and each is enforced in one place here:
- a job and its result agree: PostgreSQL keeps the first row written for a result identity and the
  job record's summary is made from that row (``_succeed``);
- a FAILED job has no result: recording a failure removes any result row of the job before the
  message is acknowledged (``_settle_failed``), and a deadline cannot fail an item whose result is
  already being written (``work_items``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from visionq.batching import MicroBatcher
from visionq.config import WorkerSettings
from visionq.errors import ObjectChanged, PermanentError, TransientError, TransitionRejected
from visionq.events import MalformedEvent, ObjectCreated, parse_s3_event
from visionq.faults import Failpoints
from visionq.images import ImageLimits, decode_image
from visionq.jobs import JobError, JobStatus, job_id_for_object, job_id_in_key, ttl_from_now
from visionq.models import Model
from visionq.models.registry import LoadedModels
from visionq.outputs import ModelOutput, summarize
from visionq.stores.job_store import JobStore
from visionq.stores.object_store import ObjectReader
from visionq.stores.queue import Message
from visionq.stores.result_store import ResultRecord, ResultStore, StoredResult
from visionq.work_items import Expiry, Outcome, Stage, WorkItem

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ProcessingStats:
    messages: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0
    batches: int = 0
    batched_images: int = 0
    model_seconds: float = 0.0
    aws_requests: dict[str, int] = field(default_factory=dict)  # by "service.Operation", set by the driver


class Processor:
    """Turns messages into terminal jobs with resources built once and passed in."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        jobs: JobStore,
        objects: ObjectReader,
        results: ResultStore,
        models: LoadedModels,
        max_batch: int,
        max_wait: float,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.objects = objects
        self.results = results
        self.models = models
        self.failpoints = failpoints or Failpoints()
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.stats = ProcessingStats()
        # Decoding is CPU work and store calls block (boto3, psycopg): both stay off the event loop.
        # The model gets a thread of its own, so forward passes never queue behind anything else.
        self._decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        self._store_pool = ThreadPoolExecutor(8, thread_name_prefix="store")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._preparing = 0
        # Batches are formed per model; forward passes of all models share the one infer thread.
        self._batchers: dict[str, MicroBatcher[WorkItem]] = {
            name: MicroBatcher(max_batch=max_batch, max_wait=max_wait, more_coming=lambda: self._preparing > 0)
            for name in models.models
        }
        self._to_write: asyncio.Queue[list[tuple[WorkItem, ModelOutput]]] = asyncio.Queue(maxsize=2)
        self._in_hand: set[tuple[str, str]] = set()  # (job id, object version) being processed here

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the infer and write stages while the block runs. An unexpected error in a stage
        cancels the block and surfaces as an ExceptionGroup: never a stage dead behind a live process."""
        async with asyncio.TaskGroup() as group:
            stages = [
                group.create_task(self._infer_loop(name, model), name=f"infer {name}")
                for name, model in self.models.models.items()
            ]
            stages.append(group.create_task(self._write_loop(), name="write"))
            try:
                yield
            finally:
                for stage in stages:
                    stage.cancel()

    def close(self) -> None:
        for pool in (self._decode_pool, self._infer_pool, self._store_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        self.results.close()

    async def process(self, message: Message, *, deadline: float, on_expiry: Expiry) -> Outcome:
        """Every object ``message`` names to a terminal job (DONE), or RETRY; ``deadline`` is
        ``time.monotonic()`` time. Needs ``running()``."""
        self.stats.messages += 1
        try:
            objects = parse_s3_event(message.body)
        except MalformedEvent as exc:
            # Nothing in it can ever be processed; keeping it would only cycle it to the DLQ.
            logger.error("dropping malformed message %s: %s", message.message_id, exc)
            return Outcome.DONE
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._handle(obj, message.receive_count, deadline, on_expiry)) for obj in objects
            ]
        outcomes = [task.result() for task in tasks]
        if Outcome.RETRY in outcomes:
            self.stats.retried += 1
            return Outcome.RETRY
        return Outcome.DONE

    # --- one object ----------------------------------------------------------------------------

    async def _handle(self, obj: ObjectCreated, attempt: int, deadline: float, on_expiry: Expiry) -> Outcome:
        prefix = self.settings.upload_prefix
        if obj.model is None and not obj.key.startswith(prefix):  # reprocessing may name any object
            logger.warning("ignoring object outside the upload prefix %r: %s", prefix, obj.key)
            return Outcome.DONE
        job_id = job_id_for_object(prefix, obj.bucket, obj.key, obj.version, model=obj.model)
        item = WorkItem(obj=obj, job_id=job_id, attempt=attempt)
        identity = (item.job_id, obj.version)
        if identity in self._in_hand:
            # Another message names the same object version and is in hand here; it alone finishes
            # the job, and its message stays until then, so this one can be acknowledged now.
            self.stats.duplicates += 1
            return Outcome.DONE
        self._in_hand.add(identity)
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    self._preparing += 1
                    try:
                        outcome = await self._prepare(item)
                    finally:
                        self._preparing -= 1
                        for batcher in self._batchers.values():
                            batcher.poke()  # a batcher may stop waiting for company
                    if outcome is not None:
                        return outcome
                    item.enter(Stage.BATCHED)  # cannot have expired: expiry is this block's own timeout
                    self._batchers[item.model_name].put(item)
                    return await asyncio.shield(item.done)
            except TimeoutError:
                if not item.expire():
                    return await item.done  # its result is being written: the result wins
                return await self._expired(item, on_expiry)
        finally:
            self._in_hand.discard(identity)

    async def _prepare(self, item: WorkItem) -> Outcome | None:
        """Claim the job, read and decode the object; an outcome when there is nothing to infer."""
        obj = item.obj
        requested = obj.model or self.models.registry.model_for_key(self.settings.upload_prefix, obj.key)
        try:
            job = await self._store(
                self.jobs.claim,
                item.job_id,
                obj.ref,
                model=requested,
                expires_at=ttl_from_now(self.settings.job_ttl_days),
            )
            item.model_name = job.model or requested
            if job.status.terminal:
                logger.info("duplicate event for a finished job", extra=item.log_extra(status=str(job.status)))
                self.stats.duplicates += 1
                return await self._settle_failed(item) if job.status is JobStatus.FAILED else Outcome.DONE
            self._log_state(item, JobStatus.RUNNING)
            model = self.models.get(item.model_name)  # unknown or not loaded here: FAILED, permanent
            self.failpoints.check_key(obj.key)
            started = time.perf_counter()
            data = await self._bounded(self.objects.read(obj, max_bytes=self.limits.max_bytes), "read the object")
            item.timings["fetch_ms"] = _ms_since(started)
            started = time.perf_counter()
            decode = functools.partial(decode_image, data, self.limits, max_side=model.input_size)
            item.image = await asyncio.get_running_loop().run_in_executor(self._decode_pool, decode)
            item.timings["decode_ms"] = _ms_since(started)
            return None
        except ObjectChanged as exc:
            if job_id_in_key(self.settings.upload_prefix, obj.key):
                # A job made by the API is its key's, whatever version: the newer upload's own event
                # runs it, so this stale event changes nothing.
                logger.info("stale event: the object was overwritten since", extra=item.log_extra())
                return Outcome.DONE
            return await self._fail(item, JobError(code=exc.code, message=exc.message))
        except PermanentError as exc:
            return await self._fail(item, JobError(code=exc.code, message=exc.message))
        except Exception as exc:  # noqa: BLE001 - any other fault: retry, then a terminal state
            return await self._retry_or_fail(item, exc)

    async def _expired(self, item: WorkItem, on_expiry: Expiry) -> Outcome:
        if on_expiry is Expiry.RETRY:
            logger.warning("out of time; the message goes back to the queue", extra=item.log_extra())
            return Outcome.RETRY
        seconds = self.settings.job_deadline_seconds
        return await self._fail(
            item, JobError(code="deadline_exceeded", message=f"not finished within {seconds:.0f} s")
        )

    # --- infer ---------------------------------------------------------------------------------

    async def _infer_loop(self, name: str, model: Model) -> None:
        batcher = self._batchers[name]
        while True:
            batch = [item for item in await batcher.next_batch() if item.enter(Stage.INFERRING)]
            if batch:
                await self._infer(batch, model)

    async def _infer(self, batch: list[WorkItem], model: Model) -> None:
        started = time.perf_counter()
        outputs = await self._predict(batch, model)
        elapsed = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.batched_images += len(batch)
        self.stats.model_seconds += elapsed
        ready: list[tuple[WorkItem, ModelOutput]] = []
        for item, output in zip(batch, outputs, strict=True):
            image = item.image
            if isinstance(output, Exception) or image is None:
                if item.enter(Stage.SETTLING):
                    error = JobError(code="model_error", message=f"the model failed on this image ({output!r})")
                    item.finish(await self._fail(item, error))
                continue
            item.image = None  # the pixels are no longer needed
            item.timings["inference_ms"] = elapsed * 1000 / len(batch)
            item.timings["batch_size"] = float(len(batch))
            ready.append((item, output.scaled_to(image.original_width, image.original_height)))
        if ready:
            await self._to_write.put(ready)

    async def _predict(self, batch: list[WorkItem], model: Model) -> list[ModelOutput | Exception]:
        """One forward pass; if it raises, one pass per image, so one bad image fails alone."""
        images = [item.image.rgb for item in batch if item.image is not None]
        try:
            outputs = await self._run(self._infer_pool, model.predict, images)
            if len(outputs) == len(batch):
                return list(outputs)
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(batch)} images")
        except Exception as exc:
            if len(batch) == 1:
                logger.exception("the model failed on an image", extra=batch[0].log_extra())
                return [exc]
            logger.warning("a batch of %d failed (%r); running its images one by one", len(batch), exc)
        return [(await self._predict([item], model))[0] for item in batch]

    # --- write ---------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            ready = [(item, output) for item, output in await self._to_write.get() if item.enter(Stage.SETTLING)]
            if ready:
                self.failpoints.hit("after_inference")
                await self._write(ready)

    async def _write(self, ready: list[tuple[WorkItem, ModelOutput]]) -> None:
        records = [
            ResultRecord(
                job_id=item.job_id,
                bucket=item.obj.bucket,
                key=item.obj.key,
                etag=item.obj.version,
                model_name=item.model_name,
                model=self.models.models[item.model_name].version,
                output=output,
                timings={**item.timings, "total_ms": _ms_since(item.started)},
                object_created_at=item.obj.event_time,
            )
            for item, output in ready
        ]
        try:
            # One transaction for the batch: all its rows commit, or none do.
            stored = await self._store(self.results.record_results, records)
        except TransientError as exc:
            for item, _ in ready:
                item.finish(await self._retry_or_fail(item, exc))
            return
        except Exception as exc:
            if len(ready) > 1:
                logger.warning("a batch write of %d failed (%r); writing its rows one by one", len(ready), exc)
                for one in ready:
                    await self._write([one])
                return
            [(item, _)] = ready
            logger.exception("the result store refused a row", extra=item.log_extra())
            error = JobError(code="result_rejected", message="the result could not be stored")
            item.finish(await self._fail(item, error))
            return
        outcomes = await asyncio.gather(
            *(self._succeed(item, row) for (item, _), row in zip(ready, stored, strict=True))
        )
        for (item, _), outcome in zip(ready, outcomes, strict=True):
            item.finish(outcome)
        self.failpoints.hit("after_write")

    async def _succeed(self, item: WorkItem, row: StoredResult) -> Outcome:
        # Made from the row PostgreSQL holds (ours, or an earlier delivery's): the two agree.
        summary = summarize(row.output, max_items=self.settings.summary_max_items)
        version = self.models.models[item.model_name].version
        summary.update(model=item.model_name, model_version=version, inference_ms=round(row.inference_ms or 0.0, 2))
        try:
            await self._store(self.jobs.mark_succeeded, item.job_id, summary)
        except TransitionRejected:
            return await self._after_rejection(item)
        except Exception as exc:  # noqa: BLE001 - the row is committed; a redelivery finds it
            return await self._retry_or_fail(item, exc)
        self.stats.succeeded += 1
        self._log_state(item, JobStatus.SUCCEEDED, **{k: v for k, v in summary.items() if k.endswith("_count")})
        return Outcome.DONE

    # --- failures ------------------------------------------------------------------------------

    async def _fail(self, item: WorkItem, error: JobError) -> Outcome:
        """Record FAILED (creating the job if it has no record yet), then make sure it has no result."""
        try:
            await self._store(
                self.jobs.mark_failed,
                item.job_id,
                error,
                obj=item.obj.ref,
                expires_at=ttl_from_now(self.settings.job_ttl_days),
            )
        except TransitionRejected:
            return await self._after_rejection(item)
        except Exception as exc:  # noqa: BLE001 - not recorded: the message must come back
            logger.warning("could not record a failure, will retry: %s", exc, extra=item.log_extra())
            return Outcome.RETRY
        self.stats.failed += 1
        self._log_state(item, JobStatus.FAILED, error_code=error.code, error_message=error.message)
        return await self._settle_failed(item)

    async def _after_rejection(self, item: WorkItem) -> Outcome:
        """Another delivery ended the job first; if it FAILED, the job must keep no result."""
        try:
            job = await self._store(self.jobs.get, item.job_id)
        except Exception as exc:  # noqa: BLE001
            return await self._retry_or_fail(item, exc)
        self.stats.duplicates += 1
        if job.status is JobStatus.FAILED:
            return await self._settle_failed(item)
        return Outcome.DONE if job.status.terminal else Outcome.RETRY

    async def _settle_failed(self, item: WorkItem) -> Outcome:
        """The one place that enforces "a FAILED job has no result": acknowledged only once true."""
        try:
            removed = await self._store(self.results.discard, item.job_id)
        except Exception as exc:  # noqa: BLE001 - the redelivered message tries again
            logger.warning("could not remove the result of a failed job: %s", exc, extra=item.log_extra())
            return Outcome.RETRY
        if removed:
            logger.warning("removed %d result row(s) of a FAILED job", removed, extra=item.log_extra())
        return Outcome.DONE

    async def _retry_or_fail(self, item: WorkItem, exc: Exception) -> Outcome:
        """Transient or unexpected fault: retry until the attempts are spent, then FAILED."""
        if item.attempt >= self.settings.max_attempts:
            logger.error("giving up after %d attempts: %s", item.attempt, exc, extra=item.log_extra())
            code = "store_unavailable" if isinstance(exc, TransientError) else "processing_error"
            return await self._fail(
                item, JobError(code=code, message=f"processing failed after {item.attempt} attempts")
            )
        log = logger.warning if isinstance(exc, TransientError) else logger.exception
        log("attempt %d failed, will retry: %s", item.attempt, exc, extra=item.log_extra())
        return Outcome.RETRY

    # --- plumbing ------------------------------------------------------------------------------

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking store call, bounded in time: a hung server costs a retry, never a hung worker."""
        # A call that hangs keeps its pool thread (and that thread's connection) until the server's or
        # the socket's own timeouts end it; the item moves on now.
        result: T = await self._bounded(self._run(self._store_pool, fn, *args, **kwargs), fn.__name__)
        return result

    async def _bounded(self, call: Any, what: str) -> Any:
        seconds = self.settings.store_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await call
        except TimeoutError as exc:
            raise TransientError(f"{what}: no answer within {seconds:.0f} s") from exc

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    def _log_state(self, item: WorkItem, status: JobStatus, **more: Any) -> None:
        logger.info(
            "job %s",
            status,
            extra=item.log_extra(status=str(status), elapsed_ms=round(_ms_since(item.started), 1), **more),
        )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
