"""`visionq worker` stops with one sentence, not a traceback, when what stops it is one of our own
errors, whether found before its stages start or raised inside them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from visionq.cli import _known_error
from visionq.errors import ConfigError


def test_an_error_of_ours_inside_the_stages_is_found_in_its_group() -> None:
    error = ConfigError("receive messages: no AWS credentials found")
    assert _known_error(ExceptionGroup("stages", [ExceptionGroup("poller", [error, ConfigError("again")])])) is error
    assert _known_error(ExceptionGroup("stages", [error, RuntimeError("a bug")])) is None  # a bug stays a traceback
    assert _known_error(RuntimeError("a bug")) is None


def test_a_worker_without_aws_credentials_stops_with_one_sentence(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('default = "null"\n[models.null]\nfamily = "synthetic"\nweights = "null"\n')
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),  # no ~/.aws
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
        "VISIONQ_QUEUE_URL": "http://127.0.0.1:9/queue",
        "VISIONQ_JOBS_TABLE": "jobs",
        "DATABASE_URL": "postgresql://127.0.0.1:9/none",
        "VISIONQ_MODELS_FILE": str(models),
    }
    done = subprocess.run(
        [sys.executable, "-m", "visionq", "worker"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "worker stopped: receive messages: no AWS credentials found" in done.stderr
    assert "Traceback" not in done.stderr
