"""Render the figures the fault-injection suite recorded into docs/reliability.md.

python -m tests.integration.reliability_report FIGURES.json COMMAND > docs/reliability.md
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.fault_harness import bad_inputs


def render(figures: dict[str, Any], command: str) -> str:
    lines = [
        "# Reliability: what the fault-injection suite did and what survived",
        "",
        f"Produced by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {platform.machine()}, {platform.python_version()}; the stores are the real moto server and a real"
        " PostgreSQL server, the worker a real `visionq worker` process killed with SIGKILL.",
        "",
        "| scenario | images | injected | results lost | duplicate results |",
        "|---|---|---|---|---|",
    ]
    kill = figures.get("kill_9")
    if kill:
        kills = ", ".join(f"{n} {where}" for where, n in sorted(kill["kills"].items()))
        lines.append(
            f"| `kill -9` the worker at each boundary, restart it | {kill['images']} ({kill['bad']} bad) |"
            f" {sum(kill['kills'].values())} kills ({kills}); {kill['worker_starts']} worker starts |"
            f" {kill['results_lost']} | {kill['duplicate_results']} |"
        )
    pg = figures.get("postgres_restart")
    if pg:
        lines.append(
            f"| PostgreSQL stopped and restarted mid-run | {pg['images']} | one outage of {pg['outage_seconds']} s |"
            f" {pg['results_lost']} | {pg['duplicate_results']} |"
        )
    dup = figures.get("duplicates")
    if dup:
        lines.append(
            f"| every event delivered twice | {dup['images']} | {dup['events_delivered']} events |"
            f" {dup['results_lost']} | {dup['duplicate_results']} |"
        )
    poison = figures.get("poison")
    if poison:
        lines.append(
            f"| an image that kills the worker every time | 1 (+5 healthy after it) |"
            f" {poison['deliveries_before_parking']} deliveries, each a worker death; then parked in the DLQ,"
            f" job {poison['job']}; `visionq dlq list` shows it, `visionq dlq redrive` reopens and requeues it"
            " | 0 | 0 |"
        )
    fuzz = figures.get("api_fuzz")
    if fuzz:
        lines.append(
            f"| the HTTP API fuzzed from its OpenAPI document | - | {fuzz['requests']} requests, valid and invalid,"
            f" with and without a key | 5xx answers: {fuzz['server_errors']} | - |"
        )
    lines += [
        "",
        "Invariants checked at the end of every scenario: every job is `SUCCEEDED` or `FAILED`; exactly one",
        "`results` row per good image and none for a bad one; each result's `detections` rows match its",
        "`item_count`; one job per object; the work queue is empty (everything acknowledged).",
        "",
        "## Bad inputs tried, each with its outcome",
        "",
        "| input | outcome |",
        "|---|---|",
    ]
    for name, (_, code) in bad_inputs(lambda seed, size=(320, 240): _blank(size)).items():
        lines.append(f"| object `{name}` | job `FAILED`, error code `{code}`, message acknowledged |")
    lines += [
        "| an upload declaring a content type outside the allowlist | 400 `unsupported_content_type` |",
        "| filename with a path or `..` | 400 `invalid_filename` |",
        "| unknown job id | 404 `job_not_found` |",
        "| another key's job | 404 `job_not_found` |",
        "| no API key, a wrong or revoked key | 401 `unauthorized` |",
        "| request body over 16 KiB | 413 `request_too_large` |",
        "| malformed event JSON in the queue | logged, acknowledged; the worker goes on |",
        "| `s3:TestEvent` | acknowledged, nothing else |",
        "| an object outside the upload prefix | acknowledged, no job |",
        "",
        "Not covered here: moto does not enforce a presigned POST's `content-length-range` or",
        "`Content-Type` conditions (AWS S3 does), so on the local stack an oversize upload is stored and",
        "then rejected by the worker (`object_too_large`).",
    ]
    return "\n".join(lines) + "\n"


def _blank(size: tuple[int, int]) -> tuple[Any, list[Any]]:
    from PIL import Image

    return Image.new("RGB", size), []


if __name__ == "__main__":
    data = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout.write(render(data, sys.argv[2] if len(sys.argv) > 2 else "scripts/reliability"))
