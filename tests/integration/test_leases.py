"""Leases, deadlines and graceful shutdown, with a model slower than the visibility timeout."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from tests.conftest import BUCKET, Stack
from tests.integration.fault_harness import jobs_by_key, queue_depth
from visionq.errors import WorkerStuck
from visionq.local_stack import wait_until
from visionq.outputs import ModelOutput
from visionq.worker import EXIT_WATCHDOG

pytestmark = pytest.mark.integration


class SlowDetector:
    """The shapes detector, made to take ``seconds`` per forward pass."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.calls = 0

    version = property(lambda self: self.inner.version)
    untrained = property(lambda self: self.inner.untrained)
    device = property(lambda self: self.inner.device)
    input_size = property(lambda self: self.inner.input_size)

    def predict(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        self.calls += 1
        time.sleep(self.seconds)
        result: list[ModelOutput] = self.inner.predict(images)
        return result


def put_scene(stack: Stack, draw_scene: Callable[..., Any], key: str) -> None:
    buf = io.BytesIO()
    draw_scene(40_000)[0].save(buf, "PNG")
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def job_status(stack: Stack, key: str) -> tuple[str, str | None]:
    job = jobs_by_key(stack)[key]
    return job["status"], job["error_code"]


def run_worker(stack: Stack, detector: Any, **settings: Any) -> Any:
    from tests.conftest import RunningWorker

    return RunningWorker(stack.worker_settings(**settings), detector).start()


def test_leases_keep_a_long_job_from_being_redelivered(
    stack: Stack, shapes_detector: Any, draw_scene: Callable[..., Any]
) -> None:
    slow = SlowDetector(shapes_detector, seconds=7)
    put_scene(stack, draw_scene, "uploads/slow/one.png")
    worker = run_worker(stack, slow, visibility_timeout=3)
    wait_until(lambda: job_status(stack, "uploads/slow/one.png")[0] == "SUCCEEDED", timeout=60, what="the slow job")
    worker.stop()
    # 7 s of work under a 3 s visibility timeout: received once, run once, thanks to the lease.
    assert worker.stats.messages == 1
    assert slow.calls == 1
    assert stack.sql("SELECT count(*) FROM results") == [(1,)]


def test_a_job_past_its_deadline_fails_with_a_code(
    stack: Stack, shapes_detector: Any, draw_scene: Callable[..., Any]
) -> None:
    slow = SlowDetector(shapes_detector, seconds=8)
    put_scene(stack, draw_scene, "uploads/slow/late.png")
    worker = run_worker(stack, slow, visibility_timeout=3, job_deadline_seconds=2)
    wait_until(lambda: job_status(stack, "uploads/slow/late.png")[0] == "FAILED", timeout=60, what="the deadline")
    assert job_status(stack, "uploads/slow/late.png") == ("FAILED", "deadline_exceeded")
    wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, timeout=60, what="the message acknowledged")
    # A model in the worker's own process that runs one batch past the deadline has the worker stop
    # for its supervisor to replace (on a thread, as here, without ending the process).
    with pytest.raises(WorkerStuck, match="has run one batch"):
        worker.stop()
    assert EXIT_WATCHDOG not in {t.name for t in threading.enumerate()}, "it would end the test run in 30 s"
    # the late result did not turn the job back into a success
    assert job_status(stack, "uploads/slow/late.png") == ("FAILED", "deadline_exceeded")


def test_shutdown_releases_what_it_cannot_finish_within_the_grace(
    stack: Stack, shapes_detector: Any, draw_scene: Callable[..., Any]
) -> None:
    slow = SlowDetector(shapes_detector, seconds=6)
    put_scene(stack, draw_scene, "uploads/slow/interrupted.png")
    worker = run_worker(stack, slow, visibility_timeout=60, shutdown_grace_seconds=1)
    wait_until(lambda: slow.calls == 1, timeout=60, what="the job to start")
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 15
    # Released with visibility 0, not left invisible for the 60 s timeout: another worker gets it now.
    messages = stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=2).get("Messages", [])
    assert len(messages) == 1
