"""Which webhook URLs may be called: the SSRF rules, checked when a job names a URL and again at
delivery, on the addresses the host resolves to."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from visionq.errors import ConfigError, InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``resolver(host, port) -> [ip, ...]``; :func:`system_resolver` (``socket.getaddrinfo``) by default."""

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
