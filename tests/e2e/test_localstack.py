"""What only LocalStack shows: S3 that enforces a presigned POST's conditions and really sends the
bucket's notification to SQS. Run with ``VISIONQ_TEST_AWS=localstack`` (``scripts/test`` does,
after setting LocalStack up); under moto, which checks neither, they are skipped.

The pipeline's own tests (``tests/integration/test_pipeline.py``) run against LocalStack too, from
the same fixtures: there S3 and SQS are LocalStack's and DynamoDB is moto's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import BUCKET, ON_LOCALSTACK, Stack
from tests.integration.test_pipeline import WAIT, png_bytes
from visionq.client import VisionqClient
from visionq.local_stack import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not ON_LOCALSTACK,
        reason="LocalStack only (VISIONQ_TEST_AWS=localstack): moto enforces no presigned POST size limit",
    ),
]


def test_the_stack_is_on_localstack_with_dynamodb_on_moto(stack: Stack, moto_server: Any) -> None:
    assert stack.endpoint != moto_server.endpoint
    assert stack.s3.meta.endpoint_url == stack.endpoint
    assert stack.sqs.meta.endpoint_url == stack.endpoint
    assert stack.dynamodb.meta.endpoint_url == moto_server.endpoint
    assert stack.queue_url.startswith(f"{stack.endpoint}/")
    health = httpx.get(f"{stack.endpoint}/_localstack/health", timeout=5).json()
    assert health["services"]["s3"] == "running"
    assert health["services"]["sqs"] == "running"


def test_an_upload_sends_its_s3_event_to_the_queue(stack: Stack) -> None:
    """The notification bootstrap configured is real: an object under the prefix yields one event."""
    key = "uploads/notify/frame.png"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=b"not even an image")
    stack.s3.put_object(Bucket=BUCKET, Key="elsewhere/frame.png", Body=b"outside the prefix")
    records: list[dict[str, Any]] = []

    def received() -> bool:
        for message in stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1).get("Messages", []):
            records.extend(json.loads(message["Body"]).get("Records", []))
            stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return bool(records)

    wait_until(received, timeout=WAIT, what="the S3 event")
    received()  # anything else that was on its way
    assert [(r["eventName"], r["s3"]["bucket"]["name"], r["s3"]["object"]["key"]) for r in records] == [
        ("ObjectCreated:Put", BUCKET, key)
    ]


def test_an_oversize_presigned_upload_is_rejected_by_storage(
    stack: Stack, api_url: str, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    """The API's presigned POST carries the size limit; storage, not the API, refuses the bytes."""
    from visionq.config import ApiSettings

    limit = ApiSettings(bucket=BUCKET, jobs_table="unused").max_upload_bytes  # what api_url's API signs
    start_worker()
    client = VisionqClient(api_url, api_key)
    ticket = client.create_job("big.png", "image/png")
    fields = ticket["upload"]["fields"]
    image = png_bytes(draw_scene(10_401, (320, 240))[0])
    oversize = image + b"\0" * (limit + 1 - len(image))  # one byte over

    response = httpx.post(
        ticket["upload"]["url"], data=fields, files={"file": ("big.png", oversize, "image/png")}, timeout=60
    )

    assert response.status_code == 400, response.text
    assert "EntityTooLarge" in response.text
    assert stack.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    # nothing reached the queue, so the job waits for an upload that never came
    assert client.get_job(ticket["job_id"])["status"] == "PENDING"
    # ...and the same ticket still takes an image within the limit: only the size was refused
    ok = httpx.post(
        ticket["upload"]["url"],
        data=fields,
        files={"file": ("big.png", image, "image/png")},
    )
    assert ok.status_code in (200, 201, 204), ok.text
    job = client.wait([ticket["job_id"]], timeout=WAIT)[ticket["job_id"]]
    assert job["status"] == "SUCCEEDED", job
