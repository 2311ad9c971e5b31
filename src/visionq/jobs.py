"""Jobs: their states, the forward-only transition rule, and how objects map to job ids."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    PENDING = "PENDING"  # created through the API, awaiting upload
    QUEUED = "QUEUED"  # the object's event was seen
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


POISON_MESSAGE = "poison_message"  # the error of a job whose message SQS parked in the dead-letter queue


@dataclass(frozen=True)
class Transition:
    """One allowed change of a job's state. The job table turns each into a conditional write
    (``stores/job_store.py``), so a late or duplicate message can never move a job backwards."""

    name: str
    target: JobStatus
    sources: frozenset[JobStatus]
    creates: bool = False  # allowed on a job with no record yet (an object put into the bucket directly)
    requires_error: str | None = None  # only from a failure with this error code

    def allows(self, current: JobStatus | None, error_code: str | None = None) -> bool:
        if current is None:
            return self.creates
        return current in self.sources and (self.requires_error is None or error_code == self.requires_error)


_OPEN = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING})

# The whole state machine. The API creates PENDING jobs; a worker claims a job (PENDING, QUEUED,
# or no record for a direct upload -> RUNNING; RUNNING again when the worker that held it died),
# then ends it; FAILED can be recorded before any claim, so every object event ends in a record.
# QUEUED is entered only by an operator's redrive of a dead-lettered message: a worker goes from
# PENDING to RUNNING in one write, which saves a request per image.
CREATE = Transition("create", JobStatus.PENDING, frozenset(), creates=True)
CLAIM = Transition("claim", JobStatus.RUNNING, _OPEN, creates=True)
SUCCEED = Transition("succeed", JobStatus.SUCCEEDED, frozenset({JobStatus.RUNNING}))
FAIL = Transition("fail", JobStatus.FAILED, _OPEN, creates=True)
REOPEN = Transition("reopen", JobStatus.QUEUED, frozenset({JobStatus.FAILED}), requires_error=POISON_MESSAGE)
TRANSITIONS = (CREATE, CLAIM, SUCCEED, FAIL, REOPEN)


# The namespace for ids of jobs created from objects put into the bucket directly: the id is a
# pure function of the object's identity, so duplicate events agree on it without coordination.
_DIRECT_UPLOAD_NAMESPACE = uuid.UUID("6f1d9a52-4d3b-4f4e-9a38-0c1b7f6f2a11")
_JOB_KEY = re.compile(r"^(?P<job_id>[0-9a-f]{32})/[^/]+$")


def new_job_id() -> str:
    return uuid.uuid4().hex


def direct_upload_job_id(bucket: str, key: str, etag: str) -> str:
    return uuid.uuid5(_DIRECT_UPLOAD_NAMESPACE, f"{bucket}/{key}#{etag}").hex


def job_id_for_object(prefix: str, bucket: str, key: str, version: str, *, model: str | None = None) -> str:
    """The job an object belongs to: named in its key by the API, else derived from its identity.
    A run through a model the message names (reprocessing) is a job of its own, derived from the
    object's identity and the model's name, so running it again finds the same job."""
    if model is not None:
        return direct_upload_job_id(bucket, key, f"{version}#model={model}")
    return job_id_in_key(prefix, key) or direct_upload_job_id(bucket, key, version)


def upload_key(prefix: str, job_id: str, filename: str) -> str:
    """The object key a job's upload must use: ``<prefix><job_id>/<filename>``."""
    return f"{prefix}{job_id}/{filename}"


def job_id_in_key(prefix: str, key: str) -> str | None:
    """The job id embedded in a key made by :func:`upload_key`, or None for any other key."""
    if not key.startswith(prefix):
        return None
    match = _JOB_KEY.match(key[len(prefix) :])
    return match.group("job_id") if match else None


MODELS_SEGMENT = "models/"  # direct uploads under <prefix>models/<name>/ go to that model
BATCHES_SEGMENT = "batches/"  # direct uploads under <prefix>[models/<name>/]batches/<id>/ join that batch
_BATCH_ID = re.compile(r"^[0-9a-f]{32}$")


def batch_id_in_key(prefix: str, key: str) -> str | None:
    """The batch a directly uploaded object joins by its key: ``<prefix>batches/<id>/...``, or
    ``<prefix>models/<name>/batches/<id>/...`` (the grammar of ``batch_upload_prefix``)."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix) :].split("/")
    if parts[0] + "/" == MODELS_SEGMENT:
        parts = parts[2:]
    if len(parts) >= 3 and parts[0] + "/" == BATCHES_SEGMENT and _BATCH_ID.match(parts[1]):
        return parts[1]
    return None


def batch_upload_prefix(prefix: str, batch_id: str, model: str | None = None) -> str:
    """Where objects put into the bucket directly join ``batch_id`` (for ``model``, when not the default)."""
    models = f"{MODELS_SEGMENT}{model}/" if model else ""
    return f"{prefix}{models}{BATCHES_SEGMENT}{batch_id}/"


def object_id(bucket: str, key: str) -> str:
    """The jobs table's index key for 'which job is this object?'."""
    return f"{bucket}/{key}"


@dataclass(frozen=True)
class ObjectVersion:
    """One version of one object: what a job made from an S3 event is about."""

    bucket: str
    key: str
    version: str  # the version id in a versioned bucket, else the ETag


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


@dataclass
class Job:
    job_id: str
    status: JobStatus
    bucket: str
    key: str
    created_at: str  # ISO 8601, UTC
    updated_at: str
    expires_at: int
    model: str | None = None
    etag: str | None = None
    filename: str | None = None
    content_type: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    owner: str | None = None  # the API key id that created it; None for direct uploads
    batch_id: str | None = None  # the batch it belongs to (batches.py)
    meta: dict[str, Any] | None = None  # the client's own fields, kept as given (a video frame's index and time)
    webhook_url: str | None = None  # where its completion is announced (notifications.py)
    # True when its end must reach a notifier: a webhook of its own, or of its batch.
    notify: bool = False
    webhook: dict[str, Any] | None = None  # the delivery: status and every attempt


def public_fields(job: Job) -> dict[str, Any]:
    """What a client is told about a job: GET /v1/jobs/{id} and the job's notice (webhook) say this."""
    return {
        "job_id": job.job_id,
        "status": str(job.status),
        "key": job.key,
        "model": job.model,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "result": job.result,
        "error": {"code": job.error.code, "message": job.error.message} if job.error else None,
        "filename": job.filename,
        "batch_id": job.batch_id,
        "meta": job.meta,
    }


def ttl_from_now(days: int, now: float | None = None) -> int:
    return int((now if now is not None else time.time()) + days * 86400)


def utc_now_iso(now: float | None = None) -> str:
    """Millisecond ISO 8601 in UTC: sortable as a string, which the by-object index relies on."""
    ts = now if now is not None else time.time()
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
