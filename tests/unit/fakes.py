"""In-memory fakes of the store protocols, the model and the queue, that fail on demand.

The job store applies the very transition table the DynamoDB store turns into conditions
(``jobs.TRANSITIONS``), so the core is tested against the real rules, not a copy of them.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visionq.config import WorkerSettings
from visionq.errors import JobNotFound, ObjectChanged, ObjectMissing, TransitionRejected, VisionqError
from visionq.events import ObjectCreated
from visionq.jobs import CLAIM, FAIL, SUCCEED, Job, JobError, JobStatus, ObjectVersion, Transition, utc_now_iso
from visionq.outputs import Box, Caption, Captions, Detections, ModelOutput
from visionq.stores.queue import EntryFailure, Message
from visionq.stores.result_store import ResultRecord, StoredResult

BUCKET = "bkt"


class Faults:
    """Per operation: exceptions to raise on its next calls, or a gate that makes it hang."""

    def __init__(self) -> None:
        self.raising: dict[str, list[BaseException]] = {}
        self.gates: dict[str, threading.Event] = {}
        self.calls: dict[str, int] = {}

    def fail(self, operation: str, *errors: BaseException) -> None:
        self.raising.setdefault(operation, []).extend(errors)

    def hang(self, operation: str) -> threading.Event:
        """``operation`` blocks until the returned event is set."""
        gate = self.gates[operation] = threading.Event()
        return gate

    def enter(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        gate = self.gates.get(operation)
        if gate is not None:
            gate.wait(30)
        pending = self.raising.get(operation)
        if pending:
            raise pending.pop(0)


class MemoryJobStore:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.faults = Faults()
        self.lock = threading.Lock()

    def create(self, job: Job) -> None:
        with self.lock:
            if job.job_id in self.jobs:
                raise TransitionRejected("exists")
            self.jobs[job.job_id] = job

    def get(self, job_id: str) -> Job:
        self.faults.enter("get")
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]

    def find_by_object(self, bucket: str, key: str) -> Job:
        for job in self.jobs.values():
            if (job.bucket, job.key) == (bucket, key):
                return job
        raise JobNotFound(key)

    def claim(
        self, job_id: str, obj: ObjectVersion, *, model: str, expires_at: int, batch_id: str | None = None
    ) -> Job:
        self.faults.enter("claim")
        with self.lock:
            try:
                current = self.jobs.get(job_id)
                return self._move(
                    CLAIM,
                    job_id,
                    obj,
                    etag=obj.version,
                    model=(current and current.model) or model,
                    batch_id=(current and current.batch_id) or batch_id,
                    notify=bool(current and current.notify) or batch_id is not None,
                )
            except TransitionRejected:
                return self.jobs[job_id]

    def mark_succeeded(self, job_id: str, result: dict[str, Any]) -> Job:
        self.faults.enter("mark_succeeded")
        with self.lock:
            return self._move(SUCCEED, job_id, None, result=result)

    def mark_failed(
        self, job_id: str, error: JobError, *, obj: ObjectVersion | None = None, expires_at: int | None = None
    ) -> Job:
        self.faults.enter("mark_failed")
        with self.lock:
            if obj is None and job_id not in self.jobs:
                raise TransitionRejected("no record")
            return self._move(FAIL, job_id, obj, error=error)

    def reopen(self, job_id: str) -> None:
        raise NotImplementedError

    def status(self, job_id: str) -> tuple[JobStatus, str | None]:
        job = self.jobs[job_id]
        return job.status, job.error.code if job.error else None

    def _move(self, transition: Transition, job_id: str, obj: ObjectVersion | None, **fields: Any) -> Job:
        current = self.jobs.get(job_id)
        if not transition.allows(
            current.status if current else None, current.error.code if current and current.error else None
        ):
            raise TransitionRejected(f"{transition.name} refused")
        if current is None:
            assert obj is not None
            now = utc_now_iso()
            current = Job(job_id, transition.target, obj.bucket, obj.key, now, now, 0)
        job = self.jobs[job_id] = replace(current, status=transition.target, updated_at=utc_now_iso(), **fields)
        return job


class MemoryObjects:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}  # key -> (bytes, etag)
        self.faults = Faults()

    def put(self, key: str, data: bytes, etag: str | None = None) -> ObjectCreated:
        etag = etag or f"etag-{len(self.objects)}-{hash(data) & 0xFFFF:x}"
        self.objects[key] = (data, etag)
        return ObjectCreated(bucket=BUCKET, key=key, etag=etag, event_time=time.time())

    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes:
        await asyncio.to_thread(self.faults.enter, "read")
        if obj.key not in self.objects:
            raise ObjectMissing(obj.key)
        data, etag = self.objects[obj.key]
        if etag != obj.etag:
            raise ObjectChanged("overwritten")
        return data


@dataclass
class Row:
    job_id: str
    output: dict[str, Any]
    inference_ms: float | None


class MemoryResults:
    """First writer wins per identity, like PostgreSQL's ON CONFLICT DO NOTHING; a batch is atomic."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, str, str], Row] = {}
        self.faults = Faults()
        self.reject_keys: set[str] = set()  # a row for one of these keys is refused (a bad row)
        self.batches: list[int] = []

    def record_results(self, records: Sequence[ResultRecord]) -> list[StoredResult]:
        self.faults.enter("record_results")
        if any(r.key in self.reject_keys for r in records):
            raise VisionqError("PostgreSQL rejected the write (DataError)")
        self.batches.append(len(records))
        stored = []
        for r in records:
            identity = (r.bucket, r.key, r.etag, r.model_name, r.model)
            if identity in self.rows:
                row = self.rows[identity]
                stored.append(StoredResult(row.output, row.inference_ms, created=False))
            else:
                row = self.rows[identity] = Row(r.job_id, r.output.as_dict(), r.timings.get("inference_ms"))
                stored.append(StoredResult(row.output, row.inference_ms, created=True))
        return stored

    def discard(self, job_id: str) -> int:
        self.faults.enter("discard")
        gone = [k for k, row in self.rows.items() if row.job_id == job_id]
        for k in gone:
            del self.rows[k]
        return len(gone)

    def read_output(self, job_id: str) -> dict[str, Any] | None:
        return next((row.output for row in self.rows.values() if row.job_id == job_id), None)

    def for_job(self, job_id: str) -> list[Row]:
        return [row for row in self.rows.values() if row.job_id == job_id]

    def close(self) -> None:
        pass


class FakeModel:
    """Finds one box per image, labelled with the image's first pixel value; raises on ``poison``."""

    version = "fake@1"
    untrained = False
    device = "cpu"

    def __init__(self, *, input_size: int | None = None, poison: int | None = None, batches_in_flight: int = 1) -> None:
        self.input_size = input_size
        self.poison = poison
        self.batches_in_flight = batches_in_flight
        self.batches: list[list[tuple[int, int]]] = []  # (width, height) of each image seen
        self.gate: threading.Event | None = None  # set: predict waits for it
        self.entered = threading.Event()
        self.running = self.most_at_once = 0  # predict calls under way now, and at most
        self._counting = threading.Lock()

    def predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        with self._counting:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return self._predict(images)
        finally:
            with self._counting:
                self.running -= 1

    def _predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        self.batches.append([(img.shape[1], img.shape[0]) for img in images])
        if self.poison is not None and any(int(img[0, 0, 0]) == self.poison for img in images):
            raise RuntimeError("the model cannot take this image")
        return [
            Detections(
                width=img.shape[1],
                height=img.shape[0],
                items=(Box(class_id=0, label=f"v{int(img[0, 0, 0])}", confidence=0.9, x1=1, y1=1, x2=5, y2=5),),
            )
            for img in images
        ]


class FakeCaptioner:
    """Captions each image with its first pixel value; records the sizes it saw, like FakeModel."""

    version = "captioner@1"
    untrained = False
    device = "cpu"
    input_size = 16

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        self.batches.append([(img.shape[1], img.shape[0]) for img in images])
        return [
            Captions(width=img.shape[1], height=img.shape[0], items=(Caption(f"grey {int(img[0, 0, 0])}", -0.5),))
            for img in images
        ]


@dataclass
class FakeQueue:
    """An SQS stand-in for the poller: messages in ``inbox``; deletes and visibility changes recorded."""

    url: str = "fake://queue"
    inbox: list[Message] = field(default_factory=list)
    deleted: list[Message] = field(default_factory=list)
    released: list[tuple[Message, int]] = field(default_factory=list)
    delete_error: BaseException | None = None
    lease_error: BaseException | None = None
    refuse_visibility: set[str] = field(default_factory=set)  # message ids whose changes SQS refuses

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]:
        deadline = time.monotonic() + min(wait_seconds, 0.2)
        while not self.inbox and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        taken, self.inbox = self.inbox[:max_messages], self.inbox[max_messages:]
        return taken

    async def delete(self, messages: Sequence[Message]) -> list[EntryFailure]:
        if self.delete_error is not None:
            raise self.delete_error
        self.deleted.extend(messages)
        return []

    async def release(self, messages: Sequence[Message], *, delay_seconds: int = 0) -> list[EntryFailure]:
        if self.lease_error is not None:
            raise self.lease_error
        self.released.extend((m, delay_seconds) for m in messages)
        return [
            EntryFailure(m, "ReceiptHandleIsInvalid", "refused")
            for m in messages
            if m.message_id in self.refuse_visibility
        ]

    async def send(self, body: str) -> None:
        raise NotImplementedError


def png(value: int, size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def message(*objects: ObjectCreated, message_id: str = "m1", receipt: str = "r1", receive_count: int = 1) -> Message:
    records = [
        {
            "eventName": "ObjectCreated:Put",
            "eventTime": "2026-11-24T10:00:00.000Z",
            "s3": {"bucket": {"name": o.bucket}, "object": {"key": o.key, "eTag": o.etag, "size": 1}},
            **({"visionq": {"model": o.model}} if o.model else {}),
        }
        for o in objects
    ]
    return Message(message_id, receipt, json.dumps({"Records": records}), receive_count)


def settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "queue_url": "fake://queue",
        "jobs_table": "jobs",
        "database_url": "postgresql://unused",
        "poll_wait_seconds": 1,
        "visibility_timeout": 3,
        "max_attempts": 3,
        "store_timeout_seconds": 5,
    }
    values.update(overrides)
    return WorkerSettings(**values)


def no_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on AWS Lambda, which has no /dev/shm: a new segment cannot be made (shm_open: ENOSYS)."""
    original = shared_memory.SharedMemory

    def refuse(*args: object, **kwargs: object) -> object:
        if kwargs.get("create"):
            raise OSError(errno.ENOSYS, "Function not implemented")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shared_memory, "SharedMemory", refuse)
