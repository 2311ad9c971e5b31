"""The pipelined worker under load: batches form, and every output lands on its own object."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import BUCKET, Stack
from tests.integration.test_pipeline import iou
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration


def test_fifty_images_each_get_their_own_result(
    stack: Stack, start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    truths: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for i in range(50):
        # different sizes too, so a batch mixes shapes and letterboxing
        image, truth = draw_scene(20_000 + i, (320, 240) if i % 3 else (256, 320))
        buf = io.BytesIO()
        image.save(buf, "PNG")
        key = f"uploads/batch/{i:03d}.png"
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
        truths[key] = truth

    worker = start_worker(max_batch=8, max_wait_ms=50)
    wait_until(lambda: stack.sql("SELECT count(*) FROM results")[0][0] >= 50, timeout=300, what="50 results")
    worker.stop()

    assert worker.stats.batches < 50, "no batch held more than one image"
    assert worker.stats.succeeded == 50
    rows = stack.sql("SELECT key, output FROM results")
    assert len(rows) == 50
    for key, output in rows:
        found = output["detections"]
        truth = truths[key]
        assert len(found) == len(truth), (key, truth, found)
        for cls, *box in truth:
            assert any(
                d["class_id"] == cls and iou(tuple(box), (d["x1"], d["y1"], d["x2"], d["y2"])) > 0.5 for d in found
            ), (key, truth, found)
