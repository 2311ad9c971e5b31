"""Failpoints for the fault-injection suite: the worker kills itself (SIGKILL) at a named boundary.

Off unless the environment turns them on, read once when the worker starts:

- ``VISIONQ_CRASH_AT``: comma-separated boundaries (``after_receive``, ``after_inference``,
  ``after_write``), each hit with probability ``VISIONQ_CRASH_PROBABILITY`` (seeded by
  ``VISIONQ_CRASH_SEED``);
- ``VISIONQ_CRASH_ON_KEY``: a substring; preparing an object whose key contains it kills the
  process every time, like an image that crashes a decoder;
- ``VISIONQ_CRASH_DECODER_ON``: a byte string; a decode process (``VISIONQ_DECODE_PROCESSES``)
  given an object holding it aborts, as a native crash in a codec would;
- ``VISIONQ_HANG_DECODER_ON``: a byte string; a decode process given an object holding it never
  answers, as a codec caught in a loop would.

SIGKILL, not an exception: nothing gets to clean up, exactly as with the OOM killer or a spot
interruption, so what survives is only what the stores committed.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

BOUNDARIES = ("after_receive", "after_inference", "after_write")


@dataclass
class Failpoints:
    points: frozenset[str] = frozenset()
    probability: float = 0.0
    crash_on_key: str | None = None
    crash_decoder_on: str | None = None
    hang_decoder_on: str | None = None
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_env(cls) -> Failpoints:
        points = frozenset(p for p in os.environ.get("VISIONQ_CRASH_AT", "").split(",") if p)
        unknown = points - set(BOUNDARIES)
        if unknown:
            raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {BOUNDARIES}")
        failpoints = cls(
            points=points,
            probability=float(os.environ.get("VISIONQ_CRASH_PROBABILITY", "0") or 0),
            crash_on_key=os.environ.get("VISIONQ_CRASH_ON_KEY") or None,
            crash_decoder_on=os.environ.get("VISIONQ_CRASH_DECODER_ON") or None,
            hang_decoder_on=os.environ.get("VISIONQ_HANG_DECODER_ON") or None,
            rng=random.Random(os.environ.get("VISIONQ_CRASH_SEED")),
        )
        if failpoints.armed:
            logger.warning("FAILPOINTS ARMED: %s", failpoints)
        return failpoints

    @property
    def armed(self) -> bool:
        return bool(self.points and self.probability) or bool(
            self.crash_on_key or self.crash_decoder_on or self.hang_decoder_on
        )

    def hit(self, point: str) -> None:
        if point in self.points and self.rng.random() < self.probability:
            self._die(point)

    def check_key(self, key: str) -> None:
        if self.crash_on_key and self.crash_on_key in key:
            self._die(f"poison key {key}")

    def _die(self, why: str) -> None:
        logger.warning("failpoint: killing the worker (%s)", why)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
