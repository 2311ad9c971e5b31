"""The object reader's presigned URLs (S3ObjectReader.presign) are byte for byte the ones the S3
client's own ``generate_presigned_url`` makes, with the clock fixed: for each addressing the SDK
chooses (a custom endpoint, AWS's virtual hosts, a bucket name that forces path addressing, path
addressing asked for), with and without a session token and a version id, for awkward keys."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from botocore.config import Config

from visionq.stores import s3_reader
from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader

KEYS = [
    "uploads/plain.jpg",
    "uploads/a b/%41 ?x=1&y+z/ü.jpg",
    "a//b/./../c~d!*'()$,;:@=.png",
    "uploads/é€𝄞 #frag.png",
]
VERSIONS = [None, "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vj/VBH40Nr8X8gdRQBpUMLUo="]
CLIENTS: dict[str, dict[str, Any]] = {
    "custom endpoint (an emulator)": {"endpoint_url": "http://127.0.0.1:5000", "region_name": "us-east-1"},
    "AWS, virtual host": {"region_name": "eu-west-1"},
    "AWS, session token": {"region_name": "us-west-2", "aws_session_token": "FQoGZXIvYXdzEJr//////////wEaDM+t="},
    "AWS, path addressing asked for": {"region_name": "ap-southeast-2", "addressing_style": "path"},
}
BUCKETS = ["visionq-uploads", "my.dotted.bucket"]


@pytest.mark.parametrize("setup", list(CLIENTS), ids=list(CLIENTS))
def test_the_reader_presigns_as_the_client_does(setup: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiobotocore.session import get_session

    now = datetime.datetime(2026, 12, 2, 20, 45, 7)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *_, **__: now)
    options = dict(CLIENTS[setup])
    addressing = options.pop("addressing_style", None)
    config = Config(signature_version=SIGNATURE_VERSION, s3={"addressing_style": addressing} if addressing else None)

    async def both() -> list[tuple[str, str]]:
        session: Any = get_session()
        async with session.create_client(
            "s3",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalr/K7MDENG+bPxRfiCY",
            config=config,
            **options,
        ) as s3:
            reader = S3ObjectReader(s3)
            pairs = []
            for bucket in BUCKETS:
                for key in KEYS:
                    for version in VERSIONS:
                        params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
                        sdk = await s3.generate_presigned_url(
                            "get_object", Params=params, ExpiresIn=s3_reader._URL_LIFETIME_SECONDS
                        )
                        pairs.append((await reader.presign(bucket, key, version), sdk))
            assert all(route is not None for route in reader._routes.values())  # the fast way, not the fallback
            return pairs

    pairs = asyncio.run(both())
    assert len(pairs) == len(BUCKETS) * len(KEYS) * len(VERSIONS)
    for ours, sdk in pairs:
        assert ours == sdk
