"""Object storage (S3 or MinIO): reading uploads in the worker, presigning uploads in the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from visionq.errors import ImageRejected
from visionq.events import ObjectCreated
from visionq.stores.aws_errors import aws_errors


class ObjectReader(Protocol):
    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes: ...


class S3ObjectReader:
    """Asynchronous reads for the worker (an aiobotocore S3 client)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def read(self, obj: ObjectCreated, *, max_bytes: int) -> bytes:
        """The bytes of exactly the version the event named; refuses, before reading the body, an
        object over ``max_bytes``, and raises ObjectChanged if the key now holds other bytes."""
        # The version id where the bucket keeps versions, else the ETag as a precondition: an
        # overwrite between the event and this read must not credit the new bytes to the old event.
        exact = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": f'"{obj.etag}"'}
        with aws_errors(f"read s3://{obj.bucket}/{obj.key}"):
            response = await self._client.get_object(Bucket=obj.bucket, Key=obj.key, **exact)
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                response["Body"].close()
                raise ImageRejected(
                    f"the object is {size} bytes, over the limit of {max_bytes}", code="object_too_large"
                )
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        return data


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
