"""Completion notices: a job (or a whole batch) that asked for a webhook is announced when it ends.

The worker never talks to a receiver. When a job that wants a notice ends, it puts one small
message on the notifications queue (``announcer``) before acknowledging its own work message, so a
crash in between only means the redelivered work message announces the job again. The notifier
(``Notifier``; run by `visionq notifier` or the Lambda in functions/notifier.py) takes those
messages and delivers: it signs the body, checks the URL against the SSRF rules again, connects to
the address it checked, records every attempt in the job's record (``webhook``: status and
attempts, shown by GET /v1/jobs/{id}), and retries a failure later through a delayed message
(exponential backoff with jitter). When a batch member ends and every member of its batch has
ended, the batch's own notice goes out the same way, once (a conditional write claims it).

Deliveries are at least once: a receiver de-duplicates by the ``visionq-event-id`` header.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from visionq.batches import BATCH_ITEM_PREFIX, Batch, BatchProgress
from visionq.config import NotifierSettings
from visionq.errors import TransitionRejected
from visionq.jobs import Job, public_fields, utc_now_iso
from visionq.stores.aws_errors import aws_errors
from visionq.stores.batch_store import DynamoBatchStore
from visionq.stores.job_store import DynamoJobStore
from visionq.stores.queue import Queue
from visionq.webhook_rules import WebhookRules, is_sns_topic
from visionq.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    DeliveryAttempt,
    batch_event,
    build_headers,
    deliver,
    job_event,
    next_delay,
)

logger = logging.getLogger(__name__)

MAX_RECEIVES = 10  # a notice the notifier failed to handle this often is dropped, with a log line


def notice(kind: str, item_id: str, attempt: int = 1) -> str:
    return json.dumps({"kind": kind, "id": item_id, "attempt": attempt}, separators=(",", ":"))


def announcer(queue: Queue) -> Callable[[Job], Awaitable[None]]:
    """What the worker calls for an ended job that wants a notice: one message, nothing more."""

    async def announce(job: Job) -> None:
        await queue.send(notice("job", job.job_id))

    return announce


def batch_payload(batch: Batch, progress: BatchProgress) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        # When the notifier saw it complete (kept in its delivery record): every attempt's body is the same.
        "completed_at": (batch.webhook or {}).get("completed_at"),
        "name": batch.name,
        "model": batch.model,
        "meta": batch.meta,
        "total": progress.total,
        "finished": progress.finished,
        "counts": dict(sorted(progress.counts.items())),
    }


class Notifier:
    """Handles one notice at a time (thread-safe: many run at once on a pool)."""

    def __init__(
        self,
        *,
        settings: NotifierSettings,
        dynamodb: Any,
        sqs: Any,
        sns: Any = None,
        deliver_fn: Callable[..., Any] = deliver,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.rules = WebhookRules.from_settings(settings)
        self.jobs = DynamoJobStore(dynamodb, settings.jobs_table)
        self.batches = DynamoBatchStore(dynamodb, settings.jobs_table)
        self._dynamodb = dynamodb
        self._sqs = sqs
        self._sns = sns  # for notices to SNS topics (webhook_rules.is_sns_topic)
        self._deliver = deliver_fn
        self._rng = rng

    def handle(self, body: str, *, receives: int = 1) -> None:
        """Act on one notice; an exception means "not done": the message comes back. ``receives``:
        SQS's count of deliveries of this message (above 1: it came back after a failure)."""
        try:
            message = json.loads(body)
            kind, item_id, attempt = str(message["kind"]), str(message["id"]), int(message.get("attempt", 1))
        except (ValueError, KeyError, TypeError):
            logger.error("dropping a malformed notice: %.200s", body)
            return
        if kind == "job":
            job = self.jobs.get(item_id)
            if job.webhook_url and job.owner and job.status.terminal:
                self._attempt(
                    "job",
                    job.job_id,
                    job.webhook_url,
                    job.owner,
                    job_event(public_fields(job)),
                    job.webhook,
                    attempt,
                    receives,
                )
            if job.batch_id and job.status.terminal:
                self._batch_if_complete(job.batch_id, receives)
        elif kind == "batch":
            batch = self.batches.get(item_id)
            if batch.webhook_url and batch.owner:
                self._attempt_batch(batch, self.batches.progress(item_id), attempt, receives)
        else:
            logger.error("dropping a notice of unknown kind %r", kind)

    def _batch_if_complete(self, batch_id: str, receives: int) -> None:
        batch = self.batches.get(batch_id)
        if not batch.webhook_url:
            return
        if batch.webhook is not None:
            # Claimed already. A member's notice that came back may be the one whose claim was
            # written but whose delivery never started (it failed in between): start it again.
            if receives > 1 and batch.webhook.get("status") == "pending" and not batch.webhook.get("attempts"):
                self.handle(notice("batch", batch_id))
            return
        # Every member's end is written before its notice is sent, so whichever notifier checks last
        # sees them all ended, as long as what the index says is re-read where it may lag.
        progress = self.batches.progress(batch_id, confirm_open=True)
        if not progress.complete(batch):
            return
        # Many members may end at once: one conditional write decides which notifier sends it.
        record = {"status": "pending", "attempts": [], "completed_at": utc_now_iso()}
        if self._record(BATCH_ITEM_PREFIX + batch_id, record, recorded=None) and batch.owner:
            # Delivered at once, from what was just read: the batch and its (confirmed) counts.
            self._attempt_batch(replace(batch, webhook=record), progress, 1, 1)

    def _attempt_batch(self, batch: Batch, progress: BatchProgress, attempt: int, receives: int) -> None:
        assert batch.webhook_url is not None and batch.owner is not None
        body = batch_event(batch_payload(batch, progress))
        self._attempt("batch", batch.batch_id, batch.webhook_url, batch.owner, body, batch.webhook, attempt, receives)

    def _attempt(
        self,
        kind: str,
        item_id: str,
        url: str,
        owner: str,
        body: bytes,
        record: dict[str, Any] | None,
        attempt: int,
        receives: int,
    ) -> None:
        record = dict(record or {"status": "pending", "attempts": []})
        attempts: list[dict[str, Any]] = list(record.get("attempts", []))
        if record.get("status") != "pending":
            return  # delivered, or given up
        if attempt <= len(attempts):
            # Made already. This very message, come back after its attempt was recorded, may not
            # have queued its successor: queue it now, for the newest attempt only. A duplicate
            # (a repeated announcement: first delivery) changes nothing, so it starts no second
            # chain; two chains that did start merge at their next attempt, as this rule stops one.
            if receives > 1 and attempt == len(attempts):
                self._schedule(kind, item_id, attempt + 1)
            return
        secret = self.rules.secret_for(owner).encode()
        headers = build_headers(secret, body, str(json.loads(body)["id"]))
        if is_sns_topic(url):
            result = self._publish(url, body, headers)
        else:
            result = self._deliver(
                url, body, headers, policy=self.rules.policy, timeout=self.settings.webhook_timeout_seconds
            )
        attempts.append(result.to_dict())
        last = attempt >= self.settings.webhook_max_attempts
        status = "delivered" if result.ok else ("failed" if last else "pending")
        key = item_id if kind == "job" else BATCH_ITEM_PREFIX + item_id
        if not self._record(key, {**record, "status": status, "attempts": attempts}, recorded=len(attempts) - 1):
            return  # another notifier recorded this attempt first
        log = logger.info if result.ok else logger.warning
        log(
            "webhook %s: attempt %d %s",
            kind,
            attempt,
            "delivered" if result.ok else f"failed ({result.error or result.status_code})",
            extra={"job_id" if kind == "job" else "batch_id": item_id, "webhook_status": status},
        )
        if status == "pending":
            self._schedule(kind, item_id, attempt + 1)

    def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> DeliveryAttempt:
        """The notice as an SNS message: the same body, its event id and signature as attributes."""
        at, started = utc_now_iso(), time.monotonic()
        error = None
        if topic not in self.rules.sns_topics:  # the allowlist may have shrunk since the job was made
            error = "topic not allowed"
        elif self._sns is None:
            error = "no SNS client"
        else:
            attributes = {
                name: {"DataType": "String", "StringValue": headers[name]}
                for name in (SIGNATURE_HEADER, EVENT_ID_HEADER)
            }
            try:
                self._sns.publish(TopicArn=topic, Message=body.decode(), MessageAttributes=attributes)
            except (ClientError, BotoCoreError) as exc:
                error = f"sns: {type(exc).__name__}"
        elapsed = round((time.monotonic() - started) * 1000)
        return DeliveryAttempt(at=at, status_code=None, error=error, duration_ms=elapsed, ok=error is None)

    def _schedule(self, kind: str, item_id: str, attempt: int) -> None:
        delay = next_delay(
            attempt - 1,
            base=self.settings.webhook_backoff_seconds,
            cap=self.settings.webhook_backoff_cap_seconds,
            rng=self._rng,
        )
        with aws_errors("queue a webhook retry"):
            self._sqs.send_message(
                QueueUrl=self.settings.notify_queue_url,
                MessageBody=notice(kind, item_id, attempt),
                DelaySeconds=min(900, round(delay)),
            )

    def _record(self, key: str, record: dict[str, Any], *, recorded: int | None) -> bool:
        """Write the delivery record if no one else has moved it on: ``recorded`` attempts known
        before this one (None: only if there is no record yet)."""
        if recorded is None or recorded == 0:
            condition = "attribute_not_exists(webhook_attempts)"
            if recorded == 0:
                condition += " OR webhook_attempts = :before"
        else:
            condition = "webhook_attempts = :before"
        values: dict[str, Any] = {
            ":record": {"S": json.dumps(record, separators=(",", ":"))},
            ":count": {"N": str(len(record["attempts"]))},
        }
        if recorded is not None:
            values[":before"] = {"N": str(recorded)}
        try:
            with aws_errors("record a webhook attempt"):
                self._dynamodb.update_item(
                    TableName=self.settings.jobs_table,
                    Key={"job_id": {"S": key}},
                    UpdateExpression="SET webhook = :record, webhook_attempts = :count",
                    ConditionExpression=f"attribute_exists(job_id) AND ({condition})",
                    ExpressionAttributeValues=values,
                )
        except TransitionRejected:  # the condition failed: another notifier got there first
            return False
        return True


def serve_notifier(settings: NotifierSettings, stop: threading.Event, *, wait_seconds: int = 5) -> None:
    """The notifier's loop: receive notices, handle each on a pool thread (a slow receiver holds
    one thread, never the loop), delete those handled; run until ``stop`` is set."""
    from visionq.aws import boto3_client

    sqs = boto3_client("sqs", settings, max_pool_connections=settings.notifier_concurrency + 4)
    dynamodb = boto3_client("dynamodb", settings, max_pool_connections=settings.notifier_concurrency + 4)
    sns = boto3_client("sns", settings) if settings.webhook_sns_topics else None
    notifier = Notifier(settings=settings, dynamodb=dynamodb, sqs=sqs, sns=sns)
    # Long enough for one delivery and its bookkeeping; a notice whose handler died comes back.
    visibility = int(settings.webhook_timeout_seconds * 2 + 30)
    in_flight: set[Future[None]] = set()

    def process(message: dict[str, Any]) -> None:
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            if receives > MAX_RECEIVES:
                logger.error("dropping a notice received %d times: %.200s", receives, message["Body"])
            else:
                notifier.handle(message["Body"], receives=receives)
        except Exception:
            logger.exception("could not handle a notice; it will come back")
            return
        with aws_errors("delete a notice"):
            sqs.delete_message(QueueUrl=settings.notify_queue_url, ReceiptHandle=message["ReceiptHandle"])

    with ThreadPoolExecutor(settings.notifier_concurrency, thread_name_prefix="notify") as pool:
        while not stop.is_set():
            free = settings.notifier_concurrency - len(in_flight)
            if free <= 0:
                wait(list(in_flight), timeout=1, return_when=FIRST_COMPLETED)
                continue
            try:
                response = sqs.receive_message(
                    QueueUrl=settings.notify_queue_url,
                    MaxNumberOfMessages=min(10, free),
                    WaitTimeSeconds=wait_seconds,
                    VisibilityTimeout=visibility,
                    AttributeNames=["ApproximateReceiveCount"],
                )
            except Exception:
                logger.exception("cannot receive notices; trying again")
                stop.wait(2)
                continue
            for message in response.get("Messages", []):
                future = pool.submit(process, message)
                in_flight.add(future)
                future.add_done_callback(in_flight.discard)
        wait(list(in_flight), timeout=settings.webhook_timeout_seconds + 10)
