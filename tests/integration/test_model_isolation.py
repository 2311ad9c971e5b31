"""A model that crashes its process, with the model in a process of its own (VISIONQ_MODEL_PROCESS):
the batch holding the image is run again one image at a time, so that image's job ends FAILED
model_error, its batch-mates succeed, the worker lives on, and no message goes back to the queue
or towards the dead-letter queue."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.conftest import BUCKET, RunningWorker, Stack
from tests.integration.fault_harness import Supervisor, jobs_by_key, queue_depth
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration

CRASH = 13  # the synthetic model kills its process on an image whose first pixel's red value is this


def png(first_red: int) -> bytes:
    pixels = np.full((240, 320, 3), 90, np.uint8)
    pixels[0, 0, 0] = first_red
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_a_model_crash_fails_one_job_and_nothing_else(stack: Stack, tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        f'default = "null"\n[models.null]\nfamily = "synthetic"\nweights = "null"\ncrash_on_value = {CRASH}\n'
    )
    settings = stack.worker_settings(models_file=models, model_process=True, max_batch=6, max_wait_ms=500)
    worker = RunningWorker(settings, None).start()
    keys = [f"uploads/model-isolation/{i}.png" for i in range(6)]
    for i, key in enumerate(keys):
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png(CRASH if i == 2 else 200))

    def ended() -> bool:
        jobs = jobs_by_key(stack)
        return all(jobs.get(k, {}).get("status") in ("SUCCEEDED", "FAILED") for k in keys)

    try:
        wait_until(ended, timeout=120, what="every job to end")
        jobs = jobs_by_key(stack)
        poison = jobs[keys[2]]
        assert (poison["status"], poison["error_code"]) == ("FAILED", "model_error")
        assert all(jobs[k]["status"] == "SUCCEEDED" for i, k in enumerate(keys) if i != 2)
        assert worker.alive and worker.error is None
        wait_until(lambda: queue_depth(stack, stack.queue_url) == 0, timeout=30, what="an empty queue")
        assert queue_depth(stack, stack.dlq_url) == 0
        rows = dict(stack.sql("SELECT key, count(*) FROM results GROUP BY key"))
        assert rows == {k: 1 for i, k in enumerate(keys) if i != 2}
    finally:
        worker.stop()
    assert worker.error is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_a_worker_gives_its_model_cores_of_its_own(stack: Stack, tmp_path: Path) -> None:
    """VISIONQ_MODEL_CPUS: the model's process runs on those CPUs, the worker and its decode
    processes on the others, and jobs run as usual."""
    usable = os.sched_getaffinity(0)
    model_cpu = max(usable)
    models = tmp_path / "models.toml"
    models.write_text('default = "null"\n[models.null]\nfamily = "synthetic"\nweights = "null"\n')
    env = {"VISIONQ_MODELS_FILE": str(models), "VISIONQ_MODEL_PROCESS": "1", "VISIONQ_MODEL_CPUS": str(model_cpu)}
    worker = Supervisor(stack, tmp_path, **env).start()
    keys = [f"uploads/model-cpus/{i}.png" for i in range(3)]
    try:
        for key in keys:
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png(200))
        wait_until(
            lambda: all(jobs_by_key(stack).get(k, {}).get("status") == "SUCCEEDED" for k in keys),
            timeout=120,
            what="every job to succeed",
        )
        assert worker.proc is not None
        family = psutil.Process(worker.proc.pid)
        [model_process] = [p for p in family.children() if "spawn_main" in " ".join(p.cmdline())]
        assert os.sched_getaffinity(model_process.pid) == {model_cpu}
        rest = usable - {model_cpu}
        assert os.sched_getaffinity(family.pid) == rest
        assert all(os.sched_getaffinity(p.pid) == rest for p in family.children(recursive=True) if p != model_process)
    finally:
        assert worker.stop() == 0
