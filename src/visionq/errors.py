"""The project's own error types.

Adapters translate library errors (botocore, psycopg, PIL) into these, raised ``from`` the
original, so nothing above the adapters matches on library exceptions or message text.
"""

from __future__ import annotations


class VisionqError(Exception):
    """Base class. ``code`` is machine-readable; the message is a sentence for a human."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigError(VisionqError):
    """A setting is missing or malformed; raised at start-up, never mid-job."""

    code = "config_error"


class TransientError(VisionqError):
    """A store is unavailable or throttling: retry later, do not acknowledge the message."""

    code = "store_unavailable"


class PermanentError(VisionqError):
    """Retrying cannot help (bad image, object gone): record FAILED and acknowledge."""

    code = "permanent_error"


class ImageRejected(PermanentError):
    """The object is not an image we accept (undecodable, unsupported format, over a limit)."""

    code = "invalid_image"


class ObjectMissing(PermanentError):
    code = "object_not_found"


class ObjectChanged(PermanentError):
    """The key holds other bytes than the event announced: it was overwritten since."""

    code = "object_changed"


class InvalidRequest(VisionqError):
    """A client sent something we cannot accept (HTTP 4xx)."""

    code = "invalid_request"


class JobNotFound(VisionqError):
    code = "job_not_found"


class TransitionRejected(VisionqError):
    """A conditional status write lost: the job already moved past the requested state."""

    code = "transition_rejected"


class ModelUnavailable(ConfigError):
    """Model weights cannot be had here (no network, no file)."""

    code = "model_unavailable"


class WorkerStuck(VisionqError):
    """A model in the worker's process never came back from a batch: the worker stopped, for its
    supervisor to start a new one."""

    code = "worker_stuck"
