"""The dead-letter sweep: a parked message's job ends FAILED ``poison_message``, and, where the
sweep can reach the result store, keeps no result (a FAILED job has none)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.fakes import FakeQueue, MemoryJobStore, MemoryResults, message
from visionq import dead_letters
from visionq.errors import TransientError
from visionq.events import ObjectCreated
from visionq.jobs import Job, JobError, JobStatus, ObjectVersion, job_id_for_object
from visionq.outputs import Detections
from visionq.stores.result_store import ResultRecord

PREFIX = "uploads/"


def parked_job_with_a_row(jobs: MemoryJobStore, results: MemoryResults) -> tuple[FakeQueue, str]:
    """A job whose worker committed its row, then died before the job record said so, each time."""
    obj = ObjectCreated(bucket="bkt", key="uploads/cam/crash.jpg", etag="e1", size=1)
    job_id = job_id_for_object(PREFIX, obj.bucket, obj.key, obj.version)
    jobs.claim(job_id, ObjectVersion(obj.bucket, obj.key, obj.version), model="default", expires_at=0)
    results.record_results(
        [ResultRecord(job_id, obj.bucket, obj.key, obj.etag, "default", "v1", Detections(items=[], width=1, height=1))]
    )
    return FakeQueue(inbox=[message(obj, receive_count=3)]), job_id


def test_a_swept_job_is_failed_and_keeps_no_result() -> None:
    jobs, results = MemoryJobStore(), MemoryResults()
    dlq, job_id = parked_job_with_a_row(jobs, results)
    assert asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, discard=results.discard)) == 1
    assert jobs.status(job_id) == (JobStatus.FAILED, dead_letters.POISON)
    assert results.for_job(job_id) == []
    assert [m.message_id for m, delay in dlq.released] == ["m1"]  # left parked, visible for `visionq dlq`


def test_a_sweep_that_could_not_remove_the_rows_leaves_them_to_the_next() -> None:
    jobs, results = MemoryJobStore(), MemoryResults()
    dlq, job_id = parked_job_with_a_row(jobs, results)
    results.faults.fail("discard", TransientError("PostgreSQL is away"))
    with pytest.raises(TransientError):
        asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, discard=results.discard))
    assert jobs.status(job_id) == (JobStatus.FAILED, dead_letters.POISON)
    assert len(results.for_job(job_id)) == 1
    dlq.inbox = [m for m, delay in dlq.released]  # still parked
    assert asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, discard=results.discard)) == 0  # changed no job
    assert results.for_job(job_id) == []


def test_a_poison_job_whose_failure_was_written_by_a_retried_request_is_still_announced() -> None:
    """The FAILED write was applied, its answer lost, the retry refused (the job had ended): the
    job's webhook must still be announced, and again at each sweep until the notifier records an
    attempt."""
    jobs, results = MemoryJobStore(), MemoryResults()
    dlq, job_id = parked_job_with_a_row(jobs, results)
    jobs.jobs[job_id].webhook_url, jobs.jobs[job_id].notify = "https://example.com/hook", True
    jobs.mark_failed(job_id, JobError(dead_letters.POISON, "parked"))  # the write whose answer was lost
    announced: list[str] = []

    async def announce(job: Job) -> None:
        announced.append(job.job_id)

    for _ in range(2):
        assert asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, announce=announce)) == 0
        dlq.inbox = [m for m, delay in dlq.released]
        dlq.released.clear()
    assert announced == [job_id, job_id]
    jobs.jobs[job_id].webhook = {"status": "delivered", "attempts": [{}]}  # the notifier's record
    assert asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, announce=announce)) == 0
    assert announced == [job_id, job_id]


def test_a_poison_batch_member_whose_announcement_was_lost_is_announced_again_once() -> None:
    """The sweep failed the member and its announcement was lost (the notice queue was down). If it
    was the last member to end, only its notice would set the batch's off: the next sweep sends it
    again while the batch's notice is unclaimed; once sent, not again (the notifier has it)."""
    jobs, results = MemoryJobStore(), MemoryResults()
    dlq, job_id = parked_job_with_a_row(jobs, results)
    jobs.jobs[job_id].batch_id, jobs.jobs[job_id].notify = "b1", True
    announced: list[str] = []
    outage = [TransientError("the notice queue is down")]  # the first announcement's fate
    reads: list[str] = []

    async def announce(job: Job) -> None:
        if outage:
            raise outage.pop()
        announced.append(job.job_id)

    claimed: set[str] = set()

    def notice_due(batch_id: str) -> bool:
        reads.append(batch_id)
        return batch_id not in claimed

    def sweep(notices: dead_letters.BatchNotices) -> int:
        dlq.inbox, dlq.released = [m for m, delay in dlq.released] or dlq.inbox, []
        return asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, announce=announce, batch_notices=notices))

    notices = dead_letters.BatchNotices(notice_due)
    assert sweep(notices) == 1 and announced == []  # failed, and its announcement lost
    assert sweep(notices) == 0 and announced == [job_id]  # sent again: the batch's notice is unclaimed
    assert sweep(notices) == 0 and announced == [job_id] and reads == ["b1"]  # sent once: no more reads
    # A new process (a restarted worker) asks once more; a claimed notice needs nothing.
    claimed.add("b1")
    assert sweep(dead_letters.BatchNotices(notice_due)) == 0 and announced == [job_id]
    claimed.clear()
    assert sweep(dead_letters.BatchNotices(notice_due)) == 0 and announced == [job_id, job_id]


def test_a_batch_that_cannot_be_read_does_not_stop_the_sweep() -> None:
    jobs, results = MemoryJobStore(), MemoryResults()
    dlq, job_id = parked_job_with_a_row(jobs, results)
    jobs.jobs[job_id].batch_id, jobs.jobs[job_id].notify = "b1", True
    jobs.mark_failed(job_id, JobError(dead_letters.POISON, "parked"))

    def unreadable(batch_id: str) -> bool:
        raise TransientError("DynamoDB is away")

    async def announce(job: Job) -> None:
        raise AssertionError("nothing to announce")

    notices = dead_letters.BatchNotices(unreadable)
    assert asyncio.run(dead_letters.sweep(dlq, jobs, PREFIX, announce=announce, batch_notices=notices)) == 0
    assert [m.message_id for m, delay in dlq.released] == ["m1"]
