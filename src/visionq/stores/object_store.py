"""Object storage (S3 or MinIO): reading uploads in the worker, presigning uploads in the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visionq.errors import ImageRejected
from visionq.stores.aws_errors import aws_errors


class S3ObjectReader:
    """Asynchronous reads for the worker (an aiobotocore S3 client)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def read(self, bucket: str, key: str, *, max_bytes: int) -> tuple[bytes, str]:
        """The object's bytes and ETag; refuses, before reading the body, one over ``max_bytes``."""
        with aws_errors(f"read s3://{bucket}/{key}"):
            response = await self._client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                response["Body"].close()
                raise ImageRejected(
                    f"the object is {size} bytes, over the limit of {max_bytes}", code="object_too_large"
                )
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        return data, str(response.get("ETag", "")).strip('"')


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
