"""The dead-letter queue: messages SQS gave up on after maxReceiveCount deliveries.

A message lands there when its work kept failing without the worker recording a result — most
often because its image crashes the worker process. ``sweep`` gives each such job its terminal
state (FAILED, ``poison_message``) and leaves the message parked for inspection; ``redrive``
reopens those jobs and sends their messages back to the work queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from visionq.config import DEFAULT_JOB_TTL_DAYS
from visionq.errors import PermanentError, TransitionRejected
from visionq.events import ObjectCreated, parse_s3_event
from visionq.jobs import POISON_MESSAGE, Job, JobError, JobStatus, job_id_for_object, ttl_from_now
from visionq.stores.job_store import JobStore
from visionq.stores.queue import Message, Queue

logger = logging.getLogger(__name__)

POISON = POISON_MESSAGE


@dataclass(frozen=True)
class DeadLetter:
    message: Message
    objects: list[ObjectCreated]
    job_ids: list[str]

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]


def describe(message: Message, upload_prefix: str) -> DeadLetter:
    try:
        objects = parse_s3_event(message.body)
    except PermanentError:
        objects = []
    return DeadLetter(
        message=message,
        objects=objects,
        job_ids=[job_id_for_object(upload_prefix, o.bucket, o.key, o.version, model=o.model) for o in objects],
    )


async def peek(
    dlq: Queue, upload_prefix: str, *, hide_seconds: int = 10, limit: int = 100, release: bool = False
) -> list[DeadLetter]:
    """Up to ``limit`` parked messages. They stay parked: hidden ``hide_seconds`` from other readers
    (so one pass sees each once), or visible again at once with ``release``."""
    found: dict[str, DeadLetter] = {}
    while len(found) < limit:
        batch = await dlq.receive(max_messages=10, wait_seconds=1, visibility_timeout=hide_seconds)
        fresh = [m for m in batch if m.message_id not in found]
        if not fresh:
            break
        for message in fresh:
            found[message.message_id] = describe(message, upload_prefix)
    if release and found:
        await dlq.release([letter.message for letter in found.values()], delay_seconds=0)
    return list(found.values())


async def sweep(
    dlq: Queue,
    jobs: JobStore,
    upload_prefix: str,
    *,
    announce: Callable[[Job], Awaitable[None]] | None = None,
    discard: Callable[[str], int] | None = None,
    batch_notices: BatchNotices | None = None,
) -> int:
    """Mark the jobs of parked messages FAILED; return how many changed. ``announce``: hands
    those that asked for a webhook to the notifier (notifications.py). ``discard``: removes a
    job's result rows (``ResultStore.discard``), for a FAILED job has none; a worker that
    committed a row and died before its job record said so, at every delivery, leaves one. (The
    Lambda sweeper has no database connection: there a redelivery, ``visionq dlq redrive``, is
    what finds and keeps such a row.) ``batch_notices``: poison members of batches with a
    webhook are announced again until this process has sent one announcement of each (see
    ``BatchNotices``).

    The messages are left visible, so `visionq dlq list` sees them; a later sweep finds their
    jobs already FAILED and changes nothing.
    """

    async def wanted(job: Job) -> bool:  # a batch member's announcement, lost, not sent since
        return batch_notices is not None and await batch_notices.wanted(job)

    failed = 0
    for letter in await peek(dlq, upload_prefix, release=True):
        error = JobError(
            code=POISON,
            message=(
                f"delivered {letter.message.receive_count} times without finishing (the image may crash"
                " the worker); parked in the dead-letter queue"
            ),
        )
        for obj, job_id in zip(letter.objects, letter.job_ids, strict=True):
            job, changed = await asyncio.to_thread(_fail_job, jobs, job_id, obj, error)
            if job.status is JobStatus.FAILED and discard is not None:
                # Every sweep, for every parked job that is FAILED (one indexed DELETE each): a
                # sweep that failed between the two writes leaves the next one to remove the rows.
                removed = await asyncio.to_thread(discard, job_id)
                if removed:
                    logger.warning("removed %d result row(s) of a poison job", removed, extra={"job_id": job_id})
            if changed:
                failed += 1
                logger.warning("job FAILED: %s", POISON, extra={"job_id": job_id, "key": obj.key, "status": "FAILED"})
            if job.notify and announce is not None and (changed or _unannounced(job) or await wanted(job)):
                try:
                    await announce(job)
                except Exception:  # the next sweep announces it again
                    logger.exception("could not announce a poison job's end", extra={"job_id": job_id})
                else:
                    if batch_notices is not None:
                        batch_notices.announced(job)
    return failed


@dataclass
class BatchNotices:
    """The sweep's memory of poison batch members it has announced.

    A member's announcement may be lost (the notice queue down as the sweep failed the job); if it
    was the last member to end, only its notice would have set the batch's own off. So a parked
    member of a batch whose notice is still unclaimed (``due``: ``DynamoBatchStore.notice_due``) is
    announced at each sweep until one announcement is sent from this process: once sent, the
    notifier has it. (A new process announces each such member once more, one read each.)
    """

    due: Callable[[str], bool]
    sent: set[str] = field(default_factory=set)  # job ids

    async def wanted(self, job: Job) -> bool:
        """Whether ``job``, a batch member, is to be announced again."""
        if job.batch_id is None or not _poison(job) or job.job_id in self.sent:
            return False
        try:
            return await asyncio.to_thread(self.due, job.batch_id)
        except Exception:  # a store outage: the next sweep asks again
            logger.warning("could not read batch %s for its notice", job.batch_id, exc_info=True)
            return False

    def announced(self, job: Job) -> None:
        if job.batch_id is not None:
            self.sent.add(job.job_id)


def _unannounced(job: Job) -> bool:
    """A poison job with a webhook of its own and no delivery attempt recorded: its announcement
    failed, or its FAILED was written by a request whose answer was lost (the retry met its own
    write and was refused), or the notifier has not come to it yet. Announced again, every sweep
    until an attempt is recorded; the notifier makes one delivery of any number of them. (A batch
    member's notice, for its batch: ``BatchNotices``.)"""
    return _poison(job) and job.webhook_url is not None and job.webhook is None


def _poison(job: Job) -> bool:
    return job.status is JobStatus.FAILED and job.error is not None and job.error.code == POISON


def _fail_job(jobs: JobStore, job_id: str, obj: ObjectCreated, error: JobError) -> tuple[Job, bool]:
    """FAILED (the record created if the worker died before it could make one), and True; or the
    job as it stands, and False, if it had already ended."""
    try:
        return jobs.mark_failed(job_id, error, obj=obj.ref, expires_at=ttl_from_now(DEFAULT_JOB_TTL_DAYS)), True
    except TransitionRejected:
        return jobs.get(job_id), False


async def redrive(dlq: Queue, queue: Queue, jobs: JobStore, upload_prefix: str) -> int:
    """Send every parked message back to the work queue, reopening its poison-failed jobs."""
    moved = 0
    for letter in await peek(dlq, upload_prefix, hide_seconds=60, limit=10_000):
        for job_id in letter.job_ids:
            # A job that finished some other way, or was never swept, stays as it is.
            with contextlib.suppress(TransitionRejected):
                await asyncio.to_thread(jobs.reopen, job_id)
        await queue.send(letter.message.body)
        await dlq.delete([letter.message])
        moved += 1
    return moved
