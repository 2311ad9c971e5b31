"""Completion notices end to end: the API takes a webhook URL, the worker hands ended jobs to the
notifications queue, the notifier delivers to a real receiver on loopback, signs, retries, and
records every attempt in the job; a receiver that never answers delays no result."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import BUCKET, TABLE, Stack, serving_api
from visionq.client import VisionqClient
from visionq.config import ApiSettings, NotifierSettings
from visionq.local_stack import wait_until
from visionq.notifications import serve_notifier
from visionq.webhooks import verify

pytestmark = pytest.mark.integration

SECRET = "integration-secret"
WAIT = 60


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback: per path, the statuses to answer in turn (the last one
    repeats); "hang" holds the request until ``release`` is set."""

    script: dict[str, list[int | str]]
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(script={})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            rec.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()))
            answers = rec.script.get(self.path, [200])
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            if answer == "hang":
                rec.release.wait(30)
                return
            self.send_response(int(answer))
            self.end_headers()
            self.wfile.write(b"thanks")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.release.set()
    server.shutdown()


@pytest.fixture
def signing_api(stack: Stack) -> Iterator[str]:
    settings = ApiSettings(
        bucket=BUCKET,
        jobs_table=TABLE,
        aws_endpoint_url=stack.endpoint,
        aws_region="us-east-1",
        webhook_secret=SECRET,
        webhook_allow_http_loopback=True,
    )
    with serving_api(settings) as url:
        yield url


@pytest.fixture
def notifier(stack: Stack) -> Iterator[None]:
    settings = NotifierSettings(
        notify_queue_url=stack.notify_queue_url,
        jobs_table=TABLE,
        aws_endpoint_url=stack.endpoint,
        aws_region="us-east-1",
        webhook_secret=SECRET,
        webhook_allow_http_loopback=True,
        webhook_backoff_seconds=0.5,
        webhook_backoff_cap_seconds=1,
        webhook_timeout_seconds=2,
        webhook_max_attempts=4,
    )
    stop = threading.Event()
    thread = threading.Thread(target=serve_notifier, args=(settings, stop), kwargs={"wait_seconds": 1}, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def png(draw_scene: Callable[..., Any], seed: int) -> bytes:
    image, _ = draw_scene(seed, (256, 256))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def upload(ticket: dict[str, Any], data: bytes) -> None:
    response = httpx.post(
        ticket["upload"]["url"], data=ticket["upload"]["fields"], files={"file": ("x.png", data, "image/png")}
    )
    assert response.status_code in (200, 201, 204), response.text


def create_job(api: str, key: str, webhook: str) -> dict[str, Any]:
    response = httpx.post(
        f"{api}/v1/jobs",
        json={"filename": "scene.png", "content_type": "image/png", "webhook_url": webhook},
        headers={"x-api-key": key},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_signed_notice_reaches_the_receiver_and_a_flaky_one_gets_its_third_attempt(
    stack: Stack,
    signing_api: str,
    api_key: str,
    receiver: Receiver,
    notifier: None,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
) -> None:
    start_worker(notify_queue_url=stack.notify_queue_url)
    client = VisionqClient(signing_api, api_key)
    secret = httpx.get(f"{signing_api}/v1/webhooks/secret", headers={"x-api-key": api_key}).json()["secret"]
    receiver.script["/flaky"] = [500, 503, 200]

    good = create_job(signing_api, api_key, receiver.url + "/ok")
    flaky = create_job(signing_api, api_key, receiver.url + "/flaky")
    upload(good, png(draw_scene, 1))
    upload(flaky, png(draw_scene, 2))

    wait_until(lambda: len(receiver.on("/ok")) == 1 and len(receiver.on("/flaky")) == 3, timeout=WAIT, what="notices")
    (notice,) = receiver.on("/ok")
    assert verify(secret.encode(), notice.headers["visionq-signature"], notice.body)
    assert not verify(b"another key's secret", notice.headers["visionq-signature"], notice.body)
    event = json.loads(notice.body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == good["job_id"]
    assert event["data"]["result"]["detections"], "the notice carries the result"
    assert notice.headers["visionq-event-id"] == event["id"]

    # One event, three tries: the same id each time, so the receiver can de-duplicate.
    assert len({r.headers["visionq-event-id"] for r in receiver.on("/flaky")}) == 1
    wait_until(
        lambda: client.get_job(flaky["job_id"])["webhook"]["status"] == "delivered", timeout=WAIT, what="the record"
    )
    attempts = client.get_job(flaky["job_id"])["webhook"]["attempts"]
    assert [a["status_code"] for a in attempts] == [500, 503, 200]
    assert [a["ok"] for a in attempts] == [False, False, True]
    assert client.get_job(good["job_id"])["webhook"]["status"] == "delivered"


def test_a_receiver_that_never_answers_delays_no_result(
    stack: Stack,
    signing_api: str,
    api_key: str,
    receiver: Receiver,
    notifier: None,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
) -> None:
    start_worker(notify_queue_url=stack.notify_queue_url)
    client = VisionqClient(signing_api, api_key)
    receiver.script["/hang"] = ["hang"]
    stuck = create_job(signing_api, api_key, receiver.url + "/hang")
    upload(stuck, png(draw_scene, 3))
    wait_until(lambda: receiver.on("/hang"), timeout=WAIT, what="the first delivery")
    # The receiver holds the request; the job and every later job end regardless.
    assert client.get_job(stuck["job_id"])["status"] == "SUCCEEDED"
    later = [create_job(signing_api, api_key, receiver.url + "/ok") for _ in range(3)]
    for i, ticket in enumerate(later):
        upload(ticket, png(draw_scene, 10 + i))
    done = client.wait([t["job_id"] for t in later], timeout=WAIT)
    assert {job["status"] for job in done.values()} == {"SUCCEEDED"}
    wait_until(lambda: len(receiver.on("/ok")) == 3, timeout=WAIT, what="the other notices")
    wait_until(
        lambda: client.get_job(stuck["job_id"])["webhook"]["attempts"], timeout=WAIT, what="the timed-out attempt"
    )
    first = client.get_job(stuck["job_id"])["webhook"]["attempts"][0]
    assert first["ok"] is False and "timed out" in first["error"]


def test_a_batch_announces_its_completion_once(
    stack: Stack,
    signing_api: str,
    api_key: str,
    receiver: Receiver,
    notifier: None,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
) -> None:
    start_worker(notify_queue_url=stack.notify_queue_url)
    items = [{"filename": f"f{i}.png", "content_type": "image/png"} for i in range(4)]
    response = httpx.post(
        f"{signing_api}/v1/batches",
        json={"items": items, "name": "four", "webhook_url": receiver.url + "/batch"},
        headers={"x-api-key": api_key},
    )
    assert response.status_code == 201, response.text
    batch = response.json()
    for i, ticket in enumerate(batch["jobs"]):
        upload(ticket, png(draw_scene, 20 + i))
    wait_until(lambda: receiver.on("/batch"), timeout=WAIT, what="the batch notice")
    time.sleep(2)  # a second notice would come now, if any member's end sent one
    (notice,) = receiver.on("/batch")
    event = json.loads(notice.body)
    assert event["type"] == "batch.completed"
    assert event["data"]["batch_id"] == batch["batch_id"]
    assert event["data"]["counts"] == {"SUCCEEDED": 4}
    view = httpx.get(f"{signing_api}/v1/batches/{batch['batch_id']}", headers={"x-api-key": api_key}).json()
    assert view["status"] == "complete" and view["webhook"]["status"] == "delivered"


def test_objects_put_under_a_batch_prefix_join_it_and_complete_it(
    stack: Stack,
    signing_api: str,
    api_key: str,
    receiver: Receiver,
    notifier: None,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
) -> None:
    start_worker(notify_queue_url=stack.notify_queue_url)
    response = httpx.post(
        f"{signing_api}/v1/batches",
        json={"expected": 2, "webhook_url": receiver.url + "/joined"},
        headers={"x-api-key": api_key},
    )
    assert response.status_code == 201, response.text
    batch = response.json()
    for i in range(2):  # any S3 client, no API call: the key says which batch
        stack.s3.put_object(Bucket=BUCKET, Key=f"{batch['upload_prefix']}cam/{i}.png", Body=png(draw_scene, 40 + i))
    wait_until(lambda: receiver.on("/joined"), timeout=WAIT, what="the batch notice")
    event = json.loads(receiver.on("/joined")[0].body)
    assert event["data"]["counts"] == {"SUCCEEDED": 2}
    view = httpx.get(f"{signing_api}/v1/batches/{batch['batch_id']}", headers={"x-api-key": api_key}).json()
    assert (view["status"], view["total"], view["size"]) == ("complete", 2, 0)
    assert {job["key"].rsplit("/", 1)[1] for job in view["jobs"]} == {"0.png", "1.png"}


def test_a_notice_can_go_to_an_sns_topic_the_service_allows(
    stack: Stack, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    from visionq.aws import boto3_client
    from visionq.config import AwsSettings

    sns = boto3_client("sns", AwsSettings(aws_endpoint_url=stack.endpoint, aws_region="us-east-1"))
    topic = sns.create_topic(Name="visionq-notices")["TopicArn"]
    inbox = stack.sqs.create_queue(QueueName="notices-inbox")["QueueUrl"]
    inbox_arn = stack.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
    settings = {"aws_endpoint_url": stack.endpoint, "aws_region": "us-east-1", "webhook_secret": SECRET}
    api_settings = ApiSettings(bucket=BUCKET, jobs_table=TABLE, webhook_sns_topics=topic, **settings)
    notifier_settings = NotifierSettings(
        notify_queue_url=stack.notify_queue_url, jobs_table=TABLE, webhook_sns_topics=topic, **settings
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=serve_notifier, args=(notifier_settings, stop), kwargs={"wait_seconds": 1}, daemon=True
    )
    thread.start()
    start_worker(notify_queue_url=stack.notify_queue_url)
    try:
        with serving_api(api_settings) as api:
            refused = httpx.post(
                f"{api}/v1/jobs",
                json={"filename": "a.png", "content_type": "image/png", "webhook_url": topic + "-other"},
                headers={"x-api-key": api_key},
            )
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "webhook_topic_not_allowed"
            job = create_job(api, api_key, topic)
            upload(job, png(draw_scene, 50))
            secret = httpx.get(f"{api}/v1/webhooks/secret", headers={"x-api-key": api_key}).json()["secret"]
            messages: list[dict[str, Any]] = []
            wait_until(
                lambda: (
                    messages.extend(
                        stack.sqs.receive_message(QueueUrl=inbox, MessageAttributeNames=["All"], WaitTimeSeconds=1).get(
                            "Messages", []
                        )
                    )
                    or messages
                ),
                timeout=WAIT,
                what="the SNS message",
            )
            (message,) = messages
            event = json.loads(message["Body"])
            assert (event["type"], event["data"]["job_id"]) == ("job.succeeded", job["job_id"])
            signature = message["MessageAttributes"]["visionq-signature"]["StringValue"]
            assert verify(secret.encode(), signature, message["Body"].encode())
            wait_until(
                lambda: (
                    httpx.get(f"{api}/v1/jobs/{job['job_id']}", headers={"x-api-key": api_key}).json()["webhook"][
                        "status"
                    ]
                    == "delivered"
                ),
                timeout=WAIT,
                what="the delivery record",
            )
    finally:
        stop.set()
        thread.join(30)
