"""What the HTTP functions do: create a job with its upload ticket, look jobs up."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from visionq.config import IMAGE_CONTENT_TYPES, ApiSettings
from visionq.errors import InvalidRequest, JobNotFound
from visionq.jobs import Job, JobStatus, new_job_id, ttl_from_now, upload_key, utc_now_iso
from visionq.models.registry import Registry
from visionq.stores.job_store import JobStore
from visionq.stores.object_store import PresignedPost, presign_upload_post

MAX_KEY_BYTES = 1024  # S3's longest object key, in UTF-8
_SAFE_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+-]{0,199}$")


@dataclass(frozen=True)
class UploadTicket:
    job: Job
    upload: PresignedPost
    expires_at: str


def create_upload_job(
    *,
    filename: str,
    content_type: str,
    model: str | None = None,
    owner: str,
    registry: Registry,
    settings: ApiSettings,
    jobs: JobStore,
    s3_client: Any,
    webhook_url: str | None = None,
) -> UploadTicket:
    """Record a PENDING job for ``model`` (the registry's default if None), then hand back a
    presigned POST for exactly its object key."""
    job = new_upload_job(
        filename=filename,
        content_type=content_type,
        model=checked_model(model, registry),
        owner=owner,
        settings=settings,
        webhook_url=webhook_url,
    )
    # The job is written before the client can upload, so the worker always finds it.
    jobs.create(job)
    return upload_ticket(job, settings, s3_client)


def checked_model(model: str | None, registry: Registry) -> str:
    model = model or registry.default
    if model not in registry.models:
        raise InvalidRequest(
            f"model {model!r} is not one of this service's models: {', '.join(registry.names)}", code="unknown_model"
        )
    return model


def new_upload_job(
    *,
    filename: str,
    content_type: str,
    model: str,
    owner: str,
    settings: ApiSettings,
    now: float | None = None,
    batch_notifies: bool = False,
    **extra: Any,
) -> Job:
    """A PENDING job whose object the client will upload (``extra``: batch, meta, webhook fields).
    ``batch_notifies``: its batch has a webhook, so its end must reach the notifier."""
    filename = validate_filename(filename, content_type)
    job_id = new_job_id()
    now = now if now is not None else time.time()
    return Job(
        job_id=job_id,
        status=JobStatus.PENDING,
        bucket=settings.bucket,
        key=upload_key(settings.upload_prefix, job_id, filename),
        created_at=utc_now_iso(now),
        updated_at=utc_now_iso(now),
        expires_at=ttl_from_now(settings.job_ttl_days, now),
        model=model,
        filename=filename,
        content_type=content_type,
        owner=owner,
        notify=bool(extra.get("webhook_url")) or batch_notifies,
        **extra,
    )


def upload_ticket(job: Job, settings: ApiSettings, s3_client: Any) -> UploadTicket:
    assert job.content_type is not None
    upload = presign_upload_post(
        s3_client,
        bucket=settings.bucket,
        key=job.key,
        content_type=job.content_type,
        max_bytes=settings.max_upload_bytes,
        expires_in=settings.upload_expiry_seconds,
    )
    now = time.time()
    return UploadTicket(job=job, upload=upload, expires_at=utc_now_iso(now + settings.upload_expiry_seconds))


def renew_upload_ticket(
    job_id: str, *, owner: str, settings: ApiSettings, jobs: JobStore, s3_client: Any
) -> UploadTicket:
    """A fresh presigned upload for a job still PENDING (an expired one, a resumed submission)."""
    job = get_job(job_id, owner=owner, jobs=jobs)
    if job.status is not JobStatus.PENDING:
        raise InvalidRequest(f"job {job_id} is {job.status}: its object has arrived already", code="job_not_pending")
    return upload_ticket(job, settings, s3_client)


def validate_filename(filename: str, content_type: str) -> str:
    if content_type not in IMAGE_CONTENT_TYPES:
        raise InvalidRequest(
            f"content_type {content_type!r} is not accepted; use one of: " + ", ".join(sorted(IMAGE_CONTENT_TYPES)),
            code="unsupported_content_type",
        )
    name = filename.strip()
    if not _SAFE_FILENAME.match(name) or ".." in name:
        raise InvalidRequest(
            "filename must be a plain file name (letters, digits, space, . _ - ( ) +; at most 200 characters; no path)",
            code="invalid_filename",
        )
    extensions = IMAGE_CONTENT_TYPES[content_type].extensions
    if not name.lower().endswith(extensions):
        raise InvalidRequest(
            f"filename {name!r} does not end in an extension for {content_type} (" + ", ".join(extensions) + ")",
            code="extension_mismatch",
        )
    return name


class OutputReader(Protocol):
    def read_output(self, job_id: str) -> dict[str, Any] | None: ...


def get_job(job_id: str, *, owner: str, jobs: JobStore, results: OutputReader | None = None) -> Job:
    """The job, if ``owner`` may see it: its creator's, or a direct upload (no owner)."""
    if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
        raise JobNotFound(f"no job with id {job_id!r}")
    return _complete(_visible(jobs.get(job_id), owner), results)


def find_job_by_key(
    key: str, *, owner: str, settings: ApiSettings, jobs: JobStore, results: OutputReader | None = None
) -> Job:
    if not key.startswith(settings.upload_prefix) or ".." in key.split("/"):
        raise InvalidRequest(f"key must lie under the upload prefix {settings.upload_prefix!r}", code="invalid_key")
    if len(key.encode()) > MAX_KEY_BYTES:  # no object has it; the job table's index would refuse it
        raise InvalidRequest(f"key is longer than S3's limit of {MAX_KEY_BYTES} bytes", code="invalid_key")
    return _complete(_visible(jobs.find_by_object(settings.bucket, key), owner), results)


def _complete(job: Job, results: OutputReader | None) -> Job:
    """The whole result from PostgreSQL when the job record's summary was cut short."""
    if results is None or not job.result or not job.result.get("truncated"):
        return job
    full = results.read_output(job.job_id)
    if full is None:
        return job
    return replace(job, result={**job.result, **full, "truncated": False})


def _visible(job: Job, owner: str) -> Job:
    # Another key's job answers exactly like a job that does not exist; so does one past its expiry,
    # which DynamoDB's TTL removes only some time later (up to days). 0: no expiry.
    if (job.owner is not None and job.owner != owner) or 0 < job.expires_at < time.time():
        raise JobNotFound(f"no job with id {job.job_id!r}")
    return job
