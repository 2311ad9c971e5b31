"""botocore's standard retry mode for the calls the worker sends without the SDK (``sqs_wire``,
``dynamodb_wire``, ``s3_reader``): which failed answers are tried again, how long to wait before
the next attempt, and the loop that does it (``call``, ``call_async``). The lists are botocore's own
(``botocore/retries/standard.py``: ``TransientRetryableChecker`` and ``ThrottledRetryableChecker``,
and the errors the services' models mark retryable; tests/unit/test_sdk_retries.py checks them
against the installed botocore). Connection errors and
read timeouts are tried again too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
THROTTLED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
# Error shapes the services' models mark ``retryable`` (botocore's ModeledRetryableErrorChecker),
# for the services the wire clients call (DynamoDB; SQS and S3 mark none).
MODELED_RETRYABLE_CODES = frozenset({"ReplicatedWriteConflictException"})

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 20.0
# What a call's attempt may fail with that ``wait_before_next`` decides on: an error answer, or none.
FAILURES = (ClientError, EndpointConnectionError, ReadTimeoutError)


def retryable(exc: ClientError) -> bool:
    """Whether botocore would try the call that got this error answer again."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return (
        code in TRANSIENT_CODES
        or code in THROTTLED_CODES
        or code in MODELED_RETRYABLE_CODES
        or status in TRANSIENT_STATUS
    )


def backoff_seconds(failed_attempt: int) -> float:
    """The wait after attempt ``failed_attempt`` (from 1) failed: truncated binary exponential
    backoff with full jitter, up to 1 s after the first, 2 s after the second (botocore's
    ``ExponentialBackoff``)."""
    return random.random() * min(2.0 ** (failed_attempt - 1), MAX_BACKOFF_SECONDS)


def wait_before_next(failure: Exception, attempt: int, attempts: int) -> float | None:
    """After attempt ``attempt`` (from 1) of ``attempts`` failed with ``failure`` (one of
    ``FAILURES``): the seconds to wait before the next, or None when the failure is to be raised
    (the last attempt, or an answer the SDK would not try again)."""
    if attempt >= attempts or (isinstance(failure, ClientError) and not retryable(failure)):
        return None
    return backoff_seconds(attempt)


def call(send: Callable[[], T], attempts: int) -> T:
    """``send()``, tried again on a failure in ``FAILURES`` the SDK would retry, up to ``attempts``
    in all, sleeping this thread between; the last failure is raised as it came."""
    attempt = 1
    while True:
        try:
            return send()
        except FAILURES as failure:
            wait = wait_before_next(failure, attempt, attempts)
            if wait is None:
                raise
        time.sleep(wait)
        attempt += 1


async def call_async(
    send: Callable[[], Awaitable[T]], attempts: int, failures: tuple[type[Exception], ...] = FAILURES
) -> T:
    """``call`` for a coroutine, waiting on the event loop; ``failures``: what an attempt may fail
    with (a ``ClientError``, or no answer)."""
    attempt = 1
    while True:
        try:
            return await send()
        except failures as failure:
            wait = wait_before_next(failure, attempt, attempts)
            if wait is None:
                raise
        await asyncio.sleep(wait)
        attempt += 1
