"""One model loaded several times, each copy taking one batch at a time, all of them at once.

Why: on a CPU, ONNX Runtime splitting each operator of one forward pass over the cores wastes a
share of them (the threads wait for each other at every operator); one session per core, each on one
thread, with a batch each, keeps every core on useful work. yolo11n at 640 on this project's 2-core
machine, batches of one: two one-thread sessions ran 1.36-1.64 x the images per second of one
two-thread session (12-26 % less CPU per image), 1.22-1.39 x with another process taking half a core,
1.16-1.18 x with batches of four (bench/onnx_sessions.py, bench/RESULTS.md run 20). The core runs
``batches_in_flight`` predict calls at once (each in a thread: ONNX Runtime releases the GIL while
it runs); each takes a copy that is free and gives it back when its batch is done, so no copy ever
runs two batches at once (an Ultralytics model is not safe to call from two threads at once).

A lone batch would run at one core's pace, so a batch that arrives while no other runs goes to a
solo copy on every core instead (yolo11n, one image: 43.6-47.0 against 59.0-65.0 ms for the call,
the same images per second when batches overlap; bench/onnx_sessions.py, bench/RESULTS.md run 20).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from visionq.outputs import ModelOutput

if TYPE_CHECKING:
    import numpy as np

    from visionq.models import Model


class Replicas:
    """``copies`` of one model (same weights, same settings) behind the ``Model`` interface.

    ``solo``: one more copy (on every core) for a batch that arrives while no other runs, so a lone
    image does not wait on one core's pace; batches that overlap run on ``copies``."""

    def __init__(self, copies: Sequence[Model], *, solo: Model | None = None) -> None:
        if not copies:
            raise ValueError("Replicas needs at least one copy")
        self._first = copies[0]
        self.copies = tuple(copies)
        self.solo = solo
        self._free: queue.SimpleQueue[Model] = queue.SimpleQueue()
        for copy in copies:
            self._free.put(copy)
        self._running = 0  # predict calls under way
        self._counting = threading.Lock()

    runs_batches_side_by_side = True  # each batch in flight runs on a copy of its own

    @property
    def batches_in_flight(self) -> int:
        return len(self.copies)

    @property
    def version(self) -> str:
        return self._first.version

    @property
    def untrained(self) -> bool:
        return self._first.untrained

    @property
    def device(self) -> str:
        return self._first.device

    @property
    def input_size(self) -> int | None:
        return self._first.input_size

    def __getattr__(self, name: str) -> Any:
        # What else callers read of the model (its task, its settings): the same on every copy.
        if name.startswith("_") or name in ("copies", "solo"):
            raise AttributeError(name)
        return getattr(self._first, name)

    def predict(self, images: Sequence[np.ndarray]) -> Sequence[ModelOutput]:
        with self._counting:
            alone = self._running == 0  # then no other call holds the solo copy either
            self._running += 1
        try:
            if alone and self.solo is not None:
                return self.solo.predict(images)
            copy = self._free.get()  # blocks only when more batches are in flight than there are copies
            try:
                return copy.predict(images)
            finally:
                self._free.put(copy)
        finally:
            with self._counting:
                self._running -= 1
