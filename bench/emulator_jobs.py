"""The local emulator's CPU for the job store's writes: what each job costs it in DynamoDB.

    .venv/bin/python bench/emulator_jobs.py                     # 300 jobs, 3 rounds
    .venv/bin/python bench/emulator_jobs.py --stock-emulator    # `python -m moto.server` as shipped

Starts the emulator (``python -m visionq.moto_server``, or moto's own server), makes the jobs
table as `visionq bootstrap` does, then for each job makes the two writes the worker makes: the
claim of a direct upload (a conditional UpdateItem that creates the record and returns it) and the
result (a conditional UpdateItem to SUCCEEDED), through the job store on the worker's own
DynamoDB client. Reports the emulator process's CPU (user + system) and the wall time per job, by
round. To compare two versions of visionq's server, run this with each one's ``src`` first on
``PYTHONPATH`` (the emulator inherits it), alternating.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
from run_bench import machine  # noqa: E402

from infra.bootstrap import ensure_jobs_table  # noqa: E402
from visionq.aws import boto3_client, dynamodb_wire  # noqa: E402
from visionq.config import AwsSettings  # noqa: E402
from visionq.jobs import ObjectVersion  # noqa: E402
from visionq.local_stack import MotoServer  # noqa: E402
from visionq.stores.job_store import DynamoJobStore  # noqa: E402

# What a detector's result looks like in the job record: a few boxes.
RESULT = {"detections": [{"label": "bus", "confidence": 0.9, "x1": 1, "y1": 2, "x2": 3, "y2": 4}] * 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stock-emulator", action="store_true")
    args = parser.parse_args()
    server = MotoServer(stock=args.stock_emulator).start()
    try:
        assert server.proc is not None
        settings = AwsSettings.model_validate(
            {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
        )
        ensure_jobs_table(boto3_client("dynamodb", settings), "jobs")
        store = DynamoJobStore(dynamodb_wire(settings), "jobs")
        emulator = psutil.Process(server.proc.pid)
        print(f"`{shlex.join(['.venv/bin/python', 'bench/emulator_jobs.py', *sys.argv[1:]])}`  \n{machine()}")
        for round_ in range(args.rounds):
            cpu, started = sum(emulator.cpu_times()[:2]), time.perf_counter()
            for i in range(args.n):
                job_id = f"{round_:02d}{i:030x}"
                obj = ObjectVersion(bucket="bench", key=f"uploads/{round_}/{i}.jpg", version=job_id)
                store.claim(job_id, obj, model="default", expires_at=2_000_000_000)
                store.mark_succeeded(job_id, RESULT)
            cpu_ms = (sum(emulator.cpu_times()[:2]) - cpu) * 1000 / args.n
            wall_ms = (time.perf_counter() - started) * 1000 / args.n
            print(f"round {round_ + 1}: emulator CPU {cpu_ms:.2f}, wall {wall_ms:.2f} ms per job (2 UpdateItem)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
