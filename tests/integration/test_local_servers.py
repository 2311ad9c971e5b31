"""The local stack's servers, moto and PostgreSQL, each on a port the stack picks: a port free when
picked can be bound by anything else before the server binds it (the API once met this in CI). The
server that then exits is started again on another port, and the endpoint names the port it has."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from visionq.local_stack import EmbeddedPostgres, MotoServer

pytestmark = pytest.mark.integration


def test_moto_on_a_port_taken_before_its_bind_starts_on_another(
    tmp_path: Path, first_pick_taken: Callable[[str], int]
) -> None:
    taken = first_pick_taken("MotoServer.start")
    server = MotoServer(log_path=tmp_path / "moto.log").start()
    try:
        assert server.port != taken
        assert httpx.get(f"{server.endpoint}/moto-api/data.json", timeout=5).status_code == 200
        assert "address already in use" in (tmp_path / "moto.log").read_text().lower()
    finally:
        server.stop()


def test_postgres_on_a_port_taken_before_its_bind_starts_on_another(
    tmp_path: Path, first_pick_taken: Callable[[str], int]
) -> None:
    taken = first_pick_taken("EmbeddedPostgres.start")
    server = EmbeddedPostgres(tmp_path / "pgdata").start()
    try:
        assert server.port != taken
        with psycopg.connect(server.url, connect_timeout=5) as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert "address already in use" in (tmp_path / "postgres.log").read_text().lower()
    finally:
        server.stop()


def test_a_port_given_is_not_replaced(tmp_path: Path, first_pick_taken: Callable[[str], int]) -> None:
    """A port the caller chose is theirs: taken, the start fails and says so."""
    taken = first_pick_taken("somebody else")
    with pytest.raises(RuntimeError, match="moto server exited"):
        MotoServer(port=taken, log_path=tmp_path / "moto.log").start()
