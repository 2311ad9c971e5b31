"""Cores of its own for the model (VISIONQ_MODEL_CPUS): the setting read as ``taskset -c`` reads a
list, and refused in one sentence when it cannot be honoured."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from visionq.config import WorkerSettings
from visionq.cpus import parse_cpu_list, split_cpus
from visionq.errors import ConfigError

USABLE = frozenset(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(USABLE) < 2, reason="needs two usable CPUs")


@pytest.mark.parametrize(
    ("text", "cpus"), [("1", {1}), ("0,2", {0, 2}), ("2-4", {2, 3, 4}), (" 1, 3-4 ", {1, 3, 4}), ("5,5", {5})]
)
def test_a_cpu_list_reads_as_taskset_reads_it(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", ",", "-1", "1-"])
def test_what_is_not_a_cpu_list_is_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match="VISIONQ_MODEL_CPUS"):
        parse_cpu_list(text)


@needs_two
def test_the_model_gets_its_cpus_and_everything_else_the_rest() -> None:
    last = max(USABLE)
    assert split_cpus(str(last)) == (frozenset({last}), USABLE - {last})
    assert split_cpus(None) is None and split_cpus("") is None


def test_a_split_that_cannot_be_honoured_says_why() -> None:
    every = ",".join(str(cpu) for cpu in sorted(USABLE))
    with pytest.raises(ConfigError, match="leaves no CPU for the rest of the worker"):
        split_cpus(every)
    with pytest.raises(ConfigError, match="CPU 4095 is not one this process may run on"):
        split_cpus("4095")


def test_the_model_has_cores_of_its_own_only_in_a_process_of_its_own() -> None:
    base = {"VISIONQ_QUEUE_URL": "http://q", "VISIONQ_JOBS_TABLE": "jobs", "DATABASE_URL": "postgresql://h/d"}
    settings = WorkerSettings.model_validate({**base, "VISIONQ_MODEL_CPUS": str(max(USABLE))})
    with pytest.raises(ConfigError, match="needs VISIONQ_MODEL_PROCESS=1"):
        _ = settings.model_cpu_split


def test_a_worker_given_cpus_it_cannot_use_stops_with_one_sentence() -> None:
    env = {
        **os.environ,
        "VISIONQ_QUEUE_URL": "http://127.0.0.1:9/queue",
        "VISIONQ_JOBS_TABLE": "jobs",
        "DATABASE_URL": "postgresql://127.0.0.1:9/none",
        "VISIONQ_MODEL_PROCESS": "1",
        "VISIONQ_MODEL_CPUS": "4095",
    }
    done = subprocess.run(
        [sys.executable, "-m", "visionq", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "CPU 4095 is not one this process may run on" in done.stderr
    assert "Traceback" not in done.stderr
