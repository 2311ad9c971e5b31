"""stores/connection_pool.py: kept connections a server dropped are replaced, and the request
sent once more on a new connection, never on another kept one that may be as stale."""

from __future__ import annotations

import asyncio
import ssl

from visionq.stores import http1
from visionq.stores.connection_pool import ConnectionPool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_request_on_a_dropped_connection_goes_again_on_a_new_one_not_another_kept_one() -> None:
    async def run() -> tuple[list[bytes], int]:
        opened = 0
        first_two = asyncio.Barrier(2)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal opened
            opened += 1
            number = opened
            await reader.readuntil(b"\r\n\r\n")
            if number <= 2:
                # The first two connections each answer once, both open at the same time, then
                # close without a word on their next request (as a server drops idle ones).
                await first_two.wait()
                writer.write(OK)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                writer.close()
                return
            writer.write(OK)
            await writer.drain()
            await reader.read()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        origin = http1.Origin.of(f"http://127.0.0.1:{port}")
        request = http1.request_bytes("GET", "/key", origin.host_header, {}, b"")
        pool = ConnectionPool(8, connect_timeout=5, read_timeout=5)
        pool.open(ssl.create_default_context())
        async with server:
            try:
                answers = await asyncio.gather(*(pool.exchange(origin, request, max_body=100) for _ in range(2)))
                answers.append(await pool.exchange(origin, request, max_body=100))
            finally:
                pool.close()
        return [answer.body for answer in answers], opened

    bodies, opened = asyncio.run(run())
    assert bodies == [b"ok", b"ok", b"ok"]
    assert opened == 3  # the two dropped ones, then one new: the other kept one was not tried
