"""What the bench's own completion poll costs the machine it measures (bench/RESULTS.md run 28).

    .venv/bin/python bench/poll_cost.py            # 10 s per way, two rounds, alternating

`throughput_run` asks PostgreSQL how many results are in every 50 ms while a run goes. Asked on a
new connection each time, every poll starts a PostgreSQL backend; asked on one kept connection, it
is one query. Both ways, on an embedded PostgreSQL with nothing else running: PostgreSQL's CPU (its
exited backends included) and this process's, per second of polling.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import cpu_seconds, machine  # noqa: E402

from infra.bootstrap import bootstrap_database  # noqa: E402
from visionq.local_stack import EmbeddedPostgres  # noqa: E402

QUERY = "SELECT count(*) FROM results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per way, per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.05, help="between polls (throughput_run's)")
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory() as scratch:
        pg = EmbeddedPostgres(Path(scratch) / "pgdata").start()
        try:
            bootstrap_database(pg.url)
            assert pg.proc is not None
            postgres, me = psutil.Process(pg.proc.pid), psutil.Process()

            def new_connection() -> None:
                with psycopg.connect(pg.url) as conn:
                    conn.execute(QUERY).fetchone()

            kept = psycopg.connect(pg.url, autocommit=True)

            def kept_connection() -> None:
                kept.execute(QUERY).fetchone()

            ways: dict[str, Callable[[], None]] = {
                "a new connection per poll": new_connection,
                "one kept connection": kept_connection,
            }
            for round_ in range(1, args.rounds + 1):
                for name, poll in ways.items():
                    pg0, me0, t0 = cpu_seconds(postgres), cpu_seconds(me), time.perf_counter()
                    polls = 0
                    while time.perf_counter() - t0 < args.seconds:
                        poll()
                        polls += 1
                        time.sleep(args.interval)
                    elapsed = time.perf_counter() - t0
                    print(
                        f"round {round_}, {name}: {polls / elapsed:.1f} polls/s; PostgreSQL"
                        f" {(cpu_seconds(postgres) - pg0) / elapsed * 1000:.1f} ms of CPU a second, this process"
                        f" {(cpu_seconds(me) - me0) / elapsed * 1000:.1f}",
                        flush=True,
                    )
            kept.close()
        finally:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
