"""The worker's CPU per object read: aiobotocore's get_object vs S3ObjectReader (presigned, aiohttp).

    .venv/bin/python bench/s3_read_cpu.py                 # 100 of the bench's JPEGs, 5 rounds

Starts the local S3 emulator (``python -m visionq.moto_server``), puts N JPEGs, then reads each of
them, the exact version by ETag as the worker does, through both paths in turn, timing this
process's CPU only (the emulator's is its own). Prints the command, the machine and the figures.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import machine, make_images  # noqa: E402

from visionq.local_stack import free_port, wait_until  # noqa: E402

BUCKET = "bench-reads"


async def measure(endpoint: str, images: list[bytes], rounds: int) -> dict[str, float]:
    from aiobotocore.session import get_session

    from visionq.aws import aio_client_kwargs
    from visionq.config import AwsSettings
    from visionq.events import ObjectCreated
    from visionq.stores.s3_reader import SIGNATURE_VERSION, S3ObjectReader

    settings = AwsSettings.model_validate(
        {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    )
    # As the worker makes its client (no parameter validation), SigV4 for the presigned reads.
    kwargs = aio_client_kwargs("s3", settings, parameter_validation=False, signature_version=SIGNATURE_VERSION)
    async with get_session().create_client(**kwargs) as s3, S3ObjectReader(s3) as reader:
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

        paths = {"aiobotocore get_object": through_sdk, "S3ObjectReader (presigned, aiohttp)": presigned}
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
        per_read = asyncio.run(measure(f"http://127.0.0.1:{port}", images, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"`{shlex.join(['.venv/bin/python', 'bench/s3_read_cpu.py', *sys.argv[1:]])}`  ")
    print(
        f"{machine()}; {args.n} JPEGs of {sum(map(len, images)) / len(images) / 1000:.0f} KB on average, "
        f"{args.rounds} rounds, the two paths interleaved object by object\n"
    )
    print("| read | the worker's CPU per object |\n|---|---|")
    for name, ms in per_read.items():
        print(f"| {name} | {ms:.2f} ms |")


if __name__ == "__main__":
    main()
