"""AWS Signature Version 4 for the worker's two requests per image of one fixed shape each.

- ``JsonPostSigner``: the headers of a JSON ``POST /`` (the DynamoDB wire's two writes per image,
  the SQS wire's calls).
- ``QueryPresigner``: a presigned ``GET`` URL (query authentication, S3's flavour: the path signed
  as it stands, the payload unsigned), for the object reader's one read per image.

botocore's signers build an ``AWSRequest``, walk and sort its headers, parse and rebuild its URL
and derive the signing key (four HMACs) on every call: 0.1-0.2 ms of the worker's CPU per request.
Here the canonical request is one format string and the key is derived once per day. What they
make is byte for byte what botocore makes with the clock fixed (tests/unit/test_sigv4.py,
tests/unit/test_s3_presign.py).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = "-_.~"  # what SigV4's URI encoding leaves as it is


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

    ``frozen``: a botocore credentials object's frozen copy (``get_frozen_credentials()``), taken
    by the caller per request, so refreshing credentials (a role's) are followed; the asynchronous
    SDK's must be awaited, the synchronous one's not.
    """

    def __init__(self, *, service: str, region: str, host: str, content_type: str) -> None:
        self._service = service
        self._region = region
        self._host = host
        self._content_type = content_type
        self._keys = SigningKeys(region=region, service=service)

    def headers(self, frozen: Any, target: str, body: bytes, *, amz_date: str | None = None) -> dict[str, str]:
        """The request's headers, ``Authorization`` included (``Host`` is the client's to send)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        token = frozen.token
        # As botocore's SigV4Auth: an empty token is left out here (its query signer keeps one).
        signed = "content-type;host;x-amz-date;" + ("x-amz-security-token;" if token else "") + "x-amz-target"
        canonical = (
            f"POST\n/\n\ncontent-type:{self._content_type}\nhost:{self._host}\nx-amz-date:{amz_date}\n"
            + (f"x-amz-security-token:{token}\n" if token else "")
            + f"x-amz-target:{target}\n\n{signed}\n{hashlib.sha256(body).hexdigest()}"
        )
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._keys.key(frozen.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Content-Type": self._content_type, "X-Amz-Target": target, "X-Amz-Date": amz_date}
        if token:
            headers["X-Amz-Security-Token"] = token
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={frozen.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        return headers


class QueryPresigner:
    """Presigned ``GET`` URLs (SigV4 query authentication, as botocore's ``S3SigV4QueryAuth``)."""

    def __init__(self, *, service: str, region: str, expires: int) -> None:
        self._service = service
        self._region = region
        self._expires = str(expires)
        self._keys = SigningKeys(region=region, service=service)

    def url(self, frozen: Any, base: str, params: list[tuple[str, str]], *, amz_date: str) -> str:
        """``base`` (scheme, host and the path as it is to be sent, already quoted) with the
        operation's ``params`` and the authentication's in its query. ``frozen``: frozen
        credentials (``get_frozen_credentials()``)."""
        day = amz_date[:8]
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        auth = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{frozen.access_key}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", self._expires),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if frozen.token is not None:
            auth.append(("X-Amz-Security-Token", frozen.token))
        # The operation's parameters first, then the authentication's: the order botocore sends.
        pairs = [(quote(k, safe=_UNRESERVED), quote(v, safe=_UNRESERVED)) for k, v in [*params, *auth]]
        canonical = (
            f"GET\n{urlsplit(base).path}\n"
            + "&".join(f"{k}={v}" for k, v in sorted(pairs))
            + f"\nhost:{host_header(base)}\n\nhost\nUNSIGNED-PAYLOAD"
        )
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._keys.key(frozen.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        return base + "?" + "&".join(f"{k}={v}" for k, v in pairs) + f"&X-Amz-Signature={signature}"


class SigningKeys:
    """The SigV4 signing key of a secret for a day, region and service: four HMACs, done once a
    day rather than per request."""

    def __init__(self, *, region: str, service: str) -> None:
        self._region = region
        self._service = service
        self._kept: dict[tuple[str, str], bytes] = {}  # (secret, day) -> key

    def key(self, secret: str, day: str) -> bytes:
        key = self._kept.get((secret, day))
        if key is None:
            key = f"AWS4{secret}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._kept = {(secret, day): key}  # one day's key: yesterday's is no longer used
        return key
