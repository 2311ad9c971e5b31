"""The worker's reads of uploaded objects from S3 (or MinIO): presigned as the SDK presigns, sent
on the worker's own keep-alive connections (``http1``).

Worker-only: the API's package does not carry it.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import logging
import re
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
from botocore.exceptions import ClientError, NoCredentialsError

from visionq.aws import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, MAX_ATTEMPTS, ca_bundle, proxy_for
from visionq.errors import ImageRejected, TransientError
from visionq.events import ObjectCreated
from visionq.stores import http1, sdk_retries
from visionq.stores.aws_errors import aws_errors, client_error, translate_client_error
from visionq.stores.connection_pool import ConnectionPool
from visionq.stores.sigv4 import QueryPresigner

logger = logging.getLogger(__name__)

# As the SDK's standard retry mode (sdk_retries: the answers it tries again, its backoff): a
# throttled or failed read is tried MAX_ATTEMPTS times in all before the message is given back.
READ_ATTEMPTS = MAX_ATTEMPTS
# A read's URL is used at once (and for its retries) and never leaves the worker; it lives as long
# as S3 lets a header-signed request's clock be off (15 min), so a worker clock that slow still reads.
_URL_LIFETIME_SECONDS = 900
SIGNATURE_VERSION = "s3v4"  # the client's presigned URLs: SigV4 query auth
_PROBE_KEY = "visionq-route-probe"  # a key presigned once per bucket, to learn the bucket's route


@dataclass(frozen=True)
class _Route:
    """How the SDK addresses and signs a bucket's GetObject: the URL up to the key (endpoint,
    virtual-host or path addressing), the operation's own query parameters (``x-id=GetObject``),
    and the signer for its region. None of it depends on the key."""

    prefix: str
    params: tuple[tuple[str, str], ...]
    signer: QueryPresigner


class S3ObjectReader:
    """Asynchronous reads for the worker: the request is presigned with the (aiobotocore) S3
    client's signer, so endpoint, addressing, region and credentials are the SDK's from
    configuration, and sent on keep-alive connections of the reader's own (``http1``; aiohttp
    before it, run 16). Through the SDK a 175 KB read cost the worker 3.11 ms of CPU, presigned and
    sent directly 1.73 ms (the SDK's modelled response parsing, hooks and per-request user agent;
    bench/request_cpu.py, bench/RESULTS.md run 13); this is the worker's one request per image
    with a body.

    Presigning through the client resolves the endpoint rules and runs the client's hooks on every
    call; none of that depends on the key. So the client presigns one probe key per bucket, the
    URL up to the key and the signing scope are kept (``_Route``), and each read's URL is the key
    appended, as the SDK's serialiser quotes it, signed as the client's SigV4 query signer signs
    (``sigv4.QueryPresigner``: 0.03-0.04 ms of the worker's CPU per read, the client's signer
    0.17-0.19 ms; bench/RESULTS.md run 15) with the client's refreshing credentials. The URLs are
    byte for byte the client's (tested with the clock fixed, for path and virtual-host addressing,
    version ids, session tokens and awkward keys). A bucket whose probe does not come back as
    plain SigV4 for ``s3`` (a directory bucket's session auth) keeps the client's presigning for
    every read.

    ``client`` must sign with SigV4 (``SIGNATURE_VERSION``). Over HTTPS the reads trust the
    certificates the SDK trusts (``aws.ca_bundle``). An async context manager: its connections
    live between enter and exit, at most ``connections`` in use at once. ``counts`` (as
    ``aws.count_requests`` fills it) gets one ``s3.GetObject`` per attempt, retries too (a request
    sent again at once because a kept connection closed under it is not counted again).
    """

    def __init__(
        self,
        client: Any,
        *,
        connections: int = 64,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        counts: dict[str, int] | None = None,
    ) -> None:
        if getattr(client.meta.config, "signature_version", None) != SIGNATURE_VERSION:
            # Left to itself botocore presigns S3 URLs with SigV2 query auth in some regions, which
            # AWS is retiring: the client must be made with signature_version="s3v4".
            raise ValueError(f"the S3 client must sign with {SIGNATURE_VERSION!r} (Config(signature_version=...))")
        self._client = client
        self._routes: dict[str, _Route | None] = {}  # by bucket; None: presigned by the client each time
        self._connections = ConnectionPool(connections, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._counts = counts
        # By endpoint: whether the environment names an HTTP proxy for it (read once per reader).
        self._proxied: dict[str, bool] = {}

    async def __aenter__(self) -> S3ObjectReader:
        self._connections.open(ssl.create_default_context(cafile=ca_bundle()))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._connections.close()

    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes:
        """The bytes of exactly the version the event named; refuses, before reading the body, an
        object over ``max_bytes``, and raises ObjectChanged if the key now holds other bytes."""
        what = f"read s3://{obj.bucket}/{obj.key}"
        # The version id where the bucket keeps versions, else the ETag as a precondition: an
        # overwrite between the event and this read must not credit the new bytes to the old event.
        headers = {} if obj.version_id else {"If-Match": f'"{obj.etag}"'}
        with aws_errors(what):  # presigning reads credentials: none, or none valid, is a ConfigError
            presigned = await self.presign(obj.bucket, obj.key, obj.version_id)
        # Sent as signed, byte for byte (a key with %, + or a space): the signature covers the path
        # and query as they are.
        parts = urlsplit(presigned)
        endpoint = f"{parts.scheme}://{parts.netloc}"
        proxied = self._proxied.get(endpoint)
        if proxied is None:
            proxied = self._proxied[endpoint] = proxy_for(endpoint) is not None
            if proxied:
                logger.info("an HTTP proxy is named for %s: the object reads go through the SDK", endpoint)
        if proxied:
            return await self._read_through_sdk(obj, max_bytes, what)
        origin = _origin(endpoint)
        request = http1.request_bytes("GET", f"{parts.path}?{parts.query}", origin.host_header, headers, b"")
        try:
            return await sdk_retries.call_async(
                lambda: self._get(origin, request, max_bytes), READ_ATTEMPTS, (ClientError, _Unreachable)
            )
        except (ClientError, _Unreachable) as failure:
            raise _translated(failure, what) from failure

    async def _read_through_sdk(self, obj: ObjectCreated, max_bytes: int, what: str) -> bytes:
        """The read as the SDK sends it (its connections honour an HTTP proxy; these do not), with
        the same precondition, limit and errors; the SDK's client retries it."""
        exact = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": f'"{obj.etag}"'}
        if self._counts is not None:
            self._counts["s3.GetObject"] = self._counts.get("s3.GetObject", 0) + 1
        with aws_errors(what):
            response = await self._client.get_object(Bucket=obj.bucket, Key=obj.key, **exact)
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                response["Body"].close()
                raise _too_large(size, max_bytes)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        return data

    async def presign(self, bucket: str, key: str, version_id: str | None = None) -> str:
        """The URL that GETs ``key`` (``version_id``), as the client's ``generate_presigned_url``
        would make it."""
        if bucket not in self._routes:
            self._routes[bucket] = await self._route(bucket)
        route = self._routes[bucket]
        if route is None:
            return await self._sdk_presign(bucket, key, version_id)
        credentials = self._client._request_signer._credentials  # the client's, refreshed as it refreshes them
        if credentials is None:
            raise NoCredentialsError()
        return route.signer.url(
            await credentials.get_frozen_credentials(),
            # The key as botocore's serialiser quotes a greedy URI label; versionId as its query string.
            route.prefix + quote(key, safe="/~"),
            [*route.params, *((("versionId", version_id),) if version_id else ())],
            amz_date=_amz_date(),
        )

    async def _sdk_presign(self, bucket: str, key: str, version_id: str | None) -> str:
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        url: str = await self._client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=_URL_LIFETIME_SECONDS
        )
        return url

    async def _route(self, bucket: str) -> _Route | None:
        """The bucket's route, from the client's URL for a probe key; None where it is not plain
        SigV4 query auth for s3 with the key at the end of the path."""
        probe = urlsplit(await self._sdk_presign(bucket, _PROBE_KEY, None))
        fields = parse_qsl(probe.query, keep_blank_values=True)
        auth = dict(fields)
        scope = auth.get("X-Amz-Credential", "").split("/")  # key id / date / region / service / aws4_request
        if (
            auth.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256"
            or len(scope) != 5
            or scope[3] != "s3"
            or auth.get("X-Amz-SignedHeaders") != "host"
            or not probe.path.endswith("/" + _PROBE_KEY)
        ):
            return None
        own = tuple((k, v) for k, v in fields if not k.startswith("X-Amz-"))
        prefix = f"{probe.scheme}://{probe.netloc}{probe.path[: -len(_PROBE_KEY)]}"
        signer = QueryPresigner(service="s3", region=scope[2], expires=_URL_LIFETIME_SECONDS)
        return _Route(prefix=prefix, params=own, signer=signer)

    async def _get(self, origin: http1.Origin, request: bytes, max_bytes: int) -> bytes:
        """One attempt: the bytes, or S3's error answer as a ClientError, or _Unreachable."""
        if self._counts is not None:
            self._counts["s3.GetObject"] = self._counts.get("s3.GetObject", 0) + 1
        try:
            answer = await self._connections.exchange(origin, request, max_body=max_bytes)
        except http1.BodyTooLarge as exc:  # on its Content-Length, before the body is read
            raise _too_large(exc.size, max_bytes) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, timeouts, not HTTP
            raise _Unreachable(f"cannot reach S3 ({type(exc).__name__})") from exc
        if answer.status != 200:
            raise _s3_error(answer.status, answer.body)
        return answer.body


class _Unreachable(Exception):
    """No HTTP answer from S3 (refused, reset, TLS, a timeout, not HTTP; the message names which):
    tried again as the SDK tries its connection errors."""


def _translated(failure: ClientError | _Unreachable, what: str) -> Exception:
    """The failure of a read's last attempt as the project's error."""
    if isinstance(failure, _Unreachable):
        return TransientError(f"{what}: {failure}")
    return translate_client_error(failure, what)


@functools.lru_cache(maxsize=64)
def _origin(scheme_and_netloc: str) -> http1.Origin:
    """A bucket's endpoint, worked out once, not for every read."""
    return http1.Origin.of(scheme_and_netloc)


def _too_large(size: int, max_bytes: int) -> ImageRejected:
    return ImageRejected(f"the object is {size} bytes, over the limit of {max_bytes}", code="object_too_large")


def _amz_date() -> str:
    """Now, as SigV4 writes it, by botocore's own clock (the one its signers read, so a test that
    fixes it gets the client's URLs and ours at the same instant)."""
    now: datetime.datetime = botocore.auth.get_current_datetime()  # type: ignore[attr-defined]
    return now.strftime(botocore.auth.SIGV4_TIMESTAMP)


def _s3_error(status: int, body: bytes) -> ClientError:
    """S3's error answer (its body at most ``http1.MAX_ERROR_BODY_BYTES``) as botocore raises it."""
    # Two fields of a short document: read by pattern, not by an XML parser (no entity expansion to
    # fear from whatever answers at the endpoint; a proxy's HTML page leaves the status to decide).
    code, message = (_ERROR_FIELDS[name].search(body) for name in ("Code", "Message"))
    return client_error(
        status,
        code.group(1).decode(errors="replace") if code else "",
        message.group(1).decode(errors="replace") if message else "",
        "GetObject",
    )


_ERROR_FIELDS = {
    name: re.compile(rb"<%s>([^<]{0,1024})</%s>" % (name.encode(), name.encode())) for name in ("Code", "Message")
}
