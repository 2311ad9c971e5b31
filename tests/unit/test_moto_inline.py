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


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data; boundary=xx", "application/x-www-form-urlencoded", "Multipart/Mixed"]
)
def test_a_form_goes_to_motos_application(content_type: str) -> None:
    # werkzeug parses a form when moto reads the request, and may answer it itself (a 413 for too
    # many parts); only Flask's application turns that into its answer.
    assert not takes_inline(scope_of("DynamoDB_20120810.GetItem", **{"Content-Type": content_type}))
    assert takes_inline(scope_of("DynamoDB_20120810.GetItem", **{"Content-Type": "application/x-amz-json-1.0"}))


def test_a_query_string_goes_to_motos_application() -> None:
    # moto reads the action from ?Action= before X-Amz-Target: a Scan could hide behind a GetItem.
    scope = scope_of("DynamoDB_20120810.GetItem")
    scope["query_string"] = b"Action=Scan"
    assert not takes_inline(scope)
    scope["query_string"] = b""
    assert takes_inline(scope)


@pytest.mark.parametrize("header", [b"authorization", b"x-amz-target"])
def test_a_repeated_routing_header_goes_to_motos_application(header: bytes) -> None:
    # uvicorn hands both values on and moto reads them its own way (the first credential scope):
    # only moto's application can tell where such a request goes.
    scope = scope_of("DynamoDB_20120810.GetItem")
    scope["headers"].insert(0, (header, dict(scope["headers"])[header]))
    assert not takes_inline(scope)


def test_a_body_sent_in_pieces_reaches_moto_whole() -> None:
    pieces = [b'{"TableName": ', b'"t", "Key": ', b'{"pk": {"S": "a"}}}']
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1} for i, piece in enumerate(pieces)
    ]
    seen: list[bytes] = []

    async def application(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a single-item call went to moto's application")

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    def build(scope: Any, message: Any, body: io.BytesIO) -> Any:
        seen.append(body.read())
        raise RuntimeError("enough: the body is what this test reads")

    served = InlineDynamoDB(application, build)
    with pytest.raises(RuntimeError, match="enough"):
        asyncio.run(served(scope_of("DynamoDB_20120810.GetItem"), receive, None))
    assert seen == [b"".join(pieces)]


@pytest.mark.parametrize("cors_off", [False, True])
def test_the_cors_header_is_added_as_moto_is_set_to_add_it(monkeypatch: pytest.MonkeyPatch, cors_off: bool) -> None:
    from moto import settings
    from werkzeug.test import EnvironBuilder

    monkeypatch.setattr(settings, "DISABLE_GLOBAL_CORS", cors_off)  # MOTO_DISABLE_GLOBAL_CORS

    async def application(scope: Any, receive: Any, send: Any) -> None:
        pass

    served = InlineDynamoDB(application, lambda scope, message, body: {})
    scope = scope_of("DynamoDB_20120810.GetItem")
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    body = json.dumps({"TableName": "no-such-table", "Key": {"pk": {"S": "a"}}})
    environ = EnvironBuilder(method="POST", path="/", headers=headers, data=body).get_environ()
    status, answer_headers, _ = served.answer(environ)
    assert status == 400  # the table does not exist: moto's own error
    assert (b"access-control-allow-origin" in dict(answer_headers)) is not cors_off
