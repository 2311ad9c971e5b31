"""`visionq up` survives its children: a worker SIGKILLed mid-run, the API killed, an image that
kills every worker that touches it. The real command runs as a subprocess, in a state dir of its own;
the pids it writes (`.visionq/<child>.pid`) say which process to kill and show the new ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import psutil
import psycopg
import pytest
from dotenv import dotenv_values

from tests.conftest import SHAPES_WEIGHTS
from visionq.client import VisionqClient
from visionq.local_stack import wait_until

pytestmark = pytest.mark.e2e

VISIONQ = [sys.executable, "-m", "visionq"]

# Short timings, so a killed worker's messages come back (and a poison one is parked) in seconds.
FAST = {
    "VISIONQ_DEVICE": "cpu",
    "VISIONQ_POLL_WAIT_SECONDS": "1",
    "VISIONQ_VISIBILITY_TIMEOUT": "4",
    "VISIONQ_DLQ_SWEEP_SECONDS": "1",
    "VISIONQ_SHUTDOWN_GRACE_SECONDS": "5",
}


class Up:
    """`visionq up` running in ``cwd``; its console output goes to ``cwd/up.out``."""

    def __init__(self, cwd: Path, *args: str, **env: str) -> None:
        self.cwd = cwd
        self.state = cwd / ".visionq"
        self.out = cwd / "up.out"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "AWS_")) and k != "DATABASE_URL"}
        base.update(YOLO_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]), **FAST, **env)
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [*VISIONQ, "up", "--model", str(SHAPES_WEIGHTS.resolve()), *args],
                cwd=cwd,
                env=base,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        env_file = self.state / "local.env"
        try:
            wait_until(
                lambda: env_file.exists() or self.proc.poll() is not None,
                timeout=120,
                what="`visionq up` to write local.env",
            )
        except TimeoutError:
            self.proc.kill()
            raise
        assert self.proc.poll() is None, self.output()
        self.env = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        self.client = VisionqClient(self.env["API_URL"], self.env["VISIONQ_API_KEY"])

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def pid(self, child: str) -> int:
        return int((self.state / f"{child}.pid").read_text())

    def new_pid(self, child: str, old: int) -> int:
        """Wait until ``child`` runs again under a pid other than ``old``."""
        found: list[int] = []

        def restarted() -> bool:
            pid = self.pid(child)
            found.append(pid)
            return pid != old and psutil.pid_exists(pid)

        wait_until(restarted, timeout=30, what=f"{child} to be restarted")
        return found[-1]

    def wait_for_line(self, *parts: str, timeout: float = 30) -> str:
        def line() -> str | None:
            return next((ln for ln in self.output().splitlines() if all(p in ln for p in parts)), None)

        wait_until(line, timeout=timeout, interval=0.1, what=f"a line with {parts} from `visionq up`")
        found = line()
        assert found is not None
        return found

    def stop(self) -> None:
        """SIGTERM, as a service manager would: exit status 0, nothing left running or written."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, self.output()
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        assert not (self.state / "local.env").exists()
        assert not list(self.state.glob("*.pid")), list(self.state.glob("*.pid"))
        assert "Traceback" not in self.output(), self.output()


class Submitter:
    """Submits images back to back on a thread of its own until stopped; every call must succeed."""

    def __init__(self, env: dict[str, str], images: list[Path]) -> None:
        self.client = VisionqClient(env["API_URL"], env["VISIONQ_API_KEY"])
        self.images = images
        self.job_ids: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.job_ids.append(self.client.submit_file(self.images[len(self.job_ids) % len(self.images)]).job_id)
                assert self.client.get_job(self.job_ids[0])["job_id"] == self.job_ids[0]
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(60)
        self.client.close()
        if self.error is not None:
            raise AssertionError(f"the API failed a client after {len(self.job_ids)} jobs") from self.error
        return self.job_ids


@pytest.fixture
def images(tmp_path: Path, draw_scene: Callable[..., Any]) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(4):
        path = folder / f"scene-{i}.png"
        draw_scene(20_000 + i, (256, 192))[0].save(path)
        paths.append(path)
    return paths


@pytest.fixture
def up_runs(tmp_path: Path) -> Iterator[list[Up]]:
    """Whatever a test started is stopped at its end, even when it failed half-way."""
    runs: list[Up] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            for child in psutil.Process(run.proc.pid).children(recursive=True):
                child.kill()
            run.proc.kill()


def _log_states(log: Path, start: int = 0, end: int | None = None) -> dict[str, set[str]]:
    """Job id -> the states a worker's JSON log shows it entering (bytes ``start`` to ``end``)."""
    states: dict[str, set[str]] = {}
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read(-1 if end is None else end - start).decode(errors="replace").splitlines()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # not JSON (ONNX Runtime's chatter), or a line still being written
            continue
        message = str(record.get("message", "")) if isinstance(record, dict) else ""
        if message.startswith("job ") and record.get("job_id"):
            states.setdefault(record["job_id"], set()).add(message.removeprefix("job "))
    return states


def test_up_restarts_a_worker_killed_mid_run_and_loses_no_job(
    tmp_path: Path, images: list[Path], up_runs: list[Up]
) -> None:
    up = Up(tmp_path, "--workers", "2")
    up_runs.append(up)
    first, second = up.pid("worker-1"), up.pid("worker-2")
    assert first != second and psutil.pid_exists(first) and psutil.pid_exists(second)
    assert (up.state / "worker-1.ready").exists() and (up.state / "worker-2.ready").exists()

    # Uploads go on throughout, from a client of their own; the API must answer every one.
    submitter = Submitter(up.env, images).start()
    try:
        # SIGKILL a worker the moment its log shows a job RUNNING and not yet finished.
        pids = {"worker-1": first, "worker-2": second}
        logs = {name: up.state / f"{name}.log" for name in pids}
        caught: dict[str, list[str]] = {}

        def caught_mid_run() -> bool:
            for name, log in logs.items():
                running = [j for j, states in _log_states(log).items() if states == {"RUNNING"}]
                if running:
                    caught[name] = running
                    return True
            return False

        wait_until(caught_mid_run, timeout=30, interval=0.005, what="a worker to start a job")
        [(victim, in_flight)] = caught.items()
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = logs[victim].stat().st_size
        survivor = next(name for name in pids if name != victim)

        line = up.wait_for_line(f"{victim} (pid {pids[victim]}) was killed by SIGKILL; restarting it in 0.5 s")
        assert f"{victim}.log" in line
        replacement = up.new_pid(victim, pids[victim])
        up.wait_for_line(f"{victim} is up again (pid {replacement})")
        time.sleep(1)  # some uploads for the new worker too
    finally:
        job_ids = submitter.stop()
    assert len(job_ids) >= 10, job_ids
    assert up.pid(survivor) == pids[survivor] and psutil.pid_exists(pids[survivor])  # undisturbed

    jobs = up.client.wait(job_ids, timeout=120)
    assert {job["status"] for job in jobs.values()} == {"SUCCEEDED"}, {
        j: (job["status"], job.get("error")) for j, job in jobs.items() if job["status"] != "SUCCEEDED"
    }
    with psycopg.connect(up.env["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT job_id, count(*) FROM results GROUP BY job_id").fetchall()
    assert sorted(job_id for job_id, _ in rows) == sorted(job_ids)  # each job once: none lost, none extra
    assert all(count == 1 for _, count in rows), rows
    # What the victim held when it died was finished after it, by the survivor or its replacement.
    before_kill = _log_states(logs[victim], end=killed_at)
    interrupted = [j for j in in_flight if "SUCCEEDED" not in before_kill.get(j, set())]
    assert interrupted, f"the kill came too late: {victim} had already finished {in_flight}"
    after_kill = _log_states(logs[victim], start=killed_at)
    for job_id, states in _log_states(logs[survivor]).items():
        after_kill.setdefault(job_id, set()).update(states)
    assert all("SUCCEEDED" in after_kill.get(j, set()) for j in interrupted), interrupted

    up.stop()


def test_poison_image_ends_failed_in_the_dlq_and_the_stack_serves_on(
    tmp_path: Path, images: list[Path], up_runs: list[Up]
) -> None:
    up = Up(tmp_path, "--workers", "2", VISIONQ_CRASH_ON_KEY="/poison.png")
    up_runs.append(up)
    poison = tmp_path / "poison.png"
    poison.write_bytes(images[0].read_bytes())
    poison_id = up.client.submit_file(poison).job_id
    # Its first victim: a worker killed by the failpoint (SIGKILL), then restarted.
    up.wait_for_line("was killed by SIGKILL", "restarting it in", timeout=60)

    # maxReceiveCount deliveries (5: template.yaml), each killing a worker; then SQS parks it and a
    # worker's dead-letter sweep marks the job FAILED. The API answers the polls throughout.
    job = up.client.wait([poison_id], timeout=150)[poison_id]
    assert job["status"] == "FAILED" and job["error"]["code"] == "poison_message", job
    sqs = boto3.client(
        "sqs",
        endpoint_url=up.env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    attrs = sqs.get_queue_attributes(
        QueueUrl=up.env["VISIONQ_DLQ_URL"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 1
    kills = [ln for ln in up.output().splitlines() if "was killed by SIGKILL" in ln and "restarting it in" in ln]
    failpoint = "failpoint: killing the worker (poison key"
    victims = sum(log.read_text().count(failpoint) for log in up.state.glob("worker-*.log"))
    # Up to 5 deliveries (maxReceiveCount); fewer when a long poll cut off by a worker's death had
    # already received it (SQS counts a delivery the dead worker never saw).
    assert 3 <= victims <= len(kills) <= 5, (victims, kills)
    # Two workers, three deaths or more: one died again soon after its restart, and waited longer.
    assert any("restarting it in 1.0 s" in ln for ln in kills), kills

    # The stack still serves: new images succeed on the restarted workers. (Not submitted while the
    # poison cycles: a message received beside it dies with the worker each time, and is parked
    # with it; see the report of this change.)
    good = [up.client.submit_file(path).job_id for path in images[:3]]
    jobs = up.client.wait(good, timeout=60)
    assert {job["status"] for job in jobs.values()} == {"SUCCEEDED"}, jobs

    # The API is supervised too.
    api = up.pid("api")
    os.kill(api, signal.SIGKILL)
    up.wait_for_line(f"api (pid {api}) was killed by SIGKILL; restarting it in 0.5 s")
    up.new_pid("api", api)
    wait_until(
        lambda: httpx.get(f"{up.env['API_URL']}/healthz", timeout=1).status_code == 200,
        timeout=30,
        what="the restarted API",
    )
    assert up.client.get_job(good[0])["status"] == "SUCCEEDED"

    up.stop()


def test_sigterm_stops_everything_even_with_a_restart_pending(
    tmp_path: Path, images: list[Path], up_runs: list[Up]
) -> None:
    up = Up(tmp_path)  # one worker: named "worker", as before --workers
    up_runs.append(up)
    job_id = up.client.submit_file(images[0]).job_id
    assert up.client.wait([job_id], timeout=60)[job_id]["status"] == "SUCCEEDED"
    assert (up.state / "worker.log").exists() and (up.state / "worker.ready").exists()
    worker = up.pid("worker")
    os.kill(worker, signal.SIGKILL)
    up.wait_for_line(f"worker (pid {worker}) was killed by SIGKILL; restarting it in 0.5 s")
    up.stop()  # whether the restart has happened yet or not


def test_supervise_backs_off_up_to_its_cap_and_starts_over_after_a_stable_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor alone, on a child that fails at once until told to stay up (no stack)."""
    from visionq.local_stack import Child, LocalStack

    stay, ready = tmp_path / "stay", tmp_path / "flaky.ready"
    script = (
        "import os, sys, time\n"
        f"if not os.path.exists({str(stay)!r}): sys.exit(3)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    stack = LocalStack(state_dir=tmp_path, model="unused", restart_delay=0.1, max_restart_delay=0.4, stable_seconds=1.5)
    caplog.set_level("INFO", logger="visionq.local_stack")

    def lines(*parts: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if all(p in r.getMessage() for p in parts)]

    def supervise_until(predicate: Callable[[], object], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            stack.supervise()
            time.sleep(0.02)

    try:
        stack.add_child(Child("flaky", [sys.executable, "-c", script], ready_file=ready))
        supervise_until(lambda: len(lines("exited with status 3")) >= 5)
        delays = [line.split("restarting it in ")[1].split(" s")[0] for line in lines("exited with status 3")]
        assert delays[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"], delays
        assert all("before it was ready" in line and "flaky.log" in line for line in lines("exited with status 3"))

        stay.touch()
        supervise_until(lambda: lines("flaky is up again"))
        pid = int((tmp_path / "flaky.pid").read_text())
        assert lines(f"flaky is up again (pid {pid})")
        time.sleep(1.6)  # a stable run: the next death starts the backoff over
        os.kill(pid, signal.SIGKILL)
        supervise_until(lambda: lines("was killed by SIGKILL"))
        assert lines(f"flaky (pid {pid}) was killed by SIGKILL; restarting it in 0.1 s")
        pid_file = tmp_path / "flaky.pid"
        supervise_until(lambda: pid_file.exists() and int(pid_file.read_text()) != pid, timeout=5)
    finally:
        stack.stop()
    assert not (tmp_path / "flaky.pid").exists() and not ready.exists()


def test_an_api_port_taken_between_the_pick_and_the_bind_is_picked_again(
    tmp_path: Path, first_pick_taken: Callable[[str], int]
) -> None:
    """A port free when picked can be bound by anything else before the API binds it (CI once saw
    the API exit with status 3, "address already in use"): the stack picks another."""
    from visionq.local_stack import LocalStack

    taken = first_pick_taken("LocalStack._start_api")
    stack = LocalStack(state_dir=tmp_path, model="unused")
    try:
        stack.start(with_worker=False)
        url = stack.env["API_URL"]
        assert not url.endswith(f":{taken}"), url
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert "address already in use" in (tmp_path / "api.log").read_text().lower()
    finally:
        stack.stop()


def test_a_worker_metrics_port_taken_before_the_bind_is_picked_again(
    tmp_path: Path, first_pick_taken: Callable[[str], int]
) -> None:
    from visionq.local_stack import LocalStack

    taken = first_pick_taken("LocalStack.worker_child")
    stack = LocalStack(state_dir=tmp_path, model=str(SHAPES_WEIGHTS.resolve()))
    try:
        stack.start(with_api=False)
        [url] = stack.env["VISIONQ_METRICS_URLS"].split(",")
        assert f":{taken}/" not in url, url
        assert "visionq_messages_received" in httpx.get(url, timeout=5).text  # this worker's own metrics
        assert "address already in use" in (tmp_path / "worker.log").read_text().lower()
    finally:
        stack.stop()
