"""Every output kind lands in PostgreSQL: the whole output in ``results``, its items in the kind's own
table (rows a user can query with SQL), and reads back as the same typed output."""

from __future__ import annotations

import dataclasses

import pytest

from tests.conftest import Stack
from visionq.outputs import (
    Box,
    Caption,
    Captions,
    Classifications,
    ClassScore,
    Detections,
    ModelOutput,
    OrientedBox,
    OrientedBoxes,
    Pose,
    Poses,
    Segment,
    Segments,
    output_from_dict,
)
from visionq.stores.result_store import PostgresResultStore, ResultRecord

pytestmark = pytest.mark.integration

BOX = Box(class_id=3, label="car", confidence=0.9, x1=10.0, y1=20.0, x2=110.0, y2=80.0)
OUTPUTS: dict[str, tuple[ModelOutput, str, tuple[object, ...]]] = {
    # kind: (output, a query over its table, the row it must find)
    "detections": (
        Detections(640, 480, (BOX,)),
        "SELECT label, x1, y2 FROM detections",
        ("car", 10.0, 80.0),
    ),
    "captions": (
        Captions(640, 480, (Caption("a red car on a road", -0.42),)),
        "SELECT text, score FROM captions",
        ("a red car on a road", -0.42),
    ),
    "classifications": (
        Classifications(640, 480, (ClassScore(817, "sports car", 0.8), ClassScore(None, "a bus", 0.1))),
        "SELECT idx, class_id, label, score FROM classifications ORDER BY idx DESC LIMIT 1",
        (1, None, "a bus", 0.1),
    ),
    "segments": (
        Segments(640, 480, (Segment(3, "car", 0.9, BOX, ((10.0, 20.0), (110.0, 20.0), (60.0, 80.0))),)),
        "SELECT label, x1, jsonb_array_length(polygon), polygon->2->>0 FROM segments",
        ("car", 10.0, 3, "60.0"),
    ),
    "poses": (
        Poses(640, 480, (Pose(0, "person", 0.8, BOX, ((15.0, 25.0, 0.9), (30.0, 40.0, 0.2))),)),
        "SELECT label, jsonb_array_length(points), points->1->>2 FROM keypoints",
        ("person", 2, "0.2"),
    ),
    "oriented_boxes": (
        OrientedBoxes(
            640,
            480,
            (
                OrientedBox(
                    1, "ship", 0.7, 50.0, 40.0, 30.0, 10.0, 0.5, ((1.0, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0))
                ),
            ),
        ),
        "SELECT label, angle, corners->3->>1 FROM oriented_boxes",
        ("ship", 0.5, "8.0"),
    ),
}


def record_of(kind: str) -> ResultRecord:
    """A result of ``OUTPUTS[kind]``'s output, its model named after the kind."""
    return ResultRecord(
        job_id=f"job-{kind}",
        bucket="b",
        key=f"k/{kind}.png",
        etag="e1",
        model_name=kind,
        model="v@1",
        output=OUTPUTS[kind][0],
    )


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_each_kind_is_written_to_its_table_and_reads_back(stack: Stack, kind: str) -> None:
    output, query, expected = OUTPUTS[kind]
    store = PostgresResultStore(stack.database_url)
    try:
        record = record_of(kind)
        [stored] = store.record_results([record])
        assert stored.created
        assert stack.sql(query) == [expected]
        assert stack.sql("SELECT kind, item_count, model_name FROM results") == [(kind, output.count, kind)]
        full = store.read_output(f"job-{kind}")
        assert full is not None and output_from_dict(full) == output
        # The same identity again: the first row stands, no second set of item rows.
        [again] = store.record_results([record])
        assert not again.created and len(stack.sql(query)) == 1
        # A failed job keeps no result: discarding removes the items too.
        assert store.discard(f"job-{kind}") == 1
        assert stack.sql(query) == []
    finally:
        store.close()


def test_the_same_object_through_two_models_keeps_both_results(stack: Stack) -> None:
    store = PostgresResultStore(stack.database_url)
    try:
        common = {"bucket": "b", "key": "k.png", "etag": "e1", "model": "v@1"}
        first = ResultRecord(job_id="j1", model_name="detect", output=OUTPUTS["detections"][0], **common)
        second = ResultRecord(job_id="j2", model_name="caption", output=OUTPUTS["captions"][0], **common)
        assert [r.created for r in store.record_results([first, second])] == [True, True]
        assert stack.sql("SELECT model_name, kind FROM results ORDER BY model_name") == [
            ("caption", "captions"),
            ("detect", "detections"),
        ]
    finally:
        store.close()


def test_a_batch_is_written_at_once_and_each_record_gets_its_own_answer(stack: Stack) -> None:
    """One batch of every kind, with an identity already written and one twice in the batch: each
    record's answer, in order, is its own row or the row that stands; each row's items are its own."""
    store = PostgresResultStore(stack.database_url)
    try:
        records = [record_of(kind) for kind in OUTPUTS]
        earlier = records[1]  # captions: written by an earlier delivery, with other timings
        [first] = store.record_results([dataclasses.replace(earlier, timings={"inference_ms": 7.0})])
        assert first.created
        twice = dataclasses.replace(records[0], timings={"inference_ms": 99.0})  # detections again
        stored = store.record_results([*records, twice])
        assert [s.created for s in stored] == [True, False, *[True] * (len(records) - 2), False]
        assert stored[1].inference_ms == 7.0  # the earlier row stands
        assert stored[-1].output == stored[0].output and stored[-1].inference_ms is None  # the batch's first stands
        for (output, query, expected), answer in zip(OUTPUTS.values(), stored, strict=False):
            assert output_from_dict(answer.output) == output
            assert stack.sql(query) == [expected]
        assert stack.sql("SELECT count(*) FROM results") == [(len(records),)]
        assert stack.sql("SELECT count(*) FROM detections") == [(OUTPUTS["detections"][0].count,)]
        rows = stack.sql("SELECT r.job_id, d.job_id FROM detections d JOIN results r ON r.id = d.result_id")
        assert rows and all(result_job == item_job == "job-detections" for result_job, item_job in rows)
    finally:
        store.close()
