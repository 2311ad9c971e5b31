"""Uploads into the local emulator as its queue fills: milliseconds per S3 put, by queue depth.

    .venv/bin/python bench/emulator_ingest.py                     # 3000 puts, reported per 500
    .venv/bin/python bench/emulator_ingest.py --stock-emulator    # `python -m moto.server` as shipped

Each put is what an upload does on the local stack: an S3 PutObject whose object-created event
moto sends to the jobs queue (the bucket's notification, as `visionq up` configures it). Nothing
drains the queue, as when frames of a video are uploaded faster than the worker takes them, so
the Nth put meets N messages queued. Bodies are 20 kB; the client is boto3, one connection.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_bench import BenchStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--step", type=int, default=500)
    parser.add_argument("--stock-emulator", action="store_true")
    args = parser.parse_args()
    stack = BenchStack(Path(tempfile.mkdtemp(prefix="visionq-ingest-")), stock_emulator=args.stock_emulator)
    try:
        stack.reset()
        body = b"\xff\xd8\xff" + bytes(20_000)
        for start in range(0, args.n, args.step):
            started = time.perf_counter()
            for i in range(start, start + args.step):
                stack.put(f"uploads/ingest/{i:06d}.jpg", body)
            ms = (time.perf_counter() - started) * 1000 / args.step
            print(f"queue depth {start:6d}-{start + args.step:6d}: {ms:6.2f} ms per put", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
