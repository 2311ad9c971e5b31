"""Every PostgreSQL call is bounded in time: a server that does not answer, a lock held
elsewhere, a query that runs too long, a server process that froze. Each would hang a plain
``psycopg.connect(url)`` connection (or take minutes); these tests fail rather than hang if a
bound is missing, because each call runs on a thread that is joined with a deadline."""

from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from visionq.local_stack import wait_until
from visionq.stores.postgres import PostgresTimeouts, connect

pytestmark = pytest.mark.integration

T = TypeVar("T")


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``'s result or exception, provided it comes within ``seconds``; else the test fails.

    The thread is a daemon: a call that hangs (the bug these tests look for) cannot keep the
    test run from ending.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the call was still waiting after {seconds} s: it is not bounded"
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` set (whatever form ``DATABASE_URL`` has)."""
    return make_conninfo(url, options=options)


def setting(conn: psycopg.Connection[Any], name: str) -> str:
    # pg_settings gives the raw value in the setting's unit (ms), where SHOW gives "15s".
    row = conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()
    assert row is not None
    value: str = row[0]
    return value


@pytest.fixture
def scratch_table(database_url: str) -> Iterator[str]:
    name = f"timeouts_scratch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int)")
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


# --- connecting -----------------------------------------------------------------------------------


def test_connect_to_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    # The kernel completes the TCP handshake for a listening socket; nothing ever reads or writes,
    # so libpq's SSL request / startup packet is never answered.
    with closing(socket.create_server(("127.0.0.1", 0))) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(psycopg.OperationalError):
            within(15, lambda: connect(f"postgresql://u@127.0.0.1:{port}/db", PostgresTimeouts(connect_seconds=2)))


# --- server-side timeouts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        # lock_timeout first: the wait for the lock is given up.
        (PostgresTimeouts(lock_ms=300, statement_ms=10_000), psycopg.errors.LockNotAvailable),
        # statement_timeout first: it covers the time spent waiting for locks too.
        (PostgresTimeouts(lock_ms=10_000, statement_ms=300), psycopg.errors.QueryCanceled),
    ],
    ids=["lock_timeout", "statement_timeout"],
)
def test_a_lock_held_elsewhere_fails_the_write_instead_of_waiting(
    database_url: str, scratch_table: str, timeouts: PostgresTimeouts, expected: type[psycopg.Error]
) -> None:
    with connect(database_url, timeouts) as conn:
        # The holder inside: if the INSERT does wait (the bug), the holder's transaction ends
        # first on the way out, the INSERT goes through and ``conn`` can close; the other way
        # round, closing ``conn`` would wait for the INSERT, which waits for the holder.
        with psycopg.connect(database_url) as holder:  # its transaction stays open until the block ends
            holder.execute(f"LOCK TABLE {scratch_table} IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(expected) as caught:
                within(8, lambda: conn.execute(f"INSERT INTO {scratch_table} VALUES (1)"))
            holder.rollback()
        # The caller retries OperationalError as transient: these must be that.
        assert isinstance(caught.value, psycopg.OperationalError)
        # Cancelled by the server, the connection is still usable.
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_long_query_is_cancelled_by_the_server(database_url: str) -> None:
    with connect(database_url, PostgresTimeouts(statement_ms=500)) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            within(8, lambda: conn.execute("SELECT pg_sleep(10)"))
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_transaction_left_idle_is_ended_by_the_server(database_url: str) -> None:
    conn = connect(database_url, PostgresTimeouts(idle_in_transaction_ms=300), autocommit=False)
    with closing(conn):
        conn.execute("SELECT 1")  # opens a transaction, then the client goes quiet
        pid = conn.info.backend_pid
        with psycopg.connect(database_url, autocommit=True) as observer:

            def session_gone() -> bool:
                return observer.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None

            wait_until(session_gone, timeout=10, interval=0.05, what="the server to end the idle transaction")
        # NB: this one is an InternalError, not an OperationalError; the connection is gone.
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            conn.execute("SELECT 1")
        assert conn.closed


# --- the settings reach the server and the kernel -------------------------------------------------


def test_the_session_settings_reach_the_server(database_url: str) -> None:
    with connect(database_url, PostgresTimeouts(statement_ms=1234, lock_ms=567, idle_in_transaction_ms=8910)) as conn:
        assert setting(conn, "statement_timeout") == "1234"
        assert setting(conn, "lock_timeout") == "567"
        assert setting(conn, "idle_in_transaction_session_timeout") == "8910"


def test_options_already_in_the_url_are_kept(database_url: str) -> None:
    url = with_options(database_url, "-c search_path=public -c application_name=visionq-test")
    with connect(url, PostgresTimeouts(statement_ms=1234)) as conn:
        assert setting(conn, "search_path") == "public"
        assert setting(conn, "application_name") == "visionq-test"
        assert setting(conn, "statement_timeout") == "1234"


def test_the_url_cannot_turn_the_bounds_off(database_url: str) -> None:
    url = with_options(database_url, "-c statement_timeout=0 -c lock_timeout=0")
    with connect(url, PostgresTimeouts(statement_ms=1234, lock_ms=567)) as conn:
        assert setting(conn, "statement_timeout") == "1234"
        assert setting(conn, "lock_timeout") == "567"


def test_pgoptions_from_the_environment_are_kept(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq ignores PGOPTIONS when the conninfo has ``options``: the ones we add must not drop it.
    if "options" in conninfo_to_dict(database_url):
        pytest.skip("DATABASE_URL has options of its own")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=public")
    with connect(database_url, PostgresTimeouts(statement_ms=1234)) as conn:
        assert setting(conn, "search_path") == "public"
        assert setting(conn, "statement_timeout") == "1234"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_KEEPIDLE / TCP_USER_TIMEOUT are Linux's")
def test_keepalives_and_the_user_timeout_reach_the_socket(database_url: str) -> None:
    timeouts = PostgresTimeouts(
        keepalive_idle_seconds=11, keepalive_interval_seconds=4, keepalive_count=2, tcp_user_timeout_ms=12_345
    )
    with connect(database_url, timeouts) as conn:
        if conn.info.host.startswith("/"):
            pytest.skip("a Unix-domain socket has no TCP options")
        with closing(socket.socket(fileno=os.dup(conn.fileno()))) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 11
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 4
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12_345


# --- a server process that froze: only the client can bound that ---------------------------------
