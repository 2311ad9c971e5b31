"""The worker's CPU per SQS call: the poller's queue (``SqsQueue``) over aiobotocore, against the
same queue over the worker's own client (``SqsWire``: SQS's JSON 1.0 protocol on an
``http1.AsyncConnection`` pool, signed by ``sigv4.JsonPostSigner``, with the SDK's retries).

    .venv/bin/python bench/sqs_cpu.py                     # 3 rounds of 50 receive + delete pairs

Starts the local AWS emulator (``python -m visionq.moto_server``) on loopback, fills a queue, then
per round drains it in pairs of calls (``ReceiveMessage`` of 10, ``DeleteMessageBatch`` of what came)
by each path in turn, timing this process's CPU only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import boto3  # noqa: E402
from aiobotocore.session import get_session  # noqa: E402

from visionq.local_stack import free_port, wait_until  # noqa: E402
from visionq.stores.queue import SqsQueue  # noqa: E402
from visionq.stores.sqs_wire import SqsWire  # noqa: E402

BODY = json.dumps(
    {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "uploads/x/" + "k" * 40, "eTag": "e" * 32}}}]}
)


def fill(sqs: Any, queue: str, n: int) -> None:
    for _ in range(0, n, 10):
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(j), "MessageBody": BODY} for j in range(10)])


async def drain(queue: SqsQueue, rounds: int) -> tuple[float, int]:
    """This process's CPU per call over ``rounds`` pairs of a receive of 10 and their delete."""
    started, received = time.process_time(), 0
    for _ in range(rounds):
        messages = await queue.receive(max_messages=10, wait_seconds=0, visibility_timeout=30)
        received += len(messages)
        await queue.delete(messages)
    return (time.process_time() - started) / (2 * rounds) * 1000, received


async def through_aiobotocore(url: str, queue: str, rounds: int) -> tuple[float, int]:
    async with get_session().create_client("sqs", endpoint_url=url, region_name="us-east-1") as client:
        return await drain(SqsQueue(client, queue), rounds)


async def through_wire(url: str, queue: str, rounds: int) -> tuple[float, int]:
    async with (
        get_session().create_client("sqs", endpoint_url=url, region_name="us-east-1") as client,
        SqsWire.of(client, read_timeout=30) as wire,
    ):
        return await drain(SqsQueue(wire, queue), rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=50, help="receive + delete pairs per path per round")
    args = parser.parse_args()
    # The emulator's: any keys do.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")  # noqa: S106
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Added to, not replaced: packages may come from PYTHONPATH too (the GPU kit's, bench/gpu/).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "visionq.moto_server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def up() -> bool:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)  # noqa: S310 - loopback
        except OSError:
            return False
        return True

    try:
        wait_until(up, timeout=30, what="the emulator")
        sqs = boto3.client("sqs", endpoint_url=url)
        queue = sqs.create_queue(QueueName="sqs-cpu")["QueueUrl"]
        print(f"command: bench/sqs_cpu.py --rounds {args.rounds} --pairs {args.pairs}", flush=True)
        for n in range(1, args.rounds + 1):
            fill(sqs, queue, 10 * args.pairs)
            sdk, sdk_messages = asyncio.run(through_aiobotocore(url, queue, args.pairs))
            fill(sqs, queue, 10 * args.pairs)
            own, own_messages = asyncio.run(through_wire(url, queue, args.pairs))
            print(
                f"round {n}: aiobotocore {sdk:.3f} ms per call ({sdk_messages} messages), "
                f"SqsWire {own:.3f} ms per call ({own_messages} messages), ratio {own / sdk:.2f}",
                flush=True,
            )
    finally:
        server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
