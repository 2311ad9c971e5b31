"""The jobs table's rules, against moto's in-process DynamoDB (unit tier: no network)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from infra.bootstrap import _ensure_jobs_table
from visionq.errors import JobNotFound, TransitionRejected
from visionq.jobs import Job, JobError, JobStatus, utc_now_iso
from visionq.stores.job_store import DynamoJobStore


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoJobStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        _ensure_jobs_table(client, "jobs")
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


def claim(store: DynamoJobStore, job_id: str, key: str | None = None) -> Job:
    return store.claim(
        job_id, bucket="bkt", key=key or f"uploads/{job_id}/x.jpg", etag="e1", model="m", expires_at=2_000_000_000
    )


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


def test_reopen_only_undoes_the_named_failure(store: DynamoJobStore) -> None:
    store.create(pending())
    store.mark_failed("a" * 32, JobError("poison_message", "parked"))
    with pytest.raises(TransitionRejected):
        store.reopen("a" * 32, "invalid_image")
    store.reopen("a" * 32, "poison_message")
    job = store.get("a" * 32)
    assert job.status is JobStatus.QUEUED
    assert job.error is None
