"""Every AWS client gets explicit connect and read timeouts; an SQS client can wait out a long poll.

botocore's defaults are 60 s each, per attempt: with three attempts a silent endpoint holds a
call for minutes. The two tests against a silent endpoint show the timeouts really reach the
HTTP layer (sync boto3 and aiobotocore both), and fail instead of hanging if they do not.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ReadTimeoutError

from visionq.aws import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    MAX_ATTEMPTS,
    aio_client_kwargs,
    boto3_client,
    client_config,
)
from visionq.config import AwsSettings, LocalEnvSettings

SQS_LONGEST_POLL = 20  # seconds: the most WaitTimeSeconds SQS accepts

QUEUE_URL = "http://127.0.0.1/123456789012/q"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # Signing needs credentials; these keep botocore from looking anywhere else for them.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections (the kernel does) and never answers."""
    with closing(socket.create_server(("127.0.0.1", 0), backlog=16)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def settings(endpoint: str | None = None) -> AwsSettings:
    return AwsSettings(aws_endpoint_url=endpoint, aws_region="us-east-1")


def test_every_config_has_explicit_timeouts_below_botocores_defaults() -> None:
    config: Any = client_config(settings())  # botocore sets its attributes dynamically
    assert config.connect_timeout == DEFAULT_CONNECT_TIMEOUT == 5
    assert config.read_timeout == DEFAULT_READ_TIMEOUT == 30
    # The default read timeout already outlasts the longest long poll, so an SQS client built
    # with the defaults never times out an empty poll.
    assert config.read_timeout > SQS_LONGEST_POLL


def test_timeouts_and_other_config_options_combine() -> None:
    config: Any = client_config(
        settings("http://127.0.0.1:1"), connect_timeout=2, read_timeout=45, max_pool_connections=7
    )
    assert (config.connect_timeout, config.read_timeout) == (2, 45)
    assert config.max_pool_connections == 7
    # What was there before is unchanged: retries and path-style addressing for an emulator.
    assert config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    assert config.s3 == {"addressing_style": "path"}


def test_the_sdks_clients_try_a_call_as_often_as_the_workers_own_clients() -> None:
    """MAX_ATTEMPTS counts the first attempt, as the worker's own clients count it (the SQS and
    DynamoDB wires, the object reads); botocore's ``max_attempts`` would not (it counts retries,
    and resolved to four attempts in all until 2026-12-03)."""
    sqs = boto3_client("sqs", settings())
    assert sqs.meta.config.retries["total_max_attempts"] == MAX_ATTEMPTS == 3


@pytest.mark.parametrize("bad", [{"connect_timeout": 0}, {"read_timeout": 0}, {"read_timeout": -1}])
def test_a_timeout_that_is_no_bound_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        client_config(settings(), **bad)


def test_an_sqs_client_can_be_given_a_read_timeout_longer_than_the_poll() -> None:
    sqs = boto3_client("sqs", settings(), read_timeout=SQS_LONGEST_POLL + 25, max_pool_connections=16)
    assert sqs.meta.config.read_timeout == SQS_LONGEST_POLL + 25
    assert sqs.meta.config.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert sqs.meta.config.max_pool_connections == 16


def test_boto3_clients_get_the_defaults() -> None:
    for service in ("s3", "sqs", "dynamodb"):
        config = boto3_client(service, settings()).meta.config
        assert (config.connect_timeout, config.read_timeout) == (DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT)


def test_aio_client_kwargs_carry_the_timeouts() -> None:
    kwargs = aio_client_kwargs("sqs", settings(), read_timeout=50, max_pool_connections=16)
    assert kwargs["service_name"] == "sqs"
    config = kwargs["config"]
    assert (config.connect_timeout, config.read_timeout, config.max_pool_connections) == (5, 50, 16)

    async def built() -> Any:
        async with get_session().create_client(**kwargs) as sqs:
            return sqs.meta.config

    config = asyncio.run(built())
    assert (config.connect_timeout, config.read_timeout) == (5, 50)


def test_a_silent_endpoint_fails_a_boto3_call_within_the_read_timeout(silent_endpoint: str) -> None:
    sqs = boto3_client("sqs", settings(silent_endpoint), connect_timeout=1, read_timeout=0.5)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            sqs.receive_message(QueueUrl=QUEUE_URL, WaitTimeSeconds=0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    # 3 attempts of 0.5 s plus backoff: well inside 20 s; botocore's defaults would take 3 minutes.
    thread.join(20)
    assert not thread.is_alive(), "the call was still waiting after 20 s: the read timeout did not apply"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ReadTimeoutError)


def test_a_silent_endpoint_fails_an_aiobotocore_call_within_the_read_timeout(silent_endpoint: str) -> None:
    kwargs = aio_client_kwargs("sqs", settings(silent_endpoint), connect_timeout=1, read_timeout=0.5)

    async def call() -> None:
        async with get_session().create_client(**kwargs) as sqs:
            await sqs.receive_message(QueueUrl=QUEUE_URL, WaitTimeSeconds=0)

    async def bounded() -> None:
        try:
            async with asyncio.timeout(20):
                await call()
        except TimeoutError:
            pytest.fail("the call was still waiting after 20 s: the read timeout did not apply")

    with pytest.raises(ReadTimeoutError):
        asyncio.run(bounded())


def test_a_per_service_endpoint_wins_over_the_global_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's AWS_ENDPOINT_URL_<SERVICE>: S3 and SQS on one emulator, DynamoDB on another."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://localstack.test:4566")
    monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB", raising=False)
    settings = AwsSettings(aws_endpoint_url="http://moto.test:5000")
    assert boto3_client("s3", settings).meta.endpoint_url == "http://localstack.test:4566"
    assert boto3_client("dynamodb", settings).meta.endpoint_url == "http://moto.test:5000"
    assert aio_client_kwargs("s3", settings)["endpoint_url"] == "http://localstack.test:4566"
    assert client_config(settings).s3 == {"addressing_style": "path"}


def test_a_per_service_endpoint_comes_from_an_env_file_too(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stack's `local.env` puts DynamoDB on an emulator of its own; the operator commands
    read their settings from that file, not from the environment."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "local.env"
    env_file.write_text("AWS_ENDPOINT_URL=http://127.0.0.1:5001\nAWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:5002\n")
    settings = LocalEnvSettings(_env_file=env_file)  # type: ignore[call-arg]
    assert boto3_client("dynamodb", settings).meta.endpoint_url == "http://127.0.0.1:5002"
    assert boto3_client("sqs", settings).meta.endpoint_url == "http://127.0.0.1:5001"
    assert aio_client_kwargs("dynamodb", settings)["endpoint_url"] == "http://127.0.0.1:5002"
