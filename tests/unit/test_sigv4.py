"""The DynamoDB wire's SigV4 headers are byte for byte botocore's ``SigV4Auth``'s for the same
request, with the clock fixed: endpoints with and without a port of their own, session tokens,
and a signing key that must change with the day."""

from __future__ import annotations

import datetime
import json

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from visionq.stores.sigv4 import JsonPostSigner, host_header

CONTENT_TYPE = "application/x-amz-json-1.0"
BODY = json.dumps(
    {"TableName": "jobs", "Key": {"job_id": {"S": "j1 é"}}, "UpdateExpression": "SET #s = :s"},
    separators=(",", ":"),
).encode()


def botocore_headers(url: str, credentials: Credentials, region: str, target: str, body: bytes) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": target}
    )
    SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("http://127.0.0.1:4566/", "us-east-1"),
        ("https://dynamodb.eu-west-1.amazonaws.com/", "eu-west-1"),
        ("https://dynamodb.eu-west-1.amazonaws.com:443/", "eu-west-1"),
        ("http://localhost:80/", "us-west-2"),
        ("http://[::1]:8000/", "us-east-1"),
    ],
)
@pytest.mark.parametrize("token", [None, "", "FwoGZXIvYXdzEJr//////////wEaDH+token/with=signs"])
def test_the_headers_are_botocores(url: str, region: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = JsonPostSigner(service="dynamodb", region=region, host=host_header(url), content_type=CONTENT_TYPE)
    for now in (datetime.datetime(2026, 12, 2, 23, 59, 59), datetime.datetime(2026, 12, 3, 0, 0, 1)):
        monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *_, now=now, **__: now)
        for target in ("DynamoDB_20120810.UpdateItem", "DynamoDB_20120810.GetItem"):
            ours = signer.headers(
                credentials.get_frozen_credentials(), target, BODY, amz_date=now.strftime("%Y%m%dT%H%M%SZ")
            )
            assert ours == botocore_headers(url, credentials, region, target, BODY)


def test_the_key_follows_the_credentials() -> None:
    """Refreshed credentials (a role's, rotated) sign with the new secret, not a kept key."""
    signer = JsonPostSigner(service="dynamodb", region="us-east-1", host="127.0.0.1:4566", content_type=CONTENT_TYPE)
    date = "20261203T120000Z"
    first = signer.headers(
        Credentials("AKID", "secret-1").get_frozen_credentials(), "DynamoDB_20120810.GetItem", BODY, amz_date=date
    )
    second = signer.headers(
        Credentials("AKID", "secret-2").get_frozen_credentials(), "DynamoDB_20120810.GetItem", BODY, amz_date=date
    )
    assert first["Authorization"] != second["Authorization"]
    again = signer.headers(
        Credentials("AKID", "secret-1").get_frozen_credentials(), "DynamoDB_20120810.GetItem", BODY, amz_date=date
    )
    assert again == first


def test_host_header_leaves_out_the_schemes_own_port() -> None:
    assert host_header("https://dynamodb.us-east-1.amazonaws.com:443/") == "dynamodb.us-east-1.amazonaws.com"
    assert host_header("http://127.0.0.1:4566/") == "127.0.0.1:4566"
    assert host_header("http://example.com:443/") == "example.com:443"
