"""Signing a notice and checking a signature (HMAC-SHA256 over the time and the body)."""

from __future__ import annotations

import hashlib
import hmac
import time

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
