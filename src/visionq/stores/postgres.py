"""PostgreSQL connections whose every call is bounded in time.

A plain ``psycopg.connect(url)`` can wait a long time at every step: psycopg's own connect
default is 130 s, the server has no ``statement_timeout``, a lock held by someone else is waited
for indefinitely, and a peer that vanished (a host gone, a partition) is only noticed when the
kernel gives up on the TCP connection, which on Linux takes many minutes. :func:`connect` bounds
each of those.

What those cannot bound: a server *process* that is alive at the TCP level but never answers
(stuck in uninterruptible I/O, or stopped with SIGSTOP). Its kernel keeps acknowledging, so
neither keepalives nor ``tcp_user_timeout`` fire, and the server-side timers never run. For that,
the worker's own per-call timeout (``core.Processor._store``) moves the job on; the pool thread
stays in the call until the server answers or the socket dies.

The timeouts raise ``psycopg.errors.QueryCanceled`` (statement_timeout, SQLSTATE 57014) and
``psycopg.errors.LockNotAvailable`` (lock_timeout, 55P03); both subclass
``psycopg.OperationalError``, so callers that treat OperationalError as transient retry them.
A failed connect raises ``psycopg.errors.ConnectionTimeout``, also an OperationalError. The
server ends a session that sat idle in a transaction with a FATAL error and closes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


@dataclass(frozen=True)
class PostgresTimeouts:
    """How long each step of talking to PostgreSQL may take before it fails instead of waiting."""

    connect_seconds: int = 5
    statement_ms: int = 15_000  # server-side: a query (or a lock wait) longer than this is cancelled
    lock_ms: int = 5_000
    idle_in_transaction_ms: int = 60_000  # server-side: a transaction left open by a stuck client is ended
    keepalive_idle_seconds: int = 10  # TCP keepalives: a peer that vanished is noticed
    keepalive_interval_seconds: int = 5
    keepalive_count: int = 3
    tcp_user_timeout_ms: int = 30_000  # unacknowledged data this long: the connection is dead

    def __post_init__(self) -> None:
        # 0 means "no limit" to both libpq and the server: exactly what this class is meant to
        # prevent, so refuse it rather than silently unbounding a call.
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"PostgresTimeouts.{name} must be positive, got {value}")

    def server_options(self) -> str:
        """The settings the server applies to the session, as libpq's ``options`` string."""
        return (
            f"-c statement_timeout={self.statement_ms}"
            f" -c lock_timeout={self.lock_ms}"
            f" -c idle_in_transaction_session_timeout={self.idle_in_transaction_ms}"
        )

    def connection_params(self) -> dict[str, Any]:
        """The libpq parameters that bound the connection itself (not the session's settings)."""
        return {
            "connect_timeout": self.connect_seconds,
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle_seconds,
            "keepalives_interval": self.keepalive_interval_seconds,
            "keepalives_count": self.keepalive_count,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
        }


def bounded_conninfo(conninfo: str, timeouts: PostgresTimeouts = PostgresTimeouts()) -> str:
    """``conninfo`` (a URL or ``key=value`` string) with the timeouts added.

    Any ``options`` already in ``conninfo`` are kept; the timeouts go after them, and since the
    server applies ``-c`` settings in order, the timeouts win over the same names there, so a URL
    cannot turn the bounds off. The other parameters of ``conninfo`` are kept as they are, except
    the ones the timeouts set.
    """
    params = conninfo_to_dict(conninfo)
    # libpq reads PGOPTIONS only when the conninfo has no ``options``: adding ours would drop the
    # environment's silently, so merge those too.
    existing = params.get("options") or os.environ.get("PGOPTIONS") or ""
    ours = timeouts.server_options()
    params["options"] = f"{existing} {ours}" if str(existing).strip() else ours
    params.update(timeouts.connection_params())
    return make_conninfo("", **params)


def connect(
    conninfo: str, timeouts: PostgresTimeouts = PostgresTimeouts(), *, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """A connection whose every call is bounded in time.

    Connecting fails after ``connect_seconds``; every statement is cancelled by the server after
    ``statement_ms``, a lock wait after ``lock_ms``; a session idle in a transaction is ended after
    ``idle_in_transaction_ms``; TCP keepalives and ``tcp_user_timeout`` make a vanished peer an
    error instead of a wait. The session settings travel in the startup packet (``options``), so
    they cost no extra round trip and are in force from the first statement.
    """
    return psycopg.connect(bounded_conninfo(conninfo, timeouts), autocommit=autocommit)
