"""S3 event notifications as they arrive in SQS message bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from visionq.errors import PermanentError
from visionq.jobs import ObjectVersion


class MalformedEvent(PermanentError):
    code = "malformed_event"


@dataclass(frozen=True)
class ObjectCreated:
    """One object version that appeared in the bucket."""

    bucket: str
    key: str
    etag: str
    size: int | None = None
    version_id: str | None = None
    event_time: float | None = None  # epoch seconds, when S3 saw the object

    @property
    def version(self) -> str:
        """The object-version part of a result's identity."""
        return self.version_id or self.etag

    @property
    def ref(self) -> ObjectVersion:
        return ObjectVersion(bucket=self.bucket, key=self.key, version=self.version)


def parse_s3_event(body: str) -> list[ObjectCreated]:
    """The objects an SQS message announces; empty for ``s3:TestEvent`` and non-create events.

    Keys arrive URL-encoded ('+' for space), so they are decoded here, once.
    """
    try:
        payload = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent("message body is not JSON") from exc
    if not isinstance(payload, dict):
        raise MalformedEvent("message body is not a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    records = payload.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("message has no Records list")
    return [obj for obj in (_parse_record(r) for r in records) if obj is not None]


def _parse_record(record: Any) -> ObjectCreated | None:
    try:
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            return None
        s3 = record["s3"]
        obj = s3["object"]
        etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
        if not etag:
            raise MalformedEvent("S3 record has no object eTag")
        return ObjectCreated(
            bucket=str(s3["bucket"]["name"]),
            key=unquote_plus(str(obj["key"])),
            etag=etag,
            size=int(obj["size"]) if obj.get("size") is not None else None,
            version_id=obj.get("versionId") or None,
            event_time=_parse_time(record.get("eventTime")),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedEvent(f"S3 record is malformed: missing or bad {exc}") from exc


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
