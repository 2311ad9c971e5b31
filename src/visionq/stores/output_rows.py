"""Per output kind, the query-friendly rows written beside ``results`` in the same transaction:
boxes into ``detections``, captions into ``captions``, top-k classes into ``classifications``,
masks (as polygons) into ``segments``, keypoints into ``keypoints``, rotated boxes into
``oriented_boxes``. Tables: ``infra/migrations/0003_model_outputs.sql``. Each row carries the
job id, so ``SELECT ... WHERE job_id = ...`` needs no join."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from visionq.outputs import (
    Box,
    Captions,
    Classifications,
    Detections,
    ModelOutput,
    OrientedBoxes,
    Pose,
    Poses,
    Segment,
    Segments,
)

_BOX = "class_id, label, confidence, x1, y1, x2, y2"


def _box(b: Box) -> tuple[Any, ...]:
    return (b.class_id, b.label, b.confidence, b.x1, b.y1, b.x2, b.y2)


def _instance(i: Segment | Pose) -> tuple[Any, ...]:
    """An instance's own class and confidence, with its box's corners."""
    return (i.class_id, i.label, i.confidence, i.box.x1, i.box.y1, i.box.x2, i.box.y2)


def _rows(output: ModelOutput) -> tuple[str, str, Sequence[tuple[Any, ...]]]:
    """(table, its columns after result_id/idx/job_id, one tuple per item) for ``output``."""
    if isinstance(output, Detections):
        return "detections", _BOX, [_box(b) for b in output.items]
    if isinstance(output, Captions):
        return "captions", "text, score", [(c.text, c.score) for c in output.items]
    if isinstance(output, Classifications):
        return "classifications", "class_id, label, score", [(c.class_id, c.label, c.score) for c in output.items]
    if isinstance(output, Segments):
        return "segments", f"{_BOX}, polygon", [(*_instance(s), Jsonb(s.polygon)) for s in output.items]
    if isinstance(output, Poses):
        return "keypoints", f"{_BOX}, points", [(*_instance(p), Jsonb(p.keypoints)) for p in output.items]
    if isinstance(output, OrientedBoxes):
        columns = "class_id, label, confidence, cx, cy, width, height, angle, corners"
        rows = [
            (o.class_id, o.label, o.confidence, o.cx, o.cy, o.width, o.height, o.angle, Jsonb(o.corners))
            for o in output.items
        ]
        return "oriented_boxes", columns, rows
    raise TypeError(f"no table for output kind {type(output).__name__}")


def insert_output_rows(cur: psycopg.Cursor[Any], results: Sequence[tuple[int, str, ModelOutput]]) -> None:
    """The rows of each ``(result id, job id, output)``: one ``executemany`` per table the outputs
    fill (a batch of detections is one statement, not one per image)."""
    by_table: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for result_id, job_id, output in results:
        table, columns, rows = _rows(output)
        by_table.setdefault((table, columns), []).extend((result_id, i, job_id, *row) for i, row in enumerate(rows))
    for (table, columns), rows in by_table.items():
        if not rows:
            continue
        placeholders = ", ".join(["%s"] * len(rows[0]))
        sql = f"INSERT INTO {table} (result_id, idx, job_id, {columns}) VALUES ({placeholders})"
        cur.executemany(sql.encode(), rows)
