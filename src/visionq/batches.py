"""Batches: many jobs created at once (a folder, a video's frames), followed as one.

A batch is a record of its own in the jobs table (``batch#<id>``); its members are ordinary jobs
that carry its id. Members are created by ``POST /v1/batches`` (``size`` of them), or join later as
objects put directly under the batch's key prefix (``jobs.batch_upload_prefix``). A batch is
complete when at least ``max(size, expected)`` members exist and every one has ended; members that
joined by prefix count towards progress but, beyond ``expected``, never hold completion back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from visionq.jobs import JobStatus

BATCH_ITEM_PREFIX = "batch#"


@dataclass
class Batch:
    batch_id: str
    owner: str | None
    model: str
    size: int  # members created with the batch
    created_at: str
    expires_at: int
    upload_prefix: str  # where objects put directly join it
    expected: int = 0  # members the client announced it will add by prefix (0: only those created)
    name: str | None = None
    meta: dict[str, Any] | None = None  # the client's own fields (a video's source name and frame rate)
    webhook_url: str | None = None
    webhook: dict[str, Any] | None = None  # the completion notice's delivery: status and attempts


@dataclass
class BatchProgress:
    """Counts by status over every member, and what they add up to."""

    counts: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.counts.items() if JobStatus(status).terminal)

    def complete(self, batch: Batch) -> bool:
        return self.total > 0 and self.total >= max(batch.size, batch.expected) and self.finished == self.total

    def fraction(self, batch: Batch) -> float:
        target = max(batch.size, batch.expected, self.total)
        return 1.0 if target == 0 else round(self.finished / target, 4)
