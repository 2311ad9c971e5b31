"""The results destination (PostgreSQL): ``results`` and ``detections``, written idempotently."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from visionq.detector import Prediction
from visionq.errors import TransientError, VisionqError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultRecord:
    """Everything one result row needs: the object's identity, the model, its output."""

    job_id: str
    bucket: str
    key: str
    etag: str
    model: str
    prediction: Prediction
    timings: dict[str, float] = field(default_factory=dict)
    object_created_at: float | None = None  # epoch seconds, from the S3 event


class ResultStore(Protocol):
    def record_results(self, records: Sequence[ResultRecord]) -> None: ...
    def close(self) -> None: ...


_UPSERT_RESULT = """
INSERT INTO results (job_id, bucket, key, etag, model, width, height, detection_count,
                     inference_ms, total_ms, timings, output, object_created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))
ON CONFLICT ON CONSTRAINT results_identity DO UPDATE SET
    job_id = EXCLUDED.job_id, width = EXCLUDED.width, height = EXCLUDED.height,
    detection_count = EXCLUDED.detection_count, inference_ms = EXCLUDED.inference_ms,
    total_ms = EXCLUDED.total_ms, timings = EXCLUDED.timings, output = EXCLUDED.output,
    object_created_at = EXCLUDED.object_created_at,
    updated_at = now()
RETURNING id
"""

_INSERT_DETECTION = """
INSERT INTO detections (result_id, idx, job_id, class_id, label, confidence, x1, y1, x2, y2)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


class PostgresResultStore:
    """One connection, opened lazily and reopened after a failure; used from one thread at a time."""

    def __init__(self, conninfo: str, *, connect_timeout: int = 5) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None

    def record_results(self, records: Sequence[ResultRecord]) -> None:
        """Commit ``records`` in one transaction; each replaces any earlier row of its identity."""
        if not records:
            return
        with self._transaction() as cur:
            for record in records:
                p = record.prediction
                cur.execute(
                    _UPSERT_RESULT,
                    (
                        record.job_id,
                        record.bucket,
                        record.key,
                        record.etag,
                        record.model,
                        p.width,
                        p.height,
                        len(p.detections),
                        record.timings.get("inference_ms"),
                        record.timings.get("total_ms"),
                        Jsonb(record.timings),
                        Jsonb(p.as_dict()),
                        record.object_created_at,
                    ),
                )
                row = cur.fetchone()
                assert row is not None
                result_id = row[0]
                cur.execute("DELETE FROM detections WHERE result_id = %s", (result_id,))
                if p.detections:
                    cur.executemany(
                        _INSERT_DETECTION,
                        [
                            (result_id, i, record.job_id, d.class_id, d.label, d.confidence, d.x1, d.y1, d.x2, d.y2)
                            for i, d in enumerate(p.detections)
                        ],
                    )

    def apply_schema(self, sql: str) -> None:
        with self._transaction() as cur:
            cur.execute(sql.encode())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            # The server went away or is restarting: drop the connection, let the caller retry.
            self.close()
            raise TransientError(f"PostgreSQL unavailable ({type(exc).__name__})") from exc
        except psycopg.Error as exc:
            self.close()
            raise VisionqError(f"PostgreSQL rejected the write ({type(exc).__name__})") from exc

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, connect_timeout=self._connect_timeout, autocommit=True)
        return self._conn
