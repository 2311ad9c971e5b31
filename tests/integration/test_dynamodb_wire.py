"""The worker's DynamoDB client (DynamoDBWire): the jobs table's rules hold over it as over boto3,
against the DynamoDB emulator over HTTP; its requests verify as SigV4 with the secret key, and
DynamoDB's failure answers (from a stand-in server on loopback) are retried or raised as boto3's.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from botocore.exceptions import ClientError

# Every rule of the jobs table, collected here again with the `store` fixture below: the store
# over the wire instead of boto3 in-process.
from tests.conftest import TABLE
from tests.tls import server_context
from tests.unit.test_job_store import *  # noqa: F403
from visionq.config import AwsSettings
from visionq.errors import ConfigError, TransientError, TransitionRejected
from visionq.stores.aws_errors import aws_errors
from visionq.stores.dynamodb_wire import ATTEMPTS, DynamoDBWire
from visionq.stores.job_store import DynamoJobStore

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def settings_for(endpoint: str, **more: str) -> AwsSettings:
    return AwsSettings.model_validate(
        {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, **more}
    )


@pytest.fixture
def store(stack: Any) -> DynamoJobStore:  # overrides the unit module's in-process one
    from infra.bootstrap import ensure_jobs_table
    from visionq.aws import boto3_client, dynamodb_wire

    settings = settings_for(stack.endpoint)
    ensure_jobs_table(boto3_client("dynamodb", settings), "jobs")
    return DynamoJobStore(dynamodb_wire(settings), "jobs")


def test_counts_each_request_it_sends(stack: Any) -> None:
    from visionq.aws import dynamodb_wire

    counts: dict[str, int] = {}
    wire = dynamodb_wire(settings_for(stack.endpoint), counts=counts)
    wire.get_item(TableName=TABLE, Key={"job_id": {"S": "none"}})
    assert counts == {"dynamodb.GetItem": 1}


# --- a stand-in DynamoDB on loopback ---------------------------------------------------------


@contextlib.contextmanager
def stand_in(
    answer: Callable[[int], tuple[int, dict[str, str], bytes]],
    *,
    close_after_answer: bool = False,
    delay: Callable[[int], float] = lambda n: 0.0,
    tls: ssl.SSLContext | None = None,
    port: int = 0,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server whose n-th POST (from 1) gets ``answer(n)`` (status, headers, body) after
    ``delay(n)`` seconds; yields its endpoint and what it received (method, path, headers, body,
    and the client's port, one per connection).
    ``close_after_answer``: the connection is closed after each answer, as a server's keep-alive
    timeout would close it, with no ``Connection: close`` said. ``tls``: served over HTTPS.
    ``port``: the port to listen on (0: any free one)."""
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(
                {
                    "method": "POST",
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "client_port": self.client_address[1],  # one per connection
                }
            )
            time.sleep(delay(len(received)))
            status, headers, out = answer(len(received))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(out))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(out)
            self.close_connection = close_after_answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def wire_at(endpoint: str, counts: dict[str, int] | None = None) -> DynamoDBWire:
    from visionq.aws import dynamodb_wire

    return dynamodb_wire(settings_for(endpoint), counts=counts)


def ok(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode()
    return 200, {"x-amz-crc32": str(zlib.crc32(data)), "Content-Type": "application/x-amz-json-1.0"}, data


def error(status: int, kind: str, message: str = "no") -> tuple[int, dict[str, str], bytes]:
    return status, {}, json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}", "message": message}).encode()


def sigv4_verifies(request: dict[str, Any], secret: str, region: str = "us-east-1", service: str = "dynamodb") -> bool:
    """AWS Signature Version 4, computed anew from what the server received (the spec's steps:
    canonical request, string to sign, the HMAC key chain) and compared with the header's."""
    headers = {k.lower(): v for k, v in request["headers"].items()}
    auth = headers["authorization"]
    fields = dict(part.strip().split("=", 1) for part in auth.split(" ", 1)[1].split(","))
    signed = fields["SignedHeaders"].split(";")
    path, _, query = request["path"].partition("?")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(parse_qsl(query, keep_blank_values=True))
    )
    canonical = "\n".join(
        [
            request["method"],
            quote(path, safe="/-_.~"),
            canonical_query,
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
            fields["SignedHeaders"],
            hashlib.sha256(request["body"]).hexdigest(),
        ]
    )
    date = headers["x-amz-date"]
    scope = f"{date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return fields["Credential"] == f"{KEY_ID}/{scope}" and hmac.compare_digest(expected, fields["Signature"])


def test_a_request_is_the_call_as_json_signed_with_sigv4() -> None:
    params = {
        "TableName": "jobs",
        "Key": {"job_id": {"S": "j1"}},
        "UpdateExpression": "SET #s = :s",
        "ConditionExpression": "#s = :q",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {":s": {"S": "RUNNING"}, ":q": {"S": "QUEUED"}},
        "ReturnValues": "ALL_NEW",
    }
    item = {"job_id": {"S": "j1"}, "status": {"S": "RUNNING"}, "attempt": {"N": "2"}}
    with stand_in(lambda n: ok({"Attributes": item})) as (endpoint, received):
        answer = wire_at(endpoint).update_item(**params)
    assert answer["Attributes"] == item
    [request] = received
    assert request["headers"]["X-Amz-Target"] == "DynamoDB_20120810.UpdateItem"
    assert request["headers"]["Content-Type"] == "application/x-amz-json-1.0"
    assert json.loads(request["body"]) == params
    assert sigv4_verifies(request, SECRET)
    tampered = {**request, "body": request["body"].replace(b"QUEUED", b"FAILED")}
    assert not sigv4_verifies(tampered, SECRET)  # the check itself can fail


def test_throttling_is_tried_again_with_a_fresh_signature() -> None:
    answers = {1: error(400, "ThrottlingException"), 2: error(500, "InternalServerError")}
    with stand_in(lambda n: answers.get(n, ok({"Item": {"job_id": {"S": "j"}}}))) as (endpoint, received):
        answer = wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
    assert answer["Item"] == {"job_id": {"S": "j"}}
    assert len(received) == 3 == ATTEMPTS
    assert all(sigv4_verifies(r, SECRET) for r in received)


@pytest.mark.parametrize(
    "failure",
    [
        (500, {}, b"{}"),
        error(400, "ThrottlingException"),
        error(400, "ProvisionedThroughputExceededException"),
        (501, {}, b"{}"),
        error(400, "ValidationException"),
    ],
    ids=["500", "throttled", "provisioned", "501", "invalid"],
)
def test_a_failure_is_tried_as_often_as_the_sdk_tries_it(failure: tuple[int, dict[str, str], bytes]) -> None:
    """The same answer from DynamoDB, every time, to a boto3 client as ``aws`` configures it and to
    the wire: as many requests, and the same error code in the end."""
    from visionq.aws import boto3_client

    codes = []
    with stand_in(lambda n: failure) as (endpoint, received):
        for client in (boto3_client("dynamodb", settings_for(endpoint)), wire_at(endpoint)):
            with pytest.raises(ClientError) as raised:
                client.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
            codes.append((raised.value.response["Error"]["Code"], len(received)))
            received.clear()
    assert codes[0] == codes[1]


def test_a_failed_condition_is_not_retried_and_is_a_rejected_transition() -> None:
    with (
        stand_in(lambda n: error(400, "ConditionalCheckFailedException")) as (endpoint, received),
        pytest.raises(TransitionRejected),
        aws_errors("claim"),
    ):
        wire_at(endpoint).update_item(TableName="jobs", Key={"job_id": {"S": "j"}})
    assert len(received) == 1


def test_a_body_that_fails_its_crc32_is_read_again() -> None:
    def answer(n: int) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = ok({"Item": {"job_id": {"S": "j"}}})
        return (status, {**headers, "x-amz-crc32": "1"}, body) if n == 1 else (status, headers, body)

    with stand_in(answer) as (endpoint, received):
        assert wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"]
    assert len(received) == 2


def test_an_answer_that_is_not_a_json_object_is_tried_again_then_transient() -> None:
    """A 200 with a page that is not DynamoDB's (a proxy's, a misrouted endpoint) is no answer: never
    an exception the job store's callers do not expect."""
    page = (200, {"Content-Type": "text/html"}, b"<html>Welcome</html>")
    with stand_in(lambda n: page if n == 1 else ok({"Item": {"job_id": {"S": "j"}}})) as (endpoint, received):
        assert wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"]
    for answer in (page, (200, {}, b"[1, 2]")):
        with (
            stand_in(lambda n, answer=answer: answer) as (endpoint, received),  # type: ignore[misc]
            pytest.raises(TransientError, match="cannot reach AWS"),
            aws_errors("read job"),
        ):
            wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
        assert len(received) == ATTEMPTS


def test_an_unavailable_table_service_is_transient_after_its_attempts() -> None:
    with (
        stand_in(lambda n: (503, {}, b"<html>Service Unavailable</html>")) as (endpoint, received),
        pytest.raises(TransientError),
        aws_errors("claim"),
    ):
        wire_at(endpoint).update_item(TableName="jobs", Key={"job_id": {"S": "j"}})
    assert len(received) == ATTEMPTS


def test_an_endpoint_that_does_not_answer_is_transient() -> None:
    from visionq.local_stack import free_port

    with pytest.raises(TransientError, match="cannot reach AWS"), aws_errors("claim"):
        wire_at(f"http://127.0.0.1:{free_port()}").get_item(TableName="jobs", Key={"job_id": {"S": "j"}})


def test_no_credentials_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from visionq.aws import dynamodb_wire

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    wire = dynamodb_wire(AwsSettings.model_validate({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}))
    with pytest.raises(ConfigError, match="no AWS credentials"), aws_errors("claim"):
        wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})


def test_a_connection_the_server_closed_costs_no_attempt() -> None:
    """A kept connection closed by the server (its keep-alive timeout) is replaced: each call is
    one request sent, whether the close is seen before the request goes or only as it goes."""
    counts: dict[str, int] = {}
    with stand_in(lambda n: ok({"Item": {"job_id": {"S": str(n)}}}), close_after_answer=True) as (endpoint, received):
        wire = wire_at(endpoint, counts)
        for n in range(1, 21):
            assert wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"] == {"job_id": {"S": str(n)}}
            if n % 2:
                time.sleep(0.05)  # the close arrives before the next call: seen while idle
    assert len(received) == 20
    assert counts == {"dynamodb.GetItem": 20}


def test_an_outage_after_a_close_is_transient_and_the_endpoint_back_is_used_at_once() -> None:
    """The server closes the kept connection and stops listening (a restart): every call while it
    is away is a transient failure after its attempts, and the first call after it is back
    succeeds, however soon (the thread's closed connection must not be looked at again)."""
    with stand_in(lambda n: ok({"Item": {"job_id": {"S": "before"}}}), close_after_answer=True) as (endpoint, _):
        wire = wire_at(endpoint)
        assert wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"]
        time.sleep(0.05)  # the close has arrived
    for _ in range(2):
        with pytest.raises(TransientError, match="cannot reach AWS"), aws_errors("claim"):
            wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
    port = int(endpoint.rsplit(":", 1)[1])
    with stand_in(lambda n: ok({"Item": {"job_id": {"S": "after"}}}), port=port):
        assert wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"] == {"job_id": {"S": "after"}}


def test_each_thread_keeps_a_connection_of_its_own() -> None:
    with stand_in(lambda n: ok({"Item": {"job_id": {"S": "j"}}})) as (endpoint, received):
        wire = wire_at(endpoint)
        errors: list[BaseException] = []

        def calls() -> None:
            try:
                for _ in range(25):
                    assert wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"]
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=calls) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(received) == 200
    assert all(sigv4_verifies(r, SECRET) for r in received)


def test_an_answer_later_than_the_read_timeout_is_tried_again() -> None:
    from visionq.aws import DEFAULT_CONNECT_TIMEOUT, dynamodb_wire

    def wire(endpoint: str) -> DynamoDBWire:
        made = dynamodb_wire(settings_for(endpoint))
        return DynamoDBWire(
            endpoint_url=endpoint,
            region="us-east-1",
            credentials=made._credentials,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT,
            read_timeout=0.3,
        )

    with stand_in(lambda n: ok({"Item": {"job_id": {"S": str(n)}}}), delay=lambda n: 1.0 if n == 1 else 0.0) as (
        endpoint,
        received,
    ):
        assert wire(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"] == {"job_id": {"S": "2"}}
    assert len(received) == 2
    with (
        stand_in(lambda n: ok({}), delay=lambda n: 1.0) as (endpoint, received),
        pytest.raises(TransientError),
        aws_errors("claim"),
    ):
        wire(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
    assert len(received) == ATTEMPTS


def test_https_trusts_the_sdks_ca_bundle_setting(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS, a server whose certificate only ``AWS_CA_BUNDLE`` vouches for is trusted when the
    setting names it, and refused (transient: the call cannot reach DynamoDB) when it does not."""
    answer = ok({"Item": {"job_id": {"S": "j"}}})
    with stand_in(lambda n: answer, tls=server_context(certificate)) as (endpoint, received):
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        with pytest.raises(TransientError, match="cannot reach AWS"), aws_errors("read job"):
            wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
        assert received == []
        monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate[0]))
        assert wire_at(endpoint).get_item(TableName="jobs", Key={"job_id": {"S": "j"}})["Item"]
    [request] = received
    assert sigv4_verifies(request, SECRET)


def test_a_kept_connection_closed_by_its_peer_is_seen_before_reuse() -> None:
    from visionq.stores.dynamodb_wire import _dropped

    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not _dropped(ours)
        theirs.close()
        assert _dropped(ours)


def test_a_connection_idle_too_long_is_not_used_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from visionq.stores import dynamodb_wire

    def ports(idle_seconds: float) -> list[int]:
        monkeypatch.setattr(dynamodb_wire, "_IDLE_SECONDS", idle_seconds)
        with stand_in(lambda n: ok({})) as (endpoint, received):
            wire = wire_at(endpoint)
            for _ in range(3):
                wire.get_item(TableName="jobs", Key={"job_id": {"S": "j"}})
                time.sleep(0.05)
        return [r["client_port"] for r in received]

    assert len(set(ports(15.0))) == 1
    assert len(set(ports(0.01))) == 3
