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
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from visionq.outputs import ModelOutput

if TYPE_CHECKING:
    import numpy as np

    from visionq.models import Model


class Replicas:
    """``copies`` of one model (same weights, same settings) behind the ``Model`` interface."""

    def __init__(self, copies: Sequence[Model]) -> None:
        if not copies:
            raise ValueError("Replicas needs at least one copy")
        self._first = copies[0]
        self.copies = tuple(copies)
        self._free: queue.SimpleQueue[Model] = queue.SimpleQueue()
        for copy in copies:
            self._free.put(copy)

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
        if name.startswith("_") or name == "copies":
            raise AttributeError(name)
        return getattr(self._first, name)

    def predict(self, images: Sequence[np.ndarray]) -> Sequence[ModelOutput]:
        copy = self._free.get()  # blocks only when more batches are in flight than there are copies
        try:
            return copy.predict(images)
        finally:
            self._free.put(copy)
