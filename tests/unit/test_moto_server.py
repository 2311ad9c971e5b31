"""The local stack's moto server: receiving stays correct, and no longer builds every queue
attribute (three whole-queue counts) for each message it hands out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from visionq.moto_server import speed_up_dispatch, speed_up_sqs_receive


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    # Restored after the test: the fix is applied to moto's class, as the server process does.
    monkeypatch.setattr(
        SQSBackend,
        "is_message_valid_based_on_retention_period",
        SQSBackend.is_message_valid_based_on_retention_period,
    )
    built = {"attributes": 0}
    attributes = Queue.attributes

    def counted(self: Queue) -> Any:
        built["attributes"] += 1
        return attributes.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(Queue, "attributes", property(counted))
    assert speed_up_sqs_receive() is True
    with mock_aws():
        yield built


def _queue(retention: int = 60) -> tuple[Any, str]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": str(retention)})["QueueUrl"]
    return sqs, url


def test_receiving_a_backlog_builds_no_queue_attributes(patched: dict[str, int]) -> None:
    sqs, url = _queue()
    for i in range(0, 50, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": str(i + j)} for j in range(10)])
    patched["attributes"] = 0
    bodies = []
    for _ in range(5):
        bodies += [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert sorted(bodies, key=int) == [str(i) for i in range(50)]
    assert patched["attributes"] == 0  # unpatched moto: 150, three per message received


def test_a_message_past_the_retention_period_is_not_handed_out(patched: dict[str, int]) -> None:
    sqs, url = _queue(retention=60)
    sqs.send_message(QueueUrl=url, MessageBody="old")
    queue: Any = sqs_backends["123456789012"]["us-east-1"].get_queue("q")
    (message,) = queue.messages
    message.sent_timestamp -= 61_000  # sent 61 s earlier, with 60 s retention: expired
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    sqs.send_message(QueueUrl=url, MessageBody="new")  # the old one is in flight now, as with moto's own check
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == ["new"]


def test_the_cached_dispatch_answers_as_moto_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    monkeypatch.setattr(
        DomainDispatcherApplication, "get_backend_for_host", DomainDispatcherApplication.get_backend_for_host
    )
    monkeypatch.setattr(backends, "list_of_moto_modules", backends.list_of_moto_modules)
    hosts = [None, "moto_api", "s3", "s3.us-east-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com"]
    hosts += ["dynamodb.us-east-1.amazonaws.com", "bucket.s3.amazonaws.com", "nothing.example"]
    app = DomainDispatcherApplication(lambda service: None)  # type: ignore[arg-type,return-value]
    expected = [app.get_backend_for_host(host) for host in hosts]
    assert expected[3:6] == ["s3", "sqs", "dynamodb"]
    assert speed_up_dispatch() is True
    assert [app.get_backend_for_host(host) for host in hosts] == expected
    assert [app.get_backend_for_host(host) for host in hosts] == expected  # and again, from the cache
