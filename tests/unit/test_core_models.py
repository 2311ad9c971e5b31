"""One core, several models: which model a job gets, batches per model, and the jobs of a model that
is unknown or could not be loaded (in-memory stores; the same paths run on the local stack in
tests/integration/test_models_pipeline.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from tests.unit.fakes import FakeCaptioner, FakeModel, message, png
from tests.unit.test_core import Harness
from visionq.events import ObjectCreated
from visionq.jobs import Job, JobStatus, direct_upload_job_id, utc_now_iso
from visionq.models.registry import LoadedModels
from visionq.work_items import Outcome


def _two_models(
    model_batches: dict[str, int] | None = None, **overrides: object
) -> tuple[Harness, FakeModel, FakeCaptioner]:
    detector, captioner = FakeModel(), FakeCaptioner()
    models = LoadedModels.named({"detect": detector, "caption": captioner})
    harness = Harness(models=models, max_batch=4, max_wait=0.2, model_batches=model_batches, **overrides)
    return harness, detector, captioner


def _interleaved(h: Harness, n: int) -> list[ObjectCreated]:
    """``n`` direct uploads, every other one for the captioner, processed at once (all DONE)."""
    # Direct uploads pick their model by key: <prefix>models/<name>/...; other keys get the default.
    objs = [
        h.objects.put(f"uploads/models/caption/{i}.png" if i % 2 else f"uploads/cam/{i}.png", png(10 + i))
        for i in range(n)
    ]

    async def body() -> list[Outcome]:
        return list(await asyncio.gather(*(h.process(message(o, message_id=f"m{i}")) for i, o in enumerate(objs))))

    assert h.run(body) == [Outcome.DONE] * n
    return objs


def test_jobs_of_two_models_interleaved_each_get_their_own_model_and_output_kind() -> None:
    h, detector, captioner = _two_models()
    for i, obj in enumerate(_interleaved(h, 6)):
        job = h.jobs.jobs[h.job_of(obj)]
        assert job.status is JobStatus.SUCCEEDED
        assert job.result is not None
        if i % 2:
            assert (job.model, job.result["kind"], job.result["model"]) == ("caption", "captions", "caption")
            assert job.result["captions"] == [{"text": f"grey {10 + i}", "score": -0.5}]
            assert job.result["model_version"] == "captioner@1"
        else:
            assert (job.model, job.result["kind"]) == ("detect", "detections")
    # Batches are formed per model: no batch mixes the two, and each model saw only its images.
    assert sum(len(b) for b in detector.batches) == 3 and sum(len(b) for b in captioner.batches) == 3
    # Each image was decoded no larger than its own model's input (the captioner's is 16 px).
    assert all(max(size) <= 16 for batch in captioner.batches for size in batch)
    assert all(max(size) == 32 for batch in detector.batches for size in batch)


def test_each_model_gets_batches_of_its_own_size() -> None:
    """The captioner's batch is its own (its registry entry's max_batch), the detector's the worker's."""
    h, detector, captioner = _two_models(model_batches={"caption": 1})
    _interleaved(h, 16)
    assert [len(b) for b in captioner.batches] == [1] * 8
    assert max(len(b) for b in detector.batches) > 1 and all(len(b) <= 4 for b in detector.batches)


def test_a_job_created_through_the_api_keeps_the_model_it_asked_for() -> None:
    h, detector, captioner = _two_models()
    job_id = "a" * 32
    obj = h.objects.put(f"uploads/{job_id}/photo.png", png(7))
    now = utc_now_iso()
    h.jobs.create(Job(job_id, JobStatus.PENDING, obj.bucket, obj.key, now, now, 0, model="caption"))
    assert h.run(lambda: h.process(message(obj))) is Outcome.DONE
    job = h.jobs.jobs[job_id]
    assert (job.status, job.model) == (JobStatus.SUCCEEDED, "caption")
    assert captioner.batches and not detector.batches


def test_an_unknown_model_named_by_the_key_fails_the_job_with_unknown_model() -> None:
    h, detector, _ = _two_models()
    obj = h.objects.put("uploads/models/nosuch/x.png", png(3))
    assert h.run(lambda: h.process(message(obj))) is Outcome.DONE
    job = h.jobs.jobs[h.job_of(obj)]
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "unknown_model" and "'nosuch'" in job.error.message
    assert not detector.batches and h.results.rows == {}


def test_a_model_that_could_not_be_loaded_fails_its_jobs_while_the_others_are_served() -> None:
    detector = FakeModel()
    models = LoadedModels.named({"detect": detector}, unavailable={"caption": "weights 'blip/' are corrupt"})
    h = Harness(models=models)
    good = h.objects.put("uploads/cam/good.png", png(1))
    orphan = h.objects.put("uploads/models/caption/orphan.png", png(2))

    async def body() -> list[Outcome]:
        return [await h.process(message(good, message_id="m1")), await h.process(message(orphan, message_id="m2"))]

    assert h.run(body) == [Outcome.DONE, Outcome.DONE]
    assert h.status(good) == (JobStatus.SUCCEEDED, None)
    job = h.jobs.jobs[h.job_of(orphan)]
    assert job.error is not None and job.error.code == "model_unavailable"
    assert "corrupt" in job.error.message


def test_reprocessing_adds_a_result_beside_the_old_one_and_a_second_run_adds_nothing() -> None:
    h, _, captioner = _two_models()
    obj = h.objects.put("uploads/cam/old.png", png(9))
    again = replace(obj, model="caption")  # what `visionq reprocess --model caption` sends

    async def body() -> list[Outcome]:
        return [
            await h.process(message(obj, message_id="m1")),
            await h.process(message(again, message_id="m2")),
            await h.process(message(again, message_id="m3")),
        ]

    assert h.run(body) == [Outcome.DONE] * 3
    first = h.jobs.jobs[direct_upload_job_id(obj.bucket, obj.key, obj.etag)]
    rerun = h.jobs.jobs[direct_upload_job_id(obj.bucket, obj.key, f"{obj.etag}#model=caption")]
    assert (first.model, first.status) == ("detect", JobStatus.SUCCEEDED)
    assert (rerun.model, rerun.status) == ("caption", JobStatus.SUCCEEDED)
    assert len(h.results.rows) == 2  # one per model, side by side
    assert len(captioner.batches) == 1  # the second run found the job done and ran nothing
    assert h.processor.stats.duplicates == 1


def test_reprocessing_an_overwritten_api_upload_fails_that_job_instead_of_leaving_it_running() -> None:
    h, _, _ = _two_models()
    key = f"uploads/{'b' * 32}/photo.png"
    old = h.objects.put(key, png(4))
    h.objects.put(key, png(5))  # overwritten since it was listed
    assert h.run(lambda: h.process(message(replace(old, model="caption")))) is Outcome.DONE
    job = h.jobs.jobs[direct_upload_job_id(old.bucket, key, f"{old.etag}#model=caption")]
    assert job.status is JobStatus.FAILED and job.error is not None and job.error.code == "object_changed"
