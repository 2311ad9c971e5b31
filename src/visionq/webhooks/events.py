"""The bodies of notices: compact JSON whose event id is a pure function of what happened, so every
attempt and every duplicate of one event carries the same id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from visionq.jobs import utc_now_iso

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
BATCH_COMPLETED = "batch.completed"
_JOB_TYPES = {"SUCCEEDED": JOB_SUCCEEDED, "FAILED": JOB_FAILED}
_NOT_EVENT_DATA = frozenset({"webhook"})  # delivery bookkeeping changes between attempts: never sent


def _event_id(identity: str) -> str:
    return "evt_" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def job_event_id(job_id: str, status: str) -> str:
    """The id of the event "job ``job_id`` reached ``status``": the same for every attempt."""
    return _event_id(f"job:{job_id}:{status}")


def batch_event_id(batch_id: str) -> str:
    """The id of the event "batch ``batch_id`` completed": the same for every attempt."""
    return _event_id(f"batch:{batch_id}:completed")


def _body(event_id: str, event_type: str, created_at: Any, data: Mapping[str, Any]) -> bytes:
    envelope = {
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "data": {k: v for k, v in data.items() if k not in _NOT_EVENT_DATA},
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str).encode()


def job_event(job_view: Mapping[str, Any]) -> bytes:
    """The body of a ``job.succeeded`` / ``job.failed`` event: ``data`` is the job as
    ``GET /v1/jobs/{id}`` shows it (less its ``webhook`` field); ``created_at`` is the job's
    ``updated_at``, the moment it ended, so every attempt sends the same bytes."""
    job_id = job_view.get("job_id")
    status = str(job_view.get("status", ""))
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("a job view needs its job_id")
    if status not in _JOB_TYPES:
        raise ValueError(f"job {job_id} is {status or 'without a status'}: only SUCCEEDED and FAILED jobs have events")
    created_at = job_view.get("updated_at") or utc_now_iso()
    return _body(job_event_id(job_id, status), _JOB_TYPES[status], created_at, job_view)


def batch_event(batch_view: Mapping[str, Any]) -> bytes:
    """The body of a ``batch.completed`` event: ``data`` is the batch view (less its ``webhook``
    field); ``created_at`` its ``completed_at`` (else ``updated_at``)."""
    batch_id = batch_view.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise ValueError("a batch view needs its batch_id")
    created_at = batch_view.get("completed_at") or batch_view.get("updated_at") or utc_now_iso()
    return _body(batch_event_id(batch_id), BATCH_COMPLETED, created_at, batch_view)
