"""The work queue (SQS), asynchronous: long-poll, batch delete, visibility changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from visionq.stores.aws_errors import aws_errors


@dataclass(frozen=True)
class Message:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: float | None = None  # epoch seconds SQS first accepted it (SentTimestamp), where known


@dataclass(frozen=True)
class EntryFailure:
    """One entry of a batch call that SQS refused (the call itself succeeded)."""

    message: Message
    code: str
    reason: str


class Queue(Protocol):
    url: str

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]: ...
    async def delete(self, messages: Sequence[Message]) -> list[EntryFailure]: ...
    async def release(self, messages: Sequence[Message], *, delay_seconds: int = 0) -> list[EntryFailure]: ...
    async def send(self, body: str) -> None: ...


class SqsQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.url = queue_url

    async def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]:
        with aws_errors("receive messages"):
            response = await self._client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        return [
            Message(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                sent_at=int(m.get("Attributes", {}).get("SentTimestamp", 0)) / 1000 or None,
            )
            for m in response.get("Messages", [])
        ]

    async def delete(self, messages: Sequence[Message]) -> list[EntryFailure]:
        """Delete ``messages`` (10 per request); return the entries SQS refused."""
        return await self._batch("delete_message_batch", "delete messages", messages, {})

    async def release(self, messages: Sequence[Message], *, delay_seconds: int = 0) -> list[EntryFailure]:
        """Make ``messages`` visible again after ``delay_seconds`` (0: at once), or keep them hidden
        that long (a lease extension); return the entries SQS refused."""
        return await self._batch(
            "change_message_visibility_batch",
            "change message visibility",
            messages,
            {"VisibilityTimeout": delay_seconds},
        )

    async def _batch(
        self, operation: str, what: str, messages: Sequence[Message], extra: dict[str, Any]
    ) -> list[EntryFailure]:
        # A batch call answers 200 with a per-entry Failed list: read it, every time.
        failed: list[EntryFailure] = []
        for start in range(0, len(messages), 10):
            chunk = {str(i): m for i, m in enumerate(messages[start : start + 10])}
            with aws_errors(what):
                response = await getattr(self._client, operation)(
                    QueueUrl=self.url,
                    Entries=[{"Id": i, "ReceiptHandle": m.receipt_handle, **extra} for i, m in chunk.items()],
                )
            failed.extend(
                EntryFailure(chunk[f["Id"]], str(f.get("Code", "")), str(f.get("Message", "")))
                for f in response.get("Failed", [])
            )
        return failed

    async def send(self, body: str) -> None:
        with aws_errors("send message"):
            await self._client.send_message(QueueUrl=self.url, MessageBody=body)
