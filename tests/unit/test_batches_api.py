"""Batches and job listings through the HTTP layer (DynamoDB in moto's in-process mock)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from functions.http_api import create_app
from infra.bootstrap import ensure_jobs_table
from visionq.api_keys import ApiKeyStore
from visionq.config import ApiSettings
from visionq.jobs import JobError, ObjectVersion, batch_id_in_key
from visionq.stores.job_store import DynamoJobStore

ITEMS = [
    {"filename": f"frame-{i:04d}.jpg", "content_type": "image/jpeg", "meta": {"frame_index": i * 5, "t_ms": i * 200}}
    for i in range(3)
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        ensure_jobs_table(dynamodb, "jobs")
        yield dynamodb


def make_client(dynamodb: Any, name: str = "tests", **overrides: Any) -> TestClient:
    settings = ApiSettings(bucket="bkt", jobs_table="jobs", aws_region="us-east-1", **overrides)
    keys = ApiKeyStore(dynamodb, "jobs", cache_seconds=0)
    app = create_app(
        settings,
        jobs=DynamoJobStore(dynamodb, "jobs"),
        keys=keys,
        s3_client=boto3.client("s3", region_name="us-east-1"),
    )
    key, _ = keys.create(name)
    return TestClient(app, raise_server_exceptions=False, headers={"x-api-key": key})


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_a_batch_creates_its_jobs_with_uploads_and_reports_their_progress(env: Any) -> None:
    client = make_client(env)
    created = client.post("/v1/batches", json={"items": ITEMS, "name": "clip", "meta": {"fps": 25}})
    assert created.status_code == 201, created.text
    body = created.json()
    batch_id = body["batch_id"]
    assert body["upload_prefix"] == f"uploads/batches/{batch_id}/"
    assert [job["key"].rsplit("/", 1)[1] for job in body["jobs"]] == [i["filename"] for i in ITEMS]
    assert all(job["upload"]["fields"]["key"] == job["key"] for job in body["jobs"])

    view = client.get(f"/v1/batches/{batch_id}").json()
    assert view["status"] == "open"
    assert view["counts"] == {"PENDING": 3}
    assert (view["size"], view["total"], view["finished"], view["progress"]) == (3, 3, 0, 0.0)
    assert view["meta"] == {"fps": 25}
    assert sorted(job["meta"]["frame_index"] for job in view["jobs"]) == [0, 5, 10]
    assert {job["batch_id"] for job in view["jobs"]} == {batch_id}

    # The worker ends them: the batch follows.
    jobs = DynamoJobStore(env, "jobs")
    for i, job in enumerate(body["jobs"]):
        jobs.claim(job["job_id"], ObjectVersion("bkt", job["key"], f"etag{i}"), model="default", expires_at=0)
        if i == 0:
            jobs.mark_failed(job["job_id"], JobError("invalid_image", "not an image"))
        else:
            jobs.mark_succeeded(job["job_id"], {"detections": []})
    view = client.get(f"/v1/batches/{batch_id}", params={"limit": 0}).json()
    assert view["status"] == "complete"
    assert view["counts"] == {"FAILED": 1, "SUCCEEDED": 2}
    assert view["progress"] == 1.0
    assert view["jobs"] == []


def test_members_come_in_pages_and_a_cursor_only_works_for_its_own_listing(env: Any) -> None:
    client = make_client(env)
    batch_id = client.post("/v1/batches", json={"items": ITEMS}).json()["batch_id"]
    first = client.get(f"/v1/batches/{batch_id}", params={"limit": 2}).json()
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    second = client.get(f"/v1/batches/{batch_id}", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert len(second["jobs"]) == 1 and second["next_cursor"] is None
    seen = {job["job_id"] for job in first["jobs"] + second["jobs"]}
    assert len(seen) == 3

    other = client.post("/v1/batches", json={"items": ITEMS[:1]}).json()["batch_id"]
    assert_error(client.get(f"/v1/batches/{other}", params={"cursor": first["next_cursor"]}), 400, "invalid_cursor")
    assert_error(client.get(f"/v1/batches/{batch_id}", params={"cursor": "garbage!"}), 400, "invalid_cursor")


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_a_forged_cursor_is_refused_with_a_400_not_answered_with_a_5xx(env: Any) -> None:
    """A cursor is the client's to send back untouched; one edited into the right partition but
    the wrong shape must not reach DynamoDB (which refuses it, and we would answer 500 or 503)."""
    client = make_client(env)
    batch_id = client.post("/v1/batches", json={"items": ITEMS}).json()["batch_id"]
    owner = client.headers["x-api-key"].split("_")[1]  # vq_<key id>_<secret>: the jobs' owner
    listings = [("/v1/jobs", "owner", owner), (f"/v1/batches/{batch_id}", "batch_id", batch_id)]
    for path, attribute, value in listings:
        here = {attribute: {"S": value}}
        forged = [
            here,  # the partition alone, no position in it
            {**here, "job_id": 5, "created_at": {"S": "2026"}},  # a number where a key is
            {**here, "job_id": {"N": "5"}, "created_at": {"S": "2026"}},  # the wrong type
            {**here, "job_id": {"S": "a"}, "created_at": {"S": "b"}, "extra": {"S": "c"}},  # not a key
        ]
        nested = base64.urlsafe_b64encode(b"[" * 1500).decode()  # json's recursion limit, within 2048 chars
        for cursor in [*map(_cursor, forged), nested, "[" * 40]:
            assert_error(client.get(path, params={"cursor": cursor}), 400, "invalid_cursor")
        assert_error(client.get(path, params={"cursor": "A" * 5000}), 422, "invalid_request")  # the API's cap


def test_another_keys_batch_and_an_unknown_batch_answer_alike(env: Any) -> None:
    alice, bob = make_client(env, "alice"), make_client(env, "bob")
    batch_id = alice.post("/v1/batches", json={"items": ITEMS}).json()["batch_id"]
    assert_error(bob.get(f"/v1/batches/{batch_id}"), 404, "batch_not_found")
    assert_error(alice.get("/v1/batches/" + "0" * 32), 404, "batch_not_found")
    assert_error(alice.get("/v1/batches/not-an-id"), 404, "batch_not_found")


def test_a_bad_batch_is_refused_whole_with_the_item_named(env: Any) -> None:
    client = make_client(env, max_batch_items=2)
    assert_error(client.post("/v1/batches", json={"items": ITEMS}), 400, "batch_too_large")
    bad = [ITEMS[0], {"filename": "../etc/passwd.jpg", "content_type": "image/jpeg"}]
    response = client.post("/v1/batches", json={"items": bad})
    assert_error(response, 400, "invalid_filename")
    assert response.json()["error"]["message"].startswith("items[1]:")
    assert_error(client.post("/v1/batches", json={"items": ITEMS[:1], "model": "nope"}), 400, "unknown_model")
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing half-created


def test_a_prefix_only_batch_is_open_until_members_join_by_key(env: Any) -> None:
    client = make_client(env)
    body = client.post("/v1/batches", json={"expected": 2}).json()
    assert body["jobs"] == []
    prefix = body["upload_prefix"]
    assert batch_id_in_key("uploads/", prefix + "cam1/0001.jpg") == body["batch_id"]
    view = client.get(f"/v1/batches/{body['batch_id']}").json()
    assert (view["status"], view["total"], view["progress"]) == ("open", 0, 0.0)


def test_webhooks_are_refused_without_a_signing_secret_and_checked_with_one(env: Any) -> None:
    plain = make_client(env)
    job = {"filename": "a.jpg", "content_type": "image/jpeg", "webhook_url": "https://example.com/hook"}
    assert_error(plain.post("/v1/jobs", json=job), 400, "webhooks_disabled")
    assert_error(plain.get("/v1/webhooks/secret"), 400, "webhooks_disabled")

    signing = make_client(env, "signing", webhook_secret="s3cret")
    assert_error(
        signing.post("/v1/jobs", json={**job, "webhook_url": "http://example.com/hook"}), 400, "webhook_insecure_scheme"
    )
    assert_error(
        signing.post("/v1/batches", json={"items": ITEMS, "webhook_url": "https://169.254.169.254/latest"}),
        400,
        "webhook_forbidden_address",
    )
    secret = signing.get("/v1/webhooks/secret").json()
    assert secret["secret"].startswith("whsec_") and secret["header"] == "visionq-signature"
    other = make_client(env, "other", webhook_secret="s3cret").get("/v1/webhooks/secret").json()
    assert other["secret"] != secret["secret"]


def test_a_keys_recent_jobs_newest_first_filtered_by_status(env: Any) -> None:
    client = make_client(env)
    ids = [
        client.post("/v1/jobs", json={"filename": f"{i}.jpg", "content_type": "image/jpeg"}).json()["job_id"]
        for i in range(3)
    ]
    client.post("/v1/batches", json={"items": ITEMS[:1]})  # its member is listed; the batch record is not
    listed = client.get("/v1/jobs").json()
    assert len(listed["jobs"]) == 4
    assert [j["job_id"] for j in listed["jobs"]][1:] == ids[::-1]
    jobs = DynamoJobStore(env, "jobs")
    jobs.claim(ids[1], ObjectVersion("bkt", f"uploads/{ids[1]}/1.jpg", "e"), model="default", expires_at=0)
    running = client.get("/v1/jobs", params={"status": "RUNNING"}).json()
    assert [j["job_id"] for j in running["jobs"]] == [ids[1]]
    page = client.get("/v1/jobs", params={"limit": 3}).json()
    assert len(page["jobs"]) == 3 and page["next_cursor"]
    rest = client.get("/v1/jobs", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert len(rest["jobs"]) == 1
    assert make_client(env, "stranger").get("/v1/jobs").json()["jobs"] == []
    assert_error(client.get("/v1/jobs", params={"status": "DONE"}), 422, "invalid_request")


def test_meta_that_dynamodb_could_not_store_is_refused_before_anything_is_written(env: Any) -> None:
    """A value too long for a job record, a number that is not finite or has more digits than
    DynamoDB keeps, a boolean for a count: 422, and no batch half made."""
    client = make_client(env)
    item = {"filename": "a.jpg", "content_type": "image/jpeg"}
    bodies = [
        {"items": [{**item, "meta": {"k": "x" * 500_000}}]},
        {"items": [{**item, "meta": {"k": 10**40}}]},
        {"items": [item], "meta": {"k": "x" * 500_000}},
        {"items": [item], "expected": True},
        {"items": [item], "name": "n", "meta": {"x" * 300: 1}},
    ]
    for body in bodies:
        assert_error(client.post("/v1/batches", json=body), 422, "invalid_request")
    for literal in ("NaN", "Infinity", "-Infinity", "1e400", "9" * 5000):
        raw = '{"items": [{"filename": "a.jpg", "content_type": "image/jpeg", "meta": {"x": VALUE}}]}'
        raw = raw.replace("VALUE", literal)  # not JSON, as some clients send it
        response = client.post("/v1/batches", content=raw, headers={"content-type": "application/json"})
        assert_error(response, 422, "invalid_request")
    assert client.get("/v1/jobs").json()["jobs"] == []
    fine = {"items": [{**item, "meta": {"frame": 12, "t": 0.5, "cam": "north", "ok": True, "none": None}}]}
    assert client.post("/v1/batches", json=fine).status_code == 201
