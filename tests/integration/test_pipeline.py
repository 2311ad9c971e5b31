"""The whole flow against real servers: the HTTP API (uvicorn), moto over HTTP, PostgreSQL over TCP,
and the worker loop as the process runs it, with a small detector whose answers are known."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import BUCKET, TABLE, Stack
from visionq.client import VisionqClient
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration

WAIT = 90  # seconds; a deadline, not a sleep


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def submit_bytes(client: VisionqClient, filename: str, data: bytes, content_type: str) -> str:
    ticket = client.create_job(filename, content_type)
    assert ticket["status"] == "PENDING"
    # A plain multipart POST with the presigned fields, as a browser or curl would send it.
    response = httpx.post(
        ticket["upload"]["url"], data=ticket["upload"]["fields"], files={"file": (filename, data, content_type)}
    )
    assert response.status_code in (200, 201, 204), response.text
    job_id: str = ticket["job_id"]
    return job_id


def dynamo_item(stack: Stack, job_id: str) -> dict[str, Any]:
    item: dict[str, Any] = stack.dynamodb.get_item(TableName=TABLE, Key={"job_id": {"S": job_id}})["Item"]
    return item


def test_client_flow_end_to_end(
    stack: Stack, api_url: str, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    start_worker()
    client = VisionqClient(api_url, api_key)
    image, truth = draw_scene(10_001, (320, 240))
    job_id = submit_bytes(client, "scene.png", png_bytes(image), "image/png")

    job = client.wait([job_id], timeout=WAIT)[job_id]

    assert job["status"] == "SUCCEEDED", job
    assert job["result"]["image"] == {"width": 320, "height": 240}
    found = job["result"]["detections"]
    # every drawn shape is found, with its class, where it was drawn
    for cls, *box in truth:
        assert any(d["class_id"] == cls and iou(box, (d["x1"], d["y1"], d["x2"], d["y2"])) > 0.5 for d in found), (
            truth,
            found,
        )

    [(result_id, key, width, height, count, output)] = stack.sql(
        "SELECT id, key, width, height, item_count, output FROM results WHERE job_id = %s", job_id
    )
    assert key == f"uploads/{job_id}/scene.png"
    assert (width, height, count) == (320, 240, len(found))
    rows = stack.sql(
        "SELECT class_id, label, confidence, x1, y1, x2, y2 FROM detections WHERE result_id = %s ORDER BY idx",
        result_id,
    )
    assert [
        {"class_id": r[0], "label": r[1], "confidence": r[2], "x1": r[3], "y1": r[4], "x2": r[5], "y2": r[6]}
        for r in rows
    ] == found
    assert output["detections"] == found

    item = dynamo_item(stack, job_id)
    assert item["status"]["S"] == "SUCCEEDED"
    assert json.loads(item["result"]["S"])["detections"] == found


def test_direct_put_is_processed_and_found_by_key(
    stack: Stack, api_url: str, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    start_worker()
    image, truth = draw_scene(10_002, (320, 240))
    key = "uploads/camera 7/frame+0001.png"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png_bytes(image), ContentType="image/png")
    client = VisionqClient(api_url, api_key)

    def finished() -> bool:
        return client.find_job(key)["status"] == "SUCCEEDED"

    wait_until(finished, timeout=WAIT, what="the direct upload's job")
    job = client.find_job(key)
    assert job["key"] == key
    assert len(job["result"]["detections"]) == len(truth)
    assert stack.sql("SELECT count(*) FROM results WHERE key = %s", key) == [(1,)]


def test_corrupt_image_fails_with_a_code_and_the_worker_goes_on(
    stack: Stack, api_url: str, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    worker = start_worker()
    client = VisionqClient(api_url, api_key)
    good = png_bytes(draw_scene(10_003)[0])
    truncated = submit_bytes(client, "broken.png", good[: len(good) // 3], "image/png")
    not_an_image = submit_bytes(client, "notes.jpg", b"just some text, honestly\n" * 10, "image/jpeg")
    after = submit_bytes(client, "after.png", good, "image/png")

    jobs = client.wait([truncated, not_an_image, after], timeout=WAIT)

    assert jobs[truncated]["status"] == "FAILED"
    assert jobs[truncated]["error"]["code"] == "undecodable_image"
    assert jobs[not_an_image]["status"] == "FAILED"
    assert jobs[not_an_image]["error"]["code"] == "unsupported_format"
    assert all(jobs[j]["error"]["message"] for j in (truncated, not_an_image))
    assert jobs[after]["status"] == "SUCCEEDED"
    assert worker.alive
    assert stack.sql("SELECT count(*) FROM results") == [(1,)]
    # every message was acknowledged: nothing is left to redeliver
    wait_until(lambda: _queue_depth(stack) == 0, timeout=WAIT, what="an empty queue")


def test_stored_boxes_equal_calling_the_model_on_the_file(
    stack: Stack,
    api_url: str,
    api_key: str,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Catches channel-order, orientation and scaling mistakes between the pipeline and the model."""
    from ultralytics import YOLO

    from tests.conftest import SHAPES_WEIGHTS

    start_worker()
    client = VisionqClient(api_url, api_key)
    # A JPEG stored sideways with an EXIF orientation tag, at a size the model was not trained at.
    scene, _ = draw_scene(10_004, (480, 640))
    stored = scene.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = tmp_path / "sideways.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    # ...and a lossless PNG, where both decoders must agree to the pixel.
    png_path = tmp_path / "scene.png"
    draw_scene(10_005, (640, 360))[0].save(png_path)

    jobs = {
        p: submit_bytes(client, p.name, p.read_bytes(), "image/jpeg" if p.suffix == ".jpg" else "image/png")
        for p in (path, png_path)
    }
    done = client.wait(jobs.values(), timeout=WAIT)

    model = YOLO(str(SHAPES_WEIGHTS))
    for p, job_id in jobs.items():
        direct = model.predict(str(p), device="cpu", verbose=False)[0]
        want = sorted(
            zip(direct.boxes.cls.int().tolist(), direct.boxes.xyxy.tolist(), direct.boxes.conf.tolist(), strict=True)
        )
        got = sorted(
            (d["class_id"], [d["x1"], d["y1"], d["x2"], d["y2"]], d["confidence"])
            for d in done[job_id]["result"]["detections"]
        )
        assert len(got) == len(want) > 0, (p.name, got, want)
        # Channel-order, orientation or scaling mistakes move boxes by tens of pixels or change the
        # class. What may legitimately differ: JPEG decoders (OpenCV's libjpeg vs Pillow's) by a level
        # here and there, and the padding when the worker batches images of different shapes.
        tolerance = 2.0 if p.suffix == ".jpg" else 1.0
        for (gc, gbox, gconf), (wc, wbox, wconf) in zip(got, want, strict=True):
            assert gc == wc
            assert np.allclose(gbox, wbox, atol=tolerance), (p.name, gbox, wbox)
            assert gconf == pytest.approx(wconf, abs=0.03)
    # the displayed (rotated) frame is what the boxes refer to
    assert done[jobs[path]]["result"]["image"] == {"width": 480, "height": 640}


def test_test_events_and_malformed_messages_are_acknowledged(stack: Stack, start_worker: Callable[..., Any]) -> None:
    worker = start_worker()
    for body in (
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}),
        "{this is not json",
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}),
        # a key outside the upload prefix (S3's filter would not send it; a hand-made event might)
        json.dumps(
            {
                "Records": [
                    {
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "elsewhere/x.png", "eTag": "e"}},
                    }
                ]
            }
        ),
    ):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
    wait_until(lambda: _queue_depth(stack) == 0, timeout=WAIT, what="an empty queue")
    assert worker.alive
    assert stack.dynamodb.scan(TableName=TABLE)["Items"] == []  # no job for any of them


def test_duplicate_events_yield_one_result(
    stack: Stack, api_url: str, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    start_worker()
    key = "uploads/dup/frame.png"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png_bytes(draw_scene(10_006)[0]))
    client = VisionqClient(api_url, api_key)
    wait_until(lambda: client.find_job(key)["status"] == "SUCCEEDED", timeout=WAIT, what="the first delivery")
    etag = stack.s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    record = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "uploads/dup/frame.png", "size": 1, "eTag": etag}},
    }
    for _ in range(2):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"Records": [record]}))
    wait_until(lambda: _queue_depth(stack) == 0, timeout=WAIT, what="the duplicates to be acknowledged")
    assert stack.sql("SELECT count(*) FROM results WHERE key = %s", key) == [(1,)]
    assert client.find_job(key)["status"] == "SUCCEEDED"


def _queue_depth(stack: Stack) -> int:
    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_a_summary_cut_short_is_completed_from_postgres(
    stack: Stack, api_key: str, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    from fastapi.testclient import TestClient

    from functions.http_api import create_app
    from visionq.config import ApiSettings

    start_worker(summary_max_items=1)
    image, truth = next(s for s in (draw_scene(seed, (320, 240)) for seed in range(10_100, 10_200)) if len(s[1]) >= 3)
    key = "uploads/many/scene.png"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png_bytes(image))
    settings = ApiSettings(
        bucket=BUCKET,
        jobs_table=TABLE,
        aws_endpoint_url=stack.endpoint,
        aws_region="us-east-1",
        database_url=stack.database_url,
    )
    with TestClient(create_app(settings)) as api:

        def job() -> dict[str, Any]:
            response = api.get("/v1/jobs", params={"key": key}, headers={"x-api-key": api_key})
            return dict(response.json()) if response.status_code == 200 else {}

        wait_until(lambda: job().get("status") == "SUCCEEDED", timeout=WAIT, what="the job")
        result = job()["result"]
    # The job record keeps one box (DynamoDB items are capped); the API answers with all of them.
    summary = json.loads(dynamo_item(stack, _job_id(stack, key))["result"]["S"])
    assert (len(summary["detections"]), summary["detection_count"], summary["truncated"]) == (1, len(truth), True)
    assert result["truncated"] is False
    assert len(result["detections"]) == len(truth)


def _job_id(stack: Stack, key: str) -> str:
    from tests.integration.fault_harness import jobs_by_key

    items = stack.dynamodb.scan(TableName=TABLE)["Items"]
    assert jobs_by_key(stack)[key]["status"] == "SUCCEEDED"
    return next(i["job_id"]["S"] for i in items if i.get("object_key", {}).get("S") == key)


def test_an_overwrite_before_processing_credits_each_version_to_its_own_event(
    stack: Stack, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    from visionq.jobs import direct_upload_job_id

    key = "uploads/cam9/frame.png"
    first, second = png_bytes(draw_scene(10_301)[0]), png_bytes(draw_scene(10_302)[0])
    etags = [
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"') for data in (first, second)
    ]  # both events are queued before any worker reads: the first names bytes the key no longer holds
    start_worker()
    ids = [direct_upload_job_id(BUCKET, key, etag) for etag in etags]

    def statuses() -> list[tuple[str, str | None]]:
        items = {i["job_id"]["S"]: i for i in stack.dynamodb.scan(TableName=TABLE)["Items"]}
        return [
            (items[i]["status"]["S"], items[i].get("error_code", {}).get("S")) if i in items else ("", None)
            for i in ids
        ]

    wait_until(lambda: all(s in ("SUCCEEDED", "FAILED") for s, _ in statuses()), timeout=WAIT, what="both jobs")
    assert statuses() == [("FAILED", "object_changed"), ("SUCCEEDED", None)]
    assert stack.sql("SELECT etag FROM results WHERE key = %s", key) == [(etags[1],)]
