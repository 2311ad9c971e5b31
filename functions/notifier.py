"""AWS Lambda: the notifier, on the notifications queue (SQS event source).

Each record is one notice (src/visionq/notifications.py): deliver a job's or a batch's webhook,
record the attempt, queue a retry. A record whose handling raised is reported as a partial batch
failure and comes back after the queue's visibility timeout; the others are deleted by Lambda.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from visionq.config import NotifierSettings, load_settings
from visionq.notifications import MAX_RECEIVES, Notifier

logger = logging.getLogger(__name__)

_notifier: Notifier | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _notifier
    if _notifier is None:
        from visionq.aws import boto3_client
        from visionq.logs import configure_logging

        configure_logging("INFO")
        settings = load_settings(NotifierSettings)
        _notifier = Notifier(
            settings=settings,
            dynamodb=boto3_client("dynamodb", settings),
            sqs=boto3_client("sqs", settings),
            sns=boto3_client("sns", settings) if settings.webhook_sns_topics else None,
        )
    return {"batchItemFailures": _handle_all(_notifier, event.get("Records", []), context)}


def _handle_all(notifier: Notifier, records: list[dict[str, Any]], context: Any) -> list[dict[str, str]]:
    """Every record on a thread of its own, so one slow receiver (up to the delivery timeout, twice
    for a batch's notice) delays no other; a record not finished when the invocation must end is
    reported as failed, to come back, rather than lost with the whole batch to a timeout."""
    margin = 2 * notifier.settings.webhook_timeout_seconds + 3
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else 60.0
    failures: list[dict[str, str]] = []
    pool = ThreadPoolExecutor(max(1, len(records)))
    try:
        futures = {}
        for record in records:
            receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
            if receives > MAX_RECEIVES:
                logger.error("dropping a notice received %d times: %.200s", receives, record.get("body"))
                continue
            futures[pool.submit(notifier.handle, record["body"], receives=receives)] = record["messageId"]
        done, pending = wait(futures, timeout=max(1.0, remaining - margin))
        for future in done:
            if future.exception() is not None:
                logger.error("could not handle a notice; it will come back", exc_info=future.exception())
                failures.append({"itemIdentifier": futures[future]})
        failures += [{"itemIdentifier": futures[future]} for future in pending]
    finally:
        # Not waited for: a delivery still running finishes (or is frozen with the container);
        # its notice comes back either way, and the delivery record makes a repeat harmless.
        pool.shutdown(wait=False, cancel_futures=True)
    return failures
