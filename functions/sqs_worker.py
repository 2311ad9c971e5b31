"""The AWS Lambda driver of the core: an SQS event source mapping hands it batches of messages.

Set the event source mapping's ``FunctionResponseTypes`` to ``ReportBatchItemFailures``: the
handler answers ``{"batchItemFailures": [...]}`` naming exactly the messages that must come back
(a store was unavailable, or the invocation ran out of time); Lambda deletes the others. Every
record of the event goes through the core together, so records are micro-batched as in the poller.

The event loop, the AWS clients, the database connection and the model are built once per
container (cold start) and kept across warm invocations. There is no lease loop: the invocation's
remaining time, less a margin, is every message's deadline, and work not finished by then is given
back rather than failed (on_expiry=RETRY). A result write under way at the deadline is waited for,
but never past the invocation's last second (``ANSWER_SECONDS``): the handler answers then, naming
what still runs, rather than be killed with every message of the event coming back.
Lambda has no GPU: this flavour is for CPU models. Images are decoded in processes of their own,
as in the poller's worker (decode_pool.py; their pixels come back through a socket, Lambda having
no /dev/shm): an image that crashes the decoder fails its job (``decoder_crashed``) instead of
killing the runtime, which would send every record of the event back, again at each delivery,
until the innocent ones reached the dead-letter queue. The model runs in the runtime's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from aws_lambda_powertools.utilities.data_classes import SQSEvent

from visionq import metrics
from visionq.config import WorkerSettings, load_settings
from visionq.core import Processor
from visionq.faults import Failpoints
from visionq.models import Model
from visionq.poller import default_max_batch
from visionq.stores.queue import Message
from visionq.work_items import Expiry, Outcome

logger = logging.getLogger(__name__)

# The invocation's last second is for answering: whatever still runs then is reported to come back.
ANSWER_SECONDS = 1.0


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class LambdaWorker:
    """What a warm container keeps: its own event loop and everything bound to it."""

    def __init__(self, settings: WorkerSettings, *, model: Model | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._resources = contextlib.AsyncExitStack()
        self.processor = self.loop.run_until_complete(self._build(model))

    async def _build(self, model: Model | None) -> Processor:
        from aiobotocore.session import get_session

        from visionq.aws import aio_client_kwargs, job_table_client
        from visionq.models.registry import LoadedModels, load_served_models
        from visionq.notifications import announcer
        from visionq.stores.job_store import DynamoJobStore
        from visionq.stores.queue import SqsQueue
        from visionq.stores.result_store import PostgresResultStore
        from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader

        settings = self.settings
        models = LoadedModels.of(model) if model is not None else load_served_models(settings)
        s3 = await self._resources.enter_async_context(
            get_session().create_client(**aio_client_kwargs("s3", settings, signature_version=SIGNATURE_VERSION))
        )
        objects = await self._resources.enter_async_context(S3ObjectReader(s3))
        announce = None
        if settings.notify_queue_url:
            sqs = await self._resources.enter_async_context(
                get_session().create_client(**aio_client_kwargs("sqs", settings))
            )
            announce = announcer(SqsQueue(sqs, settings.notify_queue_url))
        return Processor(
            settings=settings,
            jobs=DynamoJobStore(job_table_client(settings), settings.jobs_table),
            objects=objects,
            results=PostgresResultStore(settings.database_url),
            models=models,
            max_batch=default_max_batch(settings, models.device),
            model_batches=models.own_batches,
            max_wait=settings.max_wait_ms / 1000,
            failpoints=Failpoints.from_env(),  # the fault-injection suite's, off unless set
            announce=announce,
        )

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        return self.loop.run_until_complete(self._invoke(event, context))

    async def _invoke(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        left = context.get_remaining_time_in_millis() / 1000
        # The deadline falls before the answer, so that work still waiting for the model or in it
        # expires (and comes back) before the handler answers; only writes under way outlive it.
        margin = max(self.settings.lambda_margin_seconds, 2 * ANSWER_SECONDS)
        deadline = time.monotonic() + max(0.0, left - margin)
        messages = [
            Message(
                message_id=record.message_id,
                receipt_handle=record.receipt_handle,
                body=record.body,
                receive_count=int(record.attributes.approximate_receive_count or 1),
            )
            for record in SQSEvent(event).records
        ]
        tasks: list[asyncio.Future[Outcome]] = []
        done: set[asyncio.Future[Outcome]] = set()
        async with self.processor.running():
            try:
                tasks = [
                    asyncio.ensure_future(self.processor.process(m, deadline=deadline, on_expiry=Expiry.RETRY))
                    for m in messages
                ]
                # The deadline stops new work, but a result write under way when it passes is
                # waited for (it may commit), up to twice the store's timeout: past the invocation's
                # end, where Lambda would kill the runtime and every message of the event would come
                # back, those settled too. So the handler answers in time whatever is still running:
                # those messages come back, and their redelivery finds whatever the write left (the
                # identity rule).
                if tasks:
                    done, _ = await asyncio.wait(tasks, timeout=max(0.0, left - ANSWER_SECONDS))
            finally:
                # Also when a stage's fault cancels this block: no message's work outlives it.
                pending = [task for task in tasks if not task.done()]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error  # a fault in the core itself (the handler rebuilds the worker)
        if pending:
            logger.warning("%d messages still running as the invocation ends; they come back", len(pending))
        outcomes = [task.result() if task in done else Outcome.RETRY for task in tasks]
        failures = [m.message_id for m, outcome in zip(messages, outcomes, strict=True) if outcome is Outcome.RETRY]
        logger.info("invocation: %d messages, %d to retry", len(messages), len(failures))
        metrics.invocation_done(received=len(messages), retried=len(failures))
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failures]}

    def close(self) -> None:
        self.processor.close()
        self.loop.run_until_complete(self._resources.aclose())
        self.loop.close()


_worker: LambdaWorker | None = None


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """AWS Lambda entry point (SQS event source, ReportBatchItemFailures)."""
    global _worker
    if _worker is None:
        from visionq.logs import configure_logging

        configure_logging("INFO")
        _worker = LambdaWorker(load_settings(WorkerSettings))
    try:
        return _worker.handle(event, context)
    except Exception:
        # A fault in the core itself, not in one message: fail the invocation (every message comes
        # back) and start from a fresh build next time rather than reuse a broken one.
        logger.exception("invocation failed; the container's worker will be rebuilt")
        broken, _worker = _worker, None
        with contextlib.suppress(Exception):
            broken.close()
        raise
