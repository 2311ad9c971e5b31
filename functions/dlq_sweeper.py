"""AWS Lambda, on a schedule: the dead-letter sweeper of the Lambda worker flavour.

The long-running worker sweeps the dead-letter queue itself (``poller.py``); a Lambda worker only
sees its own invocations, so a message SQS parked after maxReceiveCount deliveries (most likely an
image that kills the worker) would leave its job RUNNING forever. This function, run every minute,
gives those jobs their terminal state (FAILED, ``poison_message``) and leaves the messages parked
for ``visionq dlq list`` / ``redrive``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from visionq import dead_letters
from visionq.config import DeadLetterSettings, load_settings

logger = logging.getLogger(__name__)

# The poison batch members this container has announced (dead_letters.BatchNotices), kept while it
# stays warm: a cold one announces each once more.
_SENT: set[str] = set()


async def sweep_once(settings: DeadLetterSettings) -> int:
    """One sweep; the number of jobs it marked FAILED."""
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs, boto3_client
    from visionq.notifications import announcer
    from visionq.stores.batch_store import DynamoBatchStore
    from visionq.stores.job_store import DynamoJobStore
    from visionq.stores.queue import SqsQueue

    dynamodb = boto3_client("dynamodb", settings)
    jobs = DynamoJobStore(dynamodb, settings.jobs_table)
    async with get_session().create_client(**aio_client_kwargs("sqs", settings)) as sqs:
        announce = announcer(SqsQueue(sqs, settings.notify_queue_url)) if settings.notify_queue_url else None
        return await dead_letters.sweep(
            SqsQueue(sqs, settings.dlq_url),
            jobs,
            settings.upload_prefix,
            announce=announce,
            batch_notices=dead_letters.BatchNotices(DynamoBatchStore(dynamodb, settings.jobs_table).notice_due, _SENT),
        )


def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """AWS Lambda entry point (an EventBridge schedule)."""
    from visionq.logs import configure_logging

    configure_logging("INFO")
    failed = asyncio.run(sweep_once(load_settings(DeadLetterSettings)))
    logger.info("dead-letter sweep: %d job(s) FAILED", failed)
    return {"failed": failed}
