"""Versioned schema migrations for the results database, applied by ``visionq bootstrap``.

The migrations are SQL files named ``NNNN_name.sql`` (``0001_initial.sql``, ...) in
``infra/migrations/``, found through the installed ``infra`` package, so a wheel finds its own.
Each one is applied once, in version order, in a transaction of its own that also inserts its row
into ``schema_migrations`` (version, name, sha256 of the file, applied_at): a file that fails
leaves nothing of itself behind, and the next run starts again from it.

Every transaction first takes a transaction-scoped advisory lock, so bootstraps that run at the
same time (several deploys, several workers' start-ups) wait for each other and apply each file
exactly once; whichever finds a file still pending applies it. A file changed after it was applied
(its checksum differs from the one recorded) stops the run with :class:`MigrationChecksumError`
before anything else is applied: put the change in a new file instead.

A file must not commit or roll back itself, nor use statements that cannot run in a transaction
(``CREATE INDEX CONCURRENTLY``, ``VACUUM``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from visionq.errors import TransientError, VisionqError
from visionq.stores.postgres import PostgresTimeouts, connect

logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "infra"  # the migrations are infra/migrations/*.sql, shipped in the wheel
MIGRATIONS_TABLE = "schema_migrations"
FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.sql$")

# Migrations may take longer than a worker's statement (an index on a big table), so their
# statements get more time. A DDL statement waiting for a table lock is bounded by ``lock_ms``
# (while it waits, it queues everyone else's access to that table); waiting for another
# bootstrap's advisory lock is bounded by ``statement_ms`` only.
MIGRATION_TIMEOUTS = PostgresTimeouts(statement_ms=600_000, lock_ms=15_000, idle_in_transaction_ms=600_000)

# pg_advisory_xact_lock's key for "migrating this database": "visionq" in ASCII.
_LOCK_KEY = int.from_bytes(b"visionq", "big")

_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,  -- sha256 (hex) of the file, line endings as LF
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(VisionqError):
    """The migrations cannot be applied: a bad file name, a file PostgreSQL rejected, ..."""

    code = "migration_failed"


class MigrationChecksumError(MigrationError):
    """A migration file differs from the one applied to this database."""

    code = "migration_changed"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # "initial" for 0001_initial.sql
    sql: str
    checksum: str  # sha256 hex of the file, line endings normalised to LF

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def default_migrations_dir() -> Traversable:
    """``infra/migrations`` of the installed ``infra`` package (a checkout, a wheel, a zip)."""
    return files(MIGRATIONS_PACKAGE) / "migrations"


def checksum(data: bytes) -> str:
    """What ``schema_migrations.checksum`` holds for a file's bytes (CRLF and LF count the same)."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def discover_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every ``NNNN_name.sql`` in ``directory`` (default: :func:`default_migrations_dir`), by version.

    Other files are ignored, except ``.sql`` files with another name and two files with the same
    number, which are errors: a migration that silently never runs is worse than a failed bootstrap.
    """
    directory = directory if directory is not None else default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    by_version: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        match = FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: a migration file is named NNNN_name.sql (e.g. 0003_add_captions.sql)")
        version = int(match["version"])
        if version == 0:
            raise MigrationError(f"{entry.name}: migration versions start at 0001")
        data = entry.read_bytes()
        migration = Migration(version, match["name"], data.decode("utf-8"), checksum(data))
        if version in by_version:
            raise MigrationError(
                f"two migrations numbered {version:04d}: {by_version[version].filename} and {entry.name};"
                " renumber one of them"
            )
        by_version[version] = migration
    return [by_version[v] for v in sorted(by_version)]


def migrate(
    conninfo: str, *, directory: Traversable | None = None, timeouts: PostgresTimeouts = MIGRATION_TIMEOUTS
) -> list[int]:
    """Apply every pending migration, in order; the versions this call applied (often none).

    Safe to run concurrently with itself: each version is applied by exactly one caller. Raises
    :class:`MigrationChecksumError` if an applied file was changed since, :class:`MigrationError`
    if a file fails (that file and the ones after it stay pending), :class:`TransientError` if
    PostgreSQL cannot be reached.
    """
    migrations = discover_migrations(directory)
    applied: list[int] = []
    try:
        with connect(conninfo, timeouts) as conn:
            while True:
                with conn.transaction():
                    recorded = _lock_and_read(conn, timeouts)
                    _verify(migrations, recorded)
                    pending = [m for m in migrations if m.version not in recorded]
                    if not pending:
                        return applied
                    started = time.monotonic()
                    _apply(conn, pending[0])
                applied.append(pending[0].version)
                logger.info(
                    "applied migration %s in %.0f ms",
                    pending[0].filename,
                    (time.monotonic() - started) * 1000,
                )
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())  # psycopg's messages run over several lines
        raise TransientError(f"migrations: PostgreSQL unavailable or slow ({type(exc).__name__}: {reason})") from exc
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise MigrationError(f"migrations: PostgreSQL rejected a statement ({type(exc).__name__}: {reason})") from exc


def current_version(conninfo: str, *, timeouts: PostgresTimeouts = MIGRATION_TIMEOUTS) -> int:
    """The highest migration version applied to the database; 0 when none is recorded."""
    try:
        with connect(conninfo, timeouts) as conn:
            return _current_version(conn)
    except psycopg.OperationalError as exc:
        raise TransientError(f"PostgreSQL unavailable ({type(exc).__name__}: {exc})") from exc


def _current_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATIONS_TABLE,)).fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {MIGRATIONS_TABLE}").fetchone()
    return int(row[0]) if row else 0


def _lock_and_read(conn: psycopg.Connection[Any], timeouts: PostgresTimeouts) -> dict[int, tuple[str, str]]:
    """Take the migration lock for this transaction; what is recorded: version -> (name, checksum)."""
    # Wait for another bootstrap for as long as its migration may take (statement_timeout), not
    # lock_timeout; then bound this transaction's table locks again.
    conn.execute("SELECT set_config('lock_timeout', '0', true)")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeouts.lock_ms}ms",))
    conn.execute(_CREATE_TABLE)
    rows = conn.execute(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE}").fetchall()
    return {int(version): (name, digest) for version, name, digest in rows}


def _verify(migrations: list[Migration], recorded: dict[int, tuple[str, str]]) -> None:
    files_by_version = {m.version: m for m in migrations}
    changed = []
    for version, (name, digest) in sorted(recorded.items()):
        migration = files_by_version.get(version)
        if migration is None:
            logger.warning(
                "database has migration %04d_%s applied, which this code does not have (a newer release ran?)",
                version,
                name,
            )
        elif migration.checksum != digest:
            changed.append(
                f"{migration.filename} (applied as {version:04d}_{name}.sql with sha256 {digest[:12]}…,"
                f" the file now has {migration.checksum[:12]}…)"
            )
    if changed:
        raise MigrationChecksumError(
            "migration checksum mismatch: changed after it was applied to this database: "
            + "; ".join(changed)
            + ". Restore the applied file and put the change in a new migration."
        )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    try:
        conn.execute(migration.sql.encode())
    except psycopg.OperationalError as exc:  # a timeout, the server gone: worth another run
        raise TransientError(
            f"migration {migration.filename} did not finish and was rolled back ({type(exc).__name__}: {exc})"
        ) from exc
    except psycopg.Error as exc:
        raise MigrationError(
            f"migration {migration.filename} failed and was rolled back ({type(exc).__name__}: {exc})"
        ) from exc
    if conn.info.transaction_status != TransactionStatus.INTRANS:
        raise MigrationError(f"migration {migration.filename} ended its own transaction; a migration must not")
    conn.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )
