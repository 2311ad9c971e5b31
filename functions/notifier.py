"""AWS Lambda: the notifier, on the notifications queue (SQS event source).

Each record is one notice (src/visionq/notifications.py): deliver a job's or a batch's webhook,
record the attempt, queue a retry. A record whose handling raised is reported as a partial batch
failure and comes back after the queue's visibility timeout; the others are deleted by Lambda.
"""

from __future__ import annotations

import logging
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
    failures = []
    for record in event.get("Records", []):
        receives = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        if receives > MAX_RECEIVES:
            logger.error("dropping a notice received %d times: %.200s", receives, record.get("body"))
            continue
        try:
            _notifier.handle(record["body"])
        except Exception:
            logger.exception("could not handle a notice; it will come back")
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
