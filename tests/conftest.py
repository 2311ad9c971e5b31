"""Fixtures shared by the tiers.

Integration and end-to-end tests use real servers: moto in server mode (HTTP) and an embedded
PostgreSQL server (TCP), each started once per test session on free ports; every test starts
from empty resources (moto reset + bootstrap, tables truncated).

``VISIONQ_TEST_AWS`` picks where S3 and SQS are: ``moto`` (the default: moto serves S3, SQS and
DynamoDB) or ``localstack`` (LocalStack's runtime from ``.localstack-venv``, see
``scripts/setup-localstack``, serves S3 and SQS; DynamoDB stays on moto through
``AWS_ENDPOINT_URL_DYNAMODB``, which every client of visionq honours).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from visionq import shapes
from visionq.shapes import WEIGHTS_PATH

SHAPES_WEIGHTS = WEIGHTS_PATH
BUCKET = "visionq-test-uploads"
QUEUE = "visionq-test-jobs"
TABLE = "visionq-test-jobs"

# No test may reach a hub; Ultralytics must not try either.
os.environ.setdefault("YOLO_OFFLINE", "1")

TEST_AWS = os.environ.get("VISIONQ_TEST_AWS", "") or "moto"
if TEST_AWS not in ("moto", "localstack"):
    raise pytest.UsageError(f"VISIONQ_TEST_AWS must be moto or localstack, not {TEST_AWS!r}")
ON_LOCALSTACK = TEST_AWS == "localstack"


@pytest.fixture(scope="session")
def draw_scene() -> Callable[..., Any]:
    """``draw_scene(seed, size)`` -> (PIL image, [(class_id, x1, y1, x2, y2), ...])."""
    return shapes.draw_scene


@pytest.fixture(scope="session")
def shapes_detector() -> Any:
    from visionq.models.yolo import load_detector

    return load_detector(str(SHAPES_WEIGHTS), device="cpu")


# --- real servers, once per session -------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from visionq.local_stack import LOCAL_AWS_CREDENTIALS, MotoServer

    os.environ.update(LOCAL_AWS_CREDENTIALS)
    server = MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def aws_server(moto_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Where S3 and SQS are (``VISIONQ_TEST_AWS``): moto itself, or LocalStack with DynamoDB left on
    moto. Its ``endpoint`` is the ``AWS_ENDPOINT_URL`` of the tests' settings; ``reset()`` empties it."""
    if not ON_LOCALSTACK:
        yield moto_server
        return
    from visionq.localstack_server import LocalStackServer

    state = tmp_path_factory.mktemp("localstack")
    server = LocalStackServer(state_dir=state, log_path=state / "localstack.log").start()
    saved = os.environ.get("AWS_ENDPOINT_URL_DYNAMODB")
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = moto_server.endpoint
    yield server
    if saved is None:
        os.environ.pop("AWS_ENDPOINT_URL_DYNAMODB", None)
    else:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = saved
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An embedded PostgreSQL server of our own (tests may stop and start it again)."""
    from visionq.local_stack import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str:
    """``DATABASE_URL`` if set (any server), else the embedded server's."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    url: str = request.getfixturevalue("postgres_server").url
    return url


@dataclass
class Stack:
    endpoint: str
    database_url: str
    queue_url: str
    dlq_url: str
    notify_queue_url: str
    s3: Any
    sqs: Any
    dynamodb: Any

    def api_settings(self) -> Any:
        from visionq.config import ApiSettings

        return ApiSettings(bucket=BUCKET, jobs_table=TABLE, aws_endpoint_url=self.endpoint, aws_region="us-east-1")

    def worker_settings(self, **overrides: Any) -> Any:
        from visionq.config import WorkerSettings

        values: dict[str, Any] = {
            "queue_url": self.queue_url,
            "jobs_table": TABLE,
            "database_url": self.database_url,
            "aws_endpoint_url": self.endpoint,
            "aws_region": "us-east-1",
            "poll_wait_seconds": 1,
            "visibility_timeout": 30,
        }
        values.update(overrides)
        return WorkerSettings(**values)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture
def stack(moto_server: Any, aws_server: Any, database_url: str) -> Stack:
    """Empty resources for one test: moto (and LocalStack) reset and bootstrapped again, result
    tables truncated."""
    from infra.bootstrap import StackNames, bootstrap_aws, bootstrap_database
    from visionq.aws import boto3_client
    from visionq.config import AwsSettings

    moto_server.reset()
    if aws_server is not moto_server:
        aws_server.reset()
    aws = AwsSettings(aws_endpoint_url=aws_server.endpoint, aws_region="us-east-1")
    s3, sqs, dynamodb = (boto3_client(name, aws) for name in ("s3", "sqs", "dynamodb"))
    resources = bootstrap_aws(
        StackNames(bucket=BUCKET, queue=QUEUE, jobs_table=TABLE, max_receive_count=3, visibility_timeout=30),
        s3=s3,
        sqs=sqs,
        dynamodb=dynamodb,
    )
    bootstrap_database(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("TRUNCATE results CASCADE")  # and every table of outputs beside it
    # Configuring the notification makes S3 send a test event; the worker must cope, but tests
    # that count messages start from an empty queue.
    sqs.purge_queue(QueueUrl=resources.queue_url)
    return Stack(
        endpoint=aws_server.endpoint,
        database_url=database_url,
        queue_url=resources.queue_url,
        dlq_url=resources.dead_letter_queue_url,
        notify_queue_url=resources.notify_queue_url,
        s3=s3,
        sqs=sqs,
        dynamodb=dynamodb,
    )


@contextlib.contextmanager
def serving_api(settings: Any) -> Iterator[str]:
    """The HTTP API with ``settings``, served by uvicorn over real HTTP on a thread; its URL."""
    import uvicorn

    from functions.http_api import create_app
    from visionq.local_stack import free_port, wait_until

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def api_url(aws_server: Any) -> Iterator[str]:
    """The HTTP API for the whole session (names are fixed)."""
    from visionq.config import ApiSettings

    settings = ApiSettings(
        bucket=BUCKET, jobs_table=TABLE, aws_endpoint_url=aws_server.endpoint, aws_region="us-east-1"
    )
    with serving_api(settings) as url:
        yield url


@pytest.fixture
def api_key(stack: Stack) -> str:
    """A fresh API key (each test starts from an empty table)."""
    from visionq.api_keys import ApiKeyStore

    key, _ = ApiKeyStore(stack.dynamodb, TABLE).create("tests")
    return key


class RunningWorker:
    """``serve_worker`` on a thread of its own, as the process would run it, stoppable."""

    def __init__(self, settings: Any, detector: Any) -> None:
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.stats: Any = None
        self._settings = settings
        self._detector = detector
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from visionq.worker import serve_worker

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            self._ready.set()
            self.stats = await serve_worker(self._settings, model=self._detector, stop=self.stop_event)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._ready.set()

    def start(self) -> RunningWorker:
        self.thread.start()
        self._ready.wait(30)
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 60) -> None:
        if self.loop is not None and self.stop_event is not None and self.alive:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        if self.thread.is_alive():
            import faulthandler
            import sys

            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            if self.loop is not None:
                for task in asyncio.all_tasks(self.loop):
                    task.print_stack(file=sys.stderr)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker(stack: Stack, shapes_detector: Any) -> Iterator[Callable[..., RunningWorker]]:
    workers: list[RunningWorker] = []

    def start(**overrides: Any) -> RunningWorker:
        worker = RunningWorker(stack.worker_settings(**overrides), shapes_detector).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key): a TLS stand-in's, trusted only where
    a test names it."""
    from tests.tls import self_signed_certificate

    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def first_pick_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], int]]:
    """``take(by)``: the first free port that the local stack's ``by`` picks (a qualified name:
    "MotoServer.start", "EmbeddedPostgres.start", "LocalStack._start_api", "LocalStack.worker_child")
    is one that something else has bound since; returns that port. Other pickers are left alone."""
    import socket
    import sys

    from visionq import local_stack

    real_free_port = local_stack.free_port
    taken: dict[str, socket.socket] = {}
    given: set[str] = set()  # the pickers already handed their taken port

    def picked() -> int:
        callers, frame = [], sys._getframe(1)
        while frame is not None and len(callers) < 3:  # start_on_a_port picks for the servers
            callers.append(frame.f_code.co_qualname)
            frame = frame.f_back  # type: ignore[assignment]
        by = next((name for name in callers if name in taken and name not in given), None)
        if by is not None:
            given.add(by)
            port: int = taken[by].getsockname()[1]
            return port
        return real_free_port()

    def take(by: str) -> int:
        sock = taken[by] = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        return port

    monkeypatch.setattr(local_stack, "free_port", picked)
    yield take
    for sock in taken.values():
        sock.close()
