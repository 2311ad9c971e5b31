"""HTTP/1.1 client connections for requests the caller has already built whole: one on a blocking
socket (the job store's writes, in the store threads) and one on the event loop (the object
reads).

The worker's requests are few shapes to few hosts: the two DynamoDB writes per image, small POSTs,
and the read of each image, a GET. Through the general clients they cost far more CPU than their
bytes need: ``http.client`` about 0.25 ms a write more than this in its own Python (header
objects, an email parser for the answer's headers, a buffered reader), aiohttp about 0.12 ms a read
more (tracing, cookies, its connector's bookkeeping; bench/RESULTS.md runs 15 and 16). Here a request is one
write of bytes the caller formatted, and the answer is read in large chunks and framed by one
piece of code for both connections (``_answer``): the status line, the headers, and the body by
``Content-Length``, chunked transfer coding, or the connection's end (RFC 9112 section 6).

What it does not do: proxies, ``Expect: 100-continue`` (an interim 1xx answer is skipped),
pipelining, compression (the request says ``Accept-Encoding: identity``), trailers (read and
dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import re
import socket
import ssl
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from visionq.stores.sigv4 import host_header

_RECV_BYTES = 1 << 16
_ASYNC_READ_BYTES = 1 << 20
_MAX_HEAD_BYTES = 1 << 16  # an answer's status line and headers together: more is not an HTTP server's
MAX_ERROR_BODY_BYTES = 1 << 16  # an AWS error document is a few hundred bytes
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only (str.isdigit takes any script's digits)
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,16}")
# What a kept connection the peer closed as the request went fails with: no answer at all. The
# request may be sent again at once on a new connection (as HTTP clients do for idempotent ones).
CLOSED_UNDER_US = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

# What the framing asks its connection for next: the head (up to the empty line), one line, a
# number of bytes, or everything to the connection's end (up to a limit).
_HEAD, _LINE, _EXACTLY, _REST = range(4)
_Need = tuple[int, int | None]


class BadAnswer(http.client.HTTPException):
    """The peer's bytes are not an HTTP/1.x answer this client can frame."""


class BodyTooLarge(http.client.HTTPException):
    """A successful answer's body is over the caller's ``max_body``; ``size`` is its length as
    announced, or as much as was read. The connection cannot be used again."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the body is {size} bytes or more")
        self.size = size


@dataclass(frozen=True)
class Origin:
    """Where a URL's requests go: TLS or not, the host to connect to, its port, and the ``Host``
    header to send (the port only when it is not the scheme's own, as the SDK signs it)."""

    tls: bool
    host: str
    port: int
    host_header: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        return cls(tls, parts.hostname or "", parts.port or (443 if tls else 80), host_header(url))


def request_bytes(method: str, target: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request as it goes on the wire. Header values are the caller's (signatures, ids):
    never a client's input, so no line breaks can be in them."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method not in ("GET", "HEAD"):  # as http.client: no length where no body is expected
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes
    keep_alive: bool  # whether the connection may carry another request


def _answer(max_body: int | None) -> Generator[_Need, bytes, Answer]:
    """One answer's framing: yields what it needs next and is sent those bytes. ``max_body``
    bounds a 2xx answer's body (``BodyTooLarge`` past it); any other answer's body is cut at
    ``MAX_ERROR_BODY_BYTES`` (its status is what counts; the connection is then not kept)."""
    status, headers, http10 = _parse_head((yield _HEAD, 1))
    while 100 <= status < 200 and status != 101:
        # An interim answer (100 Continue, 103 Early Hints): the real one follows.
        status, headers, http10 = _parse_head((yield _HEAD, 0))
    ok = 200 <= status < 300
    limit = max_body if ok else MAX_ERROR_BODY_BYTES
    delimited = True
    if status in (101, 204, 304):
        body, delimited = b"", status != 101
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while size := _chunk_size((yield _LINE, None)):
            if limit is not None and total + size > limit:
                if ok:
                    raise BodyTooLarge(total + size)
                parts.append((yield _EXACTLY, limit - total))
                delimited = False
                break
            parts.append((yield _EXACTLY, size))
            total += size
            if (yield _EXACTLY, 2) != b"\r\n":
                raise BadAnswer("a chunk does not end with CRLF")
        else:
            while (yield _LINE, None):  # trailers, up to the empty line
                pass
        body = b"".join(parts)
        if "content-length" in headers:  # both: framed by the chunks, and closed after (RFC 9112 6.3)
            delimited = False
    elif (length := headers.get("content-length")) is not None:
        if not _DIGITS.fullmatch(length):
            raise BadAnswer(f"not a Content-Length: {length[:40]!r}")
        size = int(length)
        if limit is not None and size > limit:
            if ok:
                raise BodyTooLarge(size)
            size, delimited = limit, False
        body = yield _EXACTLY, size
    else:
        body = yield _REST, limit
        if limit is not None and len(body) > limit:
            if ok:
                raise BodyTooLarge(len(body))
            body = body[:limit]
        delimited = False
    tokens = {t.strip() for t in headers.get("connection", "").lower().split(",")}
    keep_alive = delimited and ("keep-alive" in tokens if http10 else "close" not in tokens)
    return Answer(status, headers, body, keep_alive)


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the answer is HTTP/1.0, from the head less its empty line."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not _DIGITS.fullmatch(code) or len(code) != 3:
        raise BadAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # No space in a name, no line folded onto the one before (RFC 9112 5.1, 5.2).
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            raise BadAnswer(f"not a header line: {line[:80]!r}")
        key, value = name.lower(), value.strip()
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise BadAnswer("two Content-Length headers that differ")
            if key in ("connection", "transfer-encoding"):  # lists: repeats add to them
                value = f"{headers[key]}, {value}"
        headers[key] = value
    return int(code), headers, version == "HTTP/1.0"


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    if not _HEX_DIGITS.fullmatch(size):
        raise BadAnswer(f"not a chunk size: {line[:40]!r}")
    return int(size, 16)


class _Received:
    """What has been read from a connection and not yet taken by the framing."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False  # the peer closed its side
        self._searched = 0  # where the next search for a line's end starts

    def take(self, need: _Need) -> bytes | None:
        """The bytes ``need`` asks for, or None until more has been read."""
        kind, arg = need
        data = self.data
        if kind in (_HEAD, _LINE):
            mark = b"\r\n\r\n" if kind == _HEAD else b"\r\n"
            end = data.find(mark, self._searched)
            if end < 0:
                if len(data) > _MAX_HEAD_BYTES:
                    raise BadAnswer("the answer's headers go on past 64 KiB")
                if self.ended:
                    if kind == _HEAD and arg and not data:
                        raise http.client.RemoteDisconnected("the peer closed the connection without an answer")
                    raise BadAnswer("the connection ended inside the answer's head or a chunk's size")
                self._searched = max(0, len(data) - len(mark) + 1)
                return None
            self._searched = 0
            taken = bytes(data[:end])
            del data[: end + len(mark)]
            return taken
        if kind == _EXACTLY:
            assert arg is not None
            if len(data) < arg:
                if self.ended:
                    raise BadAnswer(f"the connection ended {arg - len(data)} bytes short of the body")
                return None
        elif not self.ended and (arg is None or len(data) <= arg):  # _REST: to the end, or past the limit
            return None
        else:
            arg = len(data)
        taken = bytes(data[:arg]) if arg < len(data) else bytes(data)
        del data[:arg]
        return taken

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self.data += chunk
        else:
            self.ended = True

    def settled(self, answer: Answer) -> Answer:
        """``answer``, not to be followed on this connection if bytes nobody asked for came after it."""
        if answer.keep_alive and self.data:
            return dataclasses.replace(answer, keep_alive=False)
        return answer


@contextlib.contextmanager
def _reads_of_an_answer(answered: bool) -> Iterator[None]:
    """A reset before any byte of the answer is no answer at all (``CLOSED_UNDER_US``: the request
    may go again at once); after one, the server had the request, so it goes again only as a
    counted retry (``BadAnswer``), as the SDK would send it."""
    try:
        yield
    except ConnectionResetError as exc:
        if answered:
            raise BadAnswer("the connection was reset inside the answer") from exc
        raise


class Connection:
    """A connected blocking socket (plain or TLS, its timeout set by the caller)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._received = _Received()

    def exchange(self, request: bytes, *, max_body: int | None = None) -> Answer:
        """Send ``request`` and read its answer. A peer that closes or resets the connection before
        the first byte of an answer raises one of ``CLOSED_UNDER_US`` (the request may be sent
        again at once on a new connection); one that resets it inside an answer, ``BadAnswer``
        (the server had the request: sending it again is a retry like any other). The socket's
        other errors (``TimeoutError``) pass through."""
        self.sock.sendall(request)
        framing = _answer(max_body)
        need = next(framing)
        answered = False  # a byte of the answer has come
        try:
            while True:
                while (taken := self._received.take(need)) is None:
                    with _reads_of_an_answer(answered):
                        chunk = self.sock.recv(_RECV_BYTES)
                    answered = answered or bool(chunk)
                    self._received.feed(chunk)
                need = framing.send(taken)
        except StopIteration as done:
            return self._received.settled(done.value)

    def close(self) -> None:
        self.sock.close()


class AsyncConnection:
    """A connection on the running event loop (asyncio streams). Each wait for the peer's next
    bytes is bounded by ``read_timeout`` (as a socket timeout bounds each ``recv``, and as
    aiohttp's ``sock_read`` did): a slow body that keeps coming is not cut short."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self._read_timeout = read_timeout
        self._received = _Received()

    @classmethod
    async def open(
        cls, host: str, port: int, *, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
    ) -> AsyncConnection:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls is not None else None
            )
        return cls(reader, writer, read_timeout)

    def fresh(self) -> bool:
        """Whether the idle connection can carry a request: the peer has not closed it (its
        keep-alive timeout) and has sent nothing since the last answer (an unasked 408, say)."""
        return not self._writer.is_closing() and not self._reader.at_eof() and not self._unread()

    def _unread(self) -> int:
        """Bytes received and not yet taken: ours, and those still in the stream reader's buffer
        (it has no public count of them; ``_buffer`` is its bytearray in every CPython since 3.4)."""
        return len(self._received.data) + len(getattr(self._reader, "_buffer", b""))

    async def exchange(self, request: bytes, *, max_body: int | None = None) -> Answer:
        """As ``Connection.exchange``; ``TimeoutError`` when the peer is silent too long."""
        self._writer.write(request)
        framing = _answer(max_body)
        need = next(framing)
        answered = False
        try:
            while True:
                while (taken := self._received.take(need)) is None:
                    answered = await self._read_more(answered)
                need = framing.send(taken)
        except StopIteration as done:
            answer: Answer = done.value
        if answer.keep_alive and self._unread():  # bytes nobody asked for came after it
            return dataclasses.replace(answer, keep_alive=False)
        return answer

    async def _read_more(self, answered: bool) -> bool:
        """Read what comes next; whether a byte of the answer has come (``answered``: before)."""
        async with asyncio.timeout(self._read_timeout):
            with _reads_of_an_answer(answered):
                chunk = await self._reader.read(_ASYNC_READ_BYTES)
        self._received.feed(chunk)
        return answered or bool(chunk)

    def close(self) -> None:
        self._writer.close()
