"""`visionq reprocess s3://bucket/prefix --model NAME`: run a model over objects already stored.

Each object becomes a job of its own, identified by the object version and the model's name
(``jobs.job_id_for_object``), so its result sits beside the object's earlier ones and a second run
finds the jobs there and sends nothing. The work goes through the same queue and core as uploads:
one message per object, naming the model (``events.object_created_record``).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from visionq.errors import ConfigError
from visionq.events import ObjectCreated, object_created_record
from visionq.jobs import JobStatus, job_id_for_object
from visionq.stores.aws_errors import aws_errors

REPROCESS_SOURCE = "visionq:reprocess"
_SEND_BATCH = 10  # SQS's limit per SendMessageBatch
_GET_BATCH = 100  # DynamoDB's limit per BatchGetItem


@dataclass
class ReprocessReport:
    listed: int = 0
    already: int = 0  # a job for (object, model) exists: nothing to send
    sent: int = 0


class Progress:
    """One line, rewritten in place: count of total, rate, time left."""

    def __init__(self, what: str, total: int, out: TextIO = sys.stderr) -> None:
        self.what, self.total, self.out = what, total, out
        self.started = time.monotonic()
        self._shown = 0.0

    def show(self, done: int, *, final: bool = False, note: str = "") -> None:
        now = time.monotonic()
        if not final and now - self._shown < 0.5:
            return
        self._shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = f"ETA {left:.0f}s" if left != float("inf") else "ETA -"
        line = f"{self.what}: {done}/{self.total} ({rate:.1f}/s, {eta}){note}"
        self.out.write(f"\r{line}" + ("\n" if final else ""))
        self.out.flush()


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ConfigError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix


def stored_objects(s3: Any, bucket: str, prefix: str) -> Iterator[ObjectCreated]:
    """Every object under ``prefix``, as the object version it is now."""
    with aws_errors("list objects"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # a folder marker, not an image
                yield ObjectCreated(bucket=bucket, key=item["Key"], etag=item["ETag"].strip('"'), size=item["Size"])


def job_statuses(dynamodb: Any, table: str, job_ids: list[str]) -> dict[str, JobStatus]:
    """The status of each of ``job_ids`` that has a record."""
    found: dict[str, JobStatus] = {}
    for start in range(0, len(job_ids), _GET_BATCH):
        keys = [{"job_id": {"S": job_id}} for job_id in job_ids[start : start + _GET_BATCH]]
        # Whole items (a few hundred bytes each). An item without "status" was seen once (moto, a CI
        # run, the worker writing meanwhile): it is not counted until it has one.
        request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            with aws_errors("read jobs"):
                response = dynamodb.batch_get_item(RequestItems=request)
            for item in response.get("Responses", {}).get(table, []):
                status = item.get("status", {}).get("S")
                if status:  # a record without one is not a job (yet)
                    found[item["job_id"]["S"]] = JobStatus(status)
            request = response.get("UnprocessedKeys") or {}
    return found


def send_objects(sqs: Any, queue_url: str, objects: list[ObjectCreated]) -> None:
    for start in range(0, len(objects), _SEND_BATCH):
        entries = [
            {
                "Id": str(i),
                "MessageBody": json.dumps({"Records": [object_created_record(obj, source=REPROCESS_SOURCE)]}),
            }
            for i, obj in enumerate(objects[start : start + _SEND_BATCH])
        ]
        pending = entries
        for _ in range(5):  # entries SQS refused (throttling) are sent again
            with aws_errors("send messages"):
                response = sqs.send_message_batch(QueueUrl=queue_url, Entries=pending)
            failed = {f["Id"] for f in response.get("Failed", [])}
            pending = [e for e in pending if e["Id"] in failed]
            if not pending:
                break
        if pending:
            raise ConfigError(f"SQS refused {len(pending)} message(s) after 5 tries; run reprocess again to resume")


def reprocess(
    objects: Iterable[ObjectCreated],
    *,
    upload_prefix: str,
    dynamodb: Any,
    table: str,
    sqs: Any,
    queue_url: str,
    out: TextIO = sys.stderr,
) -> ReprocessReport:
    """Send every object (each naming its model) that has no job yet; already-known ones are skipped."""
    todo = list(objects)
    report = ReprocessReport(listed=len(todo))
    progress = Progress("queued", len(todo), out)
    for start in range(0, len(todo), _GET_BATCH):
        chunk = todo[start : start + _GET_BATCH]
        ids = job_ids_of(chunk, upload_prefix=upload_prefix)
        known = job_statuses(dynamodb, table, ids)
        fresh = [o for o, job_id in zip(chunk, ids, strict=True) if job_id not in known]
        send_objects(sqs, queue_url, fresh)
        report.already += len(chunk) - len(fresh)
        report.sent += len(fresh)
        progress.show(start + len(chunk), note=f", {report.already} already done or under way")
    progress.show(len(todo), final=True, note=f", {report.already} already done or under way")
    return report


def job_ids_of(objects: Iterable[ObjectCreated], *, upload_prefix: str) -> list[str]:
    """The jobs that reprocessing ``objects`` (each naming its model) makes."""
    return [job_id_for_object(upload_prefix, o.bucket, o.key, o.version, model=o.model) for o in objects]


def watch(
    dynamodb: Any, table: str, job_ids: list[str], *, timeout: float, out: TextIO = sys.stderr
) -> dict[JobStatus, int]:
    """Until every job is terminal (or ``timeout``): progress on one line; the count by status."""
    progress = Progress("processed", len(job_ids), out)
    deadline = time.monotonic() + timeout
    while True:
        statuses = job_statuses(dynamodb, table, job_ids)
        counts = Counter(statuses.get(job_id, JobStatus.QUEUED) for job_id in job_ids)
        done = counts[JobStatus.SUCCEEDED] + counts[JobStatus.FAILED]
        finished = done == len(job_ids) or time.monotonic() > deadline
        note = f", {counts[JobStatus.FAILED]} failed"
        progress.show(done, final=finished, note=note)
        if finished:
            return dict(counts)
        time.sleep(1.0)
