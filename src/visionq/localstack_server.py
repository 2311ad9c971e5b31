"""LocalStack's own runtime (no Docker) for S3 and SQS, started the way ``MotoServer`` starts moto.

LocalStack (``localstack-core[runtime]``) needs Python 3.13, so it runs from a venv of its own,
``.localstack-venv`` (``scripts/setup-localstack``), in a process group of its own. It emulates
more of S3 than moto does: a presigned POST's ``content-length-range`` is enforced, and the
bucket's notification really sends the S3 event to SQS. Its DynamoDB needs Java and a download, so
it serves S3 and SQS only; DynamoDB stays on moto (``AWS_ENDPOINT_URL_DYNAMODB``).

Everything it writes goes under ``state_dir`` (host mode, ``OVERRIDE_IN_DOCKER=0``: not /etc or
/var), which is removed on stop unless it was given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from visionq.local_stack import LOCAL_AWS_CREDENTIALS, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".localstack-venv"
SERVICES = ("s3", "sqs")
START_SECONDS = 90


class LocalStackUnavailableError(RuntimeError):
    """LocalStack's venv is missing or its runtime did not come up (the message says which)."""


@dataclass
class LocalStackServer:
    """LocalStack's runtime serving S3 and SQS at one endpoint."""

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    state_dir: Path | None = None  # None: a temporary directory, removed on stop
    venv: Path = field(default_factory=lambda: Path(os.environ.get("VISIONQ_LOCALSTACK_VENV") or DEFAULT_VENV))
    proc: subprocess.Popen[bytes] | None = None
    _own_state_dir: bool = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def environment(self) -> dict[str, str]:
        """The runtime's environment: host mode, S3 and SQS only, on this port, offline, state under
        ``state_dir``."""
        assert self.state_dir is not None
        tmp = self.state_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        keep = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
        return {
            **{k: v for k, v in os.environ.items() if k in keep},
            **LOCAL_AWS_CREDENTIALS,
            "OVERRIDE_IN_DOCKER": "0",  # else it assumes a container and writes under /etc and /var
            "FILESYSTEM_ROOT": str(self.state_dir / "filesystem"),
            "TMPDIR": str(tmp),
            "HOME": str(self.state_dir),  # its plugin cache (~/.cache/plux) too
            "XDG_CACHE_HOME": str(self.state_dir / "cache"),
            "SERVICES": ",".join(SERVICES),
            "EAGER_SERVICE_LOADING": "1",  # ready means S3 and SQS answer, not "will load on first call"
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "LOCALSTACK_HOST": f"127.0.0.1:{self.port}",
            "SQS_ENDPOINT_STRATEGY": "path",  # queue URLs under this endpoint, not *.localhost.localstack.cloud
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",  # no analytics
            "SKIP_INFRA_DOWNLOADS": "1",
            "PERSISTENCE": "0",
        }

    def start(self) -> LocalStackServer:
        if not self.python.exists():
            raise LocalStackUnavailableError(
                f"LocalStack's runtime is not installed ({self.python} is missing): run scripts/setup-localstack"
            )
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="visionq-localstack-"))
            self._own_state_dir = True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.state_dir / "localstack.log"
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "localstack.runtime.main"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.state_dir,
                start_new_session=True,  # a process group of its own: stop() ends it with every child
            )
        proc = self.proc
        try:
            wait_until(lambda: proc.poll() is not None or self._healthy(), timeout=START_SECONDS, what="LocalStack")
            if proc.poll() is not None:
                raise LocalStackUnavailableError(f"LocalStack exited with status {proc.returncode}")
        except BaseException as exc:
            tail = _tail(log_path)  # before stop() removes a temporary state_dir
            self.stop()
            if isinstance(exc, TimeoutError | LocalStackUnavailableError):
                raise LocalStackUnavailableError(f"{exc}; its log ({log_path}) ends:\n{tail}") from exc
            raise
        return self

    def _healthy(self) -> bool:
        health: dict[str, Any] = httpx.get(f"{self.endpoint}/_localstack/health", timeout=1).json()
        services = health.get("services", {})
        return all(services.get(name) in ("running", "available") for name in SERVICES)

    def client(self, service: str) -> Any:
        """A boto3 client of this server (whatever ``AWS_ENDPOINT_URL*`` say)."""
        import boto3
        from botocore.config import Config

        session: Any = boto3.session.Session()
        return session.client(
            service,
            endpoint_url=self.endpoint,
            region_name=LOCAL_AWS_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=LOCAL_AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def reset(self) -> None:
        """Forget every bucket and queue (between tests), as moto's reset does. LocalStack's
        community runtime has no state-reset endpoint, so this deletes through the APIs."""
        s3, sqs = (self.client(name) for name in SERVICES)
        for bucket in s3.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
                keys = [
                    {"Key": o["Key"], "VersionId": o["VersionId"]}
                    for o in page.get("Versions", []) + page.get("DeleteMarkers", [])
                ]
                if keys:
                    s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            s3.delete_bucket(Bucket=name)
        for url in sqs.list_queues().get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # SIGTERM to the group: the runtime shuts its services down and exits; then make sure.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):  # children left in the group after it exited
                os.killpg(proc.pid, signal.SIGKILL)
        if self._own_state_dir and self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
            self._own_state_dir = False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
