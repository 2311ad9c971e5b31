"""The worker's SQS calls without the SDK's per-call machinery (``SqsWire``).

SQS speaks AWS's JSON 1.0 protocol (as DynamoDB does; ``dynamodb_wire``): a call's parameters, as
``SqsQueue`` builds them, are the request's body as they stand, and the answer's body is the dict
aiobotocore would return. So the poller's receives, its batched deletes and visibility changes and
the announcements' sends are dumped, signed (``sigv4.JsonPostSigner``) and posted on keep-alive
connections of the worker's own (``connection_pool``). Through aiobotocore a call cost the worker
1.27-1.29 ms of CPU, the same request sent this way 0.23-0.24 ms (bench/sqs_cpu.py,
bench/RESULTS.md); the poller makes about one call per four images.

The endpoint, region and (refreshing) credentials are the aiobotocore client's, from the SDK's
configuration (``SqsWire.of``). Errors come back as botocore's own ``ClientError`` (and its
connection errors), so ``aws_errors`` translates them as it does the SDK's; the error code is the
one the SDK reports (``x-amzn-query-error``'s, ``AWS.SimpleQueueService.NonExistentQueue``, where
SQS sends it, else the ``__type``'s). What the SDK's standard retry mode tries again (throttling,
500/502/503/504, refused connections, read timeouts; ``sdk_retries``) is tried again, with its
backoff, up to ``MAX_ATTEMPTS`` attempts in all, as the worker's SDK clients are configured. A 200
whose body is not a JSON object (a proxy's page) is taken as no answer, and tried again.
A long poll given up on (the worker stopping) closes its connection: the messages SQS may have
handed to it reappear after their visibility timeout, as with the SDK.
"""

from __future__ import annotations

import http.client
import json
import ssl
from types import TracebackType
from typing import Any

from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from visionq.aws import DEFAULT_CONNECT_TIMEOUT, MAX_ATTEMPTS, ca_bundle
from visionq.stores import http1, json_protocol, sdk_retries
from visionq.stores.connection_pool import ConnectionPool
from visionq.stores.sigv4 import JsonPostSigner

ATTEMPTS = MAX_ATTEMPTS  # as the worker's SDK clients are configured (aws.client_config)
_TARGET_PREFIX = "AmazonSQS"
_CONTENT_TYPE = "application/x-amz-json-1.0"
# Ten messages of SQS's largest (1 MiB) and their attributes: a bigger answer is not SQS's.
_MAX_ANSWER_BYTES = 16 << 20


class SqsWire:
    """The calls ``SqsQueue`` makes, with aiobotocore's parameter and answer shapes. An async
    context manager: its connections live between enter and exit, at most ``connections`` in
    use at once. ``read_timeout`` must be longer than the longest long poll. ``counts`` (as
    ``aws.count_requests`` fills it) gets one ``sqs.<Operation>`` per HTTP request sent, retries
    too (a request sent again at once because a kept connection closed under it is not counted
    again)."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        credentials: Any,  # aiobotocore's (awaitable frozen copy), or None: NoCredentialsError
        read_timeout: float,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        connections: int = 16,
        counts: dict[str, int] | None = None,
    ) -> None:
        self._url = endpoint_url
        self._origin = http1.Origin.of(endpoint_url)
        self._credentials = credentials
        self._counts = counts
        self._signer = JsonPostSigner(
            service="sqs", region=region, host=self._origin.host_header, content_type=_CONTENT_TYPE
        )
        self._pool = ConnectionPool(connections, connect_timeout=connect_timeout, read_timeout=read_timeout)

    @classmethod
    def of(
        cls, client: Any, *, read_timeout: float, connections: int = 16, counts: dict[str, int] | None = None
    ) -> SqsWire:
        """The wire to where the aiobotocore SQS ``client`` sends, signed with its credentials."""
        return cls(
            endpoint_url=client.meta.endpoint_url,
            region=client.meta.region_name,
            credentials=client._request_signer._credentials,  # the client's, refreshed as it refreshes them
            read_timeout=read_timeout,
            connections=connections,
            counts=counts,
        )

    async def __aenter__(self) -> SqsWire:
        self._pool.open(ssl.create_default_context(cafile=ca_bundle()))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.close()

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        return await self.call("ReceiveMessage", params)

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        return await self.call("DeleteMessageBatch", params)

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        return await self.call("ChangeMessageVisibilityBatch", params)

    async def send_message(self, **params: Any) -> dict[str, Any]:
        return await self.call("SendMessage", params)

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        return await sdk_retries.call_async(lambda: self._send(operation, body), ATTEMPTS)

    async def _send(self, operation: str, body: bytes) -> dict[str, Any]:
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = await self._credentials.get_frozen_credentials()
        headers = self._signer.headers(frozen, f"{_TARGET_PREFIX}.{operation}", body)
        headers["x-amzn-query-mode"] = "true"  # as botocore sends it (unsigned here): SQS's error codes of old
        request = http1.request_bytes("POST", "/", self._origin.host_header, headers, body)  # "/": as signed
        if self._counts is not None:
            key = f"sqs.{operation}"
            self._counts[key] = self._counts.get(key, 0) + 1
        try:
            answer = await self._pool.exchange(self._origin, request, max_body=_MAX_ANSWER_BYTES)
        except TimeoutError as exc:  # no answer within the read timeout (or no connection in time)
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, TLS, not HTTP, too large
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        return json_protocol.answer(answer.status, answer.headers, answer.body, operation=operation, url=self._url)
