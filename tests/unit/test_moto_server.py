"""The local stack's moto server: receiving stays correct, and no longer builds every queue
attribute (three whole-queue counts) for each message it hands out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Queue, SQSBackend, sqs_backends

from tests.unit.test_moto_dynamodb import _client_with_table
from visionq.moto_server import (
    COUNTS,
    speed_up_action_lookup,
    speed_up_dispatch,
    speed_up_sqs_attributes,
    speed_up_sqs_receive,
    speed_up_sqs_visibility,
)


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


def test_each_handlers_methods_are_listed_once_and_as_moto_lists_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core import responses, utils
    from moto.dynamodb.responses import DynamoHandler
    from moto.sqs.responses import SQSResponse

    listed: list[object] = []

    def counted(clazz: object) -> list[str]:
        listed.append(clazz)
        return utils.method_names_from_class(clazz)

    monkeypatch.setattr(responses, "method_names_from_class", counted)
    assert speed_up_action_lookup() is True
    lookup = responses.method_names_from_class  # type: ignore[attr-defined]
    for _ in range(3):
        assert lookup(DynamoHandler) == utils.method_names_from_class(DynamoHandler)
        assert lookup(SQSResponse) == utils.method_names_from_class(SQSResponse)
    assert "update_item" in lookup(DynamoHandler)
    assert listed == [DynamoHandler, SQSResponse]

    with mock_aws():  # moto's handlers answer through it
        client = _client_with_table()
        client.put_item(TableName="t", Item={"pk": {"S": "a"}})
        assert client.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"] == {"pk": {"S": "a"}}
    assert listed == [DynamoHandler, SQSResponse]


# --- sends and attribute reads that walked the whole queue ---------------------------------------


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts the messages moto looks at (each ``visible`` / ``delayed`` check), with the sends'
    and the attribute reads' fix applied (restored after the test)."""
    from moto.sqs.models import Message

    for name in (*COUNTS, "attributes"):
        monkeypatch.setattr(Queue, name, Queue.__dict__[name])
    for name in ("send_message", "send_message_batch", "get_queue_attributes"):
        monkeypatch.setattr(SQSBackend, name, getattr(SQSBackend, name))
    seen = {"messages": 0}
    for name in ("visible", "delayed"):
        check = Message.__dict__[name].fget

        def counted(self: Any, check: Any = check) -> bool:
            seen["messages"] += 1
            return bool(check(self))

        monkeypatch.setattr(Message, name, property(counted))
    assert speed_up_sqs_attributes() is True
    with mock_aws():
        yield seen


def test_sending_to_a_deep_queue_looks_at_none_of_its_messages(walks: dict[str, int]) -> None:
    sqs, url = _queue()
    for i in range(0, 50, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": str(i + j)} for j in range(10)])
    walks["messages"] = 0
    sqs.send_message(QueueUrl=url, MessageBody="one more")
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": "y"}])
    assert walks["messages"] == 0  # unpatched moto: 612 (three counts of the queue per send)


def test_an_object_event_into_a_deep_queue_looks_at_none_of_its_messages(walks: dict[str, int]) -> None:
    """What the local stack does for each upload: S3's notification sends a message to the queue."""
    sqs, url = _queue()
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="bucket")
    s3.put_bucket_notification_configuration(
        Bucket="bucket",
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    for i in range(30):
        s3.put_object(Bucket="bucket", Key=f"k{i}", Body=b"x")
    walks["messages"] = 0
    s3.put_object(Bucket="bucket", Key="last", Body=b"x")
    assert walks["messages"] == 0  # unpatched moto: 124 (three counts of the 31 queued)
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert counts == {"ApproximateNumberOfMessages": "32"}  # 31 objects and S3's test event


def test_the_counts_stay_right_and_each_is_taken_once_per_read(walks: dict[str, int]) -> None:
    sqs, url = _queue()
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=str(i))
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)
    walks["messages"] = 0
    names = [f"ApproximateNumberOfMessages{kind}" for kind in ("", "NotVisible", "Delayed")]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    assert attributes == dict(zip(names, ["3", "2", "1"], strict=True))
    # One build of the queue's attributes: three walks of its 6 messages (visible and delayed
    # checks). Unpatched moto builds them 1 + 2 x 3 times for three names: 198 checks here.
    assert walks["messages"] <= 3 * 6 * 2
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["DelaySeconds"] == "0"


def test_content_based_deduplication_still_deduplicates(walks: dict[str, int]) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="q.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"})[
        "QueueUrl"
    ]
    for _ in range(2):
        sqs.send_message(QueueUrl=url, MessageBody="same", MessageGroupId="g")
    sqs.send_message(QueueUrl=url, MessageBody="other", MessageGroupId="g")
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
    assert bodies == ["same", "other"]


# --- receives that read the clock once ------------------------------------------------------------


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts the per-message clock checks (``visible`` / ``delayed``) with the receive's fix applied
    (restored after the test)."""
    from moto.sqs.models import Message

    monkeypatch.setattr(Queue, "messages", Queue.__dict__["messages"])
    monkeypatch.setattr(
        SQSBackend,
        "is_message_valid_based_on_retention_period",
        SQSBackend.is_message_valid_based_on_retention_period,
    )
    assert speed_up_sqs_receive() is True  # as the server applies them: the retention check too
    assert speed_up_sqs_visibility() is True
    seen = {"messages": 0}
    for name in ("visible", "delayed"):
        check = Message.__dict__[name].fget

        def counted(self: Any, check: Any = check) -> bool:
            seen["messages"] += 1
            return bool(check(self))

        monkeypatch.setattr(Message, name, property(counted))
    with mock_aws():
        yield seen


def test_receiving_from_a_deep_queue_checks_only_the_messages_it_hands_out(checks: dict[str, int]) -> None:
    sqs, url = _queue()
    for i in range(0, 200, 10):
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(j), "MessageBody": str(i + j)} for j in range(10)])
    checks["messages"] = 0
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == [str(i) for i in range(10)]
    assert checks["messages"] <= 10  # unpatched moto: 410 (two checks of each of the 200, and 10 more)


def _bodies(messages: list[dict[str, Any]]) -> list[str]:
    return sorted(m["Body"] for m in messages)


def _what_receives_see() -> list[list[str]]:
    """Receives across a delay, messages in flight, and visibility timeouts that end or are changed."""
    sqs, url = _queue()
    queue: Any = sqs_backends["123456789012"]["us-east-1"].get_queue("q")

    def receive(**extra: Any) -> list[dict[str, Any]]:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60, **extra)
        return list(answer.get("Messages", []))

    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"now{i}")
    sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=60)
    first = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2, VisibilityTimeout=60)["Messages"]
    seen = [_bodies(first), _bodies(receive())]  # then the third only: two in flight, one delayed
    for message in queue._messages:  # as if 61 s had passed for the first two and the delay
        if message.body in _bodies(first) or message.body == "delayed":
            message.visible_at -= 61_000
            message.delayed_until -= 61_000
    third = receive()
    seen += [_bodies(third), _bodies(receive())]  # then none: all in flight
    for message in third:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    seen.append(_bodies(receive()))
    return seen


def test_receives_hand_out_what_moto_hands_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Queue, "messages", Queue.__dict__["messages"])  # restored after the test
    with mock_aws():
        stock = _what_receives_see()
    assert speed_up_sqs_visibility() is True
    with mock_aws():
        patched = _what_receives_see()
    assert stock == [["now0", "now1"], ["now2"], ["delayed", "now0", "now1"], [], ["delayed", "now0", "now1"]]
    assert patched == stock
