"""How the core ends a job, and the two rules that hold whatever fails (see ``core.py``):

- a job and its result agree: the job record's summary is made from the row PostgreSQL keeps
  (``Settler.succeed``);
- a FAILED job has no result: recording a failure removes any result row of the job before the
  message is acknowledged (``Settler.settle_failed``).

Every store call here is bounded in time (``BoundedCalls``): a hung server costs a retry, never a
hung worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from visionq import metrics
from visionq.config import WorkerSettings
from visionq.errors import TransientError, TransitionRejected
from visionq.jobs import Job, JobError, JobStatus, ttl_from_now
from visionq.outputs import summarize
from visionq.stores.job_store import JobStore
from visionq.stores.result_store import ResultStore, StoredResult
from visionq.thread_pools import named_pool
from visionq.work_items import Outcome, WorkItem

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
    # Of model_seconds, the time the models in processes of their own spent in ``predict``, as they
    # report it (set by the driver; models/own_process.py): the rest is the hand-over.
    model_process_seconds: float = 0.0
    aws_requests: dict[str, int] = field(default_factory=dict)  # by "service.Operation", set by the driver


async def run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))


def _cpu_counted(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a store thread, its CPU time counted by call (metrics
    ``visionq_store_cpu_seconds``): what each store call costs the worker, apart from waiting."""
    started = time.thread_time()
    try:
        return fn(*args, **kwargs)
    finally:
        metrics.WORKER.store_cpu(fn.__name__, time.thread_time() - started)


class StoreCallTimedOut(TransientError):
    """A store call given up on after its time: its thread may still be running it, and what it
    writes may still land (``call``: that call, done or not)."""

    def __init__(self, message: str, call: concurrent.futures.Future[Any]) -> None:
        super().__init__(message)
        self.call = call

    async def ended(self, seconds: float) -> bool:
        """Whether the call has ended (returned, raised, or was cancelled before it started),
        waiting up to ``seconds``."""
        if self.call.done():
            return True
        waiter = asyncio.wrap_future(self.call)
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # read here or by the caller
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        return bool(done)


class BoundedCalls:
    """Blocking store calls on a pool of their own, each given at most ``seconds``."""

    def __init__(self, seconds: float, *, threads: int = 8) -> None:
        self.seconds = seconds
        self.pool = named_pool(threads, "store")

    async def store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # A call that hangs keeps its pool thread (and that thread's connection) until the server's
        # or the socket's own timeouts end it; the item moves on now, told which call it left
        # running (StoreCallTimedOut), for a caller whose call may yet write something.
        call = self.pool.submit(_cpu_counted, fn, *args, **kwargs)
        try:
            return await self.bounded(asyncio.wrap_future(call), fn.__name__)
        except TransientError as exc:
            if isinstance(exc.__cause__, TimeoutError):  # not yet started: cancelled; running: not
                raise StoreCallTimedOut(exc.message, call) from exc.__cause__
            raise

    async def bounded(self, call: Awaitable[T], what: str) -> T:
        try:
            async with asyncio.timeout(self.seconds):
                return await call
        except TimeoutError as exc:
            raise TransientError(f"{what}: no answer within {self.seconds:.0f} s") from exc

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Settler:
    """Ends jobs: SUCCEEDED from a stored row, FAILED with its error, or the message retried."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        jobs: JobStore,
        results: ResultStore,
        calls: BoundedCalls,
        stats: ProcessingStats,
        announce: Callable[[Job], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.results = results
        self.calls = calls
        self.stats = stats
        # Hands an ended job that asked for it (a webhook of its own or of its batch) to the
        # notifier (notifications.py): a queue message, never the receiver itself.
        self.announce = announce

    async def succeed(self, item: WorkItem, row: StoredResult, *, model_version: str) -> Outcome:
        # Made from the row PostgreSQL holds (ours, or an earlier delivery's): the two agree.
        summary = summarize(row.output, max_items=self.settings.summary_max_items)
        summary.update(
            model=item.model_name, model_version=model_version, inference_ms=round(row.inference_ms or 0.0, 2)
        )
        try:
            job = await metrics.timed(self.calls.store(self.jobs.mark_succeeded, item.job_id, summary), "settle")
        except TransitionRejected:
            return await self.after_rejection(item)
        except Exception as exc:  # noqa: BLE001 - the row is committed; a redelivery finds it
            return await self.retry_or_fail(item, exc)
        self.stats.succeeded += 1
        log_state(item, JobStatus.SUCCEEDED, **{k: v for k, v in summary.items() if k.endswith("_count")})
        return await self.announced(item, job, Outcome.DONE)

    async def fail(self, item: WorkItem, error: JobError) -> Outcome:
        """Record FAILED (creating the job if it has no record yet), then make sure it has no result."""
        try:
            job = await self.calls.store(
                self.jobs.mark_failed,
                item.job_id,
                error,
                obj=item.obj.ref,
                expires_at=ttl_from_now(self.settings.job_ttl_days),
            )
        except TransitionRejected:
            return await self.after_rejection(item)
        except Exception as exc:  # noqa: BLE001 - not recorded: the message must come back
            logger.warning("could not record a failure, will retry: %s", exc, extra=item.log_extra())
            return Outcome.RETRY
        self.stats.failed += 1
        log_state(item, JobStatus.FAILED, error_code=error.code, error_message=error.message)
        return await self.announced(item, job, await self.settle_failed(item))

    async def announced(self, item: WorkItem, job: Job, outcome: Outcome) -> Outcome:
        """``outcome``, once an ended job that wants its end announced has been handed on. If that
        fails the message comes back; its redelivery finds the job ended and hands it on again
        (``Processor`` calls this for duplicates too), so an announcement is never lost; it may
        be made twice, which the notifier and the receivers' event ids absorb."""
        if outcome is not Outcome.DONE or not job.notify or self.announce is None or not job.status.terminal:
            return outcome
        try:
            await self.calls.bounded(self.announce(job), "announce the job's end")
        except Exception as exc:  # noqa: BLE001 - the redelivered message announces it
            logger.warning("could not hand the job's end to the notifier, will retry: %s", exc, extra=item.log_extra())
            return Outcome.RETRY
        return outcome

    async def after_rejection(self, item: WorkItem) -> Outcome:
        """Another delivery ended the job first; if it FAILED, the job must keep no result."""
        try:
            job = await self.calls.store(self.jobs.get, item.job_id)
        except Exception as exc:  # noqa: BLE001
            return await self.retry_or_fail(item, exc)
        self.stats.duplicates += 1
        if job.status is JobStatus.FAILED:
            return await self.announced(item, job, await self.settle_failed(item))
        return await self.announced(item, job, Outcome.DONE) if job.status.terminal else Outcome.RETRY

    async def settle_failed(self, item: WorkItem) -> Outcome:
        """The one place that enforces "a FAILED job has no result": acknowledged only once true."""
        try:
            removed = await self.calls.store(self.results.discard, item.job_id)
        except Exception as exc:  # noqa: BLE001 - the redelivered message tries again
            logger.warning("could not remove the result of a failed job: %s", exc, extra=item.log_extra())
            return Outcome.RETRY
        if removed:
            logger.warning("removed %d result row(s) of a FAILED job", removed, extra=item.log_extra())
        return Outcome.DONE

    async def retry_or_fail(self, item: WorkItem, exc: Exception) -> Outcome:
        """Transient or unexpected fault: retry until the attempts are spent, then FAILED."""
        if item.attempt >= self.settings.max_attempts:
            logger.error("giving up after %d attempts: %s", item.attempt, exc, extra=item.log_extra())
            code = "store_unavailable" if isinstance(exc, TransientError) else "processing_error"
            return await self.fail(
                item, JobError(code=code, message=f"processing failed after {item.attempt} attempts")
            )
        log = logger.warning if isinstance(exc, TransientError) else logger.exception
        log("attempt %d failed, will retry: %s", item.attempt, exc, extra=item.log_extra())
        return Outcome.RETRY


def log_state(item: WorkItem, status: JobStatus, **more: Any) -> None:
    metrics.WORKER.job_state(item, status, more.get("error_code"))
    logger.info(
        "job %s",
        status,
        extra=item.log_extra(status=str(status), elapsed_ms=round(ms_since(item.started), 1), **more),
    )


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
