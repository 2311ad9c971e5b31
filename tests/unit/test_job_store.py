"""The jobs table's rules, against moto's in-process DynamoDB (unit tier: no network)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from infra.bootstrap import ensure_jobs_table
from visionq.errors import JobNotFound, TransitionRejected
from visionq.jobs import (
    CLAIM,
    CREATE,
    FAIL,
    SUCCEED,
    TRANSITIONS,
    Job,
    JobError,
    JobStatus,
    ObjectVersion,
    Transition,
    utc_now_iso,
)
from visionq.stores.job_store import DynamoJobStore


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoJobStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        ensure_jobs_table(client, "jobs")
        yield DynamoJobStore(client, "jobs")


def pending(job_id: str = "a" * 32) -> Job:
    now = utc_now_iso()
    return Job(
        job_id=job_id,
        status=JobStatus.PENDING,
        bucket="bkt",
        key=f"uploads/{job_id}/x.jpg",
        created_at=now,
        updated_at=now,
        expires_at=2_000_000_000,
        model="m",
    )


def obj(job_id: str, key: str | None = None) -> ObjectVersion:
    return ObjectVersion(bucket="bkt", key=key or f"uploads/{job_id}/x.jpg", version="e1")


def claim(store: DynamoJobStore, job_id: str, key: str | None = None) -> Job:
    return store.claim(job_id, obj(job_id, key), model="m", expires_at=2_000_000_000)


def test_full_lifecycle(store: DynamoJobStore) -> None:
    store.create(pending())
    assert claim(store, "a" * 32).status is JobStatus.RUNNING
    store.mark_succeeded("a" * 32, {"detections": [{"label": "x", "confidence": 0.5}]})
    job = store.get("a" * 32)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"detections": [{"label": "x", "confidence": 0.5}]}
    assert job.etag == "e1"


def test_a_finished_job_never_moves_back(store: DynamoJobStore) -> None:
    store.create(pending())
    claim(store, "a" * 32)
    store.mark_failed("a" * 32, JobError("invalid_image", "bad"))
    with pytest.raises(TransitionRejected):
        store.mark_failed("a" * 32, JobError("other", "again"))
    with pytest.raises(TransitionRejected):
        store.mark_succeeded("a" * 32, {})
    # a late duplicate event gets the finished job back, unchanged
    job = claim(store, "a" * 32)
    assert job.status is JobStatus.FAILED
    assert job.error == JobError("invalid_image", "bad")


def test_a_redelivered_message_may_rerun_a_running_job(store: DynamoJobStore) -> None:
    store.create(pending())
    claim(store, "a" * 32)
    claim(store, "a" * 32)  # the first worker died; no error
    assert claim(store, "a" * 32).status is JobStatus.RUNNING


def test_direct_uploads_create_their_job_and_are_found_by_key(store: DynamoJobStore) -> None:
    job = claim(store, "b" * 32, key="uploads/cam/frame 1.jpg")
    assert job.status is JobStatus.RUNNING
    assert store.find_by_object("bkt", "uploads/cam/frame 1.jpg").job_id == "b" * 32
    with pytest.raises(JobNotFound):
        store.find_by_object("bkt", "uploads/cam/other.jpg")


def test_creating_twice_is_refused_and_unknown_ids_are_not_found(store: DynamoJobStore) -> None:
    store.create(pending())
    with pytest.raises(TransitionRejected):
        store.create(pending())
    with pytest.raises(JobNotFound):
        store.get("c" * 32)
    with pytest.raises(TransitionRejected):
        store.mark_succeeded("c" * 32, {})


def test_reopen_only_undoes_a_poison_failure(store: DynamoJobStore) -> None:
    store.create(pending())
    store.create(pending("b" * 32))
    store.mark_failed("a" * 32, JobError("poison_message", "parked"))
    store.mark_failed("b" * 32, JobError("invalid_image", "bad"))
    with pytest.raises(TransitionRejected):
        store.reopen("b" * 32)
    store.reopen("a" * 32)
    job = store.get("a" * 32)
    assert job.status is JobStatus.QUEUED
    assert job.error is None
    assert claim(store, "a" * 32).status is JobStatus.RUNNING


def test_a_failure_without_a_record_creates_one_only_when_given_the_object(store: DynamoJobStore) -> None:
    with pytest.raises(TransitionRejected):
        store.mark_failed("d" * 32, JobError("store_unavailable", "gave up"))
    store.mark_failed(
        "d" * 32, JobError("store_unavailable", "gave up"), obj=obj("d" * 32, "uploads/cam/f.jpg"), expires_at=5
    )
    job = store.get("d" * 32)
    assert (job.status, job.key, job.etag, job.expires_at) == (JobStatus.FAILED, "uploads/cam/f.jpg", "e1", 5)
    assert store.find_by_object("bkt", "uploads/cam/f.jpg").job_id == "d" * 32


def test_only_a_running_job_can_succeed(store: DynamoJobStore) -> None:
    store.create(pending())
    with pytest.raises(TransitionRejected):
        store.mark_succeeded("a" * 32, {})
    claim(store, "a" * 32)
    store.mark_succeeded("a" * 32, {})


@pytest.mark.parametrize("transition", TRANSITIONS, ids=lambda t: t.name)
def test_the_store_enforces_exactly_the_transition_table(store: DynamoJobStore, transition: Transition) -> None:
    """Every (state, transition) pair: the conditional write succeeds iff the table allows it."""
    for i, start in enumerate([None, *JobStatus]):
        job_id = f"{i:032x}"
        if start is not None:
            _put_in_state(store, job_id, start)
        before = None if start is None else store.get(job_id).status
        try:
            _apply(store, transition, job_id)
            moved = True
        except TransitionRejected:
            moved = False
        assert moved == transition.allows(before, "poison_message" if before is JobStatus.FAILED else None), (
            transition.name,
            start,
        )


def _put_in_state(store: DynamoJobStore, job_id: str, status: JobStatus) -> None:
    store.create(pending(job_id))
    if status is JobStatus.QUEUED:
        store.mark_failed(job_id, JobError("poison_message", "parked"))
        store.reopen(job_id)
    elif status is not JobStatus.PENDING:
        claim(store, job_id)
        if status is JobStatus.SUCCEEDED:
            store.mark_succeeded(job_id, {})
        elif status is JobStatus.FAILED:
            store.mark_failed(job_id, JobError("poison_message", "parked"))
    assert store.get(job_id).status is status


def _apply(store: DynamoJobStore, transition: Transition, job_id: str) -> None:
    if transition is CREATE:
        store.create(pending(job_id))
    elif transition is CLAIM:
        # claim answers with the job rather than raising; a refused claim leaves the state as it was
        if claim(store, job_id).status is not JobStatus.RUNNING:
            raise TransitionRejected("refused")
    elif transition is SUCCEED:
        store.mark_succeeded(job_id, {})
    elif transition is FAIL:
        store.mark_failed(job_id, JobError("x", "y"), obj=obj(job_id), expires_at=1)
    else:
        store.reopen(job_id)
