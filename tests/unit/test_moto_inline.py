"""Which requests the emulator answers in its event loop (moto_inline.py): DynamoDB's single-item
calls that moto would give its DynamoDB handler, signed for dynamodb, without a browser's Origin.
Everything else reaches moto's application. (The answers themselves are compared with moto's
over HTTP in tests/integration/test_emulator_http.py.)"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from visionq.moto_inline import InlineDynamoDB, inline_dynamodb, takes_inline


def scope_of(action: str, *, service: str = "dynamodb", path: str = "/", method: str = "POST", **extra: str) -> Any:
    request = AWSRequest(method, "http://127.0.0.1:5000" + path, data=b"{}", headers={"X-Amz-Target": action})
    SigV4Auth(Credentials("testing", "testing"), service, "us-east-1").add_auth(request)
    headers = {**dict(request.headers), **extra}
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode() if isinstance(v, str) else v) for k, v in headers.items()],
    }


@pytest.mark.parametrize("action", ["GetItem", "PutItem", "UpdateItem", "DeleteItem"])
def test_single_item_calls_are_taken(action: str) -> None:
    assert takes_inline(scope_of(f"DynamoDB_20120810.{action}"))


@pytest.mark.parametrize(
    "scope",
    [
        scope_of("DynamoDB_20120810.Query"),  # may walk a table: in a pool thread, as before
        scope_of("DynamoDB_20120810.Scan"),
        scope_of("DynamoDB_20120810.BatchWriteItem"),
        scope_of("DynamoDB_20120810.TransactWriteItems"),
        scope_of("DynamoDB_20120810.CreateTable"),
        scope_of("DynamoDB_20120810.GetItem", service="s3"),  # moto routes by the signature's service
        scope_of("DynamoDB_20111205.GetItem"),  # the old API: another of moto's handlers
        scope_of("DynamoDBStreams_20120810.GetRecords"),
        scope_of("DynamoDB_20120810.GetItem", path="/other"),
        scope_of("DynamoDB_20120810.GetItem", method="GET"),
        scope_of("DynamoDB_20120810.GetItem", origin="http://localhost:3000"),  # flask-cors answers it
        scope_of("AmazonSQS.ReceiveMessage", service="sqs"),
    ],
)
def test_everything_else_goes_to_motos_application(scope: Any) -> None:
    assert not takes_inline(scope)


def test_an_unsigned_call_goes_to_motos_application() -> None:
    scope = scope_of("DynamoDB_20120810.GetItem")
    scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
    assert not takes_inline(scope)
    scope["headers"].append((b"authorization", b"Bearer nonsense"))
    assert not takes_inline(scope)


def test_the_rest_reaches_the_application_with_its_body_unread() -> None:
    reached: list[Any] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        reached.append((scope["method"], await receive()))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"TableName": "t"}', "more_body": False}

    def no_environ(scope: Any, message: Any, body: io.BytesIO) -> Any:
        raise AssertionError("an inline call's environ was built for a request not taken")

    served = InlineDynamoDB(application, no_environ)
    asyncio.run(served(scope_of("DynamoDB_20120810.Query"), receive, None))
    assert reached == [
        ("POST", {"type": "http.request", "body": json.dumps({"TableName": "t"}).encode(), "more_body": False})
    ]


def test_where_moto_is_not_as_expected_everything_takes_the_usual_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.responses import DynamoHandler

    async def application(scope: Any, receive: Any, send: Any) -> None:
        pass

    def build(scope: Any, message: Any, body: io.BytesIO) -> Any:
        return {}

    assert isinstance(inline_dynamodb(application, build), InlineDynamoDB)
    monkeypatch.setattr(DynamoHandler, "dispatch", None)  # a moto that answers another way
    assert inline_dynamodb(application, build) is application
