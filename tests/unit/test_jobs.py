from __future__ import annotations

from visionq.jobs import (
    JobStatus,
    allowed_predecessors,
    direct_upload_job_id,
    job_id_in_key,
    new_job_id,
    upload_key,
)


def test_transitions_only_move_forward() -> None:
    assert allowed_predecessors(JobStatus.PENDING) == ()
    assert set(allowed_predecessors(JobStatus.QUEUED)) == {JobStatus.PENDING, JobStatus.QUEUED}
    assert set(allowed_predecessors(JobStatus.RUNNING)) == {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING}
    for terminal in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        assert set(allowed_predecessors(terminal)) == {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING}
        # nothing leaves a terminal state
        for target in JobStatus:
            assert terminal not in allowed_predecessors(target)


def test_job_id_round_trips_through_the_upload_key() -> None:
    job_id = new_job_id()
    key = upload_key("uploads/", job_id, "street view.jpg")
    assert key == f"uploads/{job_id}/street view.jpg"
    assert job_id_in_key("uploads/", key) == job_id


def test_keys_not_made_by_the_api_carry_no_job_id() -> None:
    assert job_id_in_key("uploads/", "uploads/cam1/frame.jpg") is None
    assert job_id_in_key("uploads/", "other/" + "a" * 32 + "/x.jpg") is None
    assert job_id_in_key("uploads/", "uploads/" + "a" * 32 + "/nested/x.jpg") is None


def test_direct_upload_ids_depend_on_the_object_version_only() -> None:
    a = direct_upload_job_id("bkt", "uploads/x.jpg", "etag1")
    assert a == direct_upload_job_id("bkt", "uploads/x.jpg", "etag1")
    assert a != direct_upload_job_id("bkt", "uploads/x.jpg", "etag2")
    assert len(a) == 32
