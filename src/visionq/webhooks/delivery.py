"""One delivery attempt: to the address the policy checked, TLS verified against the host name, no
redirects followed, bounded in time; network problems come back as a failed attempt, never raised.
And the schedule of retries."""

from __future__ import annotations

import contextlib
import errno
import http.client
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from visionq.jobs import utc_now_iso
from visionq.webhooks.policy import Resolver, ValidatedUrl, WebhookPolicy, WebhookRejected
from visionq.webhooks.signing import USER_AGENT

MAX_RESPONSE_READ = 4096  # bytes of a response body read (and discarded) before closing


@dataclass(frozen=True)
class DeliveryAttempt:
    """The outcome of one POST. ``ok`` is a 2xx answer; otherwise ``error`` says why, briefly."""

    at: str  # ISO 8601 UTC, when the attempt started
    status_code: int | None
    error: str | None
    duration_ms: int
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "ok": self.ok,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryAttempt:
        status = data.get("status_code")
        error = data.get("error")
        return cls(
            at=str(data["at"]),
            status_code=None if status is None else int(status),
            error=None if error is None else str(error),
            duration_ms=int(data.get("duration_ms") or 0),
            ok=bool(data.get("ok")),
        )


class _DeliveryTimeout(Exception):
    pass


class _Watchdog:
    """Shuts the connection's socket down at the deadline, so no slow trickle of bytes can keep
    a delivery past its timeout (a socket timeout alone bounds each read, not their sum)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _DeliveryTimeout
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                self._shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            if self._sock is not None:
                self._shutdown(self._sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        # The plain socket's shutdown, also for an SSLSocket: it only ends the blocked read.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def finish(self) -> None:
        """Called before the socket is closed, so the timer never touches a reused descriptor."""
        with self._lock:
            self._done = True
        self._timer.cancel()


def _open_vetted(target: ValidatedUrl, watchdog: _Watchdog) -> socket.socket:
    """A TCP connection to one of the vetted addresses, tried in order, within the deadline."""
    last: OSError | None = None
    for address in target.addresses:
        try:
            sock = socket.create_connection((address, target.port), timeout=watchdog.remaining())
        except OSError as exc:
            last = exc
            continue
        watchdog.watch(sock)
        return sock
    if last is None:  # pragma: no cover - a ValidatedUrl always has an address
        raise OSError(errno.EHOSTUNREACH, "no address")
    raise last


class _VettedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: ValidatedUrl, watchdog: _Watchdog) -> None:
        super().__init__(target.host, target.port, timeout=watchdog.remaining())
        self._target = target
        self._watchdog = watchdog

    def connect(self) -> None:
        self.sock = _open_vetted(self._target, self._watchdog)


class _VettedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: ValidatedUrl, watchdog: _Watchdog, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=watchdog.remaining(), context=context)
        self._target = target
        self._watchdog = watchdog
        self._ssl_context = context

    def connect(self) -> None:
        sock = _open_vetted(self._target, self._watchdog)
        try:
            sock.settimeout(self._watchdog.remaining())
            wrapped = self._ssl_context.wrap_socket(sock, server_hostname=self._target.host)
        except BaseException:
            sock.close()
            raise
        self._watchdog.watch(wrapped)
        self.sock = wrapped


def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    policy: WebhookPolicy,
    timeout: float = 5.0,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DeliveryAttempt:
    """POST ``body`` to ``url`` once. Never raises for network or policy problems.

    The policy is checked again now (DNS answers change) and the connection goes to an address
    that check vetted; for https the certificate is verified against the URL's host name
    (``ssl_context``: default ``ssl.create_default_context()``). ``timeout`` bounds the whole
    attempt: lookup, connect, TLS handshake, request and response headers. Redirects are not
    followed; at most :data:`MAX_RESPONSE_READ` bytes of the response body are read, then dropped.
    ``headers`` should come from :func:`build_headers`, built for this attempt."""
    at = utc_now_iso()
    started = time.monotonic()

    def attempt(status: int | None, error: str | None) -> DeliveryAttempt:
        elapsed = round((time.monotonic() - started) * 1000)
        return DeliveryAttempt(at=at, status_code=status, error=error, duration_ms=elapsed, ok=error is None)

    deadline = started + max(float(timeout), 0.0)
    try:
        target = policy.check_url(url, resolver=resolver, timeout=max(deadline - time.monotonic(), 0.0))
    except WebhookRejected as exc:
        return attempt(None, f"{exc.code}: {exc.message}")

    request_headers = {k.lower(): v for k, v in headers.items()}
    request_headers.setdefault("user-agent", USER_AGENT)
    request_headers.setdefault("content-type", "application/json")
    request_headers["connection"] = "close"
    watchdog = _Watchdog(deadline)
    connection: http.client.HTTPConnection | None = None
    try:
        if target.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            connection = _VettedHTTPSConnection(target, watchdog, context)
        else:
            connection = _VettedHTTPConnection(target, watchdog)
        connection.connect()
        if connection.sock is not None:
            connection.sock.settimeout(watchdog.remaining())
        connection.request("POST", target.target, body=body, headers=request_headers)
        if connection.sock is not None:
            connection.sock.settimeout(watchdog.remaining())
        response = connection.getresponse()
        if watchdog.fired:  # the headers may have been cut short by the deadline's shutdown
            return attempt(None, "timed out")
        status = response.status
        with contextlib.suppress(OSError, http.client.HTTPException):
            response.read(MAX_RESPONSE_READ)  # the status is what counts; the body is not kept
    except _DeliveryTimeout:
        return attempt(None, "timed out")
    except (OSError, http.client.HTTPException) as exc:
        return attempt(None, "timed out" if watchdog.fired else _describe(exc))
    finally:
        watchdog.finish()
        if connection is not None:
            connection.close()
    return attempt(status, _status_error(status))


def _status_error(status: int) -> str | None:
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return "redirect not followed"
    return f"HTTP {status}"


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ETIMEDOUT: "timed out",
}


def _describe(exc: BaseException) -> str:
    """A short, stable description of a delivery failure (no stack trace, no library internals)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"tls: {exc.verify_message or 'certificate verify failed'}"[:200]
    if isinstance(exc, ssl.SSLError):
        return f"tls: {(exc.reason or str(exc)).lower().replace('_', ' ')}"[:200]
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, http.client.HTTPException):
        return "invalid HTTP response"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()[:200]
    return type(exc).__name__


MAX_ATTEMPTS = 6  # every attempt counted: the first one and five retries
DEFAULT_BASE_DELAY_SECONDS = 30.0
DEFAULT_MAX_DELAY_SECONDS = 900.0  # SQS's largest message delay, should retries ride on one


def next_delay(attempt: int, *, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry): exponential backoff
    with *full jitter*, uniform in ``[0, min(cap, base * 2 ** (attempt - 1)))``. Full jitter
    spreads the retries of many deliveries that failed together (a receiver's outage) instead of
    making them arrive in waves."""
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return max(0.0, ceiling * rng())
