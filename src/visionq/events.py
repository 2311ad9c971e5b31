"""S3 event notifications as they arrive in SQS message bodies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus, unquote_plus

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
    # A model asked for by the message itself (``visionq reprocess``): such a job is the object's
    # run through that model, beside any earlier job for the object (see ``jobs.job_id_for_object``).
    model: str | None = None

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
            model=_requested_model(record),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedEvent(f"S3 record is malformed: missing or bad {exc}") from exc


def _requested_model(record: dict[str, Any]) -> str | None:
    extra = record.get("visionq")
    model = extra.get("model") if isinstance(extra, dict) else None
    return str(model) if model else None


def object_created_record(obj: ObjectCreated, *, source: str) -> dict[str, Any]:
    """``obj`` as an S3 event record, as visionq's own messages (reprocessing, redrive) carry it."""
    record: dict[str, Any] = {
        "eventSource": source,
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": obj.bucket},
            "object": {"key": quote_plus(obj.key), "eTag": obj.etag, "size": obj.size, "versionId": obj.version_id},
        },
    }
    if obj.model:
        record["visionq"] = {"model": obj.model}
    return record


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
