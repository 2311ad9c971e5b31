"""An image that crashes the decoder, or hangs it, with decoding in processes of its own
(VISIONQ_DECODE_PROCESSES): its job ends FAILED decoder_crashed (decode_timeout) at once, the
images around it succeed, the worker lives on, and nothing goes near the dead-letter queue (with
decoding in threads, the same crash kills the worker and every message it holds comes back:
tests/e2e/test_up_supervision.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL.PngImagePlugin import PngInfo

from tests.conftest import BUCKET, Stack
from tests.integration.fault_harness import jobs_by_key, queue_depth
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration

MARKER = "visionq-poison-for-the-decoder"


@pytest.mark.parametrize(
    ("failpoint", "code"),
    [("VISIONQ_CRASH_DECODER_ON", "decoder_crashed"), ("VISIONQ_HANG_DECODER_ON", "decode_timeout")],
)
def test_a_decoder_crash_or_hang_fails_one_job_and_nothing_else(
    stack: Stack,
    start_worker: Callable[..., Any],
    draw_scene: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    failpoint: str,
    code: str,
) -> None:
    monkeypatch.setenv(failpoint, MARKER)
    monkeypatch.setenv("VISIONQ_DECODE_TIMEOUT_SECONDS", "2")
    worker = start_worker(decode_processes=2)
    keys = []
    for i in range(6):
        buf = io.BytesIO()
        info = PngInfo()
        if i == 2:
            info.add_text("Comment", MARKER)
        draw_scene(60_000 + i, (320, 240))[0].save(buf, "PNG", pnginfo=info)
        key = f"uploads/isolation/{i}.png"
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
        keys.append(key)

    def ended() -> bool:
        jobs = jobs_by_key(stack)
        return all(jobs.get(k, {}).get("status") in ("SUCCEEDED", "FAILED") for k in keys)

    wait_until(ended, timeout=90, what="every job to end")
    jobs = jobs_by_key(stack)
    poison = jobs[keys[2]]
    assert (poison["status"], poison["error_code"]) == ("FAILED", code)
    assert all(jobs[k]["status"] == "SUCCEEDED" for i, k in enumerate(keys) if i != 2)
    assert worker.alive
    wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, timeout=30, what="an empty queue")
    assert queue_depth(stack, stack.dlq_url) == 0
    rows = dict(stack.sql("SELECT key, count(*) FROM results GROUP BY key"))
    assert rows == {k: 1 for i, k in enumerate(keys) if i != 2}
