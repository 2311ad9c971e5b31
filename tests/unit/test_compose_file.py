"""docker-compose.localstack.yml is a valid Compose file, and every process in it is configured for
what its settings read. No Docker engine here: the file is validated by `docker-compose config`
(Debian's docker-compose, which needs no engine for it) and by a Compose-spec parser after YAML
merges, as Docker Compose applies them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from visionq import config
from visionq.config import ApiSettings, NotifierSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.localstack.yml"
# Read by `visionq bootstrap`'s arguments, not by a settings class.
CLI_VARIABLES = {"VISIONQ_QUEUE_NAME", "VISIONQ_BUCKET", "VISIONQ_JOBS_TABLE", "DATABASE_URL"}


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_the_compose_file_is_valid_compose() -> None:
    compose_spec = pytest.importorskip("compose_spec")
    parsed = compose_spec.PyCompose.from_yaml(yaml.safe_dump(_compose()))
    assert sorted(parsed.service_names()) == [
        "api",
        "bootstrap",
        "keys",
        "localstack",
        "notifier",
        "postgres",
        "worker",
    ]


def test_docker_compose_config_accepts_it() -> None:
    """Docker Compose's own validation (`docker-compose config` needs no engine; Debian's package,
    installed by scripts/setup-system-tools)."""
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose is not installed (scripts/setup-system-tools installs it)")
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "config", "--services"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["api", "bootstrap", "keys", "localstack", "notifier", "postgres", "worker"]


def test_every_image_it_builds_has_its_dockerfile() -> None:
    for name, service in _compose()["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name


def test_every_variable_it_sets_is_one_visionq_reads() -> None:
    known = config.environment_names() | CLI_VARIABLES
    for name, service in _compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith(("VISIONQ_", "DATABASE_URL")):
                assert variable in known, f"{name}: {variable} is read by nothing"


@pytest.mark.parametrize(
    ("service", "settings"), [("api", ApiSettings), ("worker", WorkerSettings), ("notifier", NotifierSettings)]
)
def test_the_api_and_the_worker_get_every_setting_they_need(
    service: str, settings: type[BaseSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for variable in list(os.environ):
        if variable.startswith(("VISIONQ_", "AWS_", "DATABASE_URL")):
            monkeypatch.delenv(variable)
    environment = _compose()["services"][service]["environment"]
    for variable, value in environment.items():
        value = str(value).replace("${VISIONQ_MODEL:-yolo11n.pt}", "yolo11n.pt")
        monkeypatch.setenv(variable, value.replace("${VISIONQ_WEBHOOK_SECRET:-change-me-locally}", "secret"))
    loaded = settings()
    assert loaded.aws_endpoint_url == "http://localstack:4566"  # type: ignore[attr-defined]
    if service == "api":  # upload URLs are signed for the host, the rest stays inside compose
        assert loaded.endpoint_for("s3") == "http://localhost:4566"  # type: ignore[attr-defined]
        assert loaded.endpoint_for("dynamodb") == "http://localstack:4566"  # type: ignore[attr-defined]


def test_queue_urls_name_the_queues_bootstrap_creates() -> None:
    env = _compose()["services"]["worker"]["environment"]
    queue = env["VISIONQ_QUEUE_NAME"]
    assert env["VISIONQ_QUEUE_URL"].endswith(f"/{queue}")
    assert env["VISIONQ_DLQ_URL"].endswith(f"/{queue}-dlq")  # infra.bootstrap.StackNames.dead_letter_queue
    assert env["VISIONQ_NOTIFY_QUEUE_URL"].endswith(f"/{queue}-notify")  # StackNames.notify_queue
