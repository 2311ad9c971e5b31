"""Schema migrations against a real PostgreSQL: a database of each earlier ``infra/schema.sql``
adopted with its rows, a fresh one built, re-runs, concurrent runs, changed and failing files.

Each test works in databases of its own (CREATE DATABASE), dropped afterwards, so the shared
database of the other tests is never touched.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.bootstrap import bootstrap_database
from visionq.stores.migrations import (
    FILE_NAME,
    MIGRATIONS_TABLE,
    Migration,
    MigrationChecksumError,
    MigrationError,
    current_version,
    default_migrations_dir,
    discover_migrations,
    migrate,
)
from visionq.stores.postgres import PostgresTimeouts

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).parent / "assets"
# infra/schema.sql as each release before migrations left it (see assets/README.md).
EARLIER_SCHEMAS = [
    "schema_first_release.sql",  # f2e00b7: no object_created_at, no kind
    "schema_with_object_created_at.sql",  # 2e9feb2: object_created_at added
    "schema_before_migrations.sql",  # the last one: object_created_at and kind
]

NewDatabase = Callable[[], str]


@pytest.fixture
def new_database(database_url: str) -> Iterator[NewDatabase]:
    """``new_database()`` -> the URL of an empty database of this test's own, dropped afterwards."""
    created: list[str] = []

    def create() -> str:
        name = f"visionq_migrations_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        created.append(name)
        params = conninfo_to_dict(database_url)
        params["dbname"] = name
        return make_conninfo("", **params)

    yield create
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(query.encode() if not params else query, params or None)
        return cur.fetchall() if cur.description else []


def all_versions() -> list[int]:
    return [m.version for m in discover_migrations()]


def copy_migrations(directory: Path, *, upto: int | None = None) -> Path:
    """The shipped migration files (up to version ``upto``), byte for byte, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in default_migrations_dir().iterdir():
        match = FILE_NAME.match(entry.name)
        if match and (upto is None or int(match["version"]) <= upto):
            (directory / entry.name).write_bytes(entry.read_bytes())
    return directory


def shape(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about the schema but column order and the migrations table."""
    return {
        "columns": sql(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> %s ORDER BY 1, 2",
            MIGRATIONS_TABLE,
        ),
        "indexes": sql(
            url,
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND tablename <> %s ORDER BY 1, 2",
            MIGRATIONS_TABLE,
        ),
        "constraints": sql(
            url,
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace AND conrelid <> to_regclass(%s) ORDER BY 1, 2",
            MIGRATIONS_TABLE,
        ),
    }


def insert_old_rows(url: str) -> None:
    """Two results with boxes, written with the first release's columns (and object_created_at
    where the schema has it), as the worker of that release would have."""
    with psycopg.connect(url) as conn:
        for n in range(2):
            row = conn.execute(
                "INSERT INTO results (job_id, bucket, key, etag, model, width, height, detection_count,"
                " inference_ms, total_ms, timings, output)"
                " VALUES (%s, 'b', %s, 'etag', 'yolo11n.pt', 640, 480, 2, 12.5, 30.0, '{\"decode_ms\": 3}',"
                " '{\"detections\": []}') RETURNING id",
                (f"job-{n}", f"uploads/{n}.jpg"),
            ).fetchone()
            assert row is not None
            for idx in range(2):
                conn.execute(
                    "INSERT INTO detections (result_id, idx, job_id, class_id, label, confidence, x1, y1, x2, y2)"
                    " VALUES (%s, %s, %s, 1, 'square', 0.9, 1, 2, 3, 4)",
                    (row[0], idx, f"job-{n}"),
                )
        has_created_at = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'results'"
            " AND column_name = 'object_created_at'"
        ).fetchone()
        if has_created_at:
            conn.execute("UPDATE results SET object_created_at = '2026-01-02T03:04:05Z'")


def snapshot(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = [r[0] for r in sql(url, "SELECT to_jsonb(r) FROM results r ORDER BY id")]
    detections = [r[0] for r in sql(url, "SELECT to_jsonb(d) FROM detections d ORDER BY result_id, idx")]
    return results, detections


def recorded(url: str) -> list[tuple[int, str, str]]:
    return [(v, n, c) for v, n, c in sql(url, f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY 1")]


def expected_rows(migrations: list[Migration]) -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in migrations]


# --- the files ----------------------------------------------------------------------------------


def test_shipped_migrations_are_found_from_the_package() -> None:
    migrations = discover_migrations()
    versions = [m.version for m in migrations]
    assert versions[:2] == [1, 2]
    assert versions == sorted(set(versions))
    assert [m.filename for m in migrations[:2]] == ["0001_initial.sql", "0002_results_object_created_at_and_kind.sql"]
    # Found through the installed ``infra`` package (as a wheel ships it), not a path of the checkout.
    assert Path(str(default_migrations_dir())).resolve() == (Path(__file__).parents[2] / "infra/migrations").resolve()
    assert not (Path(__file__).parents[2] / "infra/schema.sql").exists()


def test_misnamed_and_duplicate_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("ignored")
    (tmp_path / "0001_initial.sql").write_text("SELECT 1;")
    assert [m.filename for m in discover_migrations(tmp_path)] == ["0001_initial.sql"]

    (tmp_path / "schema.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"schema\.sql: a migration file is named NNNN_name\.sql"):
        discover_migrations(tmp_path)
    (tmp_path / "schema.sql").unlink()

    (tmp_path / "0001_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        discover_migrations(tmp_path)


# --- databases ----------------------------------------------------------------------------------


def test_fresh_database_gets_every_version(new_database: NewDatabase) -> None:
    url = new_database()
    assert current_version(url) == 0

    assert migrate(url) == all_versions()

    assert current_version(url) == max(all_versions())
    assert recorded(url) == expected_rows(discover_migrations())
    columns = {c for _, c, *_ in shape(url)["columns"]}
    assert {"object_created_at", "kind", "output", "label", "x1"} <= columns


@pytest.mark.parametrize("schema_file", EARLIER_SCHEMAS)
def test_database_of_an_earlier_schema_is_adopted_with_its_rows(
    new_database: NewDatabase, schema_file: str, tmp_path: Path
) -> None:
    old = new_database()
    sql(old, (ASSETS / schema_file).read_text())
    insert_old_rows(old)
    results_before, detections_before = snapshot(old)

    # Up to 0002 (what schema.sql had become): every old column keeps its value, the new ones are there.
    first_two = copy_migrations(tmp_path / "first_two", upto=2)
    assert migrate(old, directory=first_two) == [1, 2]
    results_v2, detections_v2 = snapshot(old)
    assert detections_v2 == detections_before
    assert len(results_v2) == len(results_before) == 2
    for before, after in zip(results_before, results_v2, strict=True):
        assert after.items() >= before.items()
        assert after["kind"] == "detections"
    kept = sql(old, "SELECT object_created_at IS NOT DISTINCT FROM '2026-01-02T03:04:05Z' FROM results")
    if schema_file == "schema_first_release.sql":
        assert [r["object_created_at"] for r in results_v2] == [None, None]
    else:
        assert kept == [(True,), (True,)]

    # Then bootstrap: the migrations after 0002 (if any), rows still there.
    report = bootstrap_database(old)
    assert [m.version for m in report.applied] == all_versions()[2:]
    assert report.version == max(all_versions())
    assert recorded(old) == expected_rows(discover_migrations())
    results_after, detections_after = snapshot(old)
    assert [r["id"] for r in results_after] == [r["id"] for r in results_before]
    assert len(detections_after) == len(detections_before)

    # The same schema as a database built by the migrations alone.
    fresh = new_database()
    migrate(fresh)
    assert shape(old) == shape(fresh)


def test_bootstrap_adopts_the_last_schema_in_one_go(new_database: NewDatabase) -> None:
    url = new_database()
    sql(url, (ASSETS / "schema_before_migrations.sql").read_text())
    insert_old_rows(url)
    results_before, _ = snapshot(url)

    report = bootstrap_database(url)

    assert [m.version for m in report.applied] == all_versions()
    assert [r["id"] for r in snapshot(url)[0]] == [r["id"] for r in results_before]
    assert current_version(url) == max(all_versions())


def test_second_run_applies_nothing(new_database: NewDatabase) -> None:
    url = new_database()
    first = bootstrap_database(url)
    rows = sql(url, f"SELECT version, applied_at FROM {MIGRATIONS_TABLE} ORDER BY 1")

    second = bootstrap_database(url)

    assert [m.version for m in first.applied] == all_versions()
    assert second.applied == []
    assert str(second) == f"PostgreSQL schema: up to date at version {max(all_versions())}"
    assert migrate(url) == []
    assert sql(url, f"SELECT version, applied_at FROM {MIGRATIONS_TABLE} ORDER BY 1") == rows


def run_concurrently(n: int, call: Callable[[], list[int]]) -> list[list[int]]:
    barrier = threading.Barrier(n)
    outcomes: list[list[int] | BaseException] = [[] for _ in range(n)]

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors
    return [o for o in outcomes if not isinstance(o, BaseException)]


def test_concurrent_runs_apply_each_version_once(new_database: NewDatabase) -> None:
    url = new_database()

    outcomes = run_concurrently(6, lambda: migrate(url))

    assert sorted(v for applied in outcomes for v in applied) == all_versions()
    assert recorded(url) == expected_rows(discover_migrations())


def test_concurrent_run_waits_for_a_long_migration(new_database: NewDatabase, tmp_path: Path) -> None:
    """A second bootstrap waits for the first one's slow migration, past lock_timeout."""
    url = new_database()
    directory = copy_migrations(tmp_path / "migrations")
    (directory / "9999_slow.sql").write_text("SELECT pg_sleep(1.5);\n")
    timeouts = PostgresTimeouts(statement_ms=30_000, lock_ms=200)

    outcomes = run_concurrently(2, lambda: migrate(url, directory=directory, timeouts=timeouts))

    versions = [*all_versions(), 9999]
    assert sorted(v for applied in outcomes for v in applied) == versions
    assert [v for v, *_ in recorded(url)] == versions


def test_changed_file_is_reported(new_database: NewDatabase, tmp_path: Path) -> None:
    url = new_database()
    directory = copy_migrations(tmp_path / "migrations")
    assert migrate(url, directory=directory) == all_versions()

    # Line endings alone (a Windows checkout) are not a change.
    initial = directory / "0001_initial.sql"
    text = initial.read_bytes()
    initial.write_bytes(text.replace(b"\n", b"\r\n"))
    assert migrate(url, directory=directory) == []

    # An edit is, and nothing else is applied while it stands.
    initial.write_bytes(text + b"CREATE INDEX results_model ON results (model);\n")
    (directory / "9999_next.sql").write_text("CREATE TABLE next_thing (id integer);\n")
    with pytest.raises(MigrationChecksumError, match=r"checksum mismatch.*0001_initial\.sql") as raised:
        migrate(url, directory=directory)
    assert "new migration" in raised.value.message
    assert current_version(url) == max(all_versions())
    assert sql(url, "SELECT to_regclass('next_thing')") == [(None,)]

    initial.write_bytes(text)
    assert migrate(url, directory=directory) == [9999]


def test_failing_migration_leaves_nothing_behind(new_database: NewDatabase, tmp_path: Path) -> None:
    url = new_database()
    directory = copy_migrations(tmp_path / "migrations")
    broken = directory / "9999_broken.sql"
    broken.write_text("ALTER TABLE results ADD COLUMN half_done integer;\nSELECT 1 / 0;\n")

    with pytest.raises(MigrationError, match=r"9999_broken\.sql failed and was rolled back.*division by zero"):
        migrate(url, directory=directory)

    # The files before it stay applied; the broken one left neither its column nor its row.
    assert current_version(url) == max(all_versions())
    assert sql(url, "SELECT 1 FROM information_schema.columns WHERE column_name = 'half_done'") == []

    broken.write_text("ALTER TABLE results ADD COLUMN half_done integer;\n")
    assert migrate(url, directory=directory) == [9999]


def test_bootstrap_command_reports_the_versions(
    new_database: NewDatabase, moto_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from visionq.cli import main

    url = new_database()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    argv = ["bootstrap", "--bucket", "visionq-migrations", "--queue", "visionq-migrations", "--table", "visionq-mig"]

    assert main([*argv, "--database-url", url]) == 0
    first = capsys.readouterr()
    names = ", ".join(m.filename.removesuffix(".sql") for m in discover_migrations())
    assert f"PostgreSQL schema: applied {names}; now at version {max(all_versions())}" in first.err
    assert "VISIONQ_QUEUE_URL=" in first.out
    assert "PostgreSQL" not in first.out  # stdout stays KEY=VALUE lines

    assert main([*argv, "--database-url", url]) == 0
    assert f"PostgreSQL schema: up to date at version {max(all_versions())}" in capsys.readouterr().err


def test_schema_only_bootstrap_touches_no_aws_resource(
    new_database: NewDatabase, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a stack SAM deployed: the template owns the bucket, queues and table; bootstrap only migrates."""
    from visionq.cli import main

    url = new_database()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: any AWS call would fail
    assert main(["bootstrap", "--schema-only", "--database-url", url]) == 0
    assert f"now at version {max(all_versions())}" in capsys.readouterr().err
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["bootstrap", "--schema-only"]) == 2
    assert "needs --database-url" in capsys.readouterr().err
