"""Webhook delivery: completion notifications as signed JSON POSTs.

A pure library: no store, no settings, no scheduling. The service decides *when* to call
:func:`deliver` (first attempt, then retries spaced by :func:`next_delay`, at most
:data:`MAX_ATTEMPTS`) and where to record the :class:`DeliveryAttempt`\\ s; this module decides
*what* is sent and *whether* a URL may be called at all.

- **Signing** (:func:`sign`, :func:`signature_header`, :func:`build_headers`, :func:`verify`):
  HMAC-SHA256 over ``f"{timestamp}.".encode() + body``, sent as
  ``visionq-signature: t=<unix seconds>,v1=<hex>``. Sign every attempt afresh: a retry that
  re-used the first attempt's header would be refused as stale by a receiver that checks the time.
- **URL policy** (:class:`WebhookPolicy`): https only (plain http only to loopback, and only on a
  local stack), no credentials in the URL, and no host that resolves to a private, loopback,
  link-local, CGNAT, multicast, reserved or unspecified address unless the operator allowlisted it.
- **Delivery** (:func:`deliver`): the policy is checked again at delivery time and the connection
  goes to the very address that was checked (no second DNS lookup, so no DNS-rebinding window);
  the TLS certificate is verified against the URL's host name. Redirects are not followed. Network
  problems never raise: they come back as a failed attempt with a short error.
- **Events** (:func:`job_event`, :func:`batch_event`): compact JSON with an event id that is a pure
  function of what happened, so every attempt (and every duplicate) of one event carries the same
  id and receivers can de-duplicate (delivery is at-least-once).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import http.client
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from visionq.errors import ConfigError, InvalidRequest
from visionq.jobs import utc_now_iso

__all__ = [
    "BATCH_COMPLETED",
    "DEFAULT_BASE_DELAY_SECONDS",
    "DEFAULT_MAX_DELAY_SECONDS",
    "EVENT_ID_HEADER",
    "FORBIDDEN_ADDRESS",
    "INSECURE_SCHEME",
    "INVALID_URL",
    "JOB_FAILED",
    "JOB_SUCCEEDED",
    "MAX_ATTEMPTS",
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "UNRESOLVABLE",
    "USER_AGENT",
    "DeliveryAttempt",
    "Resolver",
    "ValidatedUrl",
    "WebhookPolicy",
    "WebhookRejected",
    "batch_event",
    "batch_event_id",
    "build_headers",
    "deliver",
    "job_event",
    "job_event_id",
    "next_delay",
    "sign",
    "signature_header",
    "system_resolver",
    "verify",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``resolver(host, port) -> [ip, ...]``; :func:`system_resolver` (``socket.getaddrinfo``) by default."""

# --------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------

SIGNATURE_HEADER = "visionq-signature"
EVENT_ID_HEADER = "visionq-event-id"
USER_AGENT = "visionq-webhooks/1"
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` under ``secret``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The ``visionq-signature`` header's value: ``t=<unix seconds>,v1=<hex>``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={sign(secret, ts, body)}"


def build_headers(secret: bytes, body: bytes, event_id: str, *, timestamp: int | None = None) -> dict[str, str]:
    """Every header of one attempt. Build them per attempt: the signature carries the time."""
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        EVENT_ID_HEADER: event_id,
        SIGNATURE_HEADER: signature_header(secret, body, timestamp=timestamp),
    }


def verify(
    secret: bytes,
    header_value: str,
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether ``header_value`` (a ``visionq-signature`` header) signs ``body`` under ``secret``
    and was made within ``tolerance_seconds`` of ``now`` (either side). Several ``v1=`` entries
    are accepted (any one matching suffices), so a sender may sign with an old and a new secret
    while a secret is being rotated. Comparison is constant-time."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header_value.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not (value.isascii() and value.isdigit()) or timestamp is not None:
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).encode()
    matched = False
    for candidate in candidates:  # no early exit: the time taken does not depend on which matched
        matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    return matched


# --------------------------------------------------------------------------------------------
# URL policy (SSRF guard)
# --------------------------------------------------------------------------------------------

INVALID_URL = "invalid_webhook_url"
INSECURE_SCHEME = "webhook_insecure_scheme"
FORBIDDEN_ADDRESS = "webhook_forbidden_address"
UNRESOLVABLE = "webhook_unresolvable"
MAX_URL_LENGTH = 2048
DEFAULT_RESOLVE_TIMEOUT = 5.0


class WebhookRejected(InvalidRequest):
    """A webhook URL the policy refuses. An :class:`InvalidRequest`, so the HTTP API answers 400
    with ``code`` (one of :data:`INVALID_URL`, :data:`INSECURE_SCHEME`, :data:`FORBIDDEN_ADDRESS`,
    :data:`UNRESOLVABLE`) and the message, a sentence for a human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def _networks(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# What a webhook may never reach unless allowlisted, by the sentence the refusal uses. Checked in
# addition to ``ipaddress``'s own flags (whose tables differ between Python releases).
_FORBIDDEN: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
    ("an unspecified address", _networks("0.0.0.0/8", "::/128")),
    ("a loopback address", _networks("127.0.0.0/8", "::1/128")),
    ("a link-local address", _networks("169.254.0.0/16", "fe80::/10")),
    ("a private address", _networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")),
    ("a shared (carrier-grade NAT) address", _networks("100.64.0.0/10")),
    ("a multicast address", _networks("224.0.0.0/4", "ff00::/8")),
    (
        "a reserved address",
        _networks(
            "192.0.0.0/24",  # IETF protocol assignments
            "192.0.2.0/24",  # documentation
            "192.88.99.0/24",  # 6to4 relay anycast
            "198.18.0.0/15",  # benchmarking
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",  # reserved, and the broadcast address
            "::/96",  # IPv4-compatible (deprecated)
            "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
            "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation
            "100::/64",  # discard-only
            "2001::/23",  # IETF protocol assignments (Teredo among them)
            "2001:db8::/32",  # documentation
        ),
    ),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NEVER = ("an unspecified address", "a multicast address")  # not a receiver, whatever the allowlist says


def _parse_address(text: str) -> IPAddress:
    """An address, IPv4-mapped IPv6 (``::ffff:a.b.c.d``) reduced to its IPv4 address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forbidden_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (a noun phrase), or None when it is."""
    for reason, networks in _FORBIDDEN:
        if any(address.version == n.version and address in n for n in networks):
            return reason
    if isinstance(address, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address a gateway would reach: judge that one too.
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and _forbidden_reason(embedded) is not None:
            return "a reserved address"
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class ValidatedUrl:
    """A URL the policy accepted, with the addresses it was checked against: connect only to these."""

    url: str
    scheme: str  # "https", or "http" to loopback on a local stack
    host: str  # lower-case, IDNA-encoded, no trailing dot: the Host header and the TLS server name
    port: int
    target: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # the vetted IPs, in the resolver's order


_HOST_CHARS = re.compile(r"^[a-z0-9_.-]+$")
_PATH_SAFE = "/%:@!$&'()*+,;=-._~?"


def _reject_url(message: str) -> WebhookRejected:
    return WebhookRejected(INVALID_URL, message)


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses for TCP, through ``socket.getaddrinfo``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _resolve(resolver: Resolver, host: str, port: int, timeout: float) -> list[str]:
    """``resolver(host, port)`` in a helper thread, so a hung lookup cannot outlast ``timeout``."""
    outcome: list[Sequence[str]] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(resolver(host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            failure.append(exc)

    worker = threading.Thread(target=run, name="webhook-resolve", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.0))
    if worker.is_alive():
        raise WebhookRejected(UNRESOLVABLE, f"the webhook host {host!r} did not resolve in time")
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError | UnicodeError | ValueError):
            raise WebhookRejected(UNRESOLVABLE, f"the webhook host {host!r} does not resolve") from exc
        raise exc
    seen: dict[str, None] = {}
    for text in outcome[0] if outcome else ():
        seen.setdefault(str(text), None)
    if not seen:
        raise WebhookRejected(UNRESOLVABLE, f"the webhook host {host!r} does not resolve")
    return list(seen)


@dataclass(frozen=True)
class WebhookPolicy:
    """Which webhook URLs may be called.

    By default: ``https`` to hosts whose every address is public. ``allow_http_loopback`` (a local
    stack) also admits receivers on loopback addresses, over plain ``http`` too; plain ``http`` to
    anything else is refused. ``allowed_hosts`` (exact host names) and ``allowed_networks`` (CIDR
    ranges) admit private and other non-public addresses, e.g. a receiver inside the operator's
    VPC; they do not admit plain http. Unspecified (``0.0.0.0``, ``::``) and multicast addresses
    are refused whatever the allowlist says.
    """

    allow_http_loopback: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT

    def __post_init__(self) -> None:
        hosts = frozenset(h.strip().lower().rstrip(".") for h in self.allowed_hosts if h.strip())
        object.__setattr__(self, "allowed_hosts", hosts)
        object.__setattr__(self, "allowed_networks", tuple(self.allowed_networks))

    @classmethod
    def parse(
        cls,
        *,
        allowed_hosts: str | Iterable[str] = "",
        allowed_networks: str | Iterable[str] = "",
        allow_http_loopback: bool = False,
    ) -> WebhookPolicy:
        """A policy from settings: comma-separated (or listed) host names and CIDR ranges.
        Raises :class:`ConfigError` for a malformed range."""
        host_items = allowed_hosts.split(",") if isinstance(allowed_hosts, str) else list(allowed_hosts)
        net_items = allowed_networks.split(",") if isinstance(allowed_networks, str) else list(allowed_networks)
        networks: list[IPNetwork] = []
        for item in (n.strip() for n in net_items):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ConfigError(f"webhook allowed network {item!r} is not a CIDR range") from exc
        return cls(
            allow_http_loopback=allow_http_loopback,
            allowed_hosts=frozenset(h for h in host_items if h.strip()),
            allowed_networks=tuple(networks),
        )

    def check_url(self, url: str, *, resolver: Resolver | None = None, timeout: float | None = None) -> ValidatedUrl:
        """The URL, parsed and resolved, when the policy admits it; else :class:`WebhookRejected`.

        Every address the host resolves to must be admitted (one bad answer refuses the URL).
        ``timeout`` bounds the DNS lookup (default ``resolve_timeout``)."""
        parsed = _parse_url(url)
        scheme, host, port, target = parsed
        if scheme == "http" and not self.allow_http_loopback:
            raise WebhookRejected(INSECURE_SCHEME, "webhook URLs must use https")
        literal = _literal_address(host)
        if literal is not None:
            texts = [literal]
        else:
            limit = self.resolve_timeout if timeout is None else timeout
            texts = _resolve(resolver or system_resolver, host, port, limit)
        addresses: list[IPAddress] = []
        for text in texts:
            try:
                addresses.append(_parse_address(text))
            except ValueError as exc:
                raise WebhookRejected(UNRESOLVABLE, f"the webhook host {host!r} does not resolve") from exc
        if scheme == "http" and not all(a.is_loopback for a in addresses):
            raise WebhookRejected(INSECURE_SCHEME, "webhook URLs must use https (plain http only to loopback)")
        for address in addresses:
            reason = self._refusal(host, address)
            if reason is not None:
                verb = "is" if literal is not None else "resolves to"
                raise WebhookRejected(FORBIDDEN_ADDRESS, f"the webhook host {host!r} {verb} {reason}")
        return ValidatedUrl(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            target=target,
            addresses=tuple(str(a) for a in addresses),
        )

    def _refusal(self, host: str, address: IPAddress) -> str | None:
        reason = _forbidden_reason(address)
        if reason is None:
            return None
        if reason in _NEVER:
            return reason
        if host in self.allowed_hosts:
            return None
        if any(address.version == n.version and address in n for n in self.allowed_networks):
            return None
        if self.allow_http_loopback and address.is_loopback:
            return None
        return reason


def _parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of a syntactically acceptable http(s) URL."""
    if not isinstance(url, str) or not url:
        raise _reject_url("the webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise _reject_url(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise _reject_url("the webhook URL contains spaces, control characters or backslashes")
    try:
        parts = urllib.parse.urlsplit(url)
        port_given = parts.port
    except ValueError as exc:
        raise _reject_url("the webhook URL is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise _reject_url("the webhook URL must be an absolute https URL")
    if scheme not in ("https", "http"):
        raise WebhookRejected(INSECURE_SCHEME, "webhook URLs must use https")
    if not parts.netloc:
        raise _reject_url("the webhook URL must be an absolute https URL")
    if "@" in parts.netloc:
        raise _reject_url("the webhook URL must not contain a user name or password")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise _reject_url("the webhook URL has no host")
    host = _normalise_host(raw_host)
    port = port_given if port_given is not None else (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise _reject_url("the webhook URL's port is out of range")
    path = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
    query = urllib.parse.quote(parts.query, safe=_PATH_SAFE)
    target = path if path.startswith("/") else "/" + path
    if query:
        target = f"{target}?{query}"
    return scheme, host, port, target


def _normalise_host(raw: str) -> str:
    if _literal_address(raw) is not None:
        return raw
    try:
        host = raw.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise _reject_url("the webhook URL's host name is not valid") from exc
    if not host or not _HOST_CHARS.match(host) or ".." in host:
        raise _reject_url("the webhook URL's host name is not valid")
    return host


def _literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Event bodies
# --------------------------------------------------------------------------------------------

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
BATCH_COMPLETED = "batch.completed"
_JOB_TYPES = {"SUCCEEDED": JOB_SUCCEEDED, "FAILED": JOB_FAILED}
_NOT_EVENT_DATA = frozenset({"webhook"})  # delivery bookkeeping changes between attempts: never sent


def _event_id(identity: str) -> str:
    return "evt_" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def job_event_id(job_id: str, status: str) -> str:
    """The id of the event "job ``job_id`` reached ``status``": the same for every attempt."""
    return _event_id(f"job:{job_id}:{status}")


def batch_event_id(batch_id: str) -> str:
    """The id of the event "batch ``batch_id`` completed": the same for every attempt."""
    return _event_id(f"batch:{batch_id}:completed")


def _body(event_id: str, event_type: str, created_at: Any, data: Mapping[str, Any]) -> bytes:
    envelope = {
        "id": event_id,
        "type": event_type,
        "created_at": created_at,
        "data": {k: v for k, v in data.items() if k not in _NOT_EVENT_DATA},
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str).encode()


def job_event(job_view: Mapping[str, Any]) -> bytes:
    """The body of a ``job.succeeded`` / ``job.failed`` event: ``data`` is the job as
    ``GET /v1/jobs/{id}`` shows it (less its ``webhook`` field); ``created_at`` is the job's
    ``updated_at``, the moment it ended, so every attempt sends the same bytes."""
    job_id = job_view.get("job_id")
    status = str(job_view.get("status", ""))
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("a job view needs its job_id")
    if status not in _JOB_TYPES:
        raise ValueError(f"job {job_id} is {status or 'without a status'}: only SUCCEEDED and FAILED jobs have events")
    created_at = job_view.get("updated_at") or utc_now_iso()
    return _body(job_event_id(job_id, status), _JOB_TYPES[status], created_at, job_view)


def batch_event(batch_view: Mapping[str, Any]) -> bytes:
    """The body of a ``batch.completed`` event: ``data`` is the batch view (less its ``webhook``
    field); ``created_at`` its ``completed_at`` (else ``updated_at``)."""
    batch_id = batch_view.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise ValueError("a batch view needs its batch_id")
    created_at = batch_view.get("completed_at") or batch_view.get("updated_at") or utc_now_iso()
    return _body(batch_event_id(batch_id), BATCH_COMPLETED, created_at, batch_view)
