"""Answers in AWS's JSON 1.0 protocol as the worker's own clients read them (``dynamodb_wire``,
``sqs_wire``): a 200's body is the dict the SDK returns; an error answer is the SDK's
``ClientError`` with the code botocore would report, which ``aws_errors`` translates as it
translates the SDK's.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import EndpointConnectionError

from visionq.stores import http1
from visionq.stores.aws_errors import client_error


def answer(status: int, headers: dict[str, str], body: bytes, *, operation: str, url: str) -> dict[str, Any]:
    """The body of a 200 as a dict; ``ClientError`` for an error answer. A 200 whose body is not a
    JSON object (a proxy's page, a misrouted endpoint) is no answer from the service: botocore's
    ``EndpointConnectionError``, tried again as a dropped connection is."""
    if status != 200:
        code, message = _error_fields(headers, body)
        raise client_error(status, code, message, operation)
    try:
        result = json.loads(body) if body else {}
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise EndpointConnectionError(endpoint_url=url, error=http1.BadAnswer("the answer is not a JSON object"))
    result["ResponseMetadata"] = {"HTTPStatusCode": 200}
    return result


def _error_fields(headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """The error's code as botocore's JSON parser reports it, and its message; empty strings for a
    body that is not a JSON object (a proxy's HTML page: the status decides). The code is the
    ``__type``'s (``com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException``: after the
    ``#``, a ``:`` and what follows dropped), or the query protocol's where the service sends it in
    ``x-amzn-query-error`` (SQS: ``AWS.SimpleQueueService.NonExistentQueue;Sender``)."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    code = str(document.get("__type", "")).split(":", 1)[0].rsplit("#", 1)[-1]
    query_error = headers.get("x-amzn-query-error", "").split(";")
    if len(query_error) == 2 and query_error[0]:
        code = query_error[0]
    return code, str(document.get("message") or document.get("Message") or "")
