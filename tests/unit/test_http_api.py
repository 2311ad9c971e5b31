"""The HTTP layer's translation: request validation, error lookup, no internal text leaking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from functions.http_api import create_app
from infra.bootstrap import ensure_jobs_table
from visionq.api_keys import ApiKey, ApiKeyStore
from visionq.config import ApiSettings
from visionq.errors import TransientError
from visionq.stores.job_store import DynamoJobStore


@pytest.fixture
def settings() -> ApiSettings:
    return ApiSettings(bucket="bkt", jobs_table="jobs", aws_region="us-east-1")


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiKeyStore]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        ensure_jobs_table(dynamodb, "jobs")
        yield ApiKeyStore(dynamodb, "jobs", cache_seconds=0)


@pytest.fixture
def app(settings: ApiSettings, keys: ApiKeyStore) -> Any:
    dynamodb = keys._client
    return create_app(
        settings,
        jobs=DynamoJobStore(dynamodb, "jobs"),
        keys=keys,
        s3_client=boto3.client("s3", region_name="us-east-1"),
    )


@pytest.fixture
def client(app: Any, keys: ApiKeyStore) -> TestClient:
    key, _ = keys.create("tests")
    return TestClient(app, raise_server_exceptions=False, headers={"x-api-key": key})


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


def test_a_job_asks_for_a_model_by_name_and_an_unknown_one_is_a_400(
    settings: ApiSettings, keys: ApiKeyStore, tmp_path: Path
) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(
        'default = "detect"\n[models.detect]\nweights = "yolo11n.pt"\n'
        '[models.caption]\nfamily = "blip"\nweights = "blip/"\n'
    )
    settings = settings.model_copy(update={"models_file": registry})
    app = create_app(
        settings,
        jobs=DynamoJobStore(keys._client, "jobs"),
        keys=keys,
        s3_client=boto3.client("s3", region_name="us-east-1"),
    )
    key, _ = keys.create("tests")
    client = TestClient(app, raise_server_exceptions=False, headers={"x-api-key": key})
    assert client.get("/v1/models").json() == {"default": "detect", "models": ["caption", "detect"]}
    job = {"filename": "a.jpg", "content_type": "image/jpeg"}
    caption = client.post("/v1/jobs", json={**job, "model": "caption"}).json()
    assert client.get(f"/v1/jobs/{caption['job_id']}").json()["model"] == "caption"
    default = client.post("/v1/jobs", json=job).json()
    assert client.get(f"/v1/jobs/{default['job_id']}").json()["model"] == "detect"
    response = client.post("/v1/jobs", json={**job, "model": "nosuch"})
    assert_error(response, 400, "unknown_model")
    assert "caption, detect" in response.json()["error"]["message"]


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


class AnyKey:
    def authenticate(self, presented: str | None) -> ApiKey:
        return ApiKey(key_id="k", name="k", created_at="")


def test_store_outage_is_a_503_without_internal_text(settings: ApiSettings) -> None:
    class DownStore:
        def get(self, job_id: str) -> Any:
            raise TransientError("DynamoDB endpoint http://10.0.0.1 refused: secret detail")

    app = create_app(settings, jobs=DownStore(), keys=AnyKey(), s3_client=object())  # type: ignore[arg-type]
    response = TestClient(app, raise_server_exceptions=False).get("/v1/jobs/" + "a" * 32)
    assert_error(response, 503, "service_unavailable")
    assert "secret detail" not in response.text


def test_unexpected_errors_are_a_generic_500(settings: ApiSettings) -> None:
    class BrokenStore:
        def get(self, job_id: str) -> Any:
            raise RuntimeError("boom at line 42")

    app = create_app(settings, jobs=BrokenStore(), keys=AnyKey(), s3_client=object())  # type: ignore[arg-type]
    response = TestClient(app, raise_server_exceptions=False).get("/v1/jobs/" + "a" * 32)
    assert_error(response, 500, "internal_error")
    assert "boom" not in response.text


def test_openapi_document_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz"} <= set(paths)


def test_requests_without_a_valid_key_are_401(app: Any, keys: ApiKeyStore) -> None:
    anonymous = TestClient(app, raise_server_exceptions=False)
    body = {"filename": "a.jpg", "content_type": "image/jpeg"}
    assert_error(anonymous.post("/v1/jobs", json=body), 401, "unauthorized")
    assert_error(anonymous.get("/v1/jobs/" + "a" * 32), 401, "unauthorized")
    for wrong in ("nonsense", "vq_abc_def", "vq__", "vq_" + "0" * 12 + "_guess"):
        assert_error(anonymous.post("/v1/jobs", json=body, headers={"x-api-key": wrong}), 401, "unauthorized")
    key, record = keys.create("soon revoked")
    assert anonymous.post("/v1/jobs", json=body, headers={"x-api-key": key}).status_code == 201
    keys.revoke(record.key_id)
    assert_error(anonymous.post("/v1/jobs", json=body, headers={"x-api-key": key}), 401, "unauthorized")
    assert anonymous.get("/healthz").status_code == 200  # health needs no key


def test_another_keys_job_is_a_404(app: Any, keys: ApiKeyStore, client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"filename": "a.jpg", "content_type": "image/jpeg"}).json()
    other_key, _ = keys.create("someone else")
    other = TestClient(app, raise_server_exceptions=False, headers={"x-api-key": other_key})
    assert_error(other.get(f"/v1/jobs/{job['job_id']}"), 404, "job_not_found")
    assert_error(other.get("/v1/jobs", params={"key": job["key"]}), 404, "job_not_found")
    assert client.get(f"/v1/jobs/{job['job_id']}").status_code == 200


def test_keys_are_stored_hashed(keys: ApiKeyStore) -> None:
    key, record = keys.create("x")
    item = keys._client.get_item(TableName="jobs", Key={"job_id": {"S": "apikey#" + record.key_id}})["Item"]
    assert key.split("_", 2)[2] not in str(item)
    assert [k.key_id for k in keys.list_keys()] == [record.key_id]


def test_large_bodies_are_refused(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "request_too_large")


def test_a_chunked_body_over_the_limit_is_refused_as_one_with_a_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"filename": "a.jpg", "content_type": "image/jpeg", "model": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "request_too_large")
    small = client.post(
        "/v1/jobs",
        content=iter([b'{"filename": "a.jpg", ', b'"content_type": "image/jpeg"}']),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 201, small.text


def test_keys_too_long_for_the_stores_are_refused_not_looked_up(client: TestClient) -> None:
    key = client.headers["x-api-key"]
    assert_error(client.get("/v1/jobs", headers={"x-api-key": "vq_" + "a" * 3000 + "_s"}), 401, "unauthorized")
    assert_error(client.get("/v1/jobs", headers={"x-api-key": key + "x" * 3000}), 401, "unauthorized")
    # 1000 characters, 4000 bytes: S3 keys are at most 1024 bytes, so no object has it.
    assert_error(client.get("/v1/jobs", params={"key": "uploads/" + "😀" * 1000}), 400, "invalid_key")


def test_a_job_past_its_expiry_is_gone_though_dynamodb_has_not_removed_it_yet(
    client: TestClient, app: Any, keys: ApiKeyStore
) -> None:
    job_id = client.post("/v1/jobs", json={"filename": "a.jpg", "content_type": "image/jpeg"}).json()["job_id"]
    keys._client.update_item(
        TableName="jobs",
        Key={"job_id": {"S": job_id}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": "1000"}},
    )
    assert_error(client.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
