from __future__ import annotations

from visionq.jobs import (
    CLAIM,
    FAIL,
    REOPEN,
    SUCCEED,
    TRANSITIONS,
    JobStatus,
    direct_upload_job_id,
    job_id_in_key,
    new_job_id,
    upload_key,
)


def test_transitions_only_move_forward_but_for_the_redrive() -> None:
    for transition in TRANSITIONS:
        for terminal in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            if transition is not REOPEN:
                assert not transition.allows(terminal), (transition.name, terminal)
    # the one backward move: an operator's redrive of a poison failure, and nothing else
    assert REOPEN.allows(JobStatus.FAILED, "poison_message")
    assert not REOPEN.allows(JobStatus.FAILED, "invalid_image")
    assert not REOPEN.allows(JobStatus.SUCCEEDED, "poison_message")
    # a worker that died mid-job leaves it RUNNING; the redelivery must be able to claim it again
    assert CLAIM.allows(JobStatus.RUNNING)
    assert CLAIM.allows(None) and FAIL.allows(None) and not SUCCEED.allows(None)
    assert SUCCEED.sources == {JobStatus.RUNNING}


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
