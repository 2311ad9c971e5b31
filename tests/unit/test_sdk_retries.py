"""The SQS wire's retry rules are botocore's standard mode's, as the installed botocore has them."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker

from visionq.errors import ObjectMissing, TransientError, VisionqError
from visionq.stores import sdk_retries
from visionq.stores.aws_errors import client_error, translate_client_error


def test_the_lists_are_the_installed_botocores() -> None:
    assert set(TransientRetryableChecker._TRANSIENT_ERROR_CODES) == sdk_retries.TRANSIENT_CODES
    assert set(TransientRetryableChecker._TRANSIENT_STATUS_CODES) == sdk_retries.TRANSIENT_STATUS
    assert set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) == sdk_retries.THROTTLED_CODES
    session = botocore.session.get_session()
    modeled = set()
    for service in ("dynamodb", "sqs", "s3"):
        model = session.get_service_model(service)
        for name in model.shape_names:
            metadata = model.shape_for(name).metadata
            if metadata.get("retryable") is not None:
                modeled.add(metadata.get("error", {}).get("code", name))
    assert modeled == sdk_retries.MODELED_RETRYABLE_CODES


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "RequestThrottled", True),  # SQS's throttling, as the SDK reports its code
        (400, "RequestTimeout", True),
        (500, "InternalError", True),
        (503, "", True),
        (501, "NotImplemented", False),
        (400, "InternalError", False),  # the status and the lists decide, not the name
        (400, "AWS.SimpleQueueService.NonExistentQueue", False),
        (403, "AccessDenied", False),
        (400, "ReplicatedWriteConflictException", True),  # DynamoDB's model marks it retryable
    ],
)
def test_what_is_tried_again(status: int, code: str, expected: bool) -> None:
    assert sdk_retries.retryable(client_error(status, code, "no", "ReceiveMessage")) is expected


def test_the_backoff_doubles_with_full_jitter_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_retries.random, "random", lambda: 1.0)
    assert [sdk_retries.backoff_seconds(n) for n in (1, 2, 3, 6, 9)] == [1.0, 2.0, 4.0, 20.0, 20.0]
    monkeypatch.setattr(sdk_retries.random, "random", lambda: 0.0)
    assert sdk_retries.backoff_seconds(3) == 0.0


@pytest.mark.parametrize(
    ("status", "code", "operation", "expected"),
    [
        (404, "NoSuchKey", "GetObject", ObjectMissing),
        (404, "NoSuchVersion", "GetObject", ObjectMissing),  # an event's version, deleted for good
        (404, "404", "HeadObject", ObjectMissing),  # botocore's code for a HEAD answer without body
        (404, "404", "UpdateItem", VisionqError),  # not JSON from DynamoDB's endpoint: no object is missing
        (404, "", "ReceiveMessage", VisionqError),
        # Tried again by the SDK's rules, so transient once the attempts are spent:
        (400, "RequestTimeout", "GetObject", TransientError),
        (400, "TooManyRequestsException", "UpdateItem", TransientError),
        (400, "LimitExceededException", "UpdateItem", TransientError),
        (400, "ReplicatedWriteConflictException", "UpdateItem", TransientError),
        (400, "ValidationException", "UpdateItem", VisionqError),
    ],
)
def test_how_an_error_answer_is_told_to_the_caller(status: int, code: str, operation: str, expected: type) -> None:
    translated = translate_client_error(client_error(status, code, "no", operation), "work")
    assert type(translated) is expected
