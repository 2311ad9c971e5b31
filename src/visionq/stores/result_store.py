"""The results destination (PostgreSQL): ``results`` and, per output kind, rows beside it
(``stores/output_rows.py``), written idempotently: the first row for an identity stands."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from visionq.errors import TransientError, VisionqError
from visionq.outputs import ModelOutput
from visionq.stores.output_rows import insert_output_rows
from visionq.stores.postgres import PostgresTimeouts, connect

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultRecord:
    """Everything one result row needs: the object's identity, the model, its output."""

    job_id: str
    bucket: str
    key: str
    etag: str
    model_name: str  # the registry's name for it
    model: str  # its version (the weights' digest)
    output: ModelOutput
    timings: dict[str, float] = field(default_factory=dict)
    object_created_at: float | None = None  # epoch seconds, from the S3 event


@dataclass(frozen=True)
class StoredResult:
    """What PostgreSQL holds for a record's identity once the write committed."""

    output: dict[str, Any]
    inference_ms: float | None
    created: bool  # False: an earlier delivery's row was there, and it stands


class ResultStore(Protocol):
    def record_results(self, records: Sequence[ResultRecord]) -> list[StoredResult]: ...
    def discard(self, job_id: str) -> int: ...
    def read_output(self, job_id: str) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


# First writer wins, as in the job record: a redelivered or duplicated event finds the row there and
# keeps it, so what the job record summarises is always exactly what this table holds. A batch's
# records go in one statement (one round trip, not one per image); the rows it returns name the
# identities it inserted, and any other record reads the row that stands.
_RESULT_COLUMNS = (
    "job_id, bucket, key, etag, model_name, model, kind, width, height, item_count, "
    "inference_ms, total_ms, timings, output, object_created_at"
)
_RESULT_VALUES = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))"
_INSERT_RESULTS = """
INSERT INTO results ({columns})
VALUES {values}
ON CONFLICT ON CONSTRAINT results_identity DO NOTHING
RETURNING id, bucket, key, etag, model_name, model
"""

_EXISTING_RESULT = """
SELECT output, inference_ms FROM results
WHERE bucket = %s AND key = %s AND etag = %s AND model_name = %s AND model = %s
"""


def _identity(record: ResultRecord) -> tuple[str, str, str, str, str]:
    return (record.bucket, record.key, record.etag, record.model_name, record.model)


def _values(record: ResultRecord) -> tuple[Any, ...]:
    return (
        record.job_id,
        *_identity(record),
        record.output.kind,
        record.output.width,
        record.output.height,
        record.output.count,
        record.timings.get("inference_ms"),
        record.timings.get("total_ms"),
        Jsonb(record.timings),
        Jsonb(record.output.as_dict()),
        record.object_created_at,
    )


class PostgresResultStore:
    """A connection per calling thread, opened lazily and reopened after a failure.

    Per thread, so concurrent calls (the worker's store pool, the API's request threads) never
    share a transaction, and a call stuck on a hung server holds up only its own thread while the
    caller's timeout moves on (see ``core.Processor._store``).
    """

    def __init__(self, conninfo: str, *, timeouts: PostgresTimeouts | None = None) -> None:
        self._conninfo = conninfo
        self._timeouts = timeouts or PostgresTimeouts()
        self._local = threading.local()
        self._opened: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def record_results(self, records: Sequence[ResultRecord]) -> list[StoredResult]:
        """Commit ``records`` in one transaction; a record whose identity has a row keeps that row
        (one written earlier, or by an earlier record of the same batch)."""
        if not records:
            return []
        with self._transaction() as cur:
            cur.execute(
                _INSERT_RESULTS.format(columns=_RESULT_COLUMNS, values=", ".join([_RESULT_VALUES] * len(records))),
                [value for record in records for value in _values(record)],
            )
            inserted = {tuple(row[1:]): row[0] for row in cur.fetchall()}
            stored: list[StoredResult] = []
            created: list[tuple[int, ResultRecord]] = []
            for record in records:
                result_id = inserted.pop(_identity(record), None)  # popped: a second record of it reads it
                if result_id is not None:
                    created.append((result_id, record))
                    output, inference_ms = record.output.as_dict(), record.timings.get("inference_ms")
                    stored.append(StoredResult(output, inference_ms, created=True))
                    continue
                cur.execute(_EXISTING_RESULT, _identity(record))
                existing = cur.fetchone()
                assert existing is not None  # the conflict that skipped our row is this row
                stored.append(StoredResult(existing[0], existing[1], created=False))
            insert_output_rows(cur, [(result_id, record.job_id, record.output) for result_id, record in created])
        return stored

    def discard(self, job_id: str) -> int:
        """Delete the results of ``job_id`` (a FAILED job has none); how many rows went."""
        with self._transaction() as cur:
            cur.execute("DELETE FROM results WHERE job_id = %s", (job_id,))
            return cur.rowcount

    def read_output(self, job_id: str) -> dict[str, Any] | None:
        """The full output of ``job_id``'s newest result, or None."""
        with self._transaction() as cur:
            cur.execute("SELECT output FROM results WHERE job_id = %s ORDER BY created_at DESC LIMIT 1", (job_id,))
            row = cur.fetchone()
        return dict(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout) as exc:
            # The server went away, is restarting, or a timeout cancelled the statement: drop the
            # connection, let the caller retry.
            self._drop(conn)
            raise TransientError(f"PostgreSQL unavailable ({type(exc).__name__})") from exc
        except psycopg.Error as exc:
            self._drop(conn)
            raise VisionqError(f"PostgreSQL rejected the write ({type(exc).__name__})") from exc

    def _drop(self, conn: psycopg.Connection[Any] | None) -> None:
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._opened:
                    self._opened.remove(conn)
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = connect(self._conninfo, self._timeouts)
            with self._lock:
                self._opened.append(conn)
        return conn
