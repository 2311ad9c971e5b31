"""Setting up the worker's child processes (decode processes, a model's process)."""

from __future__ import annotations

import os
from typing import Any


def child_of(parent: int) -> None:
    """Set up a decode (or model) process: Ctrl-C at a terminal reaches the whole process group,
    but the worker decides when its children stop (it drains first), so SIGINT is ignored here; and
    the process exits once the worker that started it is gone (a SIGKILLed worker cannot shut its
    pool down, and its children would otherwise linger)."""
    import signal
    import threading
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # a process of another user took the pid: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def end_process(proc: Any, *, wait: float = 5) -> int | None:
    """Wait up to ``wait`` s for ``proc`` (a multiprocessing Process) to exit, then kill it; its
    exit code."""
    proc.join(wait)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    code: int | None = proc.exitcode
    return code
