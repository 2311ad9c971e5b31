"""Cores of its own for the model (``VISIONQ_MODEL_CPUS``, with ``VISIONQ_MODEL_PROCESS=1``).

On a machine where the model runs on the CPU beside everything else (the worker's receiving and
decoding, and locally the emulator and PostgreSQL), the kernel spreads all of them over all cores:
the model's process is preempted by short bursts of the others, and they queue behind it while
another core idles. Measured on 2 cores with the model in its own process (bench/RESULTS.md,
run 12): the model's process spent 4–13 % of its time waiting for a core, and the pipeline ran at
0.79–0.89 × the raw model (0.91–1.03 with cores of its own). Giving the model's process cores
that nothing else of ours uses, and everything else the remaining ones, removes both.

The worker pins itself (every thread, and so the decode processes it starts afterwards) to the
cores the model does not have, and the model's process pins itself to the model's. The local
stack starts the emulator and PostgreSQL on the same remaining cores, so on one machine nothing of
visionq's runs on the model's. Linux only (``os.sched_setaffinity``).
"""

from __future__ import annotations

import os

from visionq.errors import ConfigError

SETTING = "VISIONQ_MODEL_CPUS"


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"1"``, ``"2,3"``, ``"2-5"`` or a mix, as ``taskset -c`` takes them."""
    cpus: set[int] = set()
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            first, dash, last = part.partition("-")
            low, high = int(first), int(last if dash else first)
            if low < 0 or high < low:
                raise ValueError
            cpus.update(range(low, high + 1))
    except ValueError:
        raise ConfigError(f"{SETTING}={text!r} is not a list of CPU numbers (such as 1, 2,3 or 2-5)") from None
    if not cpus:
        raise ConfigError(f"{SETTING} is empty: name the CPUs the model's process runs on (such as 1)")
    return frozenset(cpus)


def split_cpus(text: str | None) -> tuple[frozenset[int], frozenset[int]] | None:
    """(the model's CPUs, everyone else's) for the setting's value; None when it is not set.
    ConfigError unless both sets are non-empty and the model's are CPUs this process may use."""
    if not text:
        return None
    model = parse_cpu_list(text)
    usable = frozenset(os.sched_getaffinity(0))
    if not model <= usable:
        missing = ", ".join(str(cpu) for cpu in sorted(model - usable))
        raise ConfigError(f"{SETTING}: CPU {missing} is not one this process may run on ({_listed(usable)})")
    rest = usable - model
    if not rest:
        raise ConfigError(f"{SETTING}={text!r} leaves no CPU for the rest of the worker (usable: {_listed(usable)})")
    return model, rest


def cpus_away_from_model() -> frozenset[int] | None:
    """The CPUs for everything but the model, from the environment (the local stack's services);
    None when the model has no cores of its own."""
    split = split_cpus(os.environ.get(SETTING))
    return split[1] if split else None


def pin_this_process(cpus: frozenset[int]) -> None:
    """Every thread of this process (and whatever it starts later) on ``cpus``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


def _listed(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))
