"""The HTTP layer's translation: request validation, error lookup, no internal text leaking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from functions.http_api import create_app
from infra.bootstrap import _ensure_jobs_table
from visionq.config import ApiSettings
from visionq.errors import TransientError
from visionq.stores.job_store import DynamoJobStore


@pytest.fixture
def settings() -> ApiSettings:
    return ApiSettings(bucket="bkt", jobs_table="jobs", aws_region="us-east-1")


@pytest.fixture
def client(settings: ApiSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        _ensure_jobs_table(dynamodb, "jobs")
        app = create_app(
            settings, jobs=DynamoJobStore(dynamodb, "jobs"), s3_client=boto3.client("s3", region_name="us-east-1")
        )
        yield TestClient(app, raise_server_exceptions=False)


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text


def test_create_job_returns_a_presigned_post_for_its_own_key(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"filename": "street.jpg", "content_type": "image/jpeg"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["key"] == f"uploads/{body['job_id']}/street.jpg"
    assert body["upload"]["fields"]["key"] == body["key"]
    assert body["upload"]["fields"]["Content-Type"] == "image/jpeg"
    assert "policy" in body["upload"]["fields"]
    assert client.get(f"/v1/jobs/{body['job_id']}").json()["status"] == "PENDING"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"filename": "a.jpg"}, "invalid_request"),
        ({"filename": "a.jpg", "content_type": "image/jpeg", "extra": 1}, "invalid_request"),
        ({"filename": "a.gif", "content_type": "image/gif"}, "unsupported_content_type"),
        ({"filename": "../../etc/passwd.jpg", "content_type": "image/jpeg"}, "invalid_filename"),
        ({"filename": "a.png", "content_type": "image/jpeg"}, "extension_mismatch"),
    ],
)
def test_bad_create_requests_get_a_4xx_with_a_code(client: TestClient, payload: dict[str, Any], code: str) -> None:
    response = client.post("/v1/jobs", json=payload)
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, code)


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_unknown_job_is_a_404(client: TestClient) -> None:
    assert_error(client.get("/v1/jobs/" + "f" * 32), 404, "job_not_found")
    assert_error(client.get("/v1/jobs/not-an-id"), 404, "job_not_found")
    assert_error(client.get("/v1/jobs", params={"key": "uploads/none.jpg"}), 404, "job_not_found")
    assert_error(client.get("/v1/jobs", params={"key": "elsewhere/x.jpg"}), 400, "invalid_key")
    assert_error(client.get("/nowhere"), 404, "not_found")


def test_store_outage_is_a_503_without_internal_text(settings: ApiSettings) -> None:
    class DownStore:
        def get(self, job_id: str) -> Any:
            raise TransientError("DynamoDB endpoint http://10.0.0.1 refused: secret detail")

    app = create_app(settings, jobs=DownStore(), s3_client=object())  # type: ignore[arg-type]
    response = TestClient(app, raise_server_exceptions=False).get("/v1/jobs/" + "a" * 32)
    assert_error(response, 503, "service_unavailable")
    assert "secret detail" not in response.text


def test_unexpected_errors_are_a_generic_500(settings: ApiSettings) -> None:
    class BrokenStore:
        def get(self, job_id: str) -> Any:
            raise RuntimeError("boom at line 42")

    app = create_app(settings, jobs=BrokenStore(), s3_client=object())  # type: ignore[arg-type]
    response = TestClient(app, raise_server_exceptions=False).get("/v1/jobs/" + "a" * 32)
    assert_error(response, 500, "internal_error")
    assert "boom" not in response.text


def test_openapi_document_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz"} <= set(paths)
