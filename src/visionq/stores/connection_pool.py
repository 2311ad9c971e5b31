"""Keep-alive HTTP/1.1 connections on the event loop, pooled by origin (``http1.AsyncConnection``):
the worker's object reads (``s3_reader``) and its SQS calls (``sqs_wire``), each with a pool of
its own (their read timeouts differ: a long poll waits up to 20 s for its answer).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time

from visionq.stores import http1

IDLE_SECONDS = 15.0  # an idle connection older than this is not used again


class ConnectionPool:
    """Keep-alive connections by origin, at most ``limit`` exchanges at once. A connection goes
    back to be reused only after a whole answer that allows it, and is not reused after
    ``IDLE_SECONDS`` idle (aiohttp's default, which the object reads used before): a server or a
    load balancer may have dropped it without a word, and a request on it would wait its read
    timeout out. One whose exchange failed or was cancelled (a deadline) is closed, as its state is unknown."""

    def __init__(self, limit: int, *, connect_timeout: float, read_timeout: float) -> None:
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        # By origin, each idle connection with the time it went idle (the latest last).
        self._idle: collections.defaultdict[http1.Origin, list[tuple[http1.AsyncConnection, float]]] = (
            collections.defaultdict(list)
        )
        self._slots: asyncio.Semaphore | None = None
        self._tls: ssl.SSLContext | None = None

    def open(self, tls: ssl.SSLContext) -> None:
        self._tls = tls
        self._slots = asyncio.Semaphore(self._limit)

    def close(self) -> None:
        for idle in self._idle.values():
            for connection, _ in idle:
                connection.close()
        self._idle.clear()
        self._slots = None

    async def exchange(self, origin: http1.Origin, request: bytes, *, max_body: int) -> http1.Answer:
        """The answer to ``request``. A kept connection the server closed or reset as the request
        went (no answer at all) is replaced by a new one and the request sent once more at once, as the
        DynamoDB writes do (``dynamodb_wire``); it spends none of the caller's attempts. (Only
        requests the SDK would also send again after a connection error go through a pool: GETs,
        SQS calls.)"""
        slots = self._slots
        if slots is None:
            raise RuntimeError("the connection pool is used before open() or after close()")
        async with slots:
            connection, kept = await self._connection(origin)
            try:
                try:
                    answer = await connection.exchange(request, max_body=max_body)
                except http1.CLOSED_UNDER_US:
                    if not kept:
                        raise
                    connection.close()
                    # The origin's other idle connections may have been dropped with it (a server
                    # closing its idle ones together): closed too, and the request goes on a new one.
                    self._drop_idle(origin)
                    connection = await self._open(origin)
                    answer = await connection.exchange(request, max_body=max_body)
            except BaseException:
                connection.close()
                raise
            if answer.keep_alive and self._slots is slots:  # not closed meanwhile
                self._idle[origin].append((connection, time.monotonic()))
            else:
                connection.close()
            return answer

    async def _connection(self, origin: http1.Origin) -> tuple[http1.AsyncConnection, bool]:
        """The latest idle connection to ``origin`` fit to be used again, else a new one; and which."""
        idle = self._idle[origin]
        while idle:
            connection, since = idle.pop()
            if time.monotonic() - since < IDLE_SECONDS and connection.fresh():
                return connection, True
            connection.close()
            # The others went idle earlier still: closed now rather than left open.
            self._drop_idle(origin)
        return await self._open(origin), False

    def _drop_idle(self, origin: http1.Origin) -> None:
        for connection, _ in self._idle[origin]:
            connection.close()
        self._idle[origin].clear()

    async def _open(self, origin: http1.Origin) -> http1.AsyncConnection:
        return await http1.AsyncConnection.open(
            origin.host,
            origin.port,
            tls=self._tls if origin.tls else None,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )
