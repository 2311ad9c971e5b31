"""The local stack's emulator over HTTP keeps what S3 keeps: keys with percent signs, question
marks and encoded slashes come back as they were put, and a chunked upload (no Content-Length)
stores its bytes (visionq.moto_server serves moto under uvicorn, which builds the WSGI environ
differently from werkzeug's server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import BUCKET, Stack
from visionq.local_stack import MotoServer

pytestmark = pytest.mark.integration


def test_awkward_keys_are_stored_as_sent(stack: Stack) -> None:
    keys = [
        "uploads/emulator/x%41.jpg",
        "uploads/emulator/a?b.jpg",
        "uploads/emulator/p%2Fq.jpg",
        "uploads/emulator/c#d.jpg",
    ]
    for key in keys:
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    listed = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="uploads/emulator/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(keys)
    assert [stack.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys] == [k.encode() for k in keys]


def test_a_chunked_upload_keeps_its_bytes(stack: Stack) -> None:
    key = "uploads/emulator/chunked.bin"
    url = stack.s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=60)

    def chunks() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    response = httpx.put(url, content=chunks())  # an iterator: sent with Transfer-Encoding: chunked
    assert response.status_code == 200
    assert stack.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"hello world"


# DynamoDB's single-item calls, answered in the event loop (moto_inline.py) or by moto's Flask
# application in a pool thread: the same answers. Valid calls, failing conditions, an invalid
# expression, a missing table, a body that is not JSON; a Query (never inline) as a control.
CALLS: list[tuple[str, dict[str, Any] | bytes]] = [
    (
        "CreateTable",
        {
            "TableName": "t",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
    ),
    ("GetItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}}),
    ("PutItem", {"TableName": "t", "Item": {"pk": {"S": "a"}, "n": {"N": "1"}, "l": {"L": [{"S": "x"}]}}}),
    ("GetItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}}),
    (
        "UpdateItem",
        {
            "TableName": "t",
            "Key": {"pk": {"S": "a"}},
            "UpdateExpression": "SET #n = #n + :one, s = :s REMOVE l",
            "ConditionExpression": "#n = :was",
            "ExpressionAttributeNames": {"#n": "n"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":s": {"S": "done"}, ":was": {"N": "1"}},
            "ReturnValues": "ALL_NEW",
        },
    ),
    (
        "UpdateItem",
        {
            "TableName": "t",
            "Key": {"pk": {"S": "a"}},
            "UpdateExpression": "SET s = :s",
            "ConditionExpression": "s = :other",
            "ExpressionAttributeValues": {":s": {"S": "x"}, ":other": {"S": "queued"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    ),
    ("UpdateItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}, "UpdateExpression": "SET = oops"}),
    ("PutItem", {"TableName": "t", "Item": {"pk": {"S": "b"}}, "ConditionExpression": "attribute_exists(pk)"}),
    ("DeleteItem", {"TableName": "t", "Key": {"pk": {"S": "a"}}, "ReturnValues": "ALL_OLD"}),
    ("GetItem", {"TableName": "missing", "Key": {"pk": {"S": "a"}}}),
    ("GetItem", b"{not json"),
    ("Query", {"TableName": "t", "KeyConditionExpression": "pk = :a", "ExpressionAttributeValues": {":a": {"S": "a"}}}),
]
VARYING_HEADERS = {"date", "x-amzn-requestid", "x-amz-crc32"}  # the last over a body compared anyway


def dynamodb_answers(endpoint: str) -> list[tuple[int, dict[str, str], bytes]]:
    """Each of CALLS signed as botocore signs it, sent over HTTP; status, headers, body."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = SigV4Auth(Credentials("testing", "testing"), "dynamodb", "us-east-1")
    answers = []
    with httpx.Client(timeout=10) as client:
        for action, body in CALLS:
            request = AWSRequest(
                "POST",
                endpoint + "/",
                data=body if isinstance(body, bytes) else json.dumps(body).encode(),
                headers={"X-Amz-Target": f"DynamoDB_20120810.{action}", "Content-Type": "application/x-amz-json-1.0"},
            )
            signer.add_auth(request)
            response = client.post(endpoint + "/", headers=dict(request.headers), content=request.body)
            kept = {k: v for k, v in response.headers.items() if k not in VARYING_HEADERS}
            answers.append((response.status_code, kept, response.content))
    return answers


def test_dynamodb_calls_answered_in_the_event_loop_are_answered_as_moto_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    for inline in ("1", "0"):
        monkeypatch.setenv("VISIONQ_EMULATOR_INLINE_DYNAMODB", inline)
        server = MotoServer().start()
        try:
            answers[inline] = dynamodb_answers(server.endpoint)
        finally:
            server.stop()
    # The first, CreateTable (never inline), answers with the time it was made.
    for call, answered_inline, answered_usually in zip(CALLS[1:], answers["1"][1:], answers["0"][1:], strict=True):
        assert answered_inline == answered_usually, call[0]
    statuses = [status for status, _, _ in answers["1"]]
    assert statuses == [200, 200, 200, 200, 200, 400, 400, 400, 200, 400, 500, 200]
