"""Metrics: the EMF documents, the stage histograms the pipeline feeds, the queue sampler, and
`visionq stats` reading a real endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.fakes import FakeModel, FakeQueue, MemoryJobStore, MemoryObjects, MemoryResults, message, png, settings
from visionq import metrics, stats
from visionq.core import Processor
from visionq.errors import TransientError
from visionq.jobs import JobStatus
from visionq.metrics import EmfReporter, QueueDepth, QueueSampler, WorkerMetrics, emf_document
from visionq.models.registry import LoadedModels
from visionq.poller import Pipeline, Poller
from visionq.stores.queue import SqsQueue


def sample(m: WorkerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def item(model: str = "default", started: float | None = None, **timings: float) -> Any:
    """What the metrics read of a WorkItem (a real one needs a running event loop)."""
    return SimpleNamespace(
        model_name=model, started=time.perf_counter() if started is None else started, timings=dict(timings)
    )


# --- EMF ----------------------------------------------------------------------------------------


def assert_emf(doc: dict[str, Any]) -> None:
    """The embedded metric format's rules (CloudWatch_Embedded_Metric_Format_Specification)."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and aws["Timestamp"] > 1_600_000_000_000  # epoch milliseconds
    assert isinstance(aws["CloudWatchMetrics"], list) and aws["CloudWatchMetrics"]
    for directive in aws["CloudWatchMetrics"]:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
        assert directive["Namespace"] == "visionq"
        for dimension_set in directive["Dimensions"]:
            assert isinstance(dimension_set, list) and len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(doc[name], str) and doc[name], name  # every dimension is a string member
        assert 0 < len(directive["Metrics"]) <= 100
        for definition in directive["Metrics"]:
            assert set(definition) <= {"Name", "Unit", "StorageResolution"}
            assert definition["Unit"] in metrics.EMF_UNITS
            value = doc[definition["Name"]]  # every metric is a member of the root, a number or numbers
            values = value if isinstance(value, list) else [value]
            assert values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    json.loads(json.dumps(doc, allow_nan=False))  # valid JSON: no NaN or infinity


def test_emf_document_has_the_shape_of_the_spec() -> None:
    doc = emf_document(
        {"StageTime": (12.5, "Milliseconds"), "Samples": ([1.0, 2.0], "Count")},
        dimensions={"stage": "infer"},
        timestamp=1_700_000_000.25,
    )
    assert doc == {
        "_aws": {
            "Timestamp": 1_700_000_000_250,
            "CloudWatchMetrics": [
                {
                    "Namespace": "visionq",
                    "Dimensions": [["stage"]],
                    "Metrics": [{"Name": "StageTime", "Unit": "Milliseconds"}, {"Name": "Samples", "Unit": "Count"}],
                }
            ],
        },
        "stage": "infer",
        "StageTime": 12.5,
        "Samples": [1.0, 2.0],
    }
    assert_emf(doc)
    assert emf_document({"Images": (3, "Count")})["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]


@pytest.mark.parametrize(
    ("values", "dimensions"),
    [
        ({"X": (1.0, "Furlongs")}, None),  # not a CloudWatch unit
        ({"X": (float("nan"), "Count")}, None),
        ({"model": (1.0, "Count")}, {"model": "a"}),  # a metric named like a dimension
        ({}, None),
        ({"X": ([1.0] * 101, "Count")}, None),
    ],
)
def test_emf_document_refuses_what_cloudwatch_would_drop(values: Any, dimensions: Any) -> None:
    with pytest.raises(ValueError):
        emf_document(values, dimensions=dimensions)


def test_emf_reporter_writes_each_period_s_increments() -> None:
    m = WorkerMetrics()
    lines: list[str] = []
    reporter = EmfReporter(m, write=lines.append, clock=lambda: 1_700_000_000.0)
    m.job_state(item(fetch_ms=4.0, decode_ms=6.0, inference_ms=20.0), JobStatus.SUCCEEDED)
    m.job_state(item(fetch_ms=2.0), JobStatus.FAILED, "undecodable_image")
    m.batch_formed([0.0, 0.0, 0.0], now=0.01)
    m.model_loaded("default", 1.5)
    m.queue_depth("jobs", QueueDepth(visible=7, in_flight=2, delayed=1), oldest_age=42.0)

    docs = reporter.flush()
    assert [json.loads(line) for line in lines] == docs
    for doc in docs:
        assert_emf(doc)
    by_dims = {
        tuple(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): d
        for d in docs
        if "stage" not in d and "ModelLoadTime" not in d
    }
    stages = {d["stage"]: d["StageTime"] for d in docs if "stage" in d}
    assert by_dims[("model",)]["ImagesSucceeded"] == 1 and by_dims[("model",)]["ImagesFailed"] == 1
    overall = by_dims[()]
    assert (overall["ImagesProcessed"], overall["Batches"], overall["BatchSize"]) == (2, 1, 3)
    assert stages["fetch"] == pytest.approx(3.0)  # the period's mean, in ms
    assert stages["infer"] == pytest.approx(20.0)
    assert stages["batch_wait"] == pytest.approx(10.0)
    assert by_dims[("code",)] | {"_aws": None} == {"_aws": None, "code": "undecodable_image", "Failures": 1}
    assert by_dims[("queue",)]["QueueVisible"] == 7 and by_dims[("queue",)]["OldestMessageAge"] == 42.0
    assert next(d for d in docs if "ModelLoadTime" in d)["model"] == "default"

    # The next period: only what happened since, no stage without observations, the load time once.
    m.job_state(item(fetch_ms=8.0), JobStatus.SUCCEEDED)
    docs = reporter.flush()
    stages = {d["stage"]: d["StageTime"] for d in docs if "stage" in d}
    assert stages == {"fetch": pytest.approx(8.0)}
    assert [d["ImagesProcessed"] for d in docs if "ImagesProcessed" in d] == [1]
    assert not [d for d in docs if "ModelLoadTime" in d or "Failures" in d]


def test_emf_is_on_on_lambda_or_when_asked() -> None:
    assert not metrics.emf_enabled({})
    assert metrics.emf_enabled({"AWS_LAMBDA_FUNCTION_NAME": "worker"})
    assert metrics.emf_enabled({"VISIONQ_METRICS_EMF": "1"})
    assert not metrics.emf_enabled({"AWS_LAMBDA_FUNCTION_NAME": "worker", "VISIONQ_METRICS_EMF": "0"})


def test_a_lambda_invocation_writes_its_emf_lines(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    m = WorkerMetrics()
    monkeypatch.setattr(metrics, "WORKER", m)
    monkeypatch.setattr(metrics, "_lambda_emf", None)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "visionq-worker")
    monkeypatch.delenv("VISIONQ_METRICS_EMF", raising=False)
    m.job_state(item(inference_ms=5.0), JobStatus.SUCCEEDED)
    metrics.invocation_done(received=3, retried=1)
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for doc in docs:
        assert_emf(doc)
    assert [d["MessagesReceived"] for d in docs if "MessagesReceived" in d] == [3]
    assert sample(m, "visionq_messages_settled_total", outcome="retry") == 1


# --- what the pipeline records ------------------------------------------------------------------


def test_job_states_feed_the_stage_histograms_and_the_counters() -> None:
    m = WorkerMetrics()
    claimed = item(started=time.perf_counter() - 0.003)
    m.job_state(claimed, JobStatus.RUNNING)
    assert sample(m, "visionq_stage_seconds_count", stage="claim") == 1
    assert 0.003 <= sample(m, "visionq_stage_seconds_sum", stage="claim") < 1

    m.job_state(item(fetch_ms=10.0, decode_ms=20.0, inference_ms=30.0, batch_size=4.0), JobStatus.SUCCEEDED)
    m.job_state(item(model="", fetch_ms=1.0), JobStatus.FAILED, "unsupported_format")
    for stage, count, seconds in (("fetch", 2, 0.011), ("decode", 1, 0.02), ("infer", 1, 0.03)):
        assert sample(m, "visionq_stage_seconds_count", stage=stage) == count
        assert sample(m, "visionq_stage_seconds_sum", stage=stage) == pytest.approx(seconds)
    # A 10 ms fetch falls in the 10 ms bucket, not the 5 ms one.
    assert sample(m, "visionq_stage_seconds_bucket", stage="fetch", le="0.005") == 1
    assert sample(m, "visionq_stage_seconds_bucket", stage="fetch", le="0.01") == 2
    assert sample(m, "visionq_images_processed_total", model="default", status="succeeded") == 1
    assert sample(m, "visionq_images_processed_total", model="unknown", status="failed") == 1
    assert sample(m, "visionq_image_failures_total", model="unknown", code="unsupported_format") == 1

    m.stage("write", 0.008 / 4, count=4)  # one transaction for four images
    assert sample(m, "visionq_stage_seconds_count", stage="write") == 4
    assert sample(m, "visionq_stage_seconds_sum", stage="write") == pytest.approx(0.008)


def test_the_pipeline_records_every_stage_of_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real Processor and Poller over the in-memory fakes: every stage, the batch and the outcome."""
    m = WorkerMetrics()
    monkeypatch.setattr(metrics, "WORKER", m)
    config = settings()
    objects = MemoryObjects()
    queue = FakeQueue()
    obj = objects.put("uploads/cam/a.png", png(7))
    queue.inbox.append(dataclasses.replace(message(obj), sent_at=time.time() - 2.0))
    processor = Processor(
        settings=config,
        jobs=MemoryJobStore(),
        objects=objects,
        results=MemoryResults(),
        models=LoadedModels.of(FakeModel()),
        max_batch=4,
        max_wait=0.0,
    )

    class Depth:
        async def depth(self) -> QueueDepth:
            return QueueDepth(visible=0, in_flight=len(queue.inbox), delayed=0)

    lines: list[str] = []
    poller = Poller(
        settings=config,
        processor=processor,
        queue=queue,
        pipeline=Pipeline(max_batch=4, max_wait=0.0, prefetch=4, receivers=1),
        sampler=QueueSampler({"queue": Depth()}, main="queue", interval=0.05, metrics=m),
        emf=EmfReporter(m, write=lines.append),
    )
    stop = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(poller.run(stop))
        deadline = time.monotonic() + 10
        while not queue.deleted:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        stop.set()
        await task

    asyncio.run(main())
    processor.close()
    for stage in metrics.STAGES:
        assert sample(m, "visionq_stage_seconds_count", stage=stage) == 1, stage
    assert sample(m, "visionq_stage_seconds_sum", stage="queue_wait") >= 2.0
    assert sample(m, "visionq_images_processed_total", model="default", status="succeeded") == 1
    assert sample(m, "visionq_batch_size_count") == 1
    assert sample(m, "visionq_messages_received_total") == 1
    assert sample(m, "visionq_messages_settled_total", outcome="done") == 1
    assert sample(m, "visionq_queue_messages", queue="queue", state="visible") == 0
    assert sample(m, "visionq_queue_oldest_message_age_seconds", queue="queue") >= 0
    # The worker's last EMF period is written as it stops.
    assert any(json.loads(line).get("ImagesProcessed") == 1 for line in lines)


# --- queue depth --------------------------------------------------------------------------------


class FakeDepthQueue:
    def __init__(self, *depths: QueueDepth | Exception) -> None:
        self.answers = list(depths)

    async def depth(self) -> QueueDepth:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_sampler_reports_depths_and_the_oldest_message_of_its_window() -> None:
    m = WorkerMetrics()
    now = [1_000.0]
    jobs = FakeDepthQueue(QueueDepth(12, 3, 1), QueueDepth(5, 3, 0), TransientError("SQS is down"), QueueDepth(0, 0, 0))
    dlq = FakeDepthQueue(*[QueueDepth(2, 0, 0)] * 4)
    sampler = QueueSampler({"jobs": jobs, "jobs-dlq": dlq}, main="jobs", metrics=m, clock=lambda: now[0])
    msg = message()
    sampler.seen([dataclasses.replace(msg, sent_at=970.0), dataclasses.replace(msg, sent_at=990.0), msg])

    asyncio.run(sampler.sample())
    assert [
        sample(m, "visionq_queue_messages", queue="jobs", state=s) for s in ("visible", "in_flight", "delayed")
    ] == [
        12,
        3,
        1,
    ]
    assert sample(m, "visionq_queue_oldest_message_age_seconds", queue="jobs") == 30.0
    assert sample(m, "visionq_queue_messages", queue="jobs-dlq", state="visible") == 2
    assert m.registry.get_sample_value("visionq_queue_oldest_message_age_seconds", {"queue": "jobs-dlq"}) is None

    now[0] += 5  # nothing received in this window, messages still waiting: the last age stays
    asyncio.run(sampler.sample())
    assert sample(m, "visionq_queue_messages", queue="jobs", state="visible") == 5
    assert sample(m, "visionq_queue_oldest_message_age_seconds", queue="jobs") == 30.0
    asyncio.run(sampler.sample())  # the queue cannot be read: its values stay, nothing raises
    assert sample(m, "visionq_queue_messages", queue="jobs", state="visible") == 5
    asyncio.run(sampler.sample())  # an empty queue has no old message
    assert sample(m, "visionq_queue_oldest_message_age_seconds", queue="jobs") == 0


class FakeSqsClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        attributes = {"ApproximateReceiveCount": "1", "SentTimestamp": "1700000000123"}
        return {"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "Body": "{}", "Attributes": attributes}]}

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": "4",
                "ApproximateNumberOfMessagesNotVisible": "2",
                "ApproximateNumberOfMessagesDelayed": "1",
            }
        }


def test_sqs_gives_the_sent_timestamp_and_the_depth() -> None:
    client = FakeSqsClient()
    [received] = asyncio.run(
        SqsQueue(client, "https://sqs/1/jobs").receive(max_messages=1, wait_seconds=0, visibility_timeout=5)
    )
    assert "SentTimestamp" in client.calls[0]["MessageSystemAttributeNames"]
    assert received.sent_at == pytest.approx(1_700_000_000.123)
    assert asyncio.run(metrics.SqsDepth(client, "https://sqs/1/jobs").depth()) == QueueDepth(4, 2, 1)
    assert metrics.queue_name("https://sqs.us-east-1.amazonaws.com/123/visionq-jobs") == "visionq-jobs"


def test_the_metrics_port_setting() -> None:
    assert settings().metrics_port is None
    assert settings(metrics_port=9464).metrics_port == 9464
    with pytest.raises(ValueError):
        settings(metrics_port=70_000)


# --- visionq stats over a real endpoint ---------------------------------------------------------


def test_stats_reads_a_real_endpoint_and_formats_it() -> None:
    m = WorkerMetrics()
    m.model_loaded("default", 2.5)
    m.queue_depth("visionq-jobs", QueueDepth(visible=9, in_flight=4, delayed=0), oldest_age=12.0)
    for _ in range(3):
        m.job_state(item(fetch_ms=2.0, decode_ms=4.0, inference_ms=40.0), JobStatus.SUCCEEDED)
    m.job_state(item(fetch_ms=2.0), JobStatus.FAILED, "undecodable_image")
    m.batch_formed([0.0, 0.0], now=0.0)
    m.batch_formed([0.0, 0.0, 0.0, 0.0], now=0.0)
    server = metrics.serve(0, metrics=m, addr="127.0.0.1")
    try:
        url = f"127.0.0.1:{server.server_port}"
        first = stats.collect([url, "127.0.0.1:1"])  # one endpoint that does not answer
        for _ in range(6):
            m.job_state(item(inference_ms=40.0), JobStatus.SUCCEEDED)
        time.sleep(0.2)
        second = stats.collect([url])
        once = stats.run_stats([url], interval=0)
    finally:
        metrics.stop_serving(server)

    assert first.scraped == [f"http://{url}/metrics"] and list(first.errors) == ["http://127.0.0.1:1/metrics"]
    text = stats.format_snapshot(second, previous=first)
    print(text)
    lines = text.splitlines()
    assert "queue visionq-jobs: 9 visible, 4 in flight, 0 delayed; oldest message seen 12.0 s old" in lines
    rate = stats.images_per_second(second, first)
    assert rate is not None and 0 < rate <= 6 / 0.2
    assert any(line.startswith("images/s: ") and "over" in line for line in lines)
    assert "images: 9 succeeded, 1 failed" in lines
    assert "failed by code: undecodable_image 1" in lines
    assert "batch size: mean 3.00 over 2 batches" in lines
    infer = next(line for line in lines if line.strip().startswith("infer"))
    assert infer.split()[1] == "40.00"
    fetch = next(line for line in lines if line.strip().startswith("fetch"))
    assert fetch.split()[1] == "2.00"
    assert "model load: default 2.50 s" in lines
    assert "images/s: n/a (one scrape)" in once.splitlines()
    assert stats.metrics_url("http://host:9/metrics") == "http://host:9/metrics"
    assert stats.metrics_url("host:9") == "http://host:9/metrics"


def test_stats_sums_counters_and_keeps_the_largest_gauge_across_endpoints() -> None:
    text = (
        "# TYPE visionq_images_processed counter\n"
        'visionq_images_processed_total{model="a",status="succeeded"} 5\n'
        "# TYPE visionq_queue_messages gauge\n"
        'visionq_queue_messages{queue="q",state="visible"} 7\n'
    )
    values = stats.parse(text, stats.parse(text.replace(" 5\n", " 2\n").replace(" 7\n", " 9\n")))
    assert values["visionq_images_processed_total", (("model", "a"), ("status", "succeeded"))] == 7
    assert values["visionq_queue_messages", (("queue", "q"), ("state", "visible"))] == 9


# --- the API's helpers --------------------------------------------------------------------------


def test_api_requests_are_counted_by_route_and_status() -> None:
    api = metrics.ApiMetrics()
    api.request("/v1/jobs/{job_id}", 200, 0.012)
    api.request("/v1/jobs/{job_id}", 404, 0.003)
    api.request("/v1/jobs/{job_id}", 200, 0.020)
    get = api.registry.get_sample_value
    assert get("visionq_api_requests_total", {"route": "/v1/jobs/{job_id}", "status": "200"}) == 2
    assert get("visionq_api_requests_total", {"route": "/v1/jobs/{job_id}", "status": "404"}) == 1
    assert get("visionq_api_request_seconds_count", {"route": "/v1/jobs/{job_id}"}) == 3

    metrics.observe_request("/healthz", 200, 0.001)
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain")
    assert b'visionq_api_requests_total{route="/healthz",status="200"}' in body
    assert b"visionq_stage_seconds" not in body  # the worker's metrics are not the API's


# --- cost ---------------------------------------------------------------------------------------


def test_cost_per_observation() -> None:
    """Prints what the hot path costs; not asserted (machines differ)."""
    m = WorkerMetrics()
    n = 50_000
    done = item(fetch_ms=1.0, decode_ms=2.0, inference_ms=3.0)

    def ns_per(fn: Any) -> float:
        started = time.perf_counter_ns()
        for _ in range(n):
            fn()
        return (time.perf_counter_ns() - started) / n

    stage = ns_per(lambda: m.stage("fetch", 0.004))
    state = ns_per(lambda: m.job_state(done, JobStatus.SUCCEEDED))
    batch = ns_per(lambda: m.batch_formed([0.0] * 8, 0.01))
    api = metrics.ApiMetrics()
    request = ns_per(lambda: api.request("/v1/jobs", 200, 0.01))
    print(
        f"\nns per call: stage observation {stage:.0f}; terminal job state (3 stages + counter) {state:.0f}; "
        f"batch of 8 (size + 8 waits) {batch:.0f}; API request {request:.0f}"
    )


def test_the_rate_counts_only_endpoints_that_answered_both_scrapes() -> None:
    """A worker that answered the second scrape only (it restarted) would add its whole count."""
    first = stats.Snapshot(taken_at=0.0, processed={"a": 100.0})
    second = stats.Snapshot(taken_at=2.0, processed={"a": 110.0, "b": 5000.0})
    assert stats.images_per_second(second, first) == 5.0


def test_store_calls_count_their_threads_cpu_by_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """What each store call costs the worker's CPU, apart from waiting: a call that spins for a
    while counts about that long, one that sleeps as long counts next to nothing."""
    import asyncio

    from visionq.settle import BoundedCalls

    m = WorkerMetrics()
    monkeypatch.setattr(metrics, "WORKER", m)

    def claim() -> str:
        until = time.thread_time() + 0.05
        while time.thread_time() < until:
            pass
        return "claimed"

    def record_results() -> str:
        time.sleep(0.05)
        return "written"

    async def calls() -> list[str]:
        bounded = BoundedCalls(5.0, threads=2)
        try:
            return [await bounded.store(claim), await bounded.store(record_results)]
        finally:
            bounded.close()

    assert asyncio.run(calls()) == ["claimed", "written"]
    assert 0.05 <= sample(m, "visionq_store_cpu_seconds_total", call="claim") < 0.5
    assert sample(m, "visionq_store_cpu_seconds_total", call="record_results") < 0.02
