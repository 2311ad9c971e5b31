"""The worker's SQS client (SqsWire): the queue's operations over it against the emulator over
HTTP, as ``SqsQueue`` uses them; its requests verify as SigV4 with the secret key; SQS's failure
answers, slow answers and closed connections (from a stand-in server on loopback) are retried or
raised as aiobotocore's; a long poll given up on does not spoil the next call.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from tests.integration.test_dynamodb_wire import KEY_ID, SECRET, sigv4_verifies, stand_in
from tests.tls import server_context
from visionq.errors import ConfigError, TransientError, VisionqError
from visionq.stores.aws_errors import aws_errors
from visionq.stores.queue import SqsQueue
from visionq.stores.sqs_wire import ATTEMPTS, SqsWire

T = TypeVar("T")


@asynccontextmanager
async def wire_at(
    endpoint: str, *, counts: dict[str, int] | None = None, read_timeout: float = 30.0
) -> AsyncIterator[SqsWire]:
    """A wire made as the worker makes it: from an aiobotocore client's endpoint and credentials."""
    async with (
        get_session().create_client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        ) as client,
        SqsWire.of(client, read_timeout=read_timeout, counts=counts) as wire,
    ):
        yield wire


def on_wire(endpoint: str, use: Callable[[SqsWire], Awaitable[T]], **kwargs: Any) -> T:
    async def go() -> T:
        async with wire_at(endpoint, **kwargs) as wire:
            return await use(wire)

    return asyncio.run(go())


def ok(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(body).encode()


def error(status: int, kind: str, query_code: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-amzn-query-error": f"{query_code};Sender"} if query_code else {}
    return status, headers, json.dumps({"__type": f"com.amazonaws.sqs#{kind}", "message": "no"}).encode()


RECEIVE = {"QueueUrl": "http://q/1/jobs", "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0}


# --- against the emulator ----------------------------------------------------------------------


def test_the_queue_over_the_wire(stack: Any) -> None:
    """Send, receive (with the receive count and the time sent), give back, delete: each as the
    SDK does it, and a refused entry of a batch is reported, not raised."""
    endpoint = stack.sqs.meta.endpoint_url
    counts: dict[str, int] = {}

    async def go(wire: SqsWire) -> None:
        queue = SqsQueue(wire, stack.queue_url)
        for n in range(3):
            await queue.send(json.dumps({"n": n}))
        first = await queue.receive(max_messages=10, wait_seconds=1, visibility_timeout=30)
        assert sorted(json.loads(m.body)["n"] for m in first) == [0, 1, 2]
        assert {m.receive_count for m in first} == {1}
        assert all(m.sent_at is not None and abs(m.sent_at - time.time()) < 60 for m in first)
        assert await queue.release(first[:1]) == []  # visible again at once
        again = await queue.receive(max_messages=10, wait_seconds=1, visibility_timeout=30)
        assert [m.message_id for m in again] == [first[0].message_id]
        assert again[0].receive_count == 2
        assert await queue.delete([*first[1:], *again]) == []
        assert await queue.receive(max_messages=10, wait_seconds=0, visibility_timeout=30) == []
        stale = first[0]  # its receipt handle was replaced by the second delivery's, then deleted
        bogus = type(stale)(stale.message_id, "not-a-receipt-handle", stale.body, 1)
        [refused] = await queue.release([bogus], delay_seconds=5)
        assert refused.message is bogus and refused.code

    on_wire(endpoint, go, counts=counts)
    assert counts == {
        "sqs.SendMessage": 3,
        "sqs.ReceiveMessage": 3,
        "sqs.ChangeMessageVisibilityBatch": 2,
        "sqs.DeleteMessageBatch": 1,
    }


def test_a_queue_that_does_not_exist_is_a_configuration_error(stack: Any) -> None:
    endpoint = stack.sqs.meta.endpoint_url
    missing = stack.queue_url.rsplit("/", 1)[0] + "/no-such-queue"

    async def go(wire: SqsWire) -> None:
        await SqsQueue(wire, missing).receive(max_messages=1, wait_seconds=0, visibility_timeout=30)

    with pytest.raises(ConfigError, match="does not exist"):
        on_wire(endpoint, go)


# --- against a stand-in ------------------------------------------------------------------------


def receive(wire: SqsWire) -> Awaitable[dict[str, Any]]:
    return wire.receive_message(**RECEIVE)


def test_a_request_is_the_call_as_json_signed_with_sigv4() -> None:
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": "{}", "Attributes": {"ApproximateReceiveCount": "1"}}
    with stand_in(lambda n: ok({"Messages": [message]})) as (endpoint, received):
        answer = on_wire(endpoint, receive)
    assert answer["Messages"] == [message]
    [request] = received
    assert request["headers"]["X-Amz-Target"] == "AmazonSQS.ReceiveMessage"
    assert request["headers"]["Content-Type"] == "application/x-amz-json-1.0"
    assert request["path"] == "/"
    assert request["headers"]["x-amzn-query-mode"] == "true"  # as botocore asks for SQS's error codes
    assert json.loads(request["body"]) == RECEIVE
    assert sigv4_verifies(request, SECRET, service="sqs")
    assert not sigv4_verifies(request, SECRET, service="dynamodb")  # the check itself can fail


def test_throttling_and_server_errors_are_tried_again() -> None:
    answers = {1: error(400, "RequestThrottled", "RequestThrottled"), 2: error(500, "InternalError")}
    with stand_in(lambda n: answers.get(n, ok({}))) as (endpoint, received):
        assert on_wire(endpoint, receive)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert len(received) == 3 == ATTEMPTS
    assert all(sigv4_verifies(r, SECRET, service="sqs") for r in received)


@pytest.mark.parametrize(
    "failure",
    [
        (500, {}, b"{}"),
        error(400, "ThrottlingException", "RequestThrottled"),
        error(400, "TooManyRequestsException"),
        error(400, "RequestTimeout"),
        (501, {}, b"{}"),
        error(400, "InternalError"),
        error(400, "InvalidParameterValue", "InvalidParameterValue"),
    ],
    ids=["500", "throttled", "too-many", "request-timeout", "501", "400-internal", "invalid"],
)
def test_a_failure_is_tried_as_often_as_the_sdk_tries_it(failure: tuple[int, dict[str, str], bytes]) -> None:
    """The same answer from SQS, every time, to the worker's SDK client (as ``aws`` configures it)
    and to the wire: as many requests, and the same error code in the end."""
    from visionq.aws import aio_client_kwargs
    from visionq.config import AwsSettings

    async def through_the_sdk(endpoint: str) -> str:
        settings = AwsSettings.model_validate(
            {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
        )
        async with get_session().create_client(**aio_client_kwargs("sqs", settings)) as client:
            try:
                await client.receive_message(**RECEIVE)
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
        return "no error"

    async def through_the_wire(wire: SqsWire) -> str:
        try:
            await receive(wire)
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "no error"

    with stand_in(lambda n: failure) as (endpoint, received):
        sdk_code = asyncio.run(through_the_sdk(endpoint))
        sdk_requests = len(received)
        received.clear()
        wire_code = on_wire(endpoint, through_the_wire)
    assert (wire_code, len(received)) == (sdk_code, sdk_requests)


def test_an_answer_that_is_not_a_json_object_is_tried_again_then_transient() -> None:
    """A 200 with a page that is not SQS's (a proxy's, a misrouted endpoint) is no answer: never
    an exception the poller does not expect."""
    page = (200, {"Content-Type": "text/html"}, b"<html>Welcome</html>")
    with stand_in(lambda n: page if n == 1 else ok({"n": n})) as (endpoint, received):
        assert on_wire(endpoint, receive)["n"] == 2
    for answer in (page, (200, {}, b"[1, 2]")):
        with (
            stand_in(lambda n, answer=answer: answer) as (endpoint, received),  # type: ignore[misc]
            pytest.raises(TransientError, match="cannot reach AWS"),
            aws_errors("receive messages"),
        ):
            on_wire(endpoint, receive)
        assert len(received) == ATTEMPTS


def test_a_refused_request_is_not_tried_again() -> None:
    with (
        stand_in(lambda n: error(400, "InvalidParameterValue", "InvalidParameterValue")) as (endpoint, received),
        pytest.raises(VisionqError, match="rejected the request") as raised,
        aws_errors("receive messages"),
    ):
        on_wire(endpoint, receive)
    assert not isinstance(raised.value, TransientError)
    assert len(received) == 1


def test_the_error_code_is_the_one_the_sdk_reports() -> None:
    """SQS's query-compatible code (its header) before the JSON ``__type``, as botocore reads it."""
    answers = [
        error(400, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"),
        error(400, "QueueDoesNotExist"),
    ]
    codes = []
    for answer in answers:
        with stand_in(lambda n, answer=answer: answer) as (endpoint, _), pytest.raises(ClientError) as raised:  # type: ignore[misc]
            on_wire(endpoint, receive)
        codes.append(raised.value.response["Error"]["Code"])
    assert codes == ["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"]


def test_an_unavailable_queue_service_is_transient_after_its_attempts() -> None:
    with (
        stand_in(lambda n: (503, {}, b"<html>Service Unavailable</html>")) as (endpoint, received),
        pytest.raises(TransientError),
        aws_errors("receive messages"),
    ):
        on_wire(endpoint, receive)
    assert len(received) == ATTEMPTS


def test_an_endpoint_that_does_not_answer_is_transient() -> None:
    from visionq.local_stack import free_port

    with pytest.raises(TransientError, match="cannot reach AWS"), aws_errors("receive messages"):
        on_wire(f"http://127.0.0.1:{free_port()}", receive)


def test_an_answer_later_than_the_read_timeout_is_tried_again() -> None:
    with stand_in(lambda n: ok({"n": n}), delay=lambda n: 1.0 if n == 1 else 0.0) as (endpoint, received):
        assert on_wire(endpoint, receive, read_timeout=0.3)["n"] == 2
    assert len(received) == 2
    assert received[0]["client_port"] != received[1]["client_port"]  # the late one's connection was closed


def test_no_credentials_is_a_configuration_error() -> None:
    async def go() -> None:
        wire = SqsWire(endpoint_url="http://127.0.0.1:9", region="us-east-1", credentials=None, read_timeout=5)
        async with wire:
            await SqsQueue(wire, "http://127.0.0.1:9/1/q").receive(max_messages=1, wait_seconds=0, visibility_timeout=5)

    with pytest.raises(ConfigError, match="no AWS credentials"):
        asyncio.run(go())


def test_a_connection_the_server_closed_costs_no_attempt() -> None:
    """A kept connection closed by the server (its keep-alive timeout) is replaced: each call is
    one request sent, whether the close is seen before the request goes or only as it goes."""
    counts: dict[str, int] = {}

    async def calls(wire: SqsWire) -> list[int]:
        got = []
        for n in range(20):
            got.append((await receive(wire))["n"])
            if n % 2:
                await asyncio.sleep(0.05)  # the close arrives before the next call: seen while idle
        return got

    with stand_in(lambda n: ok({"n": n}), close_after_answer=True) as (endpoint, received):
        assert on_wire(endpoint, calls, counts=counts) == list(range(1, 21))
    assert len(received) == 20
    assert counts == {"sqs.ReceiveMessage": 20}


def test_long_polls_wait_side_by_side_and_their_connections_are_kept() -> None:
    """Receivers' long polls each hold a connection while they wait (none waits for another's),
    and the connections are reused afterwards."""

    async def polls(wire: SqsWire) -> float:
        started = time.monotonic()
        await asyncio.gather(*(receive(wire) for _ in range(4)))
        took = time.monotonic() - started
        await asyncio.gather(*(receive(wire) for _ in range(4)))
        return took

    with stand_in(lambda n: ok({}), delay=lambda n: 0.5 if n <= 4 else 0.0) as (endpoint, received):
        took = on_wire(endpoint, polls)
    assert took < 4 * 0.5  # side by side, not one after another
    assert len({r["client_port"] for r in received}) == 4
    assert len(received) == 8


def test_a_long_poll_given_up_on_closes_its_connection() -> None:
    """A receive cancelled while it waits (the worker stopping) leaves no connection that a later
    call would read the late answer from."""

    async def cancelled_then_another(wire: SqsWire) -> dict[str, Any]:
        poll = asyncio.ensure_future(receive(wire))
        await asyncio.sleep(0.2)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
        return await receive(wire)

    with stand_in(lambda n: ok({"n": n}), delay=lambda n: 0.6 if n == 1 else 0.0) as (endpoint, received):
        assert on_wire(endpoint, cancelled_then_another)["n"] == 2
        time.sleep(0.6)  # the late answer goes to a closed connection
    assert received[0]["client_port"] != received[1]["client_port"]


def test_https_trusts_the_sdks_ca_bundle_setting(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with stand_in(lambda n: ok({}), tls=server_context(certificate)) as (endpoint, received):
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        with pytest.raises(TransientError, match="cannot reach AWS"), aws_errors("receive messages"):
            on_wire(endpoint, receive)
        assert received == []
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate[0]))
        assert on_wire(endpoint, receive)["ResponseMetadata"]["HTTPStatusCode"] == 200
    [request] = received
    assert sigv4_verifies(request, SECRET, service="sqs")
