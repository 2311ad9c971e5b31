"""What the batch routes do: create many jobs at once, follow them as one, list a key's jobs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visionq.batches import Batch, BatchProgress
from visionq.config import ApiSettings
from visionq.errors import InvalidRequest
from visionq.job_service import UploadTicket, checked_model, new_upload_job, upload_ticket
from visionq.jobs import batch_upload_prefix, new_job_id, ttl_from_now, utc_now_iso
from visionq.models.registry import Registry
from visionq.stores.batch_store import BatchNotFound, DynamoBatchStore, Page


@dataclass(frozen=True)
class BatchItem:
    filename: str
    content_type: str
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class CreatedBatch:
    batch: Batch
    tickets: list[UploadTicket]


def create_batch(
    items: Sequence[BatchItem],
    *,
    owner: str,
    model: str | None,
    registry: Registry,
    settings: ApiSettings,
    batches: DynamoBatchStore,
    s3_client: Any,
    name: str | None = None,
    meta: dict[str, Any] | None = None,
    expected: int = 0,
    webhook_url: str | None = None,
) -> CreatedBatch:
    """Every item validated first (one bad item refuses the whole request, naming it), then the
    batch record and its PENDING members written, then one presigned upload per member."""
    if len(items) > settings.max_batch_items:
        raise InvalidRequest(
            f"a batch may create at most {settings.max_batch_items} jobs at once; this one has {len(items)}",
            code="batch_too_large",
        )
    model = checked_model(model, registry)
    batch_id = new_job_id()
    now = time.time()
    members = []
    for index, item in enumerate(items):
        try:
            members.append(
                new_upload_job(
                    filename=item.filename,
                    content_type=item.content_type,
                    model=model,
                    owner=owner,
                    settings=settings,
                    now=now,
                    batch_id=batch_id,
                    meta=item.meta,
                    batch_notifies=webhook_url is not None,
                )
            )
        except InvalidRequest as exc:
            raise InvalidRequest(f"items[{index}]: {exc.message}", code=exc.code) from exc
    batch = Batch(
        batch_id=batch_id,
        owner=owner,
        model=model,
        size=len(members),
        expected=expected,
        created_at=utc_now_iso(now),
        expires_at=ttl_from_now(settings.job_ttl_days, now),
        upload_prefix=batch_upload_prefix(
            settings.upload_prefix, batch_id, None if model == registry.default else model
        ),
        name=name,
        meta=meta,
        webhook_url=webhook_url,
    )
    batches.create(batch, members)
    return CreatedBatch(batch=batch, tickets=[upload_ticket(job, settings, s3_client) for job in members])


def visible_batch(batch_id: str, *, owner: str, batches: DynamoBatchStore) -> Batch:
    """The batch, if ``owner`` created it; any other answers like a batch that does not exist."""
    if not (len(batch_id) == 32 and all(c in "0123456789abcdef" for c in batch_id)):
        raise BatchNotFound(f"no batch with id {batch_id!r}")
    batch = batches.get(batch_id)
    if batch.owner is not None and batch.owner != owner:
        raise BatchNotFound(f"no batch with id {batch_id!r}")
    return batch


@dataclass(frozen=True)
class BatchState:
    batch: Batch
    progress: BatchProgress
    page: Page


def read_batch(batch_id: str, *, owner: str, batches: DynamoBatchStore, limit: int, cursor: str | None) -> BatchState:
    batch = visible_batch(batch_id, owner=owner, batches=batches)
    progress = batches.progress(batch_id)
    page = batches.members(batch_id, limit=limit, cursor=cursor) if limit else Page(jobs=[], cursor=None)
    return BatchState(batch=batch, progress=progress, page=page)
