"""The decode process's side of the hand-over, step by step (bench/RESULTS.md run 28).

    .venv/bin/python bench/decode_handover.py --megapixels 1

One decode process serving requests exactly as ``decode_pool._serve`` does (the same framing, the
same ``_decode`` into a shared-memory slot), with each step timed on the process's own CPU clock,
fed one image at a time by this process with blocking calls. Then the same images decoded in this
thread by ``decode_image``. Shows what the steps around the decode cost, without the pool's
concurrency (``bench/decode_cpu.py`` measures the pool as the worker runs it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import socket
import sys
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

STEPS = ("read the request's header", "read the JPEG", "unpickle the header", "decode into the slot", "answer")


def serve(conn: Connection, results: Any) -> None:
    from visionq.decode_pool import _REQUEST_ID, _decode, _Markers

    spent = dict.fromkeys(STEPS, 0.0)
    served = 0
    while True:
        marks = [time.process_time()]
        try:
            header = conn.recv_bytes()
        except EOFError:
            break
        marks.append(time.process_time())
        data = conn.recv_bytes()
        marks.append(time.process_time())
        request_id, limits, max_side, slot = pickle.loads(header)  # noqa: S301 - from this bench
        marks.append(time.process_time())
        answer = ("ok", _decode(data, limits, max_side, _Markers(), slot))
        marks.append(time.process_time())
        conn.send_bytes(_REQUEST_ID.pack(request_id) + pickle.dumps(answer))
        marks.append(time.process_time())
        for step, start, end in zip(STEPS, marks[:-1], marks[1:], strict=True):
            spent[step] += end - start
        served += 1
    results.put({step: round(seconds / served * 1e6) for step, seconds in spent.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megapixels", type=float, default=None)
    parser.add_argument("--max-side", type=int, default=640)
    args = parser.parse_args(argv)

    from run_bench import machine, make_images

    from visionq.decode_pool import _Slot
    from visionq.images import ImageLimits, decode_image

    print(machine())
    jpegs = make_images(args.n, megapixels=args.megapixels)
    slot_bytes = args.max_side * args.max_side * 3
    segment = shared_memory.SharedMemory(create=True, size=slot_bytes)
    try:
        context = multiprocessing.get_context("forkserver")
        ours, theirs = socket.socketpair()
        results = context.Queue()
        process = context.Process(target=serve, args=(Connection(theirs.detach()), results))
        process.start()
        conn = Connection(ours.detach())
        slot, limits = _Slot(segment.name, 0, slot_bytes), ImageLimits()
        started = time.process_time()
        for _ in range(args.rounds):
            for i, data in enumerate(jpegs):
                conn.send_bytes(pickle.dumps((i, limits, args.max_side, slot)))
                conn.send_bytes(data)
                conn.recv_bytes()
        calls = args.rounds * len(jpegs)
        this_process = (time.process_time() - started) / calls * 1e6
        conn.close()
        process.join()
        print(f"the decode process, µs per image by step: {results.get()}")
        print(f"this process (pickle the header, send it and the JPEG, read the answer): {this_process:.0f} µs")
        started = time.process_time()
        for _ in range(args.rounds):
            for data in jpegs:
                decode_image(data, limits, max_side=args.max_side)
        print(f"decode_image in this thread: {(time.process_time() - started) / calls * 1e6:.0f} µs per image")
    finally:
        segment.close()
        segment.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
