"""The work queue (SQS), asynchronous: long-poll, batch delete, visibility changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from visionq.stores.aws_errors import aws_errors


@dataclass(frozen=True)
class Message:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int


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
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return [
            Message(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in response.get("Messages", [])
        ]

    async def delete(self, messages: Sequence[Message]) -> list[Message]:
        """Delete ``messages`` (10 per request); return those SQS did not delete."""
        failed: list[Message] = []
        for start in range(0, len(messages), 10):
            chunk = {str(i): m for i, m in enumerate(messages[start : start + 10])}
            with aws_errors("delete messages"):
                response = await self._client.delete_message_batch(
                    QueueUrl=self.url,
                    Entries=[{"Id": i, "ReceiptHandle": m.receipt_handle} for i, m in chunk.items()],
                )
            failed.extend(chunk[f["Id"]] for f in response.get("Failed", []))
        return failed

    async def release(self, messages: Sequence[Message], *, delay_seconds: int = 0) -> None:
        """Make ``messages`` visible again after ``delay_seconds`` (0: at once)."""
        for start in range(0, len(messages), 10):
            chunk = messages[start : start + 10]
            with aws_errors("change message visibility"):
                await self._client.change_message_visibility_batch(
                    QueueUrl=self.url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": delay_seconds}
                        for i, m in enumerate(chunk)
                    ],
                )

    async def send(self, body: str) -> None:
        with aws_errors("send message"):
            await self._client.send_message(QueueUrl=self.url, MessageBody=body)
