"""``DynamoBatchStore.notice_due`` on the emulator, through both clients the sweeps use: the
worker's own DynamoDB wire (poller) and boto3 (the Lambda sweeper)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import TABLE, Stack
from visionq.aws import job_table_client
from visionq.batches import BATCH_ITEM_PREFIX
from visionq.stores.batch_store import DynamoBatchStore

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("client", ["wire", "boto3"])
def test_a_batch_notice_is_due_while_unclaimed_and_only_for_a_batch_with_a_webhook(stack: Stack, client: str) -> None:
    dynamodb: Any = job_table_client(stack.worker_settings()) if client == "wire" else stack.dynamodb

    def put(batch_id: str, **extra: dict[str, str]) -> None:
        item = {
            "job_id": {"S": BATCH_ITEM_PREFIX + batch_id},
            "item_kind": {"S": "batch"},
            "model": {"S": "default"},
            "created_at": {"S": "2026-12-04T10:00:00Z"},
            **extra,
        }
        stack.dynamodb.put_item(TableName=TABLE, Item=item)

    put(f"hook-{client}", webhook_url={"S": "https://example.com/hook"})
    put(f"claimed-{client}", webhook_url={"S": "https://example.com/hook"}, webhook={"S": '{"status":"pending"}'})
    put(f"quiet-{client}")
    batches = DynamoBatchStore(dynamodb, TABLE)
    assert batches.notice_due(f"hook-{client}") is True
    assert batches.notice_due(f"claimed-{client}") is False
    assert batches.notice_due(f"quiet-{client}") is False
    assert batches.notice_due(f"missing-{client}") is False
