"""The notifier's bookkeeping when things fail in between (DynamoDB and SQS in moto's in-process
mock, deliveries faked): a lost race is not an error, a notice that came back queues its successor
once, a duplicate starts no second chain, a batch claim left without a delivery is picked up again,
and the Lambda driver reports what it could not finish instead of timing out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from functions.notifier import _handle_all
from infra.bootstrap import ensure_jobs_table
from visionq.batches import BATCH_ITEM_PREFIX
from visionq.config import NotifierSettings
from visionq.jobs import Job, JobError, JobStatus, ObjectVersion
from visionq.notifications import Notifier, notice
from visionq.stores.job_store import DynamoJobStore
from visionq.webhooks import DeliveryAttempt

URL = "https://hooks.example.com/visionq"


class Deliveries:
    def __init__(self, *outcomes: bool) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []

    def __call__(self, url: str, body: bytes, headers: Any, **_: Any) -> DeliveryAttempt:
        self.calls.append(json.loads(body)["id"])
        ok = self.outcomes.pop(0) if self.outcomes else True
        return DeliveryAttempt(
            at="t", status_code=200 if ok else 500, error=None if ok else "HTTP 500", duration_ms=1, ok=ok
        )


class FlakySqs:
    """The real (mocked) client, whose send_message fails the next ``failures`` times."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.failures = 0
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="http://sqs")
        self.sent.append(json.loads(kwargs["MessageBody"]))
        return self.client.send_message(**kwargs)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FlakySqs, NotifierSettings]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        ensure_jobs_table(dynamodb, "jobs")
        url = sqs.create_queue(QueueName="notices")["QueueUrl"]
        settings = NotifierSettings(
            notify_queue_url=url, jobs_table="jobs", aws_region="us-east-1", webhook_secret="s", webhook_max_attempts=4
        )
        yield dynamodb, FlakySqs(sqs), settings


def ended_job(dynamodb: Any, job_id: str, *, webhook: str | None = URL, batch_id: str | None = None) -> None:
    jobs = DynamoJobStore(dynamodb, "jobs")
    jobs.create(
        Job(
            job_id=job_id,
            status=JobStatus.PENDING,
            bucket="b",
            key=f"uploads/{job_id}/a.jpg",
            created_at="2026-01-01T00:00:00.000Z",
            updated_at="2026-01-01T00:00:00.000Z",
            expires_at=0,
            owner="key1",
            webhook_url=webhook,
            batch_id=batch_id,
            notify=True,
        )
    )
    jobs.claim(job_id, ObjectVersion("b", f"uploads/{job_id}/a.jpg", "e"), model="default", expires_at=0)
    jobs.mark_failed(job_id, JobError("invalid_image", "no"))


def record(dynamodb: Any, key: str) -> dict[str, Any]:
    item = dynamodb.get_item(TableName="jobs", Key={"job_id": {"S": key}})["Item"]
    return dict(json.loads(item["webhook"]["S"])) if "webhook" in item else {}


def test_a_notice_that_came_back_after_its_attempt_queues_the_successor_once(
    aws: tuple[Any, FlakySqs, NotifierSettings],
) -> None:
    dynamodb, sqs, settings = aws
    ended_job(dynamodb, "a" * 32)
    deliveries = Deliveries(False)
    notifier = Notifier(settings=settings, dynamodb=dynamodb, sqs=sqs, deliver_fn=deliveries)
    sqs.failures = 1  # the attempt is recorded, then queueing its retry fails: the message comes back
    with pytest.raises(Exception, match="queue a webhook retry"):
        notifier.handle(notice("job", "a" * 32))
    assert len(record(dynamodb, "a" * 32)["attempts"]) == 1 and sqs.sent == []
    notifier.handle(notice("job", "a" * 32), receives=1)  # a duplicate announcement: nothing
    assert sqs.sent == [] and len(deliveries.calls) == 1
    notifier.handle(notice("job", "a" * 32), receives=2)  # the same message, back: its successor
    assert sqs.sent == [{"kind": "job", "id": "a" * 32, "attempt": 2}]
    notifier.handle(notice("job", "a" * 32, 2))
    assert record(dynamodb, "a" * 32)["status"] == "delivered" and len(deliveries.calls) == 2


def test_a_lost_race_to_record_is_not_an_error(aws: tuple[Any, FlakySqs, NotifierSettings]) -> None:
    dynamodb, sqs, settings = aws
    ended_job(dynamodb, "b" * 32)
    first = Notifier(settings=settings, dynamodb=dynamodb, sqs=sqs, deliver_fn=Deliveries(True))
    assert first._record("b" * 32, {"status": "pending", "attempts": []}, recorded=None)
    assert not first._record("b" * 32, {"status": "pending", "attempts": []}, recorded=None)


def test_a_batch_claim_left_without_a_delivery_is_picked_up_by_a_returning_notice(
    aws: tuple[Any, FlakySqs, NotifierSettings],
) -> None:
    dynamodb, sqs, settings = aws
    batch_id = "c" * 32
    dynamodb.put_item(
        TableName="jobs",
        Item={
            "job_id": {"S": BATCH_ITEM_PREFIX + batch_id},
            "item_kind": {"S": "batch"},
            "owner": {"S": "key1"},
            "model": {"S": "default"},
            "size": {"N": "1"},
            "created_at": {"S": "2026-01-01T00:00:00.000Z"},
            "webhook_url": {"S": URL},
        },
    )
    ended_job(dynamodb, "d" * 32, webhook=None, batch_id=batch_id)
    deliveries = Deliveries()
    notifier = Notifier(settings=settings, dynamodb=dynamodb, sqs=sqs, deliver_fn=deliveries)
    # The claim was written by a notifier that then died before delivering.
    assert notifier._record(BATCH_ITEM_PREFIX + batch_id, {"status": "pending", "attempts": []}, recorded=None)
    notifier.handle(notice("job", "d" * 32), receives=1)  # a first delivery of a member's notice: claimed, leave it
    assert deliveries.calls == []
    notifier.handle(notice("job", "d" * 32), receives=2)  # the claimer's own notice, back
    assert len(deliveries.calls) == 1
    assert record(dynamodb, BATCH_ITEM_PREFIX + batch_id)["status"] == "delivered"


class Context:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


class SlowNotifier:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    def handle(self, body: str, *, receives: int = 1) -> None:
        import time

        if body == "slow":
            time.sleep(3)
        if body == "bad":
            raise RuntimeError("boom")


def test_the_lambda_driver_reports_what_it_could_not_finish(aws: tuple[Any, FlakySqs, NotifierSettings]) -> None:
    _, _, settings = aws
    settings = settings.model_copy(update={"webhook_timeout_seconds": 0.1})
    records = [
        {"messageId": name, "body": name, "attributes": {"ApproximateReceiveCount": "1"}}
        for name in ("fast", "slow", "bad", "fast2")
    ]
    failures = _handle_all(SlowNotifier(settings), records, Context(1.5))  # type: ignore[arg-type]
    assert sorted(f["itemIdentifier"] for f in failures) == ["bad", "slow"]
