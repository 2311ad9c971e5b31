"""Several models on the real local stack: one worker serving a detector and a BLIP captioner (a tiny
one, built here and fetched by the worker from an s3:// URI), jobs of both interleaved, each
result in its own tables; unknown models by API and by event; the weights cache reused."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import BUCKET, SHAPES_WEIGHTS, TABLE, RunningWorker, Stack
from tests.tiny_models import build_tiny_blip, build_tiny_image_classifier
from visionq.errors import JobNotFound
from visionq.local_stack import wait_until
from visionq.stores.job_store import DynamoJobStore

pytestmark = pytest.mark.integration

MODELS_BUCKET = "visionq-test-models"
WAIT = 120


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_image_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture
def registry(stack: Stack, tiny_blip: Path, tiny_classifier: Path, tmp_path: Path) -> Path:
    """detect (a local weights file, the default), caption (a directory in S3), classify (a local
    directory, through transformers' pipeline)."""
    stack.s3.create_bucket(Bucket=MODELS_BUCKET)
    for file in sorted(p for p in tiny_blip.rglob("*") if p.is_file()):
        stack.s3.upload_file(str(file), MODELS_BUCKET, f"blip-tiny/{file.relative_to(tiny_blip).as_posix()}")
    path = tmp_path / "models.toml"
    path.write_text(
        'default = "detect"\n\n'
        f'[models.detect]\nfamily = "ultralytics"\nweights = "{SHAPES_WEIGHTS}"\n\n'
        f'[models.caption]\nfamily = "blip"\nweights = "s3://{MODELS_BUCKET}/blip-tiny/"\nmax_new_tokens = 8\n\n'
        f'[models.classify]\nfamily = "transformers"\ntask = "image-classification"\nweights = "{tiny_classifier}"\n'
        "top_k = 2\n"
    )
    return path


@pytest.fixture
def workers(stack: Stack, registry: Path, tmp_path: Path) -> Iterator[Callable[[], RunningWorker]]:
    started: list[RunningWorker] = []

    def start() -> RunningWorker:
        ready = tmp_path / f"ready-{len(started)}"
        settings = stack.worker_settings(
            models_file=registry, weights_cache=tmp_path / "cache", max_batch=4, ready_file=ready
        )
        worker = RunningWorker(settings, None).start()  # no model passed: the worker loads the registry's
        started.append(worker)
        wait_until(lambda: ready.exists() or not worker.alive, timeout=WAIT, what="the worker to load its models")
        assert worker.alive, worker.error
        return worker

    yield start
    for worker in started:
        worker.stop()


def _png(draw_scene: Callable[..., Any], seed: int) -> bytes:
    buf = io.BytesIO()
    draw_scene(seed, (320, 240))[0].save(buf, "PNG")
    return buf.getvalue()


def _wait_terminal(stack: Stack, job_ids: list[str]) -> dict[str, Any]:
    jobs = DynamoJobStore(stack.dynamodb, TABLE)
    deadline = time.monotonic() + WAIT
    while True:
        found = {job_id: jobs.get(job_id) for job_id in job_ids}
        if all(job.status.terminal for job in found.values()):
            return found
        assert time.monotonic() < deadline, {k: str(v.status) for k, v in found.items()}
        time.sleep(0.2)


def _job_of_key(stack: Stack, key: str) -> str:
    """The id of the job the worker records for a direct upload, once it has."""
    jobs = DynamoJobStore(stack.dynamodb, TABLE)
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(JobNotFound):
            return jobs.find_by_object(BUCKET, key).job_id
        assert time.monotonic() < deadline, key
        time.sleep(0.2)


def test_one_worker_serves_two_models_each_result_in_its_tables(
    stack: Stack, registry: Path, workers: Callable[[], RunningWorker], draw_scene: Callable[..., Any]
) -> None:
    from functions.http_api import create_app
    from visionq.api_keys import ApiKeyStore

    worker = workers()
    settings = stack.api_settings().model_copy(update={"models_file": registry})
    api = TestClient(create_app(settings))
    key, _ = ApiKeyStore(stack.dynamodb, TABLE).create("tests")
    api.headers["x-api-key"] = key

    # Through the API, interleaved: detect, caption, detect, caption (and the default, detect).
    job_ids, kinds = [], []
    for i, model in enumerate(["detect", "caption", None, "caption"]):
        body = {"filename": f"scene{i}.png", "content_type": "image/png", **({"model": model} if model else {})}
        ticket = api.post("/v1/jobs", json=body).json()
        upload = ticket["upload"]
        response = httpx.post(upload["url"], data=upload["fields"], files={"file": ("x.png", _png(draw_scene, i))})
        assert response.status_code in (200, 204), response.text
        job_ids.append(ticket["job_id"])
        kinds.append("captions" if model == "caption" else "detections")
    unknown = api.post("/v1/jobs", json={"filename": "a.png", "content_type": "image/png", "model": "nosuch"})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_model"

    # Direct uploads name their model by key; an unknown name fails the job.
    stack.s3.put_object(Bucket=BUCKET, Key="uploads/models/caption/direct.png", Body=_png(draw_scene, 9))
    stack.s3.put_object(Bucket=BUCKET, Key="uploads/models/nosuch/direct.png", Body=_png(draw_scene, 10))
    direct_caption = _job_of_key(stack, "uploads/models/caption/direct.png")
    direct_unknown = _job_of_key(stack, "uploads/models/nosuch/direct.png")
    jobs = _wait_terminal(stack, [*job_ids, direct_caption, direct_unknown])

    for job_id, kind in zip(job_ids, kinds, strict=True):
        job = jobs[job_id]
        assert str(job.status) == "SUCCEEDED", job.error
        assert job.result is not None and job.result["kind"] == kind
        view = api.get(f"/v1/jobs/{job_id}").json()
        assert view["result"]["kind"] == kind and view["model"] == ("caption" if kind == "captions" else "detect")
    assert jobs[direct_caption].result is not None and jobs[direct_caption].result["kind"] == "captions"
    assert (str(jobs[direct_unknown].status), jobs[direct_unknown].error.code) == ("FAILED", "unknown_model")  # type: ignore[union-attr]

    # Each result in its tables: boxes in detections, captions in captions, nothing crossed.
    caption_ids = [j for j, k in zip(job_ids, kinds, strict=True) if k == "captions"] + [direct_caption]
    detect_ids = [j for j, k in zip(job_ids, kinds, strict=True) if k == "detections"]
    rows = stack.sql(
        "SELECT r.job_id, r.model_name, r.kind, r.item_count, count(c.idx), min(c.text)"
        " FROM results r LEFT JOIN captions c ON c.result_id = r.id WHERE r.job_id = ANY(%s) GROUP BY r.id",
        caption_ids,
    )
    assert sorted(r[0] for r in rows) == sorted(caption_ids)
    for _, model_name, kind, items, captions, text in rows:
        # A tiny random model's words may be none at all: the caption row is what must be there.
        assert (model_name, kind, items, captions) == ("caption", "captions", 1, 1) and text is not None
    boxes = stack.sql(
        "SELECT r.job_id, r.model_name, count(d.idx) FROM results r JOIN detections d ON d.result_id = r.id"
        " WHERE r.job_id = ANY(%s) GROUP BY r.id",
        detect_ids,
    )
    assert sorted(r[0] for r in boxes) == sorted(detect_ids) and all(r[1] == "detect" and r[2] > 0 for r in boxes)
    assert stack.sql("SELECT count(*) FROM detections WHERE job_id = ANY(%s)", caption_ids) == [(0,)]

    # The third model, a transformers image classifier: its top-k classes in classifications.
    stack.s3.put_object(Bucket=BUCKET, Key="uploads/models/classify/c.png", Body=_png(draw_scene, 11))
    classified = _wait_terminal(stack, [_job_of_key(stack, "uploads/models/classify/c.png")]).popitem()[1]
    assert str(classified.status) == "SUCCEEDED" and classified.result is not None
    assert classified.result["kind"] == "classifications" and classified.result["class_count"] == 2
    ranks = stack.sql("SELECT idx, label, score FROM classifications WHERE job_id = %s ORDER BY idx", classified.job_id)
    assert [r[0] for r in ranks] == [0, 1] and ranks[0][2] >= ranks[1][2]
    assert worker.alive


def test_weights_from_s3_are_cached_and_reused_by_a_second_worker(
    stack: Stack, registry: Path, workers: Callable[[], RunningWorker], tmp_path: Path, draw_scene: Callable[..., Any]
) -> None:
    first = workers()
    cached = [p for p in (tmp_path / "cache").rglob("model.safetensors")]
    assert len(cached) == 1  # downloaded once, into the cache
    inode, mtime = cached[0].stat().st_ino, cached[0].stat().st_mtime_ns
    first.stop()

    second = workers()
    stack.s3.put_object(Bucket=BUCKET, Key="uploads/models/caption/two.png", Body=_png(draw_scene, 2))
    job = _wait_terminal(stack, [_job_of_key(stack, "uploads/models/caption/two.png")]).popitem()[1]
    assert str(job.status) == "SUCCEEDED" and job.result is not None and job.result["kind"] == "captions"
    again = [p for p in (tmp_path / "cache").rglob("model.safetensors")]
    assert again == cached and (again[0].stat().st_ino, again[0].stat().st_mtime_ns) == (inode, mtime)
    assert second.alive


def test_reprocess_runs_another_model_over_stored_objects_once(
    stack: Stack,
    registry: Path,
    workers: Callable[[], RunningWorker],
    draw_scene: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from visionq.cli import main

    workers()
    keys = [f"uploads/cam/{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=_png(draw_scene, 30 + i))
    first = _wait_terminal(stack, [_job_of_key(stack, key) for key in keys])
    assert all(job.model == "detect" and str(job.status) == "SUCCEEDED" for job in first.values())

    for name, value in {
        "VISIONQ_QUEUE_URL": stack.queue_url,
        "VISIONQ_JOBS_TABLE": TABLE,
        "VISIONQ_MODELS_FILE": str(registry),
        "AWS_ENDPOINT_URL": stack.endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(registry.parent)  # no .visionq/local.env here
    url = f"s3://{BUCKET}/uploads/cam/"
    assert main(["reprocess", url, "--model", "caption", "--wait", "--timeout", str(WAIT)]) == 0
    out = capsys.readouterr()
    assert "3 object(s) under" in out.out and "3 queued for caption, 0 known" in out.out
    assert "processed: 3/3" in out.err  # the progress line: count, rate, ETA

    rows = stack.sql("SELECT key, model_name, kind FROM results ORDER BY key, model_name")
    assert rows == [
        (key, name, kind) for key in keys for name, kind in (("caption", "captions"), ("detect", "detections"))
    ]

    # A second run finds every job there and sends nothing; nothing new is written.
    assert main(["reprocess", url, "--model", "caption"]) == 0
    assert "0 queued for caption, 3 known" in capsys.readouterr().out
    assert main(["reprocess", url, "--model", "nosuch"]) == 2
    assert "no model named 'nosuch'" in capsys.readouterr().err
    assert len(stack.sql("SELECT 1 FROM results")) == 6
