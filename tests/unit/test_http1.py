"""stores/http1.py: a request goes out as one block of bytes, and an answer is framed as RFC 9112
says, however its bytes are split across reads, on a blocking socket (the peer: the other end of a
socket pair, fed by the test) and on the event loop (the peer: a loopback server)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from visionq.stores import http1

REQUEST = http1.request_bytes("POST", "/", "db.local:4566", {"X-Amz-Target": "T.Op"}, b'{"a":1}')


@pytest.fixture
def pair() -> Iterator[tuple[http1.Connection, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.settimeout(5)
    yield http1.Connection(ours), peer
    ours.close()
    peer.close()


def answer_with(
    pair: tuple[http1.Connection, socket.socket], *pieces: bytes, close: bool = False, max_body: int | None = None
) -> http1.Answer:
    """The connection's answer to REQUEST when the peer sends ``pieces`` one by one (then closes)."""
    connection, peer = pair

    def serve() -> None:
        received = b""
        while len(received) < len(REQUEST):
            received += peer.recv(1 << 16)
        assert received == REQUEST
        for piece in pieces:
            peer.sendall(piece)
        if close:
            peer.shutdown(socket.SHUT_WR)

    server = threading.Thread(target=serve)
    server.start()
    try:
        return connection.exchange(REQUEST, max_body=max_body)
    finally:
        server.join()


def in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_request_is_the_line_the_host_the_headers_and_the_body() -> None:
    assert REQUEST == (
        b"POST / HTTP/1.1\r\nHost: db.local:4566\r\nAccept-Encoding: identity\r\nX-Amz-Target: T.Op\r\n"
        b'Content-Length: 7\r\n\r\n{"a":1}'
    )


@pytest.mark.parametrize("piece", [1, 7, 1 << 16])
def test_a_body_framed_by_its_length_however_it_arrives(
    pair: tuple[http1.Connection, socket.socket], piece: int
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\nx-amz-crc32: 123\r\nContent-Length: 11\r\n\r\nhello world"
    answer = answer_with(pair, *in_pieces(raw, piece))
    assert (answer.status, answer.body, answer.keep_alive) == (200, b"hello world", True)
    assert answer.headers["x-amz-crc32"] == "123"  # names in lower case


def test_two_answers_in_turn_on_one_connection(pair: tuple[http1.Connection, socket.socket]) -> None:
    assert answer_with(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na").body == b"a"
    assert answer_with(pair, b"HTTP/1.1 400 Bad\r\nContent-Length: 2\r\n\r\nbc").body == b"bc"


@pytest.mark.parametrize("piece", [1, 5, 1 << 16])
def test_a_chunked_body_with_extensions_and_trailers(pair: tuple[http1.Connection, socket.socket], piece: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    answer = answer_with(pair, *in_pieces(raw, piece))
    assert (answer.body, answer.keep_alive) == (b"hello world", True)


def test_a_body_without_length_runs_to_the_close_and_the_connection_is_not_kept(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    answer = answer_with(pair, b"HTTP/1.1 200 OK\r\n\r\nto the end", close=True)
    assert (answer.body, answer.keep_alive) == (b"to the end", False)


@pytest.mark.parametrize(
    ("status_line", "connection", "kept"),
    [
        (b"HTTP/1.1 200 OK", b"", True),
        (b"HTTP/1.1 200 OK", b"Connection: close\r\n", False),
        (b"HTTP/1.1 200 OK", b"Connection: Keep-Alive, Close\r\n", False),
        (b"HTTP/1.0 200 OK", b"", False),
        (b"HTTP/1.0 200 OK", b"Connection: keep-alive\r\n", True),
        (b"HTTP/1.1 200 OK", b"Connection: close\r\nConnection: keep-alive\r\n", False),  # repeats add up
        (b"HTTP/1.1 200 OK", b"Content-Length: 2\r\n", True),  # the same length twice is one length
    ],
)
def test_whether_the_connection_is_kept(
    pair: tuple[http1.Connection, socket.socket], status_line: bytes, connection: bytes, kept: bool
) -> None:
    answer = answer_with(pair, status_line + b"\r\n" + connection + b"Content-Length: 2\r\n\r\nok")
    assert (answer.body, answer.keep_alive) == (b"ok", kept)


def test_an_interim_answer_is_skipped(pair: tuple[http1.Connection, socket.socket]) -> None:
    answer = answer_with(pair, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (answer.status, answer.body) == (200, b"ok")


def test_a_peer_that_closes_before_answering_is_remote_disconnected(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        answer_with(pair, close=True)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed inside the body
        b"HTTP/1.1 200 OK\r\nContent-Le",  # closed inside the headers
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # inside a chunk
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",  # closed after an interim answer: not "no answer at all"
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1"),  # a digit, not ASCII
        "HTTP/1.1 \u00b200 OK\r\nContent-Length: 0\r\n\r\n".encode("latin-1"),
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",  # a space before the colon
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\nok\r\n0\r\n\r\n",
    ],
)
def test_an_answer_that_cannot_be_framed_is_a_bad_answer(
    pair: tuple[http1.Connection, socket.socket], raw: bytes
) -> None:
    with pytest.raises(http1.BadAnswer):
        answer_with(pair, raw, close=True)


def test_headers_without_end_are_refused_not_read_for_ever(pair: tuple[http1.Connection, socket.socket]) -> None:
    with pytest.raises(http1.BadAnswer, match="64 KiB"):
        answer_with(pair, b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 100_000, close=True)


def test_bytes_beyond_the_answer_make_the_connection_unfit_for_another(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    answer = answer_with(pair, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert (answer.body, answer.keep_alive) == (b"ok", False)


def test_a_body_over_the_callers_limit_is_refused_on_its_length(pair: tuple[http1.Connection, socket.socket]) -> None:
    connection, peer = pair
    peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")  # the body never comes: not waited for
    with pytest.raises(http1.BodyTooLarge) as raised:
        connection.exchange(REQUEST, max_body=10)
    assert raised.value.size == 11


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nhello world",  # to the connection's end
    ],
)
def test_a_body_without_length_over_the_limit_is_refused_as_it_comes(raw: bytes) -> None:
    with pytest.raises(http1.BodyTooLarge):
        answer_with_limit(raw, 10)
    assert answer_with_limit(raw, 11).body == b"hello world"


def answer_with_limit(raw: bytes, limit: int) -> http1.Answer:
    """``answer_with`` on a connection of its own, the peer closing after ``raw``."""
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.settimeout(5)
        return answer_with((http1.Connection(ours), peer), raw, close=True, max_body=limit)


def test_the_limit_bounds_a_successful_body_and_an_error_body_has_its_own() -> None:
    error = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 5\r\n\r\nslow!"
    assert answer_with_limit(error, 1).body == b"slow!"  # an error document is not the object
    # A proxy's long HTML page: its status stands, its body is cut, the connection is not kept.
    size = http1.MAX_ERROR_BODY_BYTES + 1
    for framing in (b"Content-Length: %d\r\n\r\n" % size, b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % size):
        answer = answer_with_limit(b"HTTP/1.1 403 Forbidden\r\n" + framing + b"<" * size, 10**9)
        assert (answer.status, len(answer.body), answer.keep_alive) == (403, http1.MAX_ERROR_BODY_BYTES, False)


async def async_answer(raw_pieces: list[bytes], *, close: bool, read_timeout: float = 5) -> http1.Answer:
    """The AsyncConnection's answer to REQUEST from a loopback server that sends ``raw_pieces``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(len(REQUEST)) == REQUEST
        for piece in raw_pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)
        if close:
            writer.close()
        else:
            await asyncio.sleep(read_timeout * 3)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        connection = await http1.AsyncConnection.open(
            "127.0.0.1", port, tls=None, connect_timeout=5, read_timeout=read_timeout
        )
        try:
            return await connection.exchange(REQUEST, max_body=1000)
        finally:
            connection.close()


@pytest.mark.parametrize("piece", [1, 9, 1 << 16])
def test_the_async_connection_frames_answers_alike(piece: int) -> None:
    length = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    for raw in (length, chunked):
        answer = asyncio.run(async_answer(in_pieces(raw, piece), close=False))
        assert (answer.status, answer.body, answer.keep_alive) == (200, b"hello world", True)
    answer = asyncio.run(async_answer(in_pieces(b"HTTP/1.1 200 OK\r\n\r\nto the end", piece), close=True))
    assert (answer.body, answer.keep_alive) == (b"to the end", False)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http1.BadAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", http1.BodyTooLarge),
    ],
)
def test_the_async_connection_fails_alike(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        asyncio.run(async_answer([raw], close=True))


def test_the_async_connection_gives_up_on_a_silent_peer() -> None:
    with pytest.raises(TimeoutError):
        asyncio.run(async_answer([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"], close=False, read_timeout=0.2))


def reset_after(pieces: list[bytes]) -> tuple[int, threading.Thread]:
    """A loopback server that reads one request, sends ``pieces``, then resets the connection
    (SO_LINGER 0: an RST, not a FIN); its port and its thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        peer, _ = listener.accept()
        listener.close()
        received = b""
        while len(received) < len(REQUEST):
            received += peer.recv(1 << 16)
        for piece in pieces:
            peer.sendall(piece)
        time.sleep(0.1)  # the piece is read before the reset comes
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()

    server = threading.Thread(target=serve)
    server.start()
    return port, server


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        ([], ConnectionResetError),  # no answer at all: the request may go again at once
        # The server was answering, so it had the request: sending it again is a retry like any other.
        ([b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"Attri'], http1.BadAnswer),
        ([b"HTTP/1.1 200 OK\r\nContent-Le"], http1.BadAnswer),
    ],
)
def test_a_reset_inside_an_answer_is_a_bad_answer_not_no_answer(pieces: list[bytes], error: type[Exception]) -> None:
    port, server = reset_after(pieces)
    connection = http1.Connection(socket.create_connection(("127.0.0.1", port), timeout=5))
    try:
        with pytest.raises(error) as raised:
            connection.exchange(REQUEST)
        assert isinstance(raised.value, http1.CLOSED_UNDER_US) is (error is ConnectionResetError)
    finally:
        connection.close()
        server.join()

    async def on_the_loop() -> None:
        port, server = reset_after(pieces)
        connection = await http1.AsyncConnection.open("127.0.0.1", port, tls=None, connect_timeout=5, read_timeout=5)
        try:
            with pytest.raises(error):
                await connection.exchange(REQUEST)
        finally:
            connection.close()
            await asyncio.to_thread(server.join)

    asyncio.run(on_the_loop())


def test_an_answer_both_chunked_and_with_a_length_is_read_by_its_chunks_and_not_kept(
    pair: tuple[http1.Connection, socket.socket],
) -> None:
    # RFC 9112 6.3: the chunks frame it, and the connection is closed after it (a sign of smuggling).
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    answer = answer_with(pair, raw)
    assert (answer.body, answer.keep_alive) == (b"hi", False)
