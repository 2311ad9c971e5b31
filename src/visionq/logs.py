"""Structured logs for entry points. Library modules only call ``logging.getLogger(__name__)``."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# The first words of the log line in which a worker says why it cannot start; `visionq up` looks for it.
WORKER_CANNOT_START = "worker cannot start:"
WORKER_STOPPED = "worker stopped:"

# Attributes every LogRecord has; anything else was bound by the caller through ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter that says nothing about jobs.
    for noisy in ("botocore", "aiobotocore", "urllib3", "ultralytics", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
