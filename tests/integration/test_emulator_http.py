"""The local stack's emulator over HTTP keeps what S3 keeps: keys with percent signs, question
marks and encoded slashes come back as they were put, and a chunked upload (no Content-Length)
stores its bytes (visionq.moto_server serves moto under uvicorn, which builds the WSGI environ
differently from werkzeug's server)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import BUCKET, Stack

pytestmark = pytest.mark.integration


def test_awkward_keys_are_stored_as_sent(stack: Stack) -> None:
    keys = [
        "uploads/emulator/x%41.jpg",
        "uploads/emulator/a?b.jpg",
        "uploads/emulator/p%2Fq.jpg",
        "uploads/emulator/c#d.jpg",
    ]
    for key in keys:
        stack.s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    listed = stack.s3.list_objects_v2(Bucket=BUCKET, Prefix="uploads/emulator/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(keys)
    assert [stack.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys] == [k.encode() for k in keys]


def test_a_chunked_upload_keeps_its_bytes(stack: Stack) -> None:
    key = "uploads/emulator/chunked.bin"
    url = stack.s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=60)

    def chunks() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    response = httpx.put(url, content=chunks())  # an iterator: sent with Transfer-Encoding: chunked
    assert response.status_code == 200
    assert stack.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"hello world"
