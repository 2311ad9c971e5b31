"""Metrics of the worker and the API: Prometheus (``/metrics``) and CloudWatch's embedded metric format.

Every metric lives on a registry of visionq's own (``WorkerMetrics``, ``ApiMetrics``), never on
prometheus_client's global one, so a test can build a fresh set. The process-wide sets are ``WORKER``
and ``API``; code records through ``metrics.WORKER`` (looked up at call time, so a test may swap it).

Where the worker's numbers come from (the core is not told about metrics beyond a few calls):

    receive, queue_wait, acknowledge ... poller.py (queue_wait: SentTimestamp to receipt, first
                                         deliveries only; needs SentTimestamp, see stores/queue.py)
    claim, fetch, decode, infer ........ settle.log_state (RUNNING: claim; SUCCEEDED/FAILED: the
                                         item's own ``WorkItem.timings``)
    batch_wait, batch size ............. batching.MicroBatcher.next_batch
    write, settle ...................... ``timed`` around the result write (core) and mark_succeeded
    store calls' CPU ................... settle.BoundedCalls.store (the calling thread's CPU time)
    images processed, failures ......... settle.log_state (SUCCEEDED / FAILED)
    model load time .................... models/registry.load_models
    queue depth, oldest message age .... ``QueueSampler``, every few seconds in the poller

Stage times are per image: a stage done for several images at once (receive, infer, write,
acknowledge) is observed once for each of them with the call's time divided by their number, so the
mean of a stage is what it cost one image. Images per second is not kept here: Prometheus has
``rate(visionq_images_processed_total[1m])``, ``visionq stats`` the delta of that counter between
two scrapes (``stats.py``), and CloudWatch the Sum of ImagesProcessed over a period.

The hot path costs a dictionary look-up and prometheus_client's ``observe``/``inc`` (a lock per value);
children of labelled metrics are cached. ``tests/unit/test_metrics.py`` prints the cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest, start_http_server

from visionq.errors import ConfigError, VisionqError
from visionq.jobs import JobStatus

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from visionq.stores.queue import Message
    from visionq.work_items import WorkItem

logger = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACE = "visionq"  # CloudWatch's namespace of the EMF metrics
STAGES = (
    "receive",
    "queue_wait",
    "claim",
    "fetch",
    "decode",
    "batch_wait",
    "infer",
    "write",
    "settle",
    "acknowledge",
)
# Seconds: from a claim against an in-memory store (well under 1 ms) to a message queued for minutes.
STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    math.inf,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, math.inf)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
DECODED_WHERE = ("worker", "model_process")
_TIMINGS = (("fetch_ms", "fetch"), ("decode_ms", "decode"), ("inference_ms", "infer"))


# --- the worker's metrics -----------------------------------------------------------------------


class WorkerMetrics:
    """The worker's metrics on a registry of their own; methods are what the pipeline calls."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)  # memory, CPU, open files of the worker
        r = self.registry
        self.queue_messages = Gauge(
            "visionq_queue_messages",
            "Messages in the queue by state (SQS ApproximateNumberOfMessages / ...NotVisible / ...Delayed: "
            "visible, in_flight, delayed), sampled every few seconds by the poller.",
            ["queue", "state"],
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "visionq_queue_oldest_message_age_seconds",
            "Age (now - SentTimestamp) of the oldest message this worker received in the last sample window; "
            "SQS has no attribute for the oldest message, so this is a lower bound, 0 when the queue was empty "
            "and kept from the previous window when nothing was received.",
            ["queue"],
            registry=r,
        )
        self.messages_received = Counter(
            "visionq_messages_received", "Queue messages received (deliveries, redeliveries included).", registry=r
        )
        self.messages_settled = Counter(
            "visionq_messages_settled",
            "Messages the core finished with, by outcome: done (acknowledged) or retry (given back).",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "visionq_batch_size",
            "Images per forward pass, as the micro-batcher released them.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "visionq_stage_seconds",
            "Time one image spent in a stage (receive, queue_wait, claim, fetch, decode, batch_wait, infer, "
            "write, settle, acknowledge); a call made for several images counts its time divided among them. "
            "receive includes the long-poll wait for the first message; queue_wait is SentTimestamp to receipt "
            "of first deliveries.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.images_processed = Counter(
            "visionq_images_processed",
            "Images whose job this worker ended, by model and status (succeeded, failed).",
            ["model", "status"],
            registry=r,
        )
        self.image_failures = Counter(
            "visionq_image_failures",
            "Images whose job ended FAILED, by model and error code.",
            ["model", "code"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "visionq_model_load_seconds",
            "Seconds it took to load a model (weights resolved, runtime built) when the worker started.",
            ["model"],
            registry=r,
        )
        self.store_cpu_seconds = Counter(
            "visionq_store_cpu_seconds",
            "CPU seconds the worker's store threads spent in each store call (claim, mark_succeeded, "
            "record_results, ...): their Python and the requests they send, not the wait for answers.",
            ["call"],
            registry=r,
        )
        self.images_decoded = Counter(
            "visionq_images_decoded",
            "Images handed to be decoded, by where: worker (its decode processes or threads, on the CPU) or "
            "model_process (JPEGs whose header alone the worker checked, decoded on the model's device: "
            "VISIONQ_DEVICE_DECODE).",
            ["where"],
            registry=r,
        )
        # Children of labelled metrics, made once: labels() takes a lock and builds a tuple each call.
        self._decoded: dict[str, Any] = {where: self.images_decoded.labels(where) for where in DECODED_WHERE}
        self._stages: dict[str, Any] = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        self._store_cpu: dict[str, Any] = {}
        self._images: dict[tuple[str, str], Any] = {}
        self._failures: dict[tuple[str, str], Any] = {}

    # hot path ---------------------------------------------------------------------------------

    def stage(self, stage: str, seconds: float, count: int = 1) -> None:
        """``count`` images each spent ``seconds`` in ``stage``."""
        child = self._stages.get(stage)
        if child is None:
            child = self._stages[stage] = self.stage_seconds.labels(stage)
        for _ in range(count):
            child.observe(seconds)

    def decoded(self, where: str) -> None:
        """One image handed to be decoded ``where`` (DECODED_WHERE)."""
        self._decoded[where].inc()

    def job_state(self, item: WorkItem, status: JobStatus, error_code: str | None = None) -> None:
        """A job entered ``status`` (``settle.log_state``): RUNNING ends the claim; SUCCEEDED and
        FAILED count the image and observe the stages its ``timings`` hold."""
        if status is JobStatus.RUNNING:
            self.stage("claim", time.perf_counter() - item.started)
            return
        if status is not JobStatus.SUCCEEDED and status is not JobStatus.FAILED:
            return
        timings = item.timings
        for timing, stage in _TIMINGS:
            ms = timings.get(timing)
            if ms is not None:
                self._stages[stage].observe(ms / 1000)
        model = item.model_name or "unknown"
        outcome = "succeeded" if status is JobStatus.SUCCEEDED else "failed"
        images = self._images.get((model, outcome))
        if images is None:
            images = self._images[model, outcome] = self.images_processed.labels(model, outcome)
        images.inc()
        if status is JobStatus.FAILED:
            key = (model, error_code or "unknown")
            failures = self._failures.get(key)
            if failures is None:
                failures = self._failures[key] = self.image_failures.labels(*key)
            failures.inc()

    def batch_formed(self, enqueued_at: Sequence[float], now: float) -> None:
        """A batch left the micro-batcher; ``enqueued_at``: when each item entered it (monotonic)."""
        self.batch_size.observe(len(enqueued_at))
        batch_wait = self._stages["batch_wait"]
        for entered in enqueued_at:
            batch_wait.observe(now - entered)

    def received(self, messages: Sequence[Message], seconds: float, now: float | None = None) -> None:
        """One receive call returned ``messages`` after ``seconds`` (its long-poll wait included)."""
        if not messages:
            return
        self.messages_received.inc(len(messages))
        self.stage("receive", seconds / len(messages), len(messages))
        now = time.time() if now is None else now
        queue_wait = self._stages["queue_wait"]
        for message in messages:
            sent_at = getattr(message, "sent_at", None)
            if sent_at is not None and message.receive_count <= 1:
                queue_wait.observe(max(0.0, now - sent_at))

    def store_cpu(self, call: str, seconds: float) -> None:
        """A store call (``settle.BoundedCalls.store``) spent ``seconds`` of its thread's CPU."""
        child = self._store_cpu.get(call)
        if child is None:
            child = self._store_cpu[call] = self.store_cpu_seconds.labels(call)
        child.inc(seconds)

    def settled(self, outcome: str, count: int = 1) -> None:
        self.messages_settled.labels(outcome).inc(count)

    # rare -------------------------------------------------------------------------------------

    def model_loaded(self, model: str, seconds: float) -> None:
        self.model_load_seconds.labels(model).set(seconds)

    def queue_depth(self, queue: str, depth: QueueDepth, oldest_age: float | None) -> None:
        self.queue_messages.labels(queue, "visible").set(depth.visible)
        self.queue_messages.labels(queue, "in_flight").set(depth.in_flight)
        self.queue_messages.labels(queue, "delayed").set(depth.delayed)
        if oldest_age is not None:
            self.queue_oldest_age.labels(queue).set(oldest_age)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def timed(call: Awaitable[T], stage: str, count: int = 1) -> T:
    """``await call``, observed as ``count`` images' time in ``stage`` when it succeeds."""
    started = time.perf_counter()
    result = await call
    if count > 0:
        WORKER.stage(stage, (time.perf_counter() - started) / count, count)
    return result


def serve(port: int, *, metrics: WorkerMetrics | None = None, addr: str = "0.0.0.0") -> WSGIServer:  # noqa: S104
    """Serve ``/metrics`` (any path, in fact) on ``port`` from a daemon thread; ``shutdown()`` and
    ``server_close()`` the answer to stop it. ``addr``: every interface, so a scraper outside the
    container reaches it."""
    try:
        server, _ = start_http_server(port, addr=addr, registry=(metrics or WORKER).registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port} (VISIONQ_METRICS_PORT): {exc}") from exc
    logger.info("metrics served on http://%s:%d/metrics", addr, server.server_port)
    return server


def stop_serving(server: WSGIServer | None) -> None:
    """Stop a ``serve`` endpoint (None: nothing to stop)."""
    if server is not None:
        server.shutdown()
        server.server_close()


# --- queue depth --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int


class DepthSource(Protocol):
    async def depth(self) -> QueueDepth: ...


class SqsDepth:
    """A queue's depth from SQS GetQueueAttributes (aiobotocore client)."""

    ATTRIBUTES = (
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    )

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.url = queue_url

    async def depth(self) -> QueueDepth:
        from visionq.stores.aws_errors import aws_errors

        with aws_errors("read the queue's attributes"):
            response = await self._client.get_queue_attributes(QueueUrl=self.url, AttributeNames=list(self.ATTRIBUTES))
        attrs = response.get("Attributes", {})
        visible, in_flight, delayed = (int(attrs.get(name, 0)) for name in self.ATTRIBUTES)
        return QueueDepth(visible=visible, in_flight=in_flight, delayed=delayed)


def queue_name(url: str) -> str:
    """The label of a queue: the last segment of its URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


class QueueSampler:
    """Samples queue depths every ``interval`` seconds, and the age of the oldest message the worker
    received from ``main`` since the last sample (SQS has no attribute for the oldest message)."""

    def __init__(
        self,
        sources: Mapping[str, DepthSource],
        *,
        main: str,
        interval: float = 5.0,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = dict(sources)
        self.main = main
        self.interval = interval
        self._metrics = metrics
        self._clock = clock
        self._oldest_sent: float | None = None  # epoch seconds, in the current window

    def seen(self, messages: Iterable[Message]) -> None:
        """Messages received from the main queue (their ``sent_at``, where SQS gave it)."""
        for message in messages:
            sent_at = getattr(message, "sent_at", None)
            if sent_at is not None and (self._oldest_sent is None or sent_at < self._oldest_sent):
                self._oldest_sent = sent_at

    async def sample(self) -> None:
        """One sample of every queue; a queue that cannot be read keeps its last values."""
        metrics = self._metrics or WORKER
        now = self._clock()
        oldest, self._oldest_sent = self._oldest_sent, None
        for name, source in self.sources.items():
            try:
                depth = await source.depth()
            except VisionqError as exc:
                logger.warning("could not read the depth of queue %s: %s", name, exc)
                continue
            age: float | None = None
            if name == self.main:
                if oldest is not None:
                    age = max(0.0, now - oldest)
                elif depth.visible == 0 and depth.delayed == 0:
                    age = 0.0
            metrics.queue_depth(name, depth, age)

    async def run(self) -> None:
        """Sample forever; a fault here is logged, never the end of the worker."""
        while True:
            try:
                await self.sample()
            except Exception:  # metrics must never stop the processing
                logger.exception("queue depth sampling failed")
            await asyncio.sleep(self.interval)


# --- CloudWatch embedded metric format ----------------------------------------------------------

EMF_UNITS = frozenset(
    {
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    }
)


def emf_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """EMF lines are written on AWS Lambda (``AWS_LAMBDA_FUNCTION_NAME``) or when
    ``VISIONQ_METRICS_EMF`` says so (1/true/yes/on; 0/false/no/off turns them off on Lambda too)."""
    env = os.environ if environ is None else environ
    flag = env.get("VISIONQ_METRICS_EMF", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes", "on")
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))


def emf_document(
    values: Mapping[str, tuple[float | Sequence[float], str]],
    *,
    dimensions: Mapping[str, str] | None = None,
    namespace: str = NAMESPACE,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """One EMF log event: ``values`` name -> (value or up to 100 values, unit), all with the same
    ``dimensions`` (name -> value; none: one empty dimension set). ``timestamp``: epoch seconds."""
    dims = dict(dimensions or {})
    if not values:
        raise ValueError("an EMF document needs at least one metric")
    if len(values) > 100:
        raise ValueError("at most 100 metrics per EMF directive")
    if len(dims) > 30:
        raise ValueError("at most 30 dimensions per EMF dimension set")
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int((time.time() if timestamp is None else timestamp) * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dims)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                }
            ],
        },
    }
    for dimension, label in dims.items():
        if not dimension or not isinstance(label, str) or not label:
            raise ValueError(f"dimension {dimension!r} needs a non-empty name and string value")
        document[dimension] = label
    for name, (value, unit) in values.items():
        if unit not in EMF_UNITS:
            raise ValueError(f"{unit!r} is not a CloudWatch unit")
        if not name or name in dims or name == "_aws":
            raise ValueError(f"metric name {name!r} is empty or taken")
        numbers = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        if not numbers or len(numbers) > 100 or not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"metric {name!r} needs 1 to 100 finite values")
        document[name] = numbers[0] if isinstance(value, int | float) else numbers
    return document


_Key = tuple[str, tuple[tuple[str, str], ...]]


def registry_values(registry: CollectorRegistry) -> dict[_Key, float]:
    """Every sample of ``registry`` but buckets and creation times: (sample name, sorted labels) -> value."""
    values: dict[_Key, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            values[sample.name, tuple(sorted(sample.labels.items()))] = float(sample.value)
    return values


class EmfReporter:
    """Writes the worker's metrics as EMF lines, aggregated over the time since the last flush:
    counts are the period's increments, times the period's means, gauges their current values."""

    def __init__(
        self,
        metrics: WorkerMetrics | None = None,
        *,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._write = write or _stdout_line
        self._clock = clock
        self._last: dict[_Key, float] = {}
        self._loads_sent: dict[str, float] = {}

    def documents(self) -> list[dict[str, Any]]:
        """The period's documents (and the start of a new period)."""
        values = registry_values((self._metrics or WORKER).registry)
        last, self._last = self._last, values
        now = self._clock()

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return max(0.0, values.get(key, 0.0) - last.get(key, 0.0))

        def labelled(name: str, label: str) -> list[str]:
            return sorted({dict(lbls)[label] for sample, lbls in values if sample == name and label in dict(lbls)})

        docs: list[dict[str, Any]] = []
        succeeded = failed = 0.0
        for model in labelled("visionq_images_processed_total", "model"):
            ok = delta("visionq_images_processed_total", model=model, status="succeeded")
            bad = delta("visionq_images_processed_total", model=model, status="failed")
            succeeded, failed = succeeded + ok, failed + bad
            docs.append(
                emf_document(
                    {"ImagesSucceeded": (ok, "Count"), "ImagesFailed": (bad, "Count")},
                    dimensions={"model": model},
                    timestamp=now,
                )
            )
        batches = delta("visionq_batch_size_count")
        overall: dict[str, tuple[float | Sequence[float], str]] = {
            "ImagesProcessed": (succeeded + failed, "Count"),
            "ImagesFailed": (failed, "Count"),
            "MessagesReceived": (delta("visionq_messages_received_total"), "Count"),
            "Batches": (batches, "Count"),
        }
        if batches:
            overall["BatchSize"] = (delta("visionq_batch_size_sum") / batches, "None")
        docs.append(emf_document(overall, timestamp=now))
        for stage in labelled("visionq_stage_seconds_count", "stage"):
            count = delta("visionq_stage_seconds_count", stage=stage)
            if count:
                mean_ms = delta("visionq_stage_seconds_sum", stage=stage) / count * 1000
                docs.append(
                    emf_document({"StageTime": (mean_ms, "Milliseconds")}, dimensions={"stage": stage}, timestamp=now)
                )
        for key in sorted(k for k in values if k[0] == "visionq_image_failures_total"):
            code = dict(key[1])["code"]
            count = max(0.0, values[key] - last.get(key, 0.0))
            if count:
                docs.append(emf_document({"Failures": (count, "Count")}, dimensions={"code": code}, timestamp=now))
        for queue in labelled("visionq_queue_messages", "queue"):
            gauges: dict[str, tuple[float | Sequence[float], str]] = {
                metric: (values.get(("visionq_queue_messages", (("queue", queue), ("state", state))), 0.0), "Count")
                for metric, state in (
                    ("QueueVisible", "visible"),
                    ("QueueInFlight", "in_flight"),
                    ("QueueDelayed", "delayed"),
                )
            }
            age = values.get(("visionq_queue_oldest_message_age_seconds", (("queue", queue),)))
            if age is not None:
                gauges["OldestMessageAge"] = (age, "Seconds")
            docs.append(emf_document(gauges, dimensions={"queue": queue}, timestamp=now))
        for model in labelled("visionq_model_load_seconds", "model"):
            seconds = values[("visionq_model_load_seconds", (("model", model),))]
            if self._loads_sent.get(model) != seconds:  # once per load, not every period
                self._loads_sent[model] = seconds
                docs.append(
                    emf_document({"ModelLoadTime": (seconds, "Seconds")}, dimensions={"model": model}, timestamp=now)
                )
        return docs

    def flush(self) -> list[dict[str, Any]]:
        """Write the period's documents, one JSON line each; a fault is logged, never raised."""
        try:
            docs = self.documents()
            for doc in docs:
                self._write(json.dumps(doc, separators=(",", ":")))
        except Exception:  # metrics must never stop the processing
            logger.exception("could not write EMF metrics")
            return []
        return docs

    async def run(self, period: float = 60.0) -> None:
        """Flush every ``period`` seconds, forever (cancelled: the caller flushes once more)."""
        while True:
            await asyncio.sleep(period)
            self.flush()


def _stdout_line(line: str) -> None:
    # Raw lines on stdout: CloudWatch Logs extracts EMF from a log event that is the JSON object alone
    # (the JSON log formatter would wrap it).
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


_lambda_emf: EmfReporter | None = None


def invocation_done(*, received: int, retried: int) -> None:
    """The end of a Lambda worker invocation: count its messages, then write the EMF lines of the
    invocation (when ``emf_enabled()``)."""
    global _lambda_emf
    if received:
        WORKER.messages_received.inc(received)
        WORKER.settled("done", received - retried)
    if retried:
        WORKER.settled("retry", retried)
    if emf_enabled():
        if _lambda_emf is None:
            _lambda_emf = EmfReporter()
        _lambda_emf.flush()


# --- the API's metrics --------------------------------------------------------------------------


class ApiMetrics:
    """The HTTP API's request metrics, on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "visionq_api_requests",
            "HTTP requests answered, by route template (not the raw path) and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "visionq_api_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=API_BUCKETS,
            registry=self.registry,
        )
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        counter = self._requests.get((route, status))
        if counter is None:
            counter = self._requests[route, status] = self.requests.labels(route, str(status))
        counter.inc()
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = self.latency.labels(route)
        latency.observe(seconds)


WORKER = WorkerMetrics(process=True)
API = ApiMetrics(process=True)


def observe_request(route: str, status: int, seconds: float) -> None:
    """One HTTP request answered: ``route`` the route's template (``/v1/jobs/{job_id}``, or
    "unmatched" for a path no route took), ``status`` the code sent, ``seconds`` the time taken."""
    API.request(route, status, seconds)


def render_latest() -> tuple[bytes, str]:
    """The API's metrics in Prometheus' text format, and the content type to send them with."""
    return generate_latest(API.registry), CONTENT_TYPE_LATEST
