"""The processing core: a message in, an outcome out, whoever received the message.

    process(message) ─▶ per object: claim the job (RUNNING) ▸ read exactly the announced version
        ▸ decode to the model's size ─▶ micro-batcher (shared by every message in hand)
        ─▶ infer stage (one forward pass per batch, item by item if the batch raises)
        ─▶ write stage (one PostgreSQL transaction per batch, then each job SUCCEEDED)

A message's outcome is DONE once every job it names is terminal, RETRY when a store was
unavailable or its deadline came in a driver that retries. The drivers (``poller.py``, the
long-running worker; ``functions/sqs_worker.py``, AWS Lambda) only receive, keep leases, and
delete or give back messages by that outcome.

Two rules hold whatever fails, and each is enforced in one place:
- a job and its result agree: PostgreSQL keeps the first row written for a result identity and the
  job record's summary is made from that row (``settle.Settler.succeed``);
- a FAILED job has no result: recording a failure removes any result row of the job before the
  message is acknowledged (``settle.Settler.settle_failed``), and a deadline cannot fail an item
  whose result is already being written (``work_items``).

Each job gets the model its record names (``models/registry.py``); images are batched per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from visionq import metrics
from visionq.batching import MicroBatcher
from visionq.config import WorkerSettings
from visionq.decode_pool import DecodePool
from visionq.errors import ConfigError, ImageRejected, ObjectChanged, PermanentError, TransientError
from visionq.events import MalformedEvent, ObjectCreated, parse_s3_event
from visionq.faults import Failpoints
from visionq.images import DecodedImage, EncodedJpeg, ImageLimits, decode_image, inspect_jpeg
from visionq.jobs import Job, JobError, JobStatus, batch_id_in_key, job_id_for_object, job_id_in_key, ttl_from_now
from visionq.models import Model, batches_in_flight, decodes_on_device, ends_its_own_hangs, runs_batches_side_by_side
from visionq.models.registry import LoadedModels
from visionq.outputs import ModelOutput
from visionq.settle import BoundedCalls, ProcessingStats, Settler, StoreCallTimedOut, log_state, ms_since, run_in
from visionq.stores.job_store import JobStore
from visionq.stores.object_store import ObjectReader
from visionq.stores.queue import Message
from visionq.stores.result_store import ResultRecord, ResultStore
from visionq.thread_pools import named_pool
from visionq.work_items import Expiry, Outcome, Stage, WorkItem

logger = logging.getLogger(__name__)


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
        model_batches: Mapping[str, int] | None = None,
        failpoints: Failpoints | None = None,
        announce: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.objects = objects
        self.results = results
        self.models = models
        self.failpoints = failpoints or Failpoints()
        self.announce = announce  # ended jobs that asked for a webhook go to the notifier (notifications.py)
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.stats = ProcessingStats()
        # Decoding is CPU work and store calls block (boto3, psycopg): both stay off the event loop.
        # The model gets a thread of its own, so forward passes never queue behind anything else.
        # Decoding in processes of its own (an image that crashes the decoder fails its job, not the
        # worker), or in threads.
        processes = settings.decode_processes_wanted
        self._decode_processes = (
            DecodePool(
                processes,
                slot_side=models.largest_input_size,
                timeout=settings.decode_timeout_seconds,
                crash_marker=self.failpoints.crash_decoder_on,
                hang_marker=self.failpoints.hang_decoder_on,
            )
            if processes
            else None
        )
        self._decode_pool = None if processes else named_pool(settings.decode_workers, "decode")
        self._calls = BoundedCalls(settings.store_timeout_seconds)
        if settings.device_decode == "on" and not settings.model_process_wanted:
            raise ConfigError(
                "VISIONQ_DEVICE_DECODE=on needs VISIONQ_MODEL_PROCESS=1: only a model in its own process"
                " decodes on its device"
            )
        # The models whose process decodes JPEGs on its device: the worker only checks their header.
        self._decoding_models = {
            name for name, model in models.models.items() if decodes_on_device(model, settings.device_decode)
        }
        # Models in the worker's process share one infer thread; a model that takes several batches
        # at once (in a process of its own) gets a thread per batch it can hold.
        shared = named_pool(1, "infer")
        self._infer_pools = {
            name: named_pool(n, f"infer-{name}") if (n := batches_in_flight(model)) > 1 else shared
            for name, model in models.models.items()
        }
        self._model_free_at: dict[str, float] = {}  # when each model's last batch ended
        self._running: dict[int, tuple[str, float]] = {}  # batches in the model: (model, since when)
        self._settler = Settler(
            settings=settings, jobs=jobs, results=results, calls=self._calls, stats=self.stats, announce=announce
        )
        self._preparing = 0
        # Batches are formed per model (each model's infer loop runs as many as it takes at once),
        # each up to its own size where its registry entry sets one (``model_batches``), else ``max_batch``.
        sizes = model_batches or {}
        self._batchers: dict[str, MicroBatcher[WorkItem]] = {
            name: MicroBatcher(
                max_batch=sizes.get(name, max_batch), max_wait=max_wait, more_coming=lambda: self._preparing > 0
            )
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
        for pool in (self._decode_pool, *set(self._infer_pools.values())):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if self._decode_processes is not None:
            self._decode_processes.close()
        self._calls.close()
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
                waiting = item.stage is Stage.BATCHED  # for its model, which was busy all this time
                if not item.expire():
                    return await item.done  # its result is being written: the result wins
                if waiting:
                    # Not this image's doing (the model is stuck or far too slow for the work in
                    # hand): its message goes back for another worker, or this one once it recovers.
                    logger.warning("out of time waiting for model %s; the message goes back", item.model_name)
                    return Outcome.RETRY
                return await self._expired(item, on_expiry)
        finally:
            self._in_hand.discard(identity)

    async def _prepare(self, item: WorkItem) -> Outcome | None:
        """Claim the job, read and decode the object; an outcome when there is nothing to infer."""
        obj = item.obj
        requested = obj.model or self.models.registry.model_for_key(self.settings.upload_prefix, obj.key)
        try:
            job = await self._calls.store(
                self.jobs.claim,
                item.job_id,
                obj.ref,
                model=requested,
                expires_at=ttl_from_now(self.settings.job_ttl_days),
                batch_id=batch_id_in_key(self.settings.upload_prefix, obj.key),
            )
            item.model_name = job.model or requested
            if job.status.terminal:
                logger.info("duplicate event for a finished job", extra=item.log_extra(status=str(job.status)))
                self.stats.duplicates += 1
                settled = await self._settler.settle_failed(item) if job.status is JobStatus.FAILED else Outcome.DONE
                return await self._settler.announced(item, job, settled)
            log_state(item, JobStatus.RUNNING)
            model = self.models.get(item.model_name)  # unknown or not loaded here: FAILED, permanent
            self.failpoints.check_key(obj.key)
            started = time.perf_counter()
            data = await self._calls.bounded(self.objects.read(obj, max_bytes=self.limits.max_bytes), "read the object")
            item.timings["fetch_ms"] = ms_since(started)
            started = time.perf_counter()
            item.image = await self._decode(data, model.input_size, on_device=item.model_name in self._decoding_models)
            item.timings["decode_ms"] = ms_since(started)
            return None
        except ObjectChanged as exc:
            if obj.model is None and job_id_in_key(self.settings.upload_prefix, obj.key):
                # A job made by the API is its key's, whatever version: the newer upload's own event
                # runs it, so this stale event changes nothing. (A reprocessing job is the version's.)
                logger.info("stale event: the object was overwritten since", extra=item.log_extra())
                return Outcome.DONE
            return await self._settler.fail(item, JobError(code=exc.code, message=exc.message))
        except PermanentError as exc:
            return await self._settler.fail(item, JobError(code=exc.code, message=exc.message))
        except Exception as exc:  # noqa: BLE001 - any other fault: retry, then a terminal state
            return await self._settler.retry_or_fail(item, exc)

    async def _decode(self, data: bytes, max_side: int | None, *, on_device: bool) -> DecodedImage | EncodedJpeg:
        if on_device:
            # The header alone, here (tens of microseconds): the model's device decodes the pixels.
            jpeg = inspect_jpeg(data, self.limits, max_side=max_side)
            if jpeg is not None:
                metrics.WORKER.decoded("model_process")
                return jpeg
        metrics.WORKER.decoded("worker")
        if self._decode_processes is not None:
            return await self._decode_processes.decode(data, self.limits, max_side=max_side)
        assert self._decode_pool is not None
        return await run_in(self._decode_pool, decode_image, data, self.limits, max_side=max_side)

    async def _expired(self, item: WorkItem, on_expiry: Expiry) -> Outcome:
        if on_expiry is Expiry.RETRY:
            logger.warning("out of time; the message goes back to the queue", extra=item.log_extra())
            return Outcome.RETRY
        seconds = self.settings.job_deadline_seconds
        return await self._settler.fail(
            item, JobError(code="deadline_exceeded", message=f"not finished within {seconds:.0f} s")
        )

    # --- infer ---------------------------------------------------------------------------------

    async def _infer_loop(self, name: str, model: Model) -> None:
        batcher = self._batchers[name]
        # A batch is formed only when the model has room for it (so it gathers as many images as it
        # can), and runs while the next is formed and handed over.
        room = asyncio.Semaphore(batches_in_flight(model))
        async with asyncio.TaskGroup() as running:
            while True:
                await room.acquire()
                batch = [item for item in await batcher.next_batch() if item.enter(Stage.INFERRING)]
                if not batch:
                    room.release()
                    continue
                task = running.create_task(self._infer(batch, name, model))
                task.add_done_callback(lambda _: room.release())

    def stuck_model(self, seconds: float) -> tuple[str, float] | None:
        """A model in the worker's process that has run one batch for longer than ``seconds``, and
        for how long; None when there is none. Its thread cannot be taken back: only a new worker
        serves that model (and any other sharing its thread) again."""
        now = time.perf_counter()
        running = [(now - since, name) for name, since in self._running.values()]
        overdue = [(name, held) for held, name in sorted(running, reverse=True) if held > seconds]
        return overdue[0] if overdue else None

    async def _infer(self, batch: list[WorkItem], name: str, model: Model) -> None:
        started = time.perf_counter()
        watched = not ends_its_own_hangs(model)
        if watched:
            self._running[id(batch)] = (name, started)
        try:
            outputs = await self._predict(batch, model, self._infer_pools[name])
        finally:
            self._running.pop(id(batch), None)
        ended = time.perf_counter()
        # With batches queued in flight, this one's turn came when the one before it ended; batches
        # that run side by side each ran from their start.
        turn = started if runs_batches_side_by_side(model) else max(started, self._model_free_at.get(name, started))
        elapsed = ended - turn
        self._model_free_at[name] = ended
        self.stats.batches += 1
        self.stats.batched_images += len(batch)
        self.stats.model_seconds += elapsed
        ready: list[tuple[WorkItem, ModelOutput]] = []
        for item, output in zip(batch, outputs, strict=True):
            image = item.image
            if isinstance(output, TransientError):  # the model cannot be run just now: not this image's fault
                if item.enter(Stage.SETTLING):
                    item.finish(await self._settler.retry_or_fail(item, output))
                continue
            if isinstance(output, ImageRejected):  # a JPEG its model's device could not decode
                if item.enter(Stage.SETTLING):
                    item.finish(await self._settler.fail(item, JobError(code=output.code, message=output.message)))
                continue
            if isinstance(output, Exception) or image is None:
                if item.enter(Stage.SETTLING):
                    error = JobError(code="model_error", message=f"the model failed on this image ({output!r})")
                    item.finish(await self._settler.fail(item, error))
                continue
            item.image = None  # the pixels are no longer needed
            item.timings["inference_ms"] = elapsed * 1000 / len(batch)
            item.timings["batch_size"] = float(len(batch))
            ready.append((item, output.scaled_to(image.original_width, image.original_height)))
        if ready:
            await self._to_write.put(ready)

    async def _predict(
        self, batch: list[WorkItem], model: Model, pool: ThreadPoolExecutor
    ) -> list[ModelOutput | Exception]:
        """One forward pass; if it raises, one pass per image, so one bad image fails alone."""
        # Pixels, or JPEGs for a model that decodes them on its device (decodes_on_device).
        images: list[Any] = [
            item.image.rgb if isinstance(item.image, DecodedImage) else item.image
            for item in batch
            if item.image is not None
        ]
        try:
            outputs = await run_in(pool, model.predict, images)
            if len(outputs) == len(batch):
                return list(outputs)
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(batch)} images")
        except TransientError as exc:  # e.g. the model's process could not be started again
            logger.warning(
                "the model could not run a batch of %d (%s); their messages will be retried", len(batch), exc
            )
            return [exc] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                if isinstance(exc, ImageRejected):
                    logger.warning("image rejected by its decoder: %s", exc.message, extra=batch[0].log_extra())
                else:
                    logger.exception("the model failed on an image", extra=batch[0].log_extra())
                return [exc]
            logger.warning("a batch of %d failed (%r); running its images one by one", len(batch), exc)
        # One by one; an image whose job expired meanwhile (its pixels dropped) is not run again.
        expired = RuntimeError("the job's deadline passed before the image could be run alone")
        return [(await self._predict([item], model, pool))[0] if item.image is not None else expired for item in batch]

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
                timings={**item.timings, "total_ms": ms_since(item.started)},
                object_created_at=item.obj.event_time,
            )
            for item, output in ready
        ]
        try:
            # One transaction for the batch: all its rows commit, or none do.
            stored = await metrics.timed(self._calls.store(self.results.record_results, records), "write", len(records))
        except StoreCallTimedOut as exc:
            # The transaction may still commit. Settle nothing before it has ended: a job failed
            # now (its last attempt) would keep the rows committed after its cleanup.
            if not await exc.ended(self._calls.seconds):
                logger.warning("a result write outlived its timeout twice; its messages come back: %s", exc)
                for item, _ in ready:
                    item.finish(Outcome.RETRY)  # the redelivery finds whatever it wrote
                return
            if exc.call.cancelled() or exc.call.exception() is not None:
                for item, _ in ready:
                    item.finish(await self._settler.retry_or_fail(item, exc))
                return
            stored = exc.call.result()  # it committed after all, late
        except TransientError as exc:
            for item, _ in ready:
                item.finish(await self._settler.retry_or_fail(item, exc))
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
            item.finish(await self._settler.fail(item, error))
            return
        outcomes = await asyncio.gather(
            *(
                self._settler.succeed(item, row, model_version=self.models.models[item.model_name].version)
                for (item, _), row in zip(ready, stored, strict=True)
            )
        )
        for (item, _), outcome in zip(ready, outcomes, strict=True):
            item.finish(outcome)
        self.failpoints.hit("after_write")
