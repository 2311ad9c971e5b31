"""AWS Signature Version 4 headers for a JSON POST to the service's root (``JsonPostSigner``).

The DynamoDB wire signs two requests per image, all of one shape: ``POST /``, no query, the same
two headers besides the date and the token. botocore's ``SigV4Auth`` builds an ``AWSRequest``,
walks and sorts its headers, parses its URL and derives the signing key (four HMACs) on every
call: about 0.1 ms of the worker's CPU per request (bench/request_cpu.py). Here the canonical
request is one format string and the key is derived once per day, region and secret. The headers
are byte for byte ``SigV4Auth``'s with the clock fixed (tests/unit/test_sigv4.py).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_header(url: str) -> str:
    """The Host header a client sends for ``url`` (botocore's ``_host_from_url``: the port only
    when it is not the scheme's own)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class JsonPostSigner:
    """Signs ``POST /`` requests with ``content_type`` and an ``X-Amz-Target`` header.

    ``credentials``: a botocore credentials object (``Session.get_credentials()``); its frozen
    copy is read per request, so refreshing credentials (a role's) are followed.
    """

    def __init__(self, *, service: str, region: str, host: str, content_type: str) -> None:
        self._service = service
        self._region = region
        self._host = host
        self._content_type = content_type
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, day) -> signing key

    def headers(self, credentials: Any, target: str, body: bytes, *, amz_date: str | None = None) -> dict[str, str]:
        """The request's headers, ``Authorization`` included (``Host`` is the client's to send)."""
        frozen = credentials.get_frozen_credentials()
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        token = frozen.token
        signed = "content-type;host;x-amz-date;" + ("x-amz-security-token;" if token else "") + "x-amz-target"
        canonical = (
            f"POST\n/\n\ncontent-type:{self._content_type}\nhost:{self._host}\nx-amz-date:{amz_date}\n"
            + (f"x-amz-security-token:{token}\n" if token else "")
            + f"x-amz-target:{target}\n\n{signed}\n{hashlib.sha256(body).hexdigest()}"
        )
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(frozen.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Content-Type": self._content_type, "X-Amz-Target": target, "X-Amz-Date": amz_date}
        if token:
            headers["X-Amz-Security-Token"] = token
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={frozen.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        return headers

    def _key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = f"AWS4{secret}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # one day's key: yesterday's is no longer used
        return key
