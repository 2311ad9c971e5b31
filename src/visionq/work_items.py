"""One object of one message on its way through the core, and the outcomes a driver acts on.

An item moves PREPARING -> BATCHED -> INFERRING -> SETTLING -> FINISHED, or is EXPIRED by its
deadline first. SETTLING is the point of no return: from there the item's fate (a result written,
or a failure recorded) is decided by the stage that holds it, and a deadline can no longer take it
away. Both moves happen on the event loop's one thread, so "expire" and "start settling" cannot
both win: a job failed by its deadline never gets a result written by this worker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from visionq.events import ObjectCreated
from visionq.images import DecodedImage, EncodedJpeg


class Outcome(Enum):
    """What a driver does with a message once the core has processed it."""

    DONE = "done"  # every job it names is terminal: acknowledge (delete) it
    RETRY = "retry"  # a store was unavailable or time ran out: let it come back


class Expiry(Enum):
    """What a deadline means to the driver that set it."""

    FAIL_JOB = "fail_job"  # the job took too long (poller): FAILED deadline_exceeded
    RETRY = "retry"  # the invocation ends (Lambda): give the message back, the job runs again


class Stage(Enum):
    PREPARING = "preparing"  # claiming the job, reading and decoding the object
    BATCHED = "batched"  # waiting in the micro-batcher
    INFERRING = "inferring"
    SETTLING = "settling"  # writing its result or recording its failure: no way back
    FINISHED = "finished"
    EXPIRED = "expired"


@dataclass(eq=False)
class WorkItem:
    obj: ObjectCreated
    job_id: str
    attempt: int  # deliveries of its message so far (SQS's ApproximateReceiveCount)
    model_name: str = ""  # the registry's name of the model the job gets, known once claimed
    stage: Stage = Stage.PREPARING
    image: DecodedImage | EncodedJpeg | None = None  # EncodedJpeg: for the model's device to decode
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    done: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def enter(self, stage: Stage) -> bool:
        """Move on to ``stage``; False (and nothing changes) once the item has expired."""
        if self.stage is Stage.EXPIRED:
            return False
        self.stage = stage
        return True

    def expire(self) -> bool:
        """Take the item out of the pipeline; False when it is already settling (the result wins)."""
        if self.stage in (Stage.SETTLING, Stage.FINISHED):
            return False
        self.stage = Stage.EXPIRED
        self.image = None
        return True

    def finish(self, outcome: Outcome) -> None:
        self.stage = Stage.FINISHED
        self.image = None
        if not self.done.done():
            self.done.set_result(outcome)

    def log_extra(self, **more: Any) -> dict[str, Any]:
        return {"job_id": self.job_id, "key": self.obj.key, "model": self.model_name, **more}
