"""A worker behind an HTTP proxy. Where the environment names one for an AWS endpoint
(``HTTP_PROXY``/``HTTPS_PROXY`` less ``NO_PROXY``, as the SDK reads them), every request the worker
sends to it goes through the proxy: the worker's own clients (the SQS and DynamoDB wires, the
object reads' connections), which speak no proxy, give way to the SDK's for that endpoint. Without
one they are used, as the benchmarks measure them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import BUCKET, Stack
from tests.integration.test_pipeline import WAIT, png_bytes
from tests.proxy import Relayed, forward_proxy
from visionq.local_stack import wait_until

pytestmark = pytest.mark.integration

PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Relayed]]:
    """The emulator's endpoint (plain HTTP on loopback) behind a forward proxy, for the clients
    made from here on; yields what went through the proxy."""
    with forward_proxy() as (url, relayed):
        for name in PROXY_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", url)
        yield relayed


def operations(relayed: list[Relayed], prefix: str) -> set[str]:
    """The operations of the JSON-protocol requests (SQS's, DynamoDB's) that went through."""
    targets = (r.headers.get("X-Amz-Target", "") for r in relayed)
    return {t.split(".", 1)[1] for t in targets if t.startswith(prefix + ".")}


def test_a_worker_behind_a_proxy_sends_its_requests_through_it(
    stack: Stack, proxied: list[Relayed], start_worker: Callable[..., Any], draw_scene: Callable[..., Any]
) -> None:
    start_worker()  # after the proxy (the fixtures' order): stopped before it
    image, truth = draw_scene(10_003, (320, 240))
    key = "uploads/behind a proxy.png"
    stack.s3.put_object(Bucket=BUCKET, Key=key, Body=png_bytes(image), ContentType="image/png")  # not proxied

    def stored() -> bool:
        return stack.sql("SELECT count(*) FROM results WHERE key = %s", key) == [(1,)]

    wait_until(stored, timeout=WAIT, what="the job behind the proxy")
    assert stack.sql("SELECT count(*) FROM detections") == [(len(truth),)]
    wait_until(lambda: "DeleteMessageBatch" in operations(proxied, "AmazonSQS"), timeout=WAIT, what="the delete")
    assert "ReceiveMessage" in operations(proxied, "AmazonSQS")
    assert "UpdateItem" in operations(proxied, "DynamoDB_20120810")  # the claim and the outcome
    assert any(r.method == "GET" and f"/{quote(key)}" in r.url for r in proxied)  # the object's read


def test_an_endpoint_the_proxy_is_not_for_gets_the_workers_own_clients(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, proxied: list[Relayed]
) -> None:
    """``NO_PROXY`` naming the endpoint's host, or a proxy for the other scheme only: direct."""
    from visionq.aws import job_table_client
    from visionq.stores.dynamodb_wire import DynamoDBWire

    settings = stack.worker_settings()
    assert not isinstance(job_table_client(settings), DynamoDBWire)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert isinstance(job_table_client(settings), DynamoDBWire)
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # for https endpoints only
    assert isinstance(job_table_client(settings), DynamoDBWire)


def test_the_object_reader_reads_through_the_sdk_behind_a_proxy(stack: Stack, proxied: list[Relayed]) -> None:
    """Its checks hold on that path too: the bytes of the version the event named, the size limit
    before the body, an overwrite seen."""
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs
    from visionq.errors import ImageRejected, ObjectChanged
    from visionq.events import ObjectCreated
    from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader

    key = "uploads/through the proxy.jpg"
    etag = stack.s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 1000)["ETag"].strip('"')
    obj = ObjectCreated(bucket=BUCKET, key=key, etag=etag)
    counts: dict[str, int] = {}

    async def reads() -> list[Any]:
        settings = stack.worker_settings()
        kwargs = aio_client_kwargs("s3", settings, signature_version=SIGNATURE_VERSION)
        async with get_session().create_client(**kwargs) as s3, S3ObjectReader(s3, counts=counts) as reader:
            outcomes: list[Any] = [await reader.read(obj, max_bytes=1000)]
            try:
                await reader.read(obj, max_bytes=999)
            except ImageRejected as exc:
                outcomes.append(exc.code)
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=b"y" * 10)
            try:
                await reader.read(obj, max_bytes=1000)
            except ObjectChanged:
                outcomes.append("changed")
            return outcomes

    assert asyncio.run(reads()) == [b"x" * 1000, "object_too_large", "changed"]
    assert [r.method for r in proxied if f"/{quote(key)}" in r.url] == ["GET", "GET", "GET"]
    assert counts == {"s3.GetObject": 3}
