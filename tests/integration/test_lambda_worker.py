"""The Lambda driver (functions/sqs_worker.py) invoked as AWS invokes it, with SQS events shaped
after AWS's documented sample, carrying the S3 notifications the real (moto) bucket sent, against
the real stores: only the messages that must come back are reported, and invoking again with the
same event changes nothing."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest
from PIL.PngImagePlugin import PngInfo

from functions.sqs_worker import LambdaWorker
from tests.conftest import BUCKET, TABLE, Stack
from tests.integration.fault_harness import jpeg, png
from tests.unit.fakes import no_shared_memory
from visionq.errors import TransientError
from visionq.events import ObjectCreated
from visionq.faults import Failpoints
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration

POISON = "visionq-poison-for-the-decoder"  # a decode process given an object holding it aborts


class FakeContext:
    """What the handler uses of Lambda's context object."""

    def __init__(self, millis: int = 60_000) -> None:
        self.millis = millis

    def get_remaining_time_in_millis(self) -> int:
        return self.millis


class FlakyReader:
    """The real S3 reader, but S3 is 'unavailable' for keys containing ``flaky``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes:
        if "flaky" in obj.key:
            raise TransientError("read s3: AWS is unavailable or throttling (SlowDown)")
        data: bytes = await self.inner.read(obj, max_bytes=max_bytes)
        return data


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record as the SQS event source mapping delivers it (AWS's documented sample shape)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": message["Attributes"]["ApproximateReceiveCount"],
            "SentTimestamp": message["Attributes"].get("SentTimestamp", "1545082649183"),
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }


@pytest.fixture
def lambda_worker(stack: Stack, shapes_detector: Any) -> Iterator[LambdaWorker]:
    worker = LambdaWorker(stack.worker_settings(max_attempts=5), model=shapes_detector)
    worker.processor.objects = FlakyReader(worker.processor.objects)
    yield worker
    worker.close()


def test_only_the_messages_that_must_come_back_are_reported(
    stack: Stack, lambda_worker: LambdaWorker, draw_scene: Callable[..., Any]
) -> None:
    image, truth = draw_scene(50_001, (320, 240))
    whole = jpeg(image)
    objects = {
        "uploads/lambda/good.png": png(image),
        "uploads/lambda/truncated.jpg": whole[: len(whole) // 2],
        "uploads/lambda/flaky.png": png(image),
    }
    by_key = _upload_all_and_receive(stack, objects)
    malformed = {**by_key["uploads/lambda/good.png"], "MessageId": "not-an-s3-event", "Body": "{this is not json"}
    event = _event(stack, [*by_key.values(), malformed])

    response = lambda_worker.handle(event, FakeContext())

    assert response == {"batchItemFailures": [{"itemIdentifier": by_key["uploads/lambda/flaky.png"]["MessageId"]}]}
    jobs = _jobs_by_key(stack)
    assert jobs["uploads/lambda/good.png"]["status"] == "SUCCEEDED"
    assert json.loads(jobs["uploads/lambda/good.png"]["result"])["detection_count"] == len(truth)
    assert (jobs["uploads/lambda/truncated.jpg"]["status"], jobs["uploads/lambda/truncated.jpg"]["error_code"]) == (
        "FAILED",
        "undecodable_image",
    )
    assert jobs["uploads/lambda/flaky.png"]["status"] == "RUNNING"  # it comes back and runs again
    rows_before = stack.sql("SELECT id, key, output FROM results ORDER BY id")
    assert [r[1] for r in rows_before] == ["uploads/lambda/good.png"]

    # Lambda may deliver the same batch again (a retry of the invocation): nothing changes.
    again = lambda_worker.handle(event, FakeContext())

    assert again == response
    after = _jobs_by_key(stack)
    for key in ("uploads/lambda/good.png", "uploads/lambda/truncated.jpg"):
        assert after[key] == jobs[key], key
    assert stack.sql("SELECT id, key, output FROM results ORDER BY id") == rows_before
    assert stack.sql("SELECT count(*) FROM detections") == [(len(truth),)]


def test_work_not_finished_before_the_invocation_ends_is_given_back(
    stack: Stack, lambda_worker: LambdaWorker, draw_scene: Callable[..., Any]
) -> None:
    message, event = _upload_and_receive(stack, "uploads/lambda/late.png", png(draw_scene(50_002)[0]))
    # Less time left than the safety margin: nothing may start that could outlive the invocation.
    response = lambda_worker.handle(event, FakeContext(millis=5_000))
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    assert stack.sql("SELECT count(*) FROM results") == [(0,)]


class HangingResults:
    """The real result store, whose writes hang (a database that stopped answering) until released."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.release = threading.Event()

    def record_results(self, records: Any) -> Any:
        self.release.wait(60)
        return self.inner.record_results(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_an_invocation_answers_in_time_while_a_result_write_hangs_and_its_message_comes_back(
    stack: Stack, lambda_worker: LambdaWorker, draw_scene: Callable[..., Any]
) -> None:
    """The store's timeout (30 s) is past the invocation's end: Lambda would kill the runtime and
    every message of the event would come back. The handler answers before, naming the message."""
    message, event = _upload_and_receive(stack, "uploads/lambda/hung.png", png(draw_scene(50_003)[0]))
    results = HangingResults(lambda_worker.processor.results)
    lambda_worker.processor.results = results
    started = time.monotonic()
    try:
        response = lambda_worker.handle(event, FakeContext(millis=14_000))  # the deadline: 4 s from now
        elapsed = time.monotonic() - started
    finally:
        results.release.set()
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    assert elapsed < 14, f"answered after {elapsed:.1f} s, past the invocation's end"
    # The redelivery, in the same warm container, runs the job (nothing of the first try holds it).
    wait_until(lambda: stack.sql("SELECT count(*) FROM results") == [(1,)], timeout=30, what="the late write")
    assert lambda_worker.handle(event, FakeContext()) == {"batchItemFailures": []}
    assert _jobs_by_key(stack)["uploads/lambda/hung.png"]["status"] == "SUCCEEDED"
    assert stack.sql("SELECT count(*) FROM results") == [(1,)]


def test_an_image_that_crashes_the_decoder_fails_alone_and_the_runtime_lives(
    stack: Stack, shapes_detector: Any, draw_scene: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Lambda (no /dev/shm) decoding runs in processes of its own too: an image that crashes the
    decoder ends its job FAILED decoder_crashed, its batch-mates succeed, and the invocation answers
    with nothing to retry. Decoded in the runtime's own process, the crash would kill the runtime,
    and every record of the event would come back with one more receive, towards the dead-letter
    queue, again at each delivery."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "visionq-worker")
    monkeypatch.setenv("VISIONQ_CRASH_DECODER_ON", POISON)
    no_shared_memory(monkeypatch)
    objects = {f"uploads/lambda/{i}.png": png(draw_scene(50_010 + i, (320, 240))[0]) for i in range(3)}
    poisoned = PngInfo()
    poisoned.add_text("Comment", POISON)
    objects["uploads/lambda/1.png"] = png(draw_scene(50_011, (320, 240))[0], pnginfo=poisoned)
    event = _event(stack, list(_upload_all_and_receive(stack, objects).values()))
    worker = LambdaWorker(stack.worker_settings(max_attempts=5), model=shapes_detector)
    try:
        response = worker.handle(event, FakeContext())
        again = worker.handle(event, FakeContext())  # a redelivery, in the same warm container
    finally:
        worker.close()

    assert response == again == {"batchItemFailures": []}
    jobs = _jobs_by_key(stack)
    poison = jobs["uploads/lambda/1.png"]
    assert (poison["status"], poison["error_code"]) == ("FAILED", "decoder_crashed")
    assert [jobs[f"uploads/lambda/{i}.png"]["status"] for i in (0, 2)] == ["SUCCEEDED", "SUCCEEDED"]
    assert stack.sql("SELECT key FROM results ORDER BY key") == [("uploads/lambda/0.png",), ("uploads/lambda/2.png",)]


def _upload_and_receive(stack: Stack, key: str, data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload one object; its S3 notification as SQS hands it out, and as the one record of an event."""
    message = _upload_all_and_receive(stack, {key: data})[key]
    return message, _event(stack, [message])


def _upload_all_and_receive(stack: Stack, objects: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Upload the objects; their S3 notifications as SQS hands them out, by key."""
    for key, data in objects.items():
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=io.BytesIO(data))
    received: list[dict[str, Any]] = []
    while len(received) < len(objects):
        batch = stack.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2, MessageSystemAttributeNames=["All"]
        )
        received.extend(batch.get("Messages", []))
    return {unquote_plus(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"]): m for m in received}


def _event(stack: Stack, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The messages as the records of one event, as the event source mapping hands them over."""
    arn = stack.sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return {"Records": [sqs_record(m, arn) for m in messages]}


def _jobs_by_key(stack: Stack) -> dict[str, dict[str, Any]]:
    jobs = {}
    for item in stack.dynamodb.scan(TableName=TABLE)["Items"]:
        if "object_key" in item:
            jobs[item["object_key"]["S"]] = {k: next(iter(v.values())) for k, v in item.items()}
    return jobs


def test_the_scheduled_sweeper_fails_the_jobs_of_parked_messages_and_leaves_them_parked(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Lambda flavour's dead-letter sweeper (functions/dlq_sweeper.py): a message SQS parked
    after maxReceiveCount deliveries ends its job FAILED poison_message; the message stays for
    `visionq dlq`, and a second sweep changes nothing."""
    from functions import dlq_sweeper
    from visionq.events import object_created_record
    from visionq.jobs import direct_upload_job_id, ttl_from_now
    from visionq.stores.job_store import DynamoJobStore

    obj = ObjectCreated(bucket=BUCKET, key="uploads/poison/crash.jpg", etag="0123abcd", size=10)
    job_id = direct_upload_job_id(obj.bucket, obj.key, obj.etag)
    jobs = DynamoJobStore(stack.dynamodb, TABLE)
    jobs.claim(job_id, obj.ref, model="default", expires_at=ttl_from_now(1))  # its worker died holding it
    body = json.dumps({"Records": [object_created_record(obj, source="aws:s3")]})
    stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=body)
    for name, value in {
        "VISIONQ_QUEUE_URL": stack.queue_url,
        "VISIONQ_DLQ_URL": stack.dlq_url,
        "VISIONQ_JOBS_TABLE": TABLE,
        "AWS_ENDPOINT_URL": stack.endpoint,
    }.items():
        monkeypatch.setenv(name, value)

    assert dlq_sweeper.handler({"source": "aws.events"}, FakeContext()) == {"failed": 1}
    job = jobs.get(job_id)
    assert (str(job.status), job.error.code if job.error else None) == ("FAILED", "poison_message")
    assert dlq_sweeper.handler({"source": "aws.events"}, FakeContext()) == {"failed": 0}
    parked = stack.sqs.get_queue_attributes(
        QueueUrl=stack.dlq_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert int(parked["ApproximateNumberOfMessages"]) + int(parked["ApproximateNumberOfMessagesNotVisible"]) == 1


def test_an_event_without_records_is_answered_empty(lambda_worker: LambdaWorker) -> None:
    assert lambda_worker.handle({"Records": []}, FakeContext()) == {"batchItemFailures": []}


def test_the_deadline_stays_clear_of_the_answer_whatever_margin_is_set(
    stack: Stack, shapes_detector: Any, draw_scene: Callable[..., Any]
) -> None:
    """VISIONQ_LAMBDA_MARGIN_SECONDS=0 would put the deadline at the invocation's end, past the
    second kept for answering: the margin is at least two answer seconds, so with 1.5 s left
    nothing starts and the message comes back."""
    worker = LambdaWorker(stack.worker_settings(lambda_margin_seconds=0), model=shapes_detector)
    try:
        message, event = _upload_and_receive(stack, "uploads/lambda/floor.png", png(draw_scene(50_004)[0]))
        response = worker.handle(event, FakeContext(millis=1_500))
    finally:
        worker.close()
    assert response == {"batchItemFailures": [{"itemIdentifier": message["MessageId"]}]}
    assert stack.sql("SELECT count(*) FROM results") == [(0,)]


class WriteStageBug(Failpoints):
    """A bug in the write stage itself (outside the store call's error handling): the stage dies."""

    def hit(self, point: str) -> None:
        if point == "after_inference":
            raise RuntimeError("a bug in the write stage")


def test_a_stage_that_dies_fails_the_invocation_and_leaves_no_message_running(
    stack: Stack, lambda_worker: LambdaWorker, draw_scene: Callable[..., Any]
) -> None:
    """The stages run beside the messages' work: a stage's fault ends the invocation (every message
    comes back; the handler rebuilds the container's worker), and no message's work is left
    pending on the container's loop, waiting for a stage that is gone."""
    _, event = _upload_and_receive(stack, "uploads/lambda/stage.png", png(draw_scene(50_005)[0]))
    lambda_worker.processor.failpoints = WriteStageBug()
    with pytest.raises(BaseExceptionGroup) as raised:
        lambda_worker.handle(event, FakeContext())
    assert raised.group_contains(RuntimeError, match="a bug in the write stage")
    assert [task for task in asyncio.all_tasks(lambda_worker.loop) if not task.done()] == []
    assert stack.sql("SELECT count(*) FROM results") == [(0,)]
