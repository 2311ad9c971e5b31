"""API keys: issued once, stored only as a hash, sent by clients in the ``x-api-key`` header.

A key reads ``vq_<key_id>_<secret>``. The jobs table holds one item per key (``apikey#<key_id>``:
the secret's SHA-256, a name, whether it is revoked) beside the jobs — a single-table design, so
the API needs no other store. A job records the key id that created it as its owner.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from visionq.errors import TransitionRejected, VisionqError
from visionq.jobs import utc_now_iso
from visionq.stores.aws_errors import aws_errors

KEY_ITEM_PREFIX = "apikey#"
MAX_KEY_CHARS = 200


class Unauthorized(VisionqError):
    code = "unauthorized"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    created_at: str
    revoked: bool = False


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, client: Any, table: str, *, cache_seconds: float = 60.0) -> None:
        self._client = client
        self._table = table
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    def create(self, name: str) -> tuple[str, ApiKey]:
        """A new key: the full key string (shown once, never stored) and its record."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = ApiKey(key_id=key_id, name=name, created_at=utc_now_iso())
        with aws_errors("create api key"):
            self._client.put_item(
                TableName=self._table,
                Item={
                    "job_id": {"S": KEY_ITEM_PREFIX + key_id},
                    "secret_sha256": {"S": _hash(secret)},
                    "name": {"S": name},
                    "created_at": {"S": record.created_at},
                    "revoked": {"BOOL": False},
                },
                ConditionExpression="attribute_not_exists(job_id)",
            )
        return f"vq_{key_id}_{secret}", record

    def authenticate(self, presented: str | None) -> ApiKey:
        """The key's record, or Unauthorized; valid keys are cached briefly to spare a read per request."""
        if not presented:
            raise Unauthorized("an API key is required in the x-api-key header")
        parts = presented.split("_", 2)
        # A key this store made: "vq_", 12 hex digits, "_", 43 url-safe characters. Anything far
        # longer is not looked up (the table refuses a key over 2 KB, with a 500).
        if len(presented) > MAX_KEY_CHARS or len(parts) != 3 or parts[0] != "vq" or not parts[1] or not parts[2]:
            raise Unauthorized("the API key is not valid")
        key_id, secret = parts[1], parts[2]
        cache_key = _hash(presented)
        cached = self._cache.get(cache_key)
        if cached and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        with aws_errors("read api key"):
            item = self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": KEY_ITEM_PREFIX + key_id}}, ConsistentRead=True
            ).get("Item")
        if (
            item is None
            or item.get("revoked", {}).get("BOOL", False)
            or not hmac.compare_digest(item["secret_sha256"]["S"], _hash(secret))
        ):
            raise Unauthorized("the API key is not valid")
        record = _from_item(item)
        self._cache[cache_key] = (time.monotonic(), record)
        return record

    def list_keys(self) -> list[ApiKey]:
        keys: list[ApiKey] = []
        with aws_errors("list api keys"):
            pages = self._client.get_paginator("scan").paginate(
                TableName=self._table,
                FilterExpression="begins_with(job_id, :prefix)",
                ExpressionAttributeValues={":prefix": {"S": KEY_ITEM_PREFIX}},
            )
            for page in pages:
                keys.extend(_from_item(item) for item in page["Items"])
        return sorted(keys, key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id``; False if there is no such key."""
        try:
            with aws_errors("revoke api key"):
                self._client.update_item(
                    TableName=self._table,
                    Key={"job_id": {"S": KEY_ITEM_PREFIX + key_id}},
                    UpdateExpression="SET revoked = :t",
                    ConditionExpression="attribute_exists(job_id)",
                    ExpressionAttributeValues={":t": {"BOOL": True}},
                )
        except TransitionRejected:
            return False
        self._cache.clear()
        return True


def _from_item(item: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=item["job_id"]["S"].removeprefix(KEY_ITEM_PREFIX),
        name=item.get("name", {}).get("S", ""),
        created_at=item.get("created_at", {}).get("S", ""),
        revoked=item.get("revoked", {}).get("BOOL", False),
    )
