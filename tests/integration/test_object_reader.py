"""The worker's object reads (S3ObjectReader): presigned as the SDK presigns, sent on the reader's
own keep-alive connections, against the real S3 emulator over HTTP; S3's failure answers, and
servers that close connections or frame bodies otherwise, from stand-in servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import BUCKET, Stack
from tests.tls import self_signed_certificate, server_context
from visionq.errors import ImageRejected, ObjectChanged, ObjectMissing, TransientError
from visionq.events import ObjectCreated
from visionq.stores.s3_reader import READ_ATTEMPTS, SIGNATURE_VERSION, S3ObjectReader

LIMIT = 1_000_000


@contextlib.asynccontextmanager
async def reader_at(endpoint: str, counts: dict[str, int] | None = None) -> AsyncIterator[S3ObjectReader]:
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs
    from visionq.config import AwsSettings

    settings = AwsSettings.model_validate(
        {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    )
    async with (
        get_session().create_client(**aio_client_kwargs("s3", settings, signature_version=SIGNATURE_VERSION)) as s3,
        S3ObjectReader(s3, counts=counts) as reader,
    ):
        yield reader


def put(stack: Stack, key: str, body: bytes) -> ObjectCreated:
    etag = stack.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
    return ObjectCreated(bucket=BUCKET, key=key, etag=etag, size=len(body))


def read(endpoint: str, obj: ObjectCreated, counts: dict[str, int] | None = None, limit: int = LIMIT) -> bytes:
    async def go() -> bytes:
        async with reader_at(endpoint, counts) as reader:
            return await reader.read(obj, max_bytes=limit)

    return asyncio.run(go())


@pytest.mark.parametrize("key", ["uploads/plain.jpg", "uploads/a b/%41 ?x=1&y+z/ü.jpg"])
def test_reads_the_bytes_of_the_version_its_event_named(stack: Stack, key: str) -> None:
    body = bytes(range(256)) * 700  # 179 KB, as a photo
    counts: dict[str, int] = {}
    assert read(stack.endpoint, put(stack, key, body), counts) == body
    assert counts == {"s3.GetObject": 1}


def test_an_object_overwritten_since_its_event_is_object_changed(stack: Stack) -> None:
    first = put(stack, "uploads/x.jpg", b"first")
    put(stack, "uploads/x.jpg", b"second")
    with pytest.raises(ObjectChanged):
        read(stack.endpoint, first)


def test_an_object_deleted_since_its_event_is_object_missing(stack: Stack) -> None:
    obj = put(stack, "uploads/gone.jpg", b"bytes")
    stack.s3.delete_object(Bucket=BUCKET, Key=obj.key)
    with pytest.raises(ObjectMissing):
        read(stack.endpoint, obj)


def test_a_version_deleted_since_its_event_is_object_missing(stack: Stack) -> None:
    """In a versioned bucket, the event names a version; deleted for good (by hand, or by a
    lifecycle rule on old versions), S3 answers NoSuchVersion: the job fails as object_missing
    at once, not after every retry as an unknown refusal."""
    bucket = "versioned-reads"
    stack.s3.create_bucket(Bucket=bucket)
    stack.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    answer = stack.s3.put_object(Bucket=bucket, Key="uploads/v.jpg", Body=b"bytes")
    obj = ObjectCreated(
        bucket=bucket, key="uploads/v.jpg", etag=answer["ETag"].strip('"'), size=5, version_id=answer["VersionId"]
    )
    assert read(stack.endpoint, obj) == b"bytes"
    stack.s3.delete_object(Bucket=bucket, Key=obj.key, VersionId=answer["VersionId"])
    with pytest.raises(ObjectMissing):
        read(stack.endpoint, obj)


def test_an_object_over_the_limit_is_refused_on_its_length(stack: Stack) -> None:
    obj = put(stack, "uploads/big.jpg", b"x" * 5000)
    with pytest.raises(ImageRejected) as raised:
        read(stack.endpoint, obj, limit=4999)
    assert raised.value.code == "object_too_large"
    assert read(stack.endpoint, obj, limit=5000) == b"x" * 5000


SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


@contextlib.asynccontextmanager
async def stand_in_s3(
    answer: Callable[[int], Awaitable[web.Response]], tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server on loopback (HTTPS with ``tls``) whose n-th request (from 1) gets
    ``answer(n)``; yields its endpoint and the paths it was asked for."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return await answer(len(seen))

    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("GET", "/{tail:.*}", handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def read_from_stand_in(
    answer: Callable[[int], Awaitable[web.Response]], tls: ssl.SSLContext | None = None
) -> tuple[bytes | Exception, list[str]]:
    obj = ObjectCreated(bucket=BUCKET, key="uploads/y.jpg", etag="abc")

    async def go() -> tuple[bytes | Exception, list[str]]:
        async with stand_in_s3(answer, tls) as (endpoint, seen), reader_at(endpoint) as reader:
            try:
                return await reader.read(obj, max_bytes=LIMIT), seen
            except Exception as exc:  # noqa: BLE001 - the test looks at which
                return exc, seen

    return asyncio.run(go())


def test_a_throttled_read_is_tried_again_and_succeeds() -> None:
    async def answer(n: int) -> web.Response:
        return web.Response(status=503, body=SLOW_DOWN) if n < READ_ATTEMPTS else web.Response(body=b"pixels")

    result, seen = read_from_stand_in(answer)
    assert result == b"pixels"
    assert len(seen) == READ_ATTEMPTS
    assert all(
        path.startswith(f"/{BUCKET}/uploads/y.jpg?") and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in path for path in seen
    )


def test_the_url_is_sent_as_it_was_signed() -> None:
    """A key with characters a client may re-quote (%, +, space, ?, non-ASCII): the request line is
    the presigned URL's path and query byte for byte, or S3 refuses its signature."""
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs
    from visionq.config import AwsSettings

    key = "uploads/a b/%41 ?x=1&y+z~/ü.jpg"
    signed: list[str] = []
    received: list[str] = []

    async def answer(n: int) -> web.Response:
        return web.Response(body=b"pixels")

    async def go() -> bytes:
        async with stand_in_s3(answer) as (endpoint, seen):
            settings = AwsSettings.model_validate(
                {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
            )
            kwargs = aio_client_kwargs("s3", settings, signature_version=SIGNATURE_VERSION)
            async with get_session().create_client(**kwargs) as s3, S3ObjectReader(s3) as reader:
                presign = reader.presign

                async def recording(*args: str | None) -> str:
                    url: str = await presign(*args)  # type: ignore[arg-type]
                    signed.append(url)
                    return url

                reader.presign = recording  # type: ignore[method-assign,assignment]
                data = await reader.read(ObjectCreated(bucket=BUCKET, key=key, etag="abc"), max_bytes=LIMIT)
            received.extend(seen)
            return data

    assert asyncio.run(go()) == b"pixels"
    assert "%2541%20%3Fx%3D1%26y%2Bz~/%C3%BC.jpg?" in signed[0]
    assert received == [signed[0].split(endpoint_of(signed[0]), 1)[1]]


def endpoint_of(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def test_a_read_that_keeps_failing_is_transient_after_its_attempts() -> None:
    async def answer(n: int) -> web.Response:
        return web.Response(status=500, body=b"<html>upstream error</html>")

    result, seen = read_from_stand_in(answer)
    assert isinstance(result, TransientError), result
    assert len(seen) == READ_ATTEMPTS


@pytest.mark.parametrize(
    ("status", "code", "attempts"),
    [
        (400, "RequestTimeout", READ_ATTEMPTS),  # S3's "your socket was idle": botocore tries it again
        (501, "NotImplemented", 1),  # a 5xx botocore does not retry (500, 502, 503, 504 only)
    ],
)
def test_a_failed_read_is_tried_again_as_the_sdk_would(status: int, code: str, attempts: int) -> None:
    body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()

    async def answer(n: int) -> web.Response:
        return web.Response(status=status, body=body)

    result, seen = read_from_stand_in(answer)
    assert isinstance(result, Exception) and code in str(result), result
    assert len(seen) == attempts


def test_a_refusal_is_not_retried() -> None:
    async def answer(n: int) -> web.Response:
        return web.Response(status=403, body=b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>")

    result, seen = read_from_stand_in(answer)
    assert not isinstance(result, TransientError)
    assert "AccessDenied" in str(result)
    assert len(seen) == 1


def test_an_endpoint_that_does_not_answer_is_transient() -> None:
    from visionq.local_stack import free_port

    obj = ObjectCreated(bucket=BUCKET, key="uploads/z.jpg", etag="abc")
    with pytest.raises(TransientError, match="cannot reach S3"):
        read(f"http://127.0.0.1:{free_port()}", obj)


def test_https_reads_trust_the_sdks_ca_bundle_setting(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server whose certificate only ``AWS_CA_BUNDLE`` vouches for: refused (transient: S3 cannot
    be reached) without the setting, read with it, as the SDK would."""
    certificate = self_signed_certificate(tmp_path)

    async def answer(n: int) -> web.Response:
        return web.Response(body=b"the bytes", headers={"ETag": '"abc"'})

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    result, seen = read_from_stand_in(answer, server_context(certificate))
    assert isinstance(result, TransientError)
    assert seen == []
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificate[0]))
    result, seen = read_from_stand_in(answer, server_context(certificate))
    assert result == b"the bytes"
    assert len(seen) == 1


@pytest.mark.parametrize(("idle_seconds", "expected"), [(15.0, [1, 0, 0, 0, 0]), (0.0, [1, 1, 1, 1, 1])])
def test_reads_go_on_one_kept_connection_until_it_is_idle_too_long(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, idle_seconds: float, expected: list[int]
) -> None:
    from visionq.stores import connection_pool

    monkeypatch.setattr(connection_pool, "IDLE_SECONDS", idle_seconds)
    objects = [put(stack, f"uploads/kept-{i}.jpg", bytes([i]) * 1000) for i in range(5)]
    opened: list[int] = []

    async def go() -> list[bytes]:
        async with reader_at(stack.endpoint) as reader:
            open_connection = reader._connections._connection

            async def counting(origin: Any) -> Any:
                connection, kept = await open_connection(origin)
                opened.append(0 if kept else 1)
                return connection, kept

            reader._connections._connection = counting  # type: ignore[method-assign]
            return [await reader.read(obj, max_bytes=LIMIT) for obj in objects]

    assert asyncio.run(go()) == [bytes([i]) * 1000 for i in range(5)]
    assert opened == expected  # 1: a new connection, 0: the kept one


RESET = b"reset"
LATER = b"<later>"


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[int], bytes | None]) -> AsyncIterator[tuple[str, list[int], list[int]]]:
    """A loopback server whose i-th request on a connection (from 1) gets ``answer(i)``'s bytes as
    they are (the connection closed after it if it says so), or, for None, the connection closed
    with no answer at all (for RESET, reset), or, for b"", no answer and the connection kept open until the client
    closes it; yields its endpoint, the number of requests each connection got, and the
    connections (by number) the client has closed or been refused further answers on."""
    requests: list[int] = []
    ended: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(0)
        mine = len(requests) - 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                requests[mine] += 1
                raw = answer(requests[mine])
                if raw is None:
                    break
                if raw is RESET:  # closed with a reset (RST), as a load balancer's idle timeout may
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    break
                if not raw:  # no answer, the connection left open until the client closes it
                    await reader.read()
                    break
                for i, piece in enumerate(raw.split(LATER)):  # LATER: the rest goes a moment after
                    if i:
                        await asyncio.sleep(0.05)
                    writer.write(piece)
                    await writer.drain()
                if b"Connection: close" in raw:  # a body that runs to the connection's end
                    break
        ended.append(mine)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", requests, ended


def read_from_raw(
    answer: Callable[[int], bytes | None], reads: int = 1, pause: float = 0.0
) -> tuple[list[bytes | Exception], dict[str, int], list[int]]:
    counts: dict[str, int] = {}

    async def go() -> tuple[list[bytes | Exception], list[int]]:
        results: list[bytes | Exception] = []
        async with raw_server(answer) as (endpoint, requests, _), reader_at(endpoint, counts) as reader:
            for i in range(reads):
                await asyncio.sleep(pause if i else 0)
                try:
                    results.append(await reader.read(ObjectCreated(bucket=BUCKET, key=f"k{i}", etag="e"), max_bytes=10))
                except Exception as exc:  # noqa: BLE001 - the test looks at which
                    results.append(exc)
        return results, requests

    results, requests = asyncio.run(go())
    return results, counts, requests


@pytest.mark.parametrize("drop", [None, RESET])
def test_a_kept_connection_closed_as_the_request_goes_costs_no_attempt(drop: bytes | None) -> None:
    """The server answers each connection's first request and drops the second unanswered, closed
    or reset (its keep-alive timeout striking as the request arrives): the read goes again at once
    on a new connection, and the read's attempts (one GetObject counted each) are not spent on it."""

    def answer(nth: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npixels" if nth == 1 else drop

    results, counts, requests = read_from_raw(answer, reads=3)
    assert results == [b"pixels"] * 3
    assert counts == {"s3.GetObject": 3}
    assert requests == [2, 2, 1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\npix\r\n3\r\nels\r\n0\r\n\r\n", b"pixels"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npixels", b"pixels"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\npixels\r\n5\r\nmore!\r\n0\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npixels and more", None),
    ],
)
def test_a_body_without_a_length_is_read_up_to_the_limit(raw: bytes, expected: bytes | None) -> None:
    results, _, _ = read_from_raw(lambda nth: raw)
    if expected is None:
        assert isinstance(results[0], ImageRejected) and results[0].code == "object_too_large", results
    else:
        assert results == [expected]


def test_an_answer_that_is_not_http_is_transient() -> None:
    results, counts, _ = read_from_raw(lambda nth: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert isinstance(results[0], TransientError) and "cannot reach S3 (BadAnswer)" in str(results[0])
    assert counts == {"s3.GetObject": READ_ATTEMPTS}


def test_a_read_given_up_on_closes_its_connection() -> None:
    """A read cancelled while it waits for its answer (the job's deadline) leaves its connection in
    an unknown state: it is closed, and the next read goes on a new one."""
    asked: list[int] = []

    def answer(nth: int) -> bytes | None:
        asked.append(nth)
        return b"" if len(asked) == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npixels"

    async def go() -> bytes:
        async with raw_server(answer) as (endpoint, requests, ended), reader_at(endpoint) as reader:
            obj = ObjectCreated(bucket=BUCKET, key="k", etag="e")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(obj, max_bytes=10), 0.2)
            for _ in range(200):  # the client's close reaches the server
                if ended:
                    break
                await asyncio.sleep(0.01)
            assert ended == [0]
            data = await reader.read(obj, max_bytes=10)
            assert requests == [1, 1]  # the second read on a new connection
            return data

    assert asyncio.run(go()) == b"pixels"


def test_bytes_nobody_asked_for_keep_a_connection_from_being_used_again() -> None:
    """A server that sends more after an answer (an unasked 408 as it times the connection out):
    the next read goes on a new connection, never taking those bytes for its answer."""
    pixels = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npixels"
    late = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"

    for extra in (late, LATER + late):  # with the answer, or after it, while the connection is idle
        results, _, requests = read_from_raw(
            lambda nth, extra=extra: pixels + extra if nth == 1 else pixels, reads=2, pause=0.2
        )
        assert results == [b"pixels", b"pixels"]
        assert requests == [1, 1]
