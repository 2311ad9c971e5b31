"""The worker's DynamoDB calls without the SDK's per-call machinery (``DynamoDBWire``).

DynamoDB speaks JSON (AWS's JSON 1.0 protocol): the parameters of a low-level call, as the job
store builds them (attribute values already typed, ``{"S": "..."}``, ``{"N": "12"}``), are the
request's body as they stand, and the answer's body is the dict boto3 would return. So the job
store's two conditional writes per image need no model-driven serialising, parsing, endpoint
rules, hooks or per-call user agent: the body is dumped, signed (SigV4, ``sigv4.JsonPostSigner``,
with the session's refreshing credentials) and posted on a keep-alive connection of the calling
thread's own (``http1``). Through boto3 the job store's claim (an ``UpdateItem``) cost the worker
3.13 ms of CPU, through botocore's signer and a urllib3 pool 1.86 ms (bench/request_cpu.py,
bench/RESULTS.md run 13), and this way less again (runs 15 and 16).

Errors come back as botocore's own ``ClientError`` (and its connection errors), so
``aws_errors`` translates them as it does the SDK's; what the SDK's standard retry mode tries again
(throttling, 500/502/503/504, refused connections, read timeouts; ``sdk_retries``) is tried again,
with its backoff, up to ``MAX_ATTEMPTS`` attempts in all, as the worker's SDK clients are
configured; a body whose CRC32 does not match the ``x-amz-crc32`` header is tried again, as
botocore does, and so is a 200 whose body is not a JSON object (``json_protocol``). Binary
attributes (``B``) are not supported: the job table has none, and ``json`` refuses ``bytes``
loudly.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from visionq.aws import MAX_ATTEMPTS
from visionq.stores import http1, json_protocol, sdk_retries
from visionq.stores.aws_errors import client_error
from visionq.stores.sigv4 import JsonPostSigner, host_header

ATTEMPTS = MAX_ATTEMPTS  # as the worker's SDK clients are configured (aws.client_config)
_TARGET_PREFIX = "DynamoDB_20120810"
_CONTENT_TYPE = "application/x-amz-json-1.0"
_IDLE_SECONDS = 15.0  # a kept connection idle longer is not used again (as the object reads')


class DynamoDBWire:
    """The calls ``DynamoJobStore`` makes, with boto3's parameter and answer shapes.

    ``credentials``: a botocore credentials object (``Session.get_credentials()``; refreshed
    before it expires) or None, which fails each call with ``NoCredentialsError`` as boto3 does.
    ``counts`` (as ``aws.count_requests`` fills it) gets one ``dynamodb.<Operation>`` per HTTP
    request sent, retries too.
    """

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        credentials: Any,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str | None = None,  # the certificates TLS trusts (aws.ca_bundle); None: the system's
        counts: dict[str, int] | None = None,
    ) -> None:
        self._url = endpoint_url.rstrip("/") + "/"
        self._credentials = credentials
        self._counts = counts
        self._signer = JsonPostSigner(
            service="dynamodb", region=region, host=host_header(self._url), content_type=_CONTENT_TYPE
        )
        self._connections = _Connections(
            self._url, connect_timeout=connect_timeout, read_timeout=read_timeout, ca_bundle=ca_bundle
        )

    def put_item(self, **params: Any) -> dict[str, Any]:
        return self.call("PutItem", params)

    def get_item(self, **params: Any) -> dict[str, Any]:
        return self.call("GetItem", params)

    def query(self, **params: Any) -> dict[str, Any]:
        return self.call("Query", params)

    def update_item(self, **params: Any) -> dict[str, Any]:
        return self.call("UpdateItem", params)

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        return sdk_retries.call(lambda: self._send(operation, body), ATTEMPTS)

    def _send(self, operation: str, body: bytes) -> dict[str, Any]:
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        headers = self._signer.headers(frozen, f"{_TARGET_PREFIX}.{operation}", body)
        if self._counts is not None:
            key = f"dynamodb.{operation}"
            self._counts[key] = self._counts.get(key, 0) + 1
        answer = self._connections.post(headers, body)
        expected_crc = answer.headers.get("x-amz-crc32")
        if expected_crc is not None and int(expected_crc) != zlib.crc32(answer.body):
            raise client_error(500, "CRC32CheckFailed", "the answer's body does not match its CRC32", operation)
        return json_protocol.answer(answer.status, answer.headers, answer.body, operation=operation, url=self._url)


class _Connections:
    """A keep-alive connection per calling thread (the worker's store threads each have one, so
    there is no pool to lock), made again when the server has closed it. The exchange is
    ``http1``'s, not ``http.client``'s (nor urllib3's before it): each costs the worker less CPU
    (bench/RESULTS.md runs 15 and 16)."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, ca_bundle: str | None) -> None:
        self._url = url
        self._origin = http1.Origin.of(url)
        self._path = urlsplit(url).path or "/"
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tls = ssl.create_default_context(cafile=ca_bundle) if self._origin.tls else None
        self._local = threading.local()

    def post(self, headers: dict[str, str], body: bytes) -> http1.Answer:
        """The answer; botocore's connection errors else.

        A kept connection the server closed while it was idle (its keep-alive timeout) is seen
        before the request goes (``_dropped``); one it closes just as the request goes fails with
        no answer at all, and the request is sent once more at once on a new connection, as HTTP
        clients do, without spending one of the call's attempts. Nothing else is sent again here.
        """
        request = http1.request_bytes("POST", self._path, self._origin.host_header, headers, body)
        connection, reused = self._connection()
        try:
            return self._exchange(connection, request)
        except EndpointConnectionError as exc:
            if not (reused and isinstance(exc.kwargs.get("error"), http1.CLOSED_UNDER_US)):
                raise
        connection, _ = self._connection()
        return self._exchange(connection, request)

    def _exchange(self, connection: http1.Connection, request: bytes) -> http1.Answer:
        try:
            answer = connection.exchange(request)
        except TimeoutError as exc:  # socket.timeout: no answer within the read timeout
            self._drop()
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed, TLS, not HTTP
            self._drop()
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        except BaseException:  # anything else leaves the connection in a state nobody knows
            self._drop()
            raise
        if not answer.keep_alive:
            self._drop()
        self._local.since = time.monotonic()
        return answer

    def _connection(self) -> tuple[http1.Connection, bool]:
        """The thread's connection, and whether it is a kept one (else new). A kept one idle for
        longer than ``_IDLE_SECONDS`` is not used again: a NAT or a load balancer may have dropped
        it without a word, and a request on it would wait its read timeout out."""
        connection: http1.Connection | None = getattr(self._local, "connection", None)
        idle = time.monotonic() - getattr(self._local, "since", 0.0)
        if connection is not None and idle < _IDLE_SECONDS and not _dropped(connection.sock):
            return connection, True
        # Forgotten before a new one is tried: should that fail, the next call must not find a
        # closed socket here (polling it raises ValueError, which is no AWS failure at all).
        self._drop()
        try:
            sock = socket.create_connection((self._origin.host, self._origin.port), timeout=self._connect_timeout)
        except OSError as exc:  # refused, DNS, or no connection within the connect timeout
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self._origin.host)
            except OSError as exc:  # the handshake failed: the plain socket is ours to close
                sock.close()
                raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        sock.settimeout(self._read_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 sets it
        connection = http1.Connection(sock)
        self._local.connection = connection
        return connection, False

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle keep-alive connection was closed by the server: readable with nothing
    asked means end of file (or bytes nobody asked for); either way it is not to be reused."""
    poller = select.poll()  # not select(): no limit on the descriptor's number
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
