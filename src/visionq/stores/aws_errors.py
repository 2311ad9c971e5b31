"""Translating botocore errors into the project's error types, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from visionq.errors import (
    ConfigError,
    ObjectChanged,
    ObjectMissing,
    TransientError,
    TransitionRejected,
    VisionqError,
)
from visionq.stores.sdk_retries import retryable

_THROTTLING = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalServerError",
    "InternalFailure",
    "TransactionConflictException",
}
_MISSING_RESOURCE = {
    "ResourceNotFoundException",
    "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}
_MISSING_OBJECT = {"NoSuchKey", "NoSuchVersion"}  # the version an event named, deleted for good
# What botocore calls an S3 answer without a body (HEAD): the object is missing only where an object
# was asked for; a bare 404 from another service (a proxy, a wrong path) says nothing of any object.
_MISSING_WITHOUT_BODY = {"404", "NotFound"}
_BAD_CREDENTIALS = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "AccessDenied",
    "AccessDeniedException",
}


def client_error(status: int, code: str, message: str, operation: str) -> ClientError:
    """An error answer read without the SDK (stores/s3_reader.py, stores/dynamodb_wire.py) as the
    SDK's ``ClientError``, as much of it as ``translate_client_error`` reads; ``code`` empty: the
    status stands for it."""
    answer: Any = {
        "Error": {"Code": code or str(status), "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(answer, operation)


def translate_client_error(exc: ClientError, what: str) -> VisionqError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    reasons = exc.response.get("CancellationReasons") or []
    if code == "ConditionalCheckFailedException" or (
        code == "TransactionCanceledException" and any(r.get("Code") == "ConditionalCheckFailed" for r in reasons)
    ):
        return TransitionRejected(f"{what}: condition not met")
    if code == "PreconditionFailed" or status == 412:
        return ObjectChanged(f"{what}: the object was overwritten after its event (a newer version has its own)")
    if code in _MISSING_OBJECT or (code in _MISSING_WITHOUT_BODY and "Object" in exc.operation_name):
        return ObjectMissing(f"{what}: the object no longer exists")
    if code in _BAD_CREDENTIALS:
        return ConfigError(f"{what}: AWS refused these credentials or this identity ({code}); check AWS_PROFILE, AWS_*")
    if code in _MISSING_RESOURCE:
        return ConfigError(f"{what}: resource does not exist ({code}); run `visionq bootstrap`")
    # What the SDK (or our wire clients, by its rules) tries again is transient once tried out.
    if code in _THROTTLING or status >= 500 or retryable(exc):
        return TransientError(f"{what}: AWS is unavailable or throttling ({code or status})")
    return VisionqError(f"{what}: AWS rejected the request ({code or status})")


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Re-raise botocore errors met inside the block as VisionqError subclasses."""
    try:
        yield
    except ClientError as exc:
        raise translate_client_error(exc, what) from exc
    except NoCredentialsError as exc:
        raise ConfigError(f"{what}: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/...)") from exc
    except EndpointConnectionError as exc:
        raise TransientError(f"{what}: cannot reach AWS at {exc.kwargs.get('endpoint_url', 'its endpoint')}") from exc
    except BotoCoreError as exc:  # connection refused, timeouts, ...
        raise TransientError(f"{what}: cannot reach AWS ({type(exc).__name__})") from exc
