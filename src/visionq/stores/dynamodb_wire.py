"""The worker's DynamoDB calls without the SDK's per-call machinery (``DynamoDBWire``).

DynamoDB speaks JSON (AWS's JSON 1.0 protocol): the parameters of a low-level call, as the job
store builds them (attribute values already typed, ``{"S": "..."}``, ``{"N": "12"}``), are the
request's body as they stand, and the answer's body is the dict boto3 would return. So the job
store's two conditional writes per image need no model-driven serialising, parsing, endpoint
rules, hooks or per-call user agent: the body is dumped, signed with botocore's own SigV4 signer
and the session's (refreshing) credentials, and posted through a urllib3 pool. Through boto3 the
job store's claim (an ``UpdateItem``) cost the worker 3.13 ms of CPU, this way 1.86 ms
(bench/request_cpu.py, bench/RESULTS.md run 13).

Errors come back as botocore's own ``ClientError`` (and its connection errors), so
``aws_errors`` translates them as it does the SDK's; throttling and server errors are tried three
times in all with jittered backoff, as the SDK's standard retry mode does; a body whose CRC32 does
not match the ``x-amz-crc32`` header is tried again, as botocore does. Binary attributes (``B``)
are not supported: the job table has none, and ``json`` refuses ``bytes`` loudly.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from typing import Any

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
from botocore.httpsession import where as ca_bundle

from visionq.aws import MAX_ATTEMPTS
from visionq.errors import TransientError
from visionq.stores.aws_errors import client_error, translate_client_error

ATTEMPTS = MAX_ATTEMPTS  # as the SDK's standard retry mode
_BACKOFF_BASE_SECONDS = 0.05
_TARGET_PREFIX = "DynamoDB_20120810"
_CONTENT_TYPE = "application/x-amz-json-1.0"


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
        connections: int = 10,
        counts: dict[str, int] | None = None,
    ) -> None:
        self._url = endpoint_url.rstrip("/") + "/"
        self._region = region
        self._credentials = credentials
        self._counts = counts
        self._http = urllib3.PoolManager(
            maxsize=connections,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,  # ours, below: a retry must be signed again
            ca_certs=ca_bundle(),
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
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._send(operation, body)
            except ClientError as exc:
                if attempt == ATTEMPTS or not isinstance(translate_client_error(exc, operation), TransientError):
                    raise
            except (EndpointConnectionError, ReadTimeoutError):
                if attempt == ATTEMPTS:
                    raise
            time.sleep(random.uniform(0, _BACKOFF_BASE_SECONDS * 2**attempt))
        raise AssertionError("unreachable")

    def _send(self, operation: str, body: bytes) -> dict[str, Any]:
        if self._credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={"Content-Type": _CONTENT_TYPE, "X-Amz-Target": f"{_TARGET_PREFIX}.{operation}"},
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), "dynamodb", self._region).add_auth(request)
        if self._counts is not None:
            key = f"dynamodb.{operation}"
            self._counts[key] = self._counts.get(key, 0) + 1
        try:
            response = self._http.request("POST", self._url, body=body, headers=dict(request.headers.items()))
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, connect timeout, DNS
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        data = response.data
        expected_crc = response.headers.get("x-amz-crc32")
        if expected_crc is not None and int(expected_crc) != zlib.crc32(data):
            raise client_error(500, "CRC32CheckFailed", "the answer's body does not match its CRC32", operation)
        if response.status != 200:
            code, message = _error_fields(data)
            raise client_error(response.status, code, message, operation)
        answer: dict[str, Any] = json.loads(data) if data else {}
        answer["ResponseMetadata"] = {"HTTPStatusCode": 200}
        return answer


def _error_fields(data: bytes) -> tuple[str, str]:
    """``__type`` (``com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException``: the part
    after ``#``) and the message of a JSON error body; empty strings for anything else."""
    try:
        document = json.loads(data)
    except ValueError:  # a proxy's HTML page: the status decides
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    code = str(document.get("__type", "")).rsplit("#", 1)[-1]
    return code, str(document.get("message") or document.get("Message") or "")
