"""The API's Lambda entry point (``functions.http_api.handler``) invoked with API Gateway HTTP API
payload 2.0 events, shaped after AWS's documented sample, against the real local stack: presign,
upload, the worker, status; errors as JSON with their codes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import functions.http_api as http_api
from tests.conftest import BUCKET, TABLE, Stack
from tests.integration.test_pipeline import png_bytes

pytestmark = pytest.mark.integration


def http_event(method: str, path: str, *, api_key: str | None, body: Any = None, query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as AWS documents it."""
    headers = {"content-type": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com"}
    if api_key is not None:
        headers["x-api-key"] = api_key
    raw = json.dumps(body) if body is not None else None
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": [],
        "headers": headers,
        "queryStringParameters": dict(p.split("=", 1) for p in query.split("&")) if query else None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "tests",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "24/Nov/2026:21:00:00 +0000",
            "timeEpoch": 1795640400000,
        },
        "body": base64.b64encode(raw.encode()).decode() if raw is not None else None,
        "isBase64Encoded": raw is not None,
    }


@pytest.fixture
def invoke(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[int, Any]]]:
    """The handler as Lambda runs it: configured by environment, built on first call, reused."""
    for name, value in {
        "VISIONQ_BUCKET": BUCKET,
        "VISIONQ_JOBS_TABLE": TABLE,
        "AWS_ENDPOINT_URL": stack.endpoint,
        "DATABASE_URL": stack.database_url,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(http_api, "_lambda_handler", None)

    def call(*args: Any, **kwargs: Any) -> tuple[int, Any]:
        response = http_api.handler(http_event(*args, **kwargs), None)
        body = response["body"]
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return int(response["statusCode"]), json.loads(body) if body else None

    yield call


def test_presign_upload_and_status_through_the_lambda_handler(
    invoke: Callable[..., tuple[int, Any]],
    api_key: str,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
) -> None:
    start_worker()
    status, created = invoke(
        "POST", "/v1/jobs", api_key=api_key, body={"filename": "a.png", "content_type": "image/png"}
    )
    assert status == 201 and created["status"] == "PENDING"
    upload = created["upload"]
    data = png_bytes(draw_scene(10_400)[0])
    response = httpx.post(upload["url"], data=upload["fields"], files={"file": ("a.png", data, "image/png")})
    assert response.status_code in (200, 204), response.text
    deadline = time.monotonic() + 90
    while True:
        status, job = invoke("GET", f"/v1/jobs/{created['job_id']}", api_key=api_key)
        if job["status"] in ("SUCCEEDED", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (status, job["status"]) == (200, "SUCCEEDED"), job
    assert job["result"]["kind"] == "detections" and job["result"]["detection_count"] >= 1
    status, found = invoke("GET", "/v1/jobs", api_key=api_key, query=f"key={created['key']}")
    assert (status, found["job_id"]) == (200, created["job_id"])


def test_errors_through_the_lambda_handler_are_json_with_a_code(
    invoke: Callable[..., tuple[int, Any]], api_key: str
) -> None:
    assert invoke("GET", "/v1/jobs/" + "f" * 32, api_key=None)[0] == 401
    status, body = invoke("GET", "/v1/jobs/" + "f" * 32, api_key=api_key)
    assert (status, body["error"]["code"]) == (404, "job_not_found")
    status, body = invoke("POST", "/v1/jobs", api_key=api_key, body={"filename": "a.gif", "content_type": "image/gif"})
    assert (status, body["error"]["code"]) == (400, "unsupported_content_type")
    status, body = invoke(
        "POST", "/v1/jobs", api_key=api_key, body={"filename": "a.png", "content_type": "image/png", "model": "x"}
    )
    assert (status, body["error"]["code"]) == (400, "unknown_model")
    assert invoke("GET", "/healthz", api_key=None)[0] == 200
