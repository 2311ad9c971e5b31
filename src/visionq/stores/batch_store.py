"""Batches in the jobs table: the batch's own record, its members through the ``by_batch`` index,
and a key's recent jobs through the ``by_owner`` index (both declared in template.yaml)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visionq.batches import BATCH_ITEM_PREFIX, Batch, BatchProgress
from visionq.errors import InvalidRequest, JobNotFound, TransitionRejected
from visionq.jobs import Job, JobStatus
from visionq.stores.aws_errors import aws_errors
from visionq.stores.job_store import _deserializer, _job_from_item, _job_item, _to_item, _to_values

BY_BATCH_INDEX = "by_batch"
BY_OWNER_INDEX = "by_owner"
MAX_READS = 10  # queries per listing request, at most
_WRITE_CHUNK = 25  # BatchWriteItem's limit


class BatchNotFound(JobNotFound):
    code = "batch_not_found"


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    cursor: str | None  # opaque; pass back for the next page


class DynamoBatchStore:
    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def create(self, batch: Batch, members: Sequence[Job]) -> None:
        """The batch record first (conditional: ids never collide silently), then its members in
        writes of 25. A crash between leaves a batch with fewer members than ``size``: its PENDING
        members simply never appear, and the client that got no answer creates a new batch."""
        item = {
            "job_id": BATCH_ITEM_PREFIX + batch.batch_id,
            "item_kind": "batch",
            "owner": batch.owner,
            "model": batch.model,
            "size": batch.size,
            "expected": batch.expected,
            "created_at": batch.created_at,
            "expires_at": batch.expires_at,
            "upload_prefix": batch.upload_prefix,
            "name": batch.name,
            "meta": json.dumps(batch.meta, separators=(",", ":")) if batch.meta else None,
            "webhook_url": batch.webhook_url,
        }
        with aws_errors("create batch"):
            self._client.put_item(
                TableName=self._table, Item=_to_item(item), ConditionExpression="attribute_not_exists(job_id)"
            )
        for start in range(0, len(members), _WRITE_CHUNK):
            requests = [
                {"PutRequest": {"Item": _to_item(_job_item(job))}} for job in members[start : start + _WRITE_CHUNK]
            ]
            self._write_all(requests)

    def _write_all(self, requests: list[dict[str, Any]]) -> None:
        pending = {self._table: requests}
        for _ in range(8):  # unprocessed items come back under throttling: send them again
            with aws_errors("create batch members"):
                response = self._client.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
        raise TransitionRejected("the jobs table kept refusing the batch's members")

    def notice_due(self, batch_id: str) -> bool:
        """Whether the batch asked for a webhook and its notice is not claimed yet (no batch: no)."""
        try:
            batch = self.get(batch_id)
        except BatchNotFound:
            return False
        return batch.webhook_url is not None and batch.webhook is None

    def get(self, batch_id: str) -> Batch:
        with aws_errors("read batch"):
            response = self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": BATCH_ITEM_PREFIX + batch_id}}, ConsistentRead=True
            )
        if "Item" not in response:
            raise BatchNotFound(f"no batch with id {batch_id!r}")
        data = {k: _deserializer.deserialize(v) for k, v in response["Item"].items()}
        return Batch(
            batch_id=batch_id,
            owner=data.get("owner"),
            model=str(data["model"]),
            size=int(data.get("size", 0)),
            expected=int(data.get("expected", 0)),
            created_at=str(data["created_at"]),
            expires_at=int(data.get("expires_at", 0)),
            upload_prefix=str(data.get("upload_prefix", "")),
            name=data.get("name"),
            meta=json.loads(data["meta"]) if data.get("meta") else None,
            webhook_url=data.get("webhook_url"),
            webhook=json.loads(data["webhook"]) if data.get("webhook") else None,
        )

    def progress(self, batch_id: str, *, confirm_open: bool = False) -> BatchProgress:
        """Counts by status over every member. The index is eventually consistent: a member's
        latest change may show a moment later. ``confirm_open``: every member the index shows
        unfinished is read again from the table itself (consistently), so a batch whose members
        have all ended is seen complete (the notifier's completion check)."""
        progress = BatchProgress()
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": BY_BATCH_INDEX,
            "KeyConditionExpression": "batch_id = :b",
            "ExpressionAttributeValues": {":b": {"S": batch_id}},
            "ProjectionExpression": "#s, job_id",
            "ExpressionAttributeNames": {"#s": "status"},
        }
        while True:
            with aws_errors("count batch members"):
                response = self._client.query(**kwargs)
            for item in response.get("Items", []):
                status = item["status"]["S"]
                if confirm_open and not JobStatus(status).terminal:
                    status = self._status(item["job_id"]["S"]) or status
                progress.counts[status] += 1
            if "LastEvaluatedKey" not in response:
                return progress
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _status(self, job_id: str) -> str | None:
        with aws_errors("read a member's status"):
            response = self._client.get_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                ConsistentRead=True,
                ProjectionExpression="#s",
                ExpressionAttributeNames={"#s": "status"},
            )
        item = response.get("Item")
        return str(item["status"]["S"]) if item else None

    def members(self, batch_id: str, *, limit: int, cursor: str | None = None) -> Page:
        return self._page(BY_BATCH_INDEX, "batch_id", batch_id, limit=limit, cursor=cursor, newest_first=False)

    def recent_jobs(
        self, owner: str, *, limit: int, cursor: str | None = None, status: str | None = None, model: str | None = None
    ) -> Page:
        """The owner's jobs, newest first, optionally only those with ``status`` / ``model``."""
        filters = {"status": status, "model": model}
        return self._page(BY_OWNER_INDEX, "owner", owner, limit=limit, cursor=cursor, newest_first=True, **filters)

    def _page(
        self,
        index: str,
        attribute: str,
        value: str,
        *,
        limit: int,
        cursor: str | None,
        newest_first: bool,
        **filters: str | None,
    ) -> Page:
        filters_given = any(wanted is not None for wanted in filters.values())
        previous: dict[str, Any] = {}
        names = {"#k": attribute}
        values: dict[str, Any] = {":k": value}
        conditions = ["attribute_not_exists(item_kind)"]  # batch records share the owner index
        for i, (name, wanted) in enumerate((n, w) for n, w in filters.items() if w is not None):
            names[f"#f{i}"] = name
            values[f":f{i}"] = wanted
            conditions.append(f"#f{i} = :f{i}")
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :k",
            "FilterExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": _to_values(values),
            "ScanIndexForward": not newest_first,
        }
        if cursor:
            kwargs["ExclusiveStartKey"] = _decode_cursor(cursor, attribute, value)
        jobs: list[Job] = []
        # A filter applies after the read: keep reading until the page is full, the index ends, or
        # MAX_READS queries were made (a rare filter over many jobs): then a short page and a cursor.
        for reads in range(1, MAX_READS + 1):
            kwargs["Limit"] = max(limit - len(jobs), 1) if not filters_given else max(limit, 100)
            with aws_errors("list jobs"):
                response = self._client.query(**kwargs)
            items = response.get("Items", [])
            last = response.get("LastEvaluatedKey")
            for item in items:
                if len(jobs) == limit:  # a full page ends at the last item taken
                    last = previous
                    break
                jobs.append(_job_from_item(item))
                previous = {k: item[k] for k in ("job_id", attribute, "created_at") if k in item}
            if last is None or len(jobs) >= limit or reads == MAX_READS:
                return Page(jobs=jobs, cursor=_encode_cursor(last) if last else None)
            kwargs["ExclusiveStartKey"] = last
        raise AssertionError("unreachable")


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


# A cursor is an index position: the table's key and the index's, each a string of at most 1 KB
# (job ids, owners, batch ids and timestamps are far shorter), so well under this when encoded.
MAX_CURSOR_CHARS = 4096


def _decode_cursor(cursor: str, attribute: str, value: str) -> dict[str, Any]:
    """The index position a cursor names; refused unless it points into the same listing and has
    the shape of one (an edited cursor must not reach DynamoDB: it would refuse it, with a 500)."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        valid = (
            len(cursor) <= MAX_CURSOR_CHARS
            and isinstance(key, dict)
            and key.get(attribute) == {"S": value}
            and set(key) == {"job_id", attribute, "created_at"}
            and all(_is_key_string(part) for part in key.values())
        )
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidRequest("cursor is not one this listing returned", code="invalid_cursor")
    result: dict[str, Any] = key
    return result


def _is_key_string(part: Any) -> bool:
    return isinstance(part, dict) and set(part) == {"S"} and isinstance(part["S"], str) and 0 < len(part["S"]) <= 1024
