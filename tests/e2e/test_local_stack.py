"""The local stack as a user drives it: `visionq up`, `visionq submit --wait`, Ctrl-C; `visionq demo`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from dotenv import dotenv_values

from tests.conftest import SHAPES_WEIGHTS
from visionq.local_stack import wait_until

pytestmark = pytest.mark.e2e

VISIONQ = [sys.executable, "-m", "visionq"]
LOCAL_CLIENT = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "AWS_")) and k != "DATABASE_URL"}
    env["YOLO_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_up_submit_and_stop_leave_nothing_behind(tmp_path: Path, draw_scene: Callable[..., Any]) -> None:
    up = subprocess.Popen(
        [*VISIONQ, "up", "--model", str(SHAPES_WEIGHTS.resolve())],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        env_file = tmp_path / ".visionq" / "local.env"
        wait_until(lambda: env_file.exists() and up.poll() is None, timeout=120, what="`visionq up` to write local.env")
        values = dotenv_values(env_file)  # the parser the CLI's settings use
        for key in (
            "API_URL",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "DATABASE_URL",
            "VISIONQ_BUCKET",
            "VISIONQ_QUEUE_URL",
            "VISIONQ_JOBS_TABLE",
        ):
            assert values.get(key), key
        # DynamoDB on an emulator process of its own; S3 and SQS share the other.
        assert values["AWS_ENDPOINT_URL_DYNAMODB"] != values["AWS_ENDPOINT_URL"]
        ddb = boto3.client("dynamodb", endpoint_url=values["AWS_ENDPOINT_URL_DYNAMODB"], **LOCAL_CLIENT)
        assert values["VISIONQ_JOBS_TABLE"] in ddb.list_tables()["TableNames"]
        assert (
            boto3.client("dynamodb", endpoint_url=values["AWS_ENDPOINT_URL"], **LOCAL_CLIENT).list_tables()[
                "TableNames"
            ]
            == []
        )
        # An operator command finds it from local.env alone (the stack's key, in DynamoDB).
        keys = subprocess.run([*VISIONQ, "keys", "list"], cwd=tmp_path, env=_env(), capture_output=True, text=True)
        assert keys.returncode == 0 and " local" in keys.stdout, keys.stdout + keys.stderr
        image, truth = draw_scene(10_100, (320, 240))
        image.save(tmp_path / "shapes.png")
        (tmp_path / "folder").mkdir()
        draw_scene(10_101, (320, 240))[0].save(tmp_path / "folder" / "more.png")

        submit = subprocess.run(
            [*VISIONQ, "submit", "shapes.png", "folder", "--wait", "--timeout", "120"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submit.returncode == 0, submit.stdout + submit.stderr
        lines = submit.stdout.splitlines()
        names = {0: "square", 1: "circle", 2: "triangle"}
        for cls, *_ in truth:
            assert any(line.startswith("shapes.png") and names[cls] in line for line in lines), submit.stdout
        assert any(line.startswith("more.png") and "SUCCEEDED" in line for line in lines), submit.stdout
        # The same run seen through the metrics of the worker and the API.
        stats = subprocess.run(
            [*VISIONQ, "stats", "--interval", "0"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
        )
        assert stats.returncode == 0, stats.stdout + stats.stderr
        assert "endpoints: 2 answered" in stats.stdout, stats.stdout
        assert "images: 2 succeeded, 0 failed" in stats.stdout, stats.stdout
        assert "/v1/batches" in stats.stdout, stats.stdout
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4  # two emulators, database, API, worker
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]


def test_demo_runs_offline_and_shows_real_detections(tmp_path: Path) -> None:
    demo = subprocess.run(
        [*VISIONQ, "demo", "--out", str(tmp_path / "annotated")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # No network here: one line says the demo runs the shapes detector on scenes it drew.
    assert "yolo11n.pt cannot be downloaded here" in demo.stdout
    assert "UNTRAINED" not in demo.stdout
    found = re.search(r"the detector found (\d+) of the (\d+) shapes drawn", demo.stdout)
    assert found is not None, demo.stdout
    assert int(found[1]) == int(found[2]) > 0, demo.stdout
    scenes = sorted(p.name for p in (tmp_path / "annotated").glob("scene-*.png"))
    assert scenes == [f"scene-{i}.png" for i in range(1, 5)]
    assert "Traceback" not in demo.stdout + demo.stderr


def test_up_with_weights_it_cannot_load_stops_with_one_sentence(tmp_path: Path) -> None:
    up = subprocess.run(
        [*VISIONQ, "up", "--model", "nowhere/yolo-missing.pt"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode != 0
    assert "visionq is up" not in up.stdout
    assert "Traceback" not in up.stdout + up.stderr
    [sentence] = [line for line in up.stderr.splitlines() if line.startswith("visionq:")]
    assert "the worker cannot start" in sentence and "'nowhere/yolo-missing.pt'" in sentence
    assert "--model" in sentence
    assert not (tmp_path / ".visionq" / "local.env").exists()
