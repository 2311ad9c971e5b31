"""Helpers for the fault-injection suite: a worker process that is restarted whenever it dies,
inputs good and bad, and the invariants every run must end with."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import BUCKET, SHAPES_WEIGHTS, TABLE, Stack

REPORT_ENV = "VISIONQ_RELIABILITY_JSON"  # where tests add their figures, for docs/reliability.md


class Supervisor:
    """Runs `visionq worker` as a child process and starts it again each time it dies.

    Armed failpoints take turns, one boundary per worker life; after ``max_kills`` failpoint
    deaths they are disarmed, so every run finishes.
    """

    def __init__(self, stack: Stack, log_dir: Path, *, max_kills: int = 0, **env: str) -> None:
        self.stack = stack
        self.log_dir = log_dir
        self.max_kills = max_kills
        self.env = env
        self.starts = 0
        self.kills: Counter[str] = Counter()
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _worker_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "AWS_ENDPOINT_URL": self.stack.endpoint,
            "DATABASE_URL": self.stack.database_url,
            "VISIONQ_QUEUE_URL": self.stack.queue_url,
            "VISIONQ_DLQ_URL": self.stack.dlq_url,
            "VISIONQ_JOBS_TABLE": TABLE,
            "VISIONQ_MODEL": str(SHAPES_WEIGHTS),
            "VISIONQ_DEVICE": "cpu",
            "VISIONQ_VISIBILITY_TIMEOUT": "6",
            "VISIONQ_POLL_WAIT_SECONDS": "1",
            "VISIONQ_DLQ_SWEEP_SECONDS": "1",
            "VISIONQ_SHUTDOWN_GRACE_SECONDS": "20",
            "YOLO_OFFLINE": "1",
            **self.env,
        }
        kills = sum(self.kills.values())
        if kills >= self.max_kills:
            env.pop("VISIONQ_CRASH_AT", None)
        elif "VISIONQ_CRASH_AT" in env:
            # One boundary armed at a time, in turn, so every boundary gets its kills.
            points = env["VISIONQ_CRASH_AT"].split(",")
            env["VISIONQ_CRASH_AT"] = points[kills % len(points)]
        env["VISIONQ_CRASH_SEED"] = str(self.starts)
        return env

    def _loop(self) -> None:
        while not self._stopping.is_set():
            log = self.log_dir / f"worker-{self.starts}.log"
            env = self._worker_env()
            self.starts += 1
            with log.open("wb") as out:
                self.proc = subprocess.Popen([sys.executable, "-m", "visionq", "worker"], env=env, stderr=out)
                self.proc.wait()
            if self.proc.returncode == -signal.SIGKILL:
                match = re.search(r"failpoint: killing the worker \(([^)]*)\)", log.read_text())
                self.kills[match.group(1).split(" ")[0] if match else "external"] += 1

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM the current worker; return its exit status."""
        self._stopping.set()
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        self._thread.join(120)
        assert not self._thread.is_alive(), "the worker did not stop on SIGTERM"
        return proc.returncode


# --- inputs ---------------------------------------------------------------------------------------


def png(image: Image.Image, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def bad_inputs(draw_scene: Callable[..., Any]) -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, the error code its job must end FAILED with)."""
    whole = jpeg(draw_scene(99)[0])
    return {
        "zero-bytes.jpg": (b"", "empty_object"),
        "truncated.jpg": (whole[: len(whole) // 2], "undecodable_image"),
        "text-named.jpg": (b"hello, I am a text file\n" * 20, "unsupported_format"),
        "bomb-30000x30000.png": (png_header_only(30000, 30000), "image_too_large"),
        "oversize.jpg": (b"\xff\xd8\xff" + b"\x00" * (2 * 1024 * 1024), "object_too_large"),
    }


@dataclass
class Workload:
    good: dict[str, bytes] = field(default_factory=dict)  # key -> bytes
    bad: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # key -> (bytes, code)

    def put_all(self, stack: Stack) -> None:
        for key, data in self.good.items():
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        for key, (data, _) in self.bad.items():
            stack.s3.put_object(Bucket=BUCKET, Key=key, Body=data)


def make_workload(draw_scene: Callable[..., Any], good: int, prefix: str, *, bad_every: int = 0) -> Workload:
    work = Workload()
    bad = list(bad_inputs(draw_scene).items())
    for i in range(good):
        work.good[f"uploads/{prefix}/{i:05d}.png"] = png(draw_scene(30_000 + i, (320, 240))[0])
        if bad_every and i % bad_every == 0:
            name, spec = bad[(i // bad_every) % len(bad)]
            work.bad[f"uploads/{prefix}/bad-{i:05d}-{name}"] = spec
    return work


# --- invariants -----------------------------------------------------------------------------------


def jobs_by_key(stack: Stack, *, settled: bool = False) -> dict[str, dict[str, Any]]:
    """Jobs by object key. While a worker runs, moto can show a scan an item it is creating before
    the update's attributes are applied (its writes are not atomic to concurrent readers), so such
    items are skipped then; once everything has ``settled``, every item must be whole."""
    jobs: dict[str, dict[str, Any]] = {}
    for page in stack.dynamodb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            if item["job_id"]["S"].startswith("apikey#"):
                continue
            if "object_key" not in item or "status" not in item:
                assert not settled, f"a job item without its object or status: {item}"
                continue
            key = item["object_key"]["S"]
            jobs.setdefault(key, {"status": item["status"]["S"], "error_code": item.get("error_code", {}).get("S")})
            jobs[key]["count"] = jobs[key].get("count", 0) + 1
    return jobs


def all_terminal(stack: Stack, work: Workload) -> bool:
    jobs = jobs_by_key(stack)
    keys = [*work.good, *work.bad]
    return all(jobs.get(k, {}).get("status") in ("SUCCEEDED", "FAILED") for k in keys)


def queue_depth(stack: Stack, url: str) -> int:
    attrs = stack.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def check_invariants(stack: Stack, work: Workload) -> dict[str, int]:
    """Every job terminal; one result per good image, none for bad ones; no duplicate detections."""
    jobs = jobs_by_key(stack, settled=True)
    rows = stack.sql("SELECT key, count(*) FROM results GROUP BY key")
    results = dict(rows)
    lost = [k for k in work.good if results.get(k, 0) == 0 or jobs.get(k, {}).get("status") != "SUCCEEDED"]
    duplicated = [k for k, n in results.items() if n > 1]
    wrong_failures = [
        (k, jobs.get(k))
        for k, (_, code) in work.bad.items()
        if jobs.get(k, {}).get("status") != "FAILED" or jobs[k]["error_code"] != code
    ]
    results_for_bad = [k for k in work.bad if k in results]
    mismatched = stack.sql(
        "SELECT r.key FROM results r LEFT JOIN detections d ON d.result_id = r.id"
        " GROUP BY r.id HAVING count(d.idx) <> r.item_count"
    )
    jobs_per_object = [k for k, j in jobs.items() if j["count"] != 1]
    assert not lost, f"results lost: {[(k, jobs.get(k), results.get(k)) for k in lost[:5]]}"
    assert not duplicated, f"duplicate results: {duplicated[:5]}"
    assert not wrong_failures, f"bad inputs without their error: {wrong_failures[:5]}"
    assert not results_for_bad, results_for_bad
    assert not mismatched, f"detections not matching their result: {mismatched[:5]}"
    assert not jobs_per_object, f"objects with more than one job: {jobs_per_object[:5]}"
    return {
        "images": len(work.good) + len(work.bad),
        "good": len(work.good),
        "bad": len(work.bad),
        "results": sum(results.values()),
        "results_lost": len(lost),
        "duplicate_results": len(duplicated),
    }


def record(name: str, figures: dict[str, Any]) -> None:
    """Add a test's figures to the reliability report, when one is being made."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    report[name] = figures
    Path(path).write_text(json.dumps(report, indent=2))
