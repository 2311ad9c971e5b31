"""The worker process (`visionq worker`): build the resources once, run the poller, exit cleanly.

The model, the AWS clients and the stores are built here, once, and passed down; the processing
itself is ``core.Processor`` and the receiving ``poller.Poller``. SIGTERM stops the receiving and
lets held work finish within the grace period. An unexpected error anywhere ends the process with
its stack logged and a non-zero status, so a supervisor (ECS, systemd, `visionq up`) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from visionq import metrics
from visionq.aws import proxy_for
from visionq.config import WorkerSettings
from visionq.core import Processor
from visionq.errors import WorkerStuck
from visionq.faults import Failpoints
from visionq.models import Model
from visionq.notifications import announcer
from visionq.poller import Pipeline, Poller
from visionq.settle import ProcessingStats
from visionq.stores.queue import SqsQueue
from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader
from visionq.stores.sqs_wire import SqsWire

if TYPE_CHECKING:
    from visionq.models.registry import LoadedModels

logger = logging.getLogger(__name__)


EXIT_WATCHDOG = "visionq-exit-watchdog"  # its thread's name


def _arm_exit_watchdog(seconds: float) -> None:
    """If shutdown has not finished ``seconds`` after the signal, dump every thread's stack and exit.

    Shutdown is bounded by the grace period, but a store call that hangs (a socket with no answer)
    would hold the process past it; an orchestrator would SIGKILL it then anyway. This makes the
    end certain, and leaves the stacks in the log for whoever finds out why.
    """
    import faulthandler
    import os
    import sys
    import threading

    def expire() -> None:
        logger.error("shutdown still not finished %.0f s after the signal; dumping stacks and exiting", seconds)
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):  # a stderr without a file descriptor: no dump
            pass
        finally:
            os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.name = EXIT_WATCHDOG
    timer.daemon = True
    timer.start()


def _queue_sampler(settings: WorkerSettings, sqs: object) -> metrics.QueueSampler | None:
    """Queue depths are sampled (GetQueueAttributes, every few seconds: billed requests) only when
    someone reads them: a metrics endpoint, or EMF lines."""
    if settings.metrics_port is None and not metrics.emf_enabled():
        return None
    main = metrics.queue_name(settings.queue_url)
    sources: dict[str, metrics.DepthSource] = {main: metrics.SqsDepth(sqs, settings.queue_url)}
    if settings.dlq_url:
        sources[metrics.queue_name(settings.dlq_url)] = metrics.SqsDepth(sqs, settings.dlq_url)
    return metrics.QueueSampler(sources, main=main)


@contextlib.asynccontextmanager
async def _queue_calls(
    sqs: Any, settings: WorkerSettings, *, connections: int, counts: dict[str, int]
) -> AsyncIterator[Any]:
    """What the poller's and the announcements' SQS calls go through: the worker's own client
    (``SqsWire``, without aiobotocore's per-call machinery), or, where the environment names an
    HTTP proxy for the endpoint (``aws.proxy_for``: the wire speaks none), the aiobotocore client."""
    if proxy_for(sqs.meta.endpoint_url) is not None:
        logger.info("an HTTP proxy is named for %s: the SQS calls go through the SDK", sqs.meta.endpoint_url)
        yield sqs
        return
    wire = SqsWire.of(sqs, read_timeout=settings.poll_wait_seconds + 10, connections=connections, counts=counts)
    async with wire:
        yield wire


async def serve_worker(
    settings: WorkerSettings, *, model: Model | None = None, stop: asyncio.Event | None = None
) -> ProcessingStats:
    """Build the worker's resources once (models, clients, stores), run until stopped, clean up.
    ``model``: serve this one model, already loaded, as "default" (tests, benchmarks).

    SIGTERM and SIGINT stop the receiving; messages already held are finished first.
    """
    import signal

    from visionq.models.registry import LoadedModels, load_served_models

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        _arm_exit_watchdog(settings.shutdown_grace_seconds + 30)

    # The worker owns its process when it can take its signals: only in the main thread of a POSIX
    # process (tests run the worker on a thread). Only then may it end the process itself.
    owns_process = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            owns_process = False
    if settings.ready_file is not None:  # one left by a previous run (a restarted container) says nothing yet
        settings.ready_file.unlink(missing_ok=True)
    models = LoadedModels.of(model) if model is not None else await asyncio.to_thread(load_served_models, settings)
    try:
        return await _serve(settings, models, stop, owns_process=owns_process)
    finally:
        # Whatever failed after the models were loaded: their processes and threads would hold the
        # interpreter's exit (a metrics port in use left the worker hanging, never restarted).
        models.close()


async def _serve(
    settings: WorkerSettings, models: LoadedModels, stop: asyncio.Event, *, owns_process: bool
) -> ProcessingStats:
    """``serve_worker`` once the models are loaded: the clients, the stores, the poller."""
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs, count_requests, job_table_client
    from visionq.dead_letters import BatchNotices
    from visionq.stores.batch_store import DynamoBatchStore
    from visionq.stores.job_store import DynamoJobStore
    from visionq.stores.result_store import PostgresResultStore

    if settings.torch_threads:
        import torch

        # After loading: Ultralytics sets torch to cpu_count - 1 threads when it builds its predictor.
        torch.set_num_threads(settings.torch_threads)
    session = get_session()
    requests: dict[str, int] = {}
    # No client-side validation of request parameters: the worker builds every request itself, and
    # botocore's validation is a measurable part of its CPU per image (bench/RESULTS.md, ceiling).
    lean = {"parameter_validation": False}
    # A connection per long poll, and more for the deletes, leases, dead-letter sweeps and
    # announcements meanwhile: the receivers never hold every connection.
    sqs_connections = settings.receivers + 8
    async with (
        session.create_client(
            **aio_client_kwargs(
                "sqs",
                settings,
                max_pool_connections=sqs_connections,
                read_timeout=settings.poll_wait_seconds + 10,
                **lean,
            )
        ) as sqs,
        session.create_client(**aio_client_kwargs("s3", settings, signature_version=SIGNATURE_VERSION, **lean)) as s3,
        S3ObjectReader(s3, connections=64, counts=requests) as objects,
        _queue_calls(sqs, settings, connections=sqs_connections, counts=requests) as queue_calls,
    ):
        # The job store's conditional writes, two per image, without boto3's per-call machinery
        # (unless a proxy is named for its endpoint).
        dynamodb = job_table_client(settings, counts=requests)
        # Counted here: the SQS client's requests (the queue sampler's, and every SQS call behind a
        # proxy). The reader and the wires count what they send, the reader its reads through the
        # SDK too; the S3 client otherwise only presigns.
        count_requests(sqs, requests)
        pipeline = Pipeline.from_settings(settings, models.device, models.own_batches)
        failpoints = Failpoints.from_env()
        jobs = DynamoJobStore(dynamodb, settings.jobs_table)
        processor = Processor(
            settings=settings,
            jobs=jobs,
            objects=objects,
            results=PostgresResultStore(settings.database_url),
            models=models,
            max_batch=pipeline.max_batch,
            model_batches=pipeline.model_batches,
            max_wait=pipeline.max_wait,
            failpoints=failpoints,
            announce=announcer(SqsQueue(queue_calls, settings.notify_queue_url)) if settings.notify_queue_url else None,
        )
        poller = Poller(
            settings=settings,
            processor=processor,
            queue=SqsQueue(queue_calls, settings.queue_url),
            pipeline=pipeline,
            jobs=jobs,
            dead_letters=SqsQueue(queue_calls, settings.dlq_url) if settings.dlq_url else None,
            batch_notices=BatchNotices(DynamoBatchStore(dynamodb, settings.jobs_table).notice_due),
            failpoints=failpoints,
            sampler=_queue_sampler(settings, sqs),
            emf=metrics.EmfReporter() if metrics.emf_enabled() else None,
        )
        metrics_server = None
        try:
            if settings.metrics_port is not None:  # a port in use ends the worker, not before its cleanup
                metrics_server = metrics.serve(settings.metrics_port)
            if settings.ready_file is not None:
                settings.ready_file.touch()
            await poller.run(stop)
            if poller.stuck is not None:
                if owns_process:  # the stuck thread would hold the interpreter's exit (it joins the pools' threads)
                    _arm_exit_watchdog(30)
                raise WorkerStuck(f"{poller.stuck}; the worker stopped so that a new one takes its place")
        finally:
            if settings.ready_file is not None:
                settings.ready_file.unlink(missing_ok=True)
            metrics.stop_serving(metrics_server)
            processor.close()
            processor.stats.aws_requests = dict(sorted(requests.items()))
            processor.stats.model_process_seconds = sum(
                getattr(model, "predict_seconds", 0.0) for model in processor.models.models.values()
            )
            logger.info("worker totals", extra={"stats": vars(processor.stats)})
    return processor.stats
