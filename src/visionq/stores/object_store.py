"""Object storage (S3 or MinIO): what the worker reads through (``ObjectReader``; S3's is
``s3_reader.S3ObjectReader``), and presigned uploads for the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from visionq.events import ObjectCreated
from visionq.stores.aws_errors import aws_errors


class ObjectReader(Protocol):
    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes: ...


@dataclass(frozen=True)
class PresignedPost:
    url: str
    fields: dict[str, str]


def presign_upload_post(
    client: Any, *, bucket: str, key: str, content_type: str, max_bytes: int, expires_in: int
) -> PresignedPost:
    """A browser-style POST policy bound to one key, one content type and a size range."""
    with aws_errors("presign upload"):
        post = client.generate_presigned_post(
            Bucket=bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", 1, max_bytes],
            ],
            ExpiresIn=expires_in,
        )
    return PresignedPost(url=post["url"], fields={k: str(v) for k, v in post["fields"].items()})
