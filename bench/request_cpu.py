"""The worker's CPU per request, through the SDK and the way the worker now sends it.

    .venv/bin/python bench/request_cpu.py                 # 100 of the bench's JPEGs, 5 rounds

Starts the local AWS emulator (``python -m visionq.moto_server``), then, the paths of each
interleaved request by request, timing this process's CPU only (the emulator's is its own):
- the object read: aiobotocore's ``get_object`` vs ``S3ObjectReader`` (presigned, sent on its own
  keep-alive connections, ``stores/http1.py``; each URL presigned by the client, or the bucket's
  route kept and each URL signed by ``sigv4.QueryPresigner``), the exact version by ETag, of N
  JPEGs;
- the job store's claim, a conditional ``UpdateItem`` returning the new item: boto3 vs
  ``DynamoDBWire`` (``sigv4.JsonPostSigner``, a keep-alive ``http1`` connection), on N jobs
  (each claimed once per round: the condition holds on a RUNNING job).
Prints the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import machine, make_images  # noqa: E402

from visionq.local_stack import free_port, wait_until  # noqa: E402

BUCKET = "bench-reads"


def interleaved(paths: dict[str, Any], calls: list[Any], rounds: int) -> dict[str, float]:
    """ms of this process's CPU per call of each path, the paths taking turns call by call."""
    spent = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for call in calls:
            for name, path in paths.items():
                started = time.process_time()
                path(call)
                spent[name] += time.process_time() - started
    return {name: seconds * 1000 / (rounds * len(calls)) for name, seconds in spent.items()}


def claims(endpoint: str, n: int, rounds: int) -> dict[str, float]:
    from infra.bootstrap import ensure_jobs_table
    from visionq.aws import boto3_client, dynamodb_wire
    from visionq.jobs import ObjectVersion
    from visionq.stores.job_store import DynamoJobStore

    settings = aws_settings(endpoint)
    sdk = boto3_client("dynamodb", settings, parameter_validation=False)  # as the worker's was
    ensure_jobs_table(sdk, "bench-jobs")
    stores = {
        "boto3 (UpdateItem)": DynamoJobStore(sdk, "bench-jobs"),
        "DynamoDBWire (UpdateItem)": DynamoJobStore(dynamodb_wire(settings), "bench-jobs"),
    }
    objects = [ObjectVersion(bucket=BUCKET, key=f"uploads/{i:04d}.jpg", version=f"{i:032x}") for i in range(n)]

    def claim(store: DynamoJobStore) -> Any:
        return lambda i: store.claim(f"{i:032x}", objects[i], model="default", expires_at=2_000_000_000)

    for i in range(n):  # first claims: the jobs' records are created
        stores["boto3 (UpdateItem)"].claim(f"{i:032x}", objects[i], model="default", expires_at=2_000_000_000)
    return interleaved({name: claim(store) for name, store in stores.items()}, list(range(n)), rounds)


def aws_settings(endpoint: str) -> Any:
    from visionq.config import AwsSettings

    return AwsSettings.model_validate(
        {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    )


async def measure(endpoint: str, images: list[bytes], rounds: int) -> dict[str, float]:
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs
    from visionq.events import ObjectCreated
    from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader

    settings = aws_settings(endpoint)
    # As the worker makes its client (no parameter validation), SigV4 for the presigned reads.
    kwargs = aio_client_kwargs("s3", settings, parameter_validation=False, signature_version=SIGNATURE_VERSION)
    async with (
        get_session().create_client(**kwargs) as s3,
        S3ObjectReader(s3) as reader,
        S3ObjectReader(s3) as reader_sdk_presign,
    ):
        reader_sdk_presign._routes[BUCKET] = None  # every URL presigned by the client, as in run 13
        await s3.create_bucket(Bucket=BUCKET)
        objects = []
        for i, data in enumerate(images):
            put = await s3.put_object(Bucket=BUCKET, Key=f"uploads/{i:04d}.jpg", Body=data)
            objects.append(ObjectCreated(bucket=BUCKET, key=f"uploads/{i:04d}.jpg", etag=put["ETag"].strip('"')))

        async def through_sdk(obj: ObjectCreated) -> bytes:
            response = await s3.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
            async with response["Body"] as stream:
                data: bytes = await stream.read()
            return data

        async def presigned(obj: ObjectCreated) -> bytes:
            return await reader.read(obj, max_bytes=20 * 1024 * 1024)

        async def presigned_by_client(obj: ObjectCreated) -> bytes:
            return await reader_sdk_presign.read(obj, max_bytes=20 * 1024 * 1024)

        paths = {
            "aiobotocore get_object": through_sdk,
            "S3ObjectReader, each URL presigned by the client": presigned_by_client,
            "S3ObjectReader, the bucket's route kept, signed by sigv4.QueryPresigner": presigned,
        }
        spent = dict.fromkeys(paths, 0.0)
        for read in paths.values():  # warm up: connections, endpoint resolution caches
            await read(objects[0])
        for _ in range(rounds):
            for obj, expected in zip(objects, images, strict=True):
                for name, read in paths.items():
                    started = time.process_time()
                    assert await read(obj) == expected
                    spent[name] += time.process_time() - started
    return {name: seconds * 1000 / (rounds * len(images)) for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    images = make_images(args.n)
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    server = subprocess.Popen(
        [sys.executable, "-m", "visionq.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers() -> bool:
            import socket

            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
            return False

        wait_until(answers, timeout=60, what="the S3 emulator")
        endpoint = f"http://127.0.0.1:{port}"
        per_call = asyncio.run(measure(endpoint, images, args.rounds))
        per_call.update(claims(endpoint, args.n, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"`{shlex.join(['.venv/bin/python', 'bench/request_cpu.py', *sys.argv[1:]])}`  ")
    print(
        f"{machine()}; {args.n} JPEGs of {sum(map(len, images)) / len(images) / 1000:.0f} KB on average, "
        f"{args.rounds} rounds, the paths interleaved object by object\n"
    )
    print("| request | the worker's CPU per request |\n|---|---|")
    for name, ms in per_call.items():
        print(f"| {name} | {ms:.2f} ms |")


if __name__ == "__main__":
    main()
