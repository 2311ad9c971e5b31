"""Settings come from one place: the environment, and for the operator commands the running local
stack's env file behind it (read by pydantic-settings, the one dotenv parser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionq.config import ClientSettings, DeadLetterSettings, WorkerSettings, load_settings
from visionq.errors import ConfigError


def test_operator_commands_read_the_local_stack_env_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "API_URL",
        "VISIONQ_API_KEY",
        "VISIONQ_QUEUE_URL",
        "VISIONQ_DLQ_URL",
        "VISIONQ_JOBS_TABLE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".visionq").mkdir()
    (tmp_path / ".visionq" / "local.env").write_text(
        "# written by `visionq up`\nAPI_URL=http://127.0.0.1:9\nVISIONQ_API_KEY=vq_secret\n"
        "VISIONQ_QUEUE_URL=http://q\nVISIONQ_DLQ_URL=http://dlq\nVISIONQ_JOBS_TABLE=jobs\n"
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing-secret\n"
    )
    client = load_settings(ClientSettings)
    assert (client.api_url, client.api_key) == ("http://127.0.0.1:9", "vq_secret")
    monkeypatch.setenv("VISIONQ_JOBS_TABLE", "from-the-environment")
    dlq = load_settings(DeadLetterSettings)
    assert (dlq.dlq_url, dlq.jobs_table) == ("http://dlq", "from-the-environment")
    assert dlq.credentials() == {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}
    assert "testing-secret" not in repr(dlq)  # a secret stays out of logs and tracebacks


def test_a_worker_never_reads_the_local_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VISIONQ_QUEUE_URL", "VISIONQ_JOBS_TABLE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".visionq").mkdir()
    (tmp_path / ".visionq" / "local.env").write_text("VISIONQ_QUEUE_URL=http://q\nVISIONQ_JOBS_TABLE=jobs\n")
    # A deployed process is configured by its environment alone: a stray file changes nothing.
    with pytest.raises(ConfigError, match=r"queue_url|VISIONQ_QUEUE_URL"):
        load_settings(WorkerSettings)


def test_decoding_runs_in_processes_of_its_own_everywhere_and_the_model_except_on_lambda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {"queue_url": "http://q", "jobs_table": "jobs", "database_url": "postgresql://x"}
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5})
    assert WorkerSettings(**base).decode_processes_wanted == 6  # one per usable core
    assert WorkerSettings(**base, decode_workers=8).decode_processes_wanted == 8
    assert WorkerSettings(**base, decode_processes=0).decode_processes_wanted == 0  # threads
    assert WorkerSettings(**base, model_process=True).model_process_wanted
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "worker")
    # No /dev/shm there: the decode processes answer through their sockets (decode_pool.py), but
    # an image that crashes the decoder still fails alone instead of taking the whole event back.
    assert WorkerSettings(**base).decode_processes_wanted == 6
    assert not WorkerSettings(**base, model_process=True).model_process_wanted
