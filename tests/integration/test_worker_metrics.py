"""The worker as the process runs it serves /metrics (VISIONQ_METRICS_PORT): after a few images
its counters, stage histograms and batch sizes say what it did."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import BUCKET, QUEUE, Stack
from visionq import metrics, stats
from visionq.local_stack import free_port, wait_until

pytestmark = pytest.mark.integration

IMAGES = 6


def test_a_worker_serves_its_metrics_after_processing_images(
    stack: Stack, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    # The worker's metrics are the process's: earlier tests' numbers are the baseline.
    before = stats.Snapshot(taken_at=0.0, values=stats.parse(metrics.WORKER.render()[0].decode()))
    for i in range(IMAGES):
        buf = io.BytesIO()
        draw_scene(30_000 + i, (320, 240))[0].save(buf, "PNG")
        stack.s3.put_object(Bucket=BUCKET, Key=f"uploads/metrics/{i}.png", Body=buf.getvalue())
    port = free_port()
    worker = start_worker(metrics_port=port, max_batch=4, max_wait_ms=50)
    url = f"127.0.0.1:{port}"

    def increase(snapshot: stats.Snapshot, name: str, **labels: str) -> float:
        return snapshot.get(name, **labels) - before.get(name, **labels)

    def acknowledged() -> stats.Snapshot | None:
        snapshot = stats.collect([url])
        done = increase(snapshot, "visionq_stage_seconds_count", stage="acknowledge") >= IMAGES
        return snapshot if snapshot.scraped and done else None

    wait_until(acknowledged, timeout=120, what="every image processed and acknowledged, as /metrics says")
    snapshot = acknowledged()
    assert snapshot is not None
    text = stats.run_stats([url], interval=0.2)
    worker.stop()

    assert increase(snapshot, "visionq_images_processed_total", model="default", status="succeeded") == IMAGES
    assert increase(snapshot, "visionq_messages_received_total") >= IMAGES
    for stage in ("receive", "queue_wait", "claim", "fetch", "decode", "batch_wait", "infer", "write", "settle"):
        assert increase(snapshot, "visionq_stage_seconds_count", stage=stage) == IMAGES, stage
        assert increase(snapshot, "visionq_stage_seconds_sum", stage=stage) > 0, stage
    batches = increase(snapshot, "visionq_batch_size_count")
    assert 1 <= batches <= IMAGES
    assert increase(snapshot, "visionq_batch_size_sum") == IMAGES
    # The poller sampled the queue (GetQueueAttributes) and saw the messages' SentTimestamp.
    assert ("visionq_queue_messages", (("queue", QUEUE), ("state", "visible"))) in snapshot.values
    print(text)
    assert "images: " in text and "time per image by stage (mean ms):" in text
