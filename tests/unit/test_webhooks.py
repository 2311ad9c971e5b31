"""The webhook library: signing, the URL policy (SSRF guard), delivery against real local servers
(plain http on loopback and TLS with a certificate made here), backoff and event bodies."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.tls import self_signed_certificate, server_context
from visionq import webhooks
from visionq.errors import ConfigError, InvalidRequest
from visionq.webhooks import (
    EVENT_ID_HEADER,
    FORBIDDEN_ADDRESS,
    INSECURE_SCHEME,
    INVALID_URL,
    SIGNATURE_HEADER,
    UNRESOLVABLE,
    USER_AGENT,
    DeliveryAttempt,
    WebhookPolicy,
    WebhookRejected,
    batch_event,
    build_headers,
    deliver,
    job_event,
    next_delay,
    sign,
    signature_header,
    verify,
)

SECRET = b"whsec_test_secret"
PUBLIC_IP = "93.184.216.34"
DEFAULT = WebhookPolicy()
LOCAL = WebhookPolicy(allow_http_loopback=True)
TLS_HOSTS = ("localhost", "hooks.example.test")


def fixed(*answers: str) -> Callable[[str, int], list[str]]:
    """A resolver that always gives ``answers``."""
    return lambda host, port: list(answers)


class Sequenced:
    """A resolver giving one answer list per call (the last repeated), recording the calls."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = [list(a) for a in answers]
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


# --------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"id":"evt_1"}'
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == expected
    assert signature_header(SECRET, body, timestamp=1700000000) == f"t=1700000000,v1={expected}"


def test_sign_verify_round_trip() -> None:
    body = b'{"id":"evt_1","type":"job.succeeded"}'
    header = signature_header(SECRET, body)  # the current time
    assert verify(SECRET, header, body)
    assert verify(SECRET, signature_header(SECRET, body, timestamp=1000), body, now=1000)


def test_tampered_body_is_refused() -> None:
    header = signature_header(SECRET, b'{"status":"FAILED"}', timestamp=1000)
    assert not verify(SECRET, header, b'{"status":"SUCCEEDED"}', now=1000)


def test_wrong_secret_is_refused() -> None:
    body = b"{}"
    assert not verify(b"another secret", signature_header(SECRET, body, timestamp=1000), body, now=1000)


def test_stale_and_future_timestamps_are_refused() -> None:
    body = b"{}"
    header = signature_header(SECRET, body, timestamp=10_000)
    assert verify(SECRET, header, body, now=10_000 + 299)
    assert not verify(SECRET, header, body, now=10_000 + 301)
    assert not verify(SECRET, header, body, now=10_000 - 301)
    assert verify(SECRET, header, body, now=10_000 + 3000, tolerance_seconds=3600)


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=1000", "v1=abc", "t=abc,v1=00", "t=-5,v1=00", "t=1000,t=1000,v1=00", "t=1000,v1="],
)
def test_malformed_signature_headers_are_refused(header: str) -> None:
    assert not verify(SECRET, header, b"{}", now=1000)


def test_any_of_several_signatures_may_match() -> None:
    body = b"{}"
    good = sign(SECRET, 1000, body)
    assert verify(SECRET, f"t=1000,v1={'0' * 64},v1={good}", body, now=1000)
    assert verify(SECRET, f" t=1000 , v1={good} ", body, now=1000)


def test_build_headers_has_every_header() -> None:
    body = b'{"id":"evt_x"}'
    headers = build_headers(SECRET, body, "evt_x", timestamp=1234)
    assert headers == {
        "content-type": "application/json",
        "user-agent": "visionq-webhooks/1",
        "visionq-event-id": "evt_x",
        "visionq-signature": f"t=1234,v1={sign(SECRET, 1234, body)}",
    }


# --------------------------------------------------------------------------------------------
# URL policy
# --------------------------------------------------------------------------------------------


def rejected(url: str, policy: WebhookPolicy = DEFAULT, **kwargs: object) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        policy.check_url(url, **kwargs)  # type: ignore[arg-type]
    exc = info.value
    assert "\n" not in exc.message and "Traceback" not in exc.message
    return exc


def test_https_to_a_public_address_is_accepted() -> None:
    resolver = Sequenced([PUBLIC_IP])
    checked = WebhookPolicy().check_url("https://Hooks.Example.com/hook?x=1#frag", resolver=resolver)
    assert resolver.calls == [("hooks.example.com", 443)]
    assert checked.scheme == "https"
    assert checked.host == "hooks.example.com"
    assert checked.port == 443
    assert checked.target == "/hook?x=1"
    assert checked.addresses == (PUBLIC_IP,)


def test_unusual_ports_and_empty_paths_are_fine() -> None:
    checked = WebhookPolicy().check_url(
        "https://hooks.example.com:8443", resolver=fixed(PUBLIC_IP, "2606:2800:220:1::1")
    )
    assert (checked.port, checked.target) == (8443, "/")
    assert checked.addresses == (PUBLIC_IP, "2606:2800:220:1::1")


def test_international_host_names_are_resolved_in_idna() -> None:
    resolver = Sequenced([PUBLIC_IP])
    checked = WebhookPolicy().check_url("https://bücher.example/ä", resolver=resolver)
    assert checked.host == "xn--bcher-kva.example"
    assert resolver.calls == [("xn--bcher-kva.example", 443)]
    assert checked.target == "/%C3%A4"


def test_rejection_is_an_invalid_request_with_a_code() -> None:
    exc = rejected("http://hooks.example.com/")
    assert isinstance(exc, InvalidRequest)
    assert exc.code == INSECURE_SCHEME
    assert exc.message


@pytest.mark.parametrize("url", ["http://hooks.example.com/", "ftp://hooks.example.com/", "file:///etc/passwd"])
def test_schemes_other_than_https_are_refused(url: str) -> None:
    resolver = Sequenced([PUBLIC_IP])
    assert rejected(url, resolver=resolver).code == INSECURE_SCHEME
    assert resolver.calls == []  # refused before any lookup


def test_http_to_loopback_only_with_the_local_flag() -> None:
    assert rejected("http://127.0.0.1:8080/x").code == INSECURE_SCHEME
    assert LOCAL.check_url("http://127.0.0.1:8080/x").addresses == ("127.0.0.1",)
    assert LOCAL.check_url("http://localhost:9000/", resolver=fixed("127.0.0.1", "::1")).port == 9000
    assert LOCAL.check_url("http://[::1]:9000/").host == "::1"
    # The flag admits plain http to loopback only: not to a public host, not to a mixed answer.
    assert rejected("http://hooks.example.com/", LOCAL, resolver=fixed(PUBLIC_IP)).code == INSECURE_SCHEME
    assert rejected("http://mixed.example/", LOCAL, resolver=fixed("127.0.0.1", PUBLIC_IP)).code == INSECURE_SCHEME
    assert rejected("http://10.0.0.1/", LOCAL).code == INSECURE_SCHEME


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/",
        "https://172.16.3.4/",
        "https://192.168.1.1/",
        "https://127.0.0.1/",
        "https://127.8.9.10:8443/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/",
        "https://[fe80::1]/",
        "https://[fc00::1]/",
        "https://[fd12:3456::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:169.254.169.254]/",
        "https://[::ffff:10.1.2.3]/",
        "https://[::ffff:0:7f00:1]/",  # IPv4-translated 127.0.0.1
        "https://100.64.0.1/",
        "https://100.127.255.254/",
        "https://0.0.0.0/",
        "https://[::]/",
        "https://224.0.0.1/",
        "https://[ff02::1]/",
        "https://255.255.255.255/",
        "https://198.18.0.1/",
        "https://192.0.2.10/",
        "https://[2001:db8::1]/",
        "https://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "https://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(url: str) -> None:
    assert rejected(url, resolver=Sequenced()).code == FORBIDDEN_ADDRESS


@pytest.mark.parametrize(
    "answers",
    [["10.0.0.7"], ["169.254.169.254"], ["::1"], ["::ffff:192.168.0.1"], ["100.64.1.1"], [PUBLIC_IP, "127.0.0.1"]],
)
def test_names_resolving_to_non_public_addresses_are_refused(answers: list[str]) -> None:
    assert rejected("https://hooks.example.com/", resolver=fixed(*answers)).code == FORBIDDEN_ADDRESS


def test_numeric_host_spellings_are_judged_by_what_they_resolve_to() -> None:
    # 2130706433 == 127.0.0.1; the system resolver (inet_aton) reads it without any DNS server.
    assert rejected("https://2130706433/").code == FORBIDDEN_ADDRESS
    assert rejected("https://0x7f.1/").code == FORBIDDEN_ADDRESS


def test_allowed_networks_admit_a_private_receiver() -> None:
    policy = WebhookPolicy.parse(allowed_networks="10.20.0.0/16, fd00:1::/64")
    assert policy.allowed_networks == (ip_network("10.20.0.0/16"), ip_network("fd00:1::/64"))
    assert policy.check_url("https://hooks.vpc/", resolver=fixed("10.20.3.4")).addresses == ("10.20.3.4",)
    assert policy.check_url("https://hooks.vpc/", resolver=fixed("::ffff:10.20.3.4")).addresses == ("10.20.3.4",)
    assert policy.check_url("https://[fd00:1::5]/").addresses == ("fd00:1::5",)
    assert rejected("https://hooks.vpc/", policy, resolver=fixed("10.21.0.1")).code == FORBIDDEN_ADDRESS
    assert rejected("https://hooks.vpc/", policy, resolver=fixed("10.20.3.4", "10.99.0.1")).code == FORBIDDEN_ADDRESS
    # An allowlist admits addresses, not plain http.
    assert rejected("http://hooks.vpc/", policy, resolver=fixed("10.20.3.4")).code == INSECURE_SCHEME


def test_allowed_hosts_admit_their_private_addresses_only() -> None:
    policy = WebhookPolicy.parse(allowed_hosts="Hooks.Internal.")
    assert policy.check_url("https://hooks.internal/", resolver=fixed("10.0.0.7")).host == "hooks.internal"
    assert rejected("https://other.internal/", policy, resolver=fixed("10.0.0.7")).code == FORBIDDEN_ADDRESS


def test_no_allowlist_admits_unspecified_or_multicast_addresses() -> None:
    policy = WebhookPolicy(allowed_networks=(ip_network("0.0.0.0/0"), ip_network("::/0")))
    assert policy.check_url("https://10.1.1.1/").addresses == ("10.1.1.1",)
    assert rejected("https://0.0.0.0/", policy).code == FORBIDDEN_ADDRESS
    assert rejected("https://224.0.0.1/", policy).code == FORBIDDEN_ADDRESS


def test_a_malformed_allowed_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        WebhookPolicy.parse(allowed_networks="10.0.0.0/33")


def test_unresolvable_hosts_are_refused() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    assert rejected("https://nowhere.example/", resolver=fails).code == UNRESOLVABLE
    assert rejected("https://nowhere.example/", resolver=fixed()).code == UNRESOLVABLE
    assert rejected("https://nowhere.example/", resolver=fixed("not-an-ip")).code == UNRESOLVABLE


def test_a_hung_lookup_is_unresolvable_within_its_timeout() -> None:
    release = threading.Event()

    def hangs(host: str, port: int) -> list[str]:
        release.wait(10)
        return [PUBLIC_IP]

    started = time.monotonic()
    try:
        assert rejected("https://slow.example/", resolver=hangs, timeout=0.3).code == UNRESOLVABLE
    finally:
        release.set()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://hooks.example.com\\@evil.example/",
        "https://hooks.example.com@127.0.0.1/",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    assert rejected(url, resolver=fixed(PUBLIC_IP)).code == INVALID_URL


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "hooks.example.com/path",
        "/relative/path",
        "https://",
        "https:///path",
        "https://exa mple.com/",
        "https://hooks.example.com:99999/",
        "https://hooks.example.com:0/",
        "https://hooks.example.com:abc/",
        "https://hooks.example.com/\r\nX-Injected: 1",
        "https://bad_host!.example/",
        "https://" + "a" * 64 + ".example/",
        "https://hooks.example.com/" + "a" * 2100,
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    assert rejected(url, resolver=fixed(PUBLIC_IP)).code == INVALID_URL


# --------------------------------------------------------------------------------------------
# Local receivers
# --------------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    requests: list[Received] = field(default_factory=list)


@contextmanager
def receiver(
    status: int = 200,
    *,
    location: str | None = None,
    secret: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Receiver]:
    """A real HTTP(S) server on 127.0.0.1 in a thread. With ``secret`` it answers 401 to a request
    whose signature does not verify, as a receiver following docs/webhooks.md would."""
    record = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            record.requests.append(Received(self.command, self.path, headers, body))
            code = status
            if secret is not None and not verify(secret, headers.get(SIGNATURE_HEADER, ""), body):
                code = 401
            self.send_response(code)
            if location is not None:
                self.send_header("location", location)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = _handle
        do_GET = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextmanager
def dripping_server() -> Iterator[int]:
    """Reads the request, then sends a header byte every 0.1 s, forever: each read returns quickly,
    so only a bound on the whole attempt ends it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.1):
                    conn.sendall(b"a")
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        sock.close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def headers_for(body: bytes, event_id: str = "evt_test") -> dict[str, str]:
    return build_headers(SECRET, body, event_id)


BODY = job_event({"job_id": "a" * 32, "status": "SUCCEEDED", "updated_at": "2026-01-01T00:00:00.000Z"})


# --------------------------------------------------------------------------------------------
# Delivery over plain http (loopback, local-stack policy)
# --------------------------------------------------------------------------------------------


def test_delivery_to_a_receiver_that_verifies_the_signature() -> None:
    with receiver(200, secret=SECRET) as rx:
        attempt = deliver(f"http://127.0.0.1:{rx.port}/hook?src=1", BODY, headers_for(BODY), policy=LOCAL, timeout=2)
    assert attempt.ok and attempt.status_code == 200 and attempt.error is None
    assert attempt.at.endswith("Z") and attempt.duration_ms >= 0
    [request] = rx.requests
    assert request.method == "POST" and request.path == "/hook?src=1"
    assert request.body == BODY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers[EVENT_ID_HEADER] == "evt_test"
    assert verify(SECRET, request.headers[SIGNATURE_HEADER], request.body)


def test_a_bad_signature_is_a_failed_attempt() -> None:
    with receiver(200, secret=b"the receiver's other secret") as rx:
        attempt = deliver(f"http://127.0.0.1:{rx.port}/", BODY, headers_for(BODY), policy=LOCAL, timeout=2)
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, 401, "HTTP 401")


def test_a_server_error_is_a_failed_attempt() -> None:
    with receiver(500) as rx:
        attempt = deliver(f"http://127.0.0.1:{rx.port}/", BODY, headers_for(BODY), policy=LOCAL, timeout=2)
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, 500, "HTTP 500")
    assert len(rx.requests) == 1


def test_redirects_are_not_followed() -> None:
    with receiver(200) as target, receiver(302, location=f"http://127.0.0.1:{target.port}/elsewhere") as rx:
        attempt = deliver(f"http://127.0.0.1:{rx.port}/", BODY, headers_for(BODY), policy=LOCAL, timeout=2)
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, 302, "redirect not followed")
    assert len(rx.requests) == 1
    assert target.requests == []


def test_a_receiver_that_never_answers_fails_within_the_timeout() -> None:
    with silent_listener() as port:
        started = time.monotonic()
        attempt = deliver(f"http://127.0.0.1:{port}/", BODY, headers_for(BODY), policy=LOCAL, timeout=0.5)
        elapsed = time.monotonic() - started
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, None, "timed out")
    assert elapsed < 0.5 + 1.0


def test_a_trickling_receiver_cannot_stretch_the_timeout() -> None:
    with dripping_server() as port:
        started = time.monotonic()
        attempt = deliver(f"http://127.0.0.1:{port}/", BODY, headers_for(BODY), policy=LOCAL, timeout=0.5)
        elapsed = time.monotonic() - started
    assert (attempt.ok, attempt.error) == (False, "timed out")
    assert elapsed < 0.5 + 1.0


def test_connection_refused_is_a_failed_attempt() -> None:
    attempt = deliver(f"http://127.0.0.1:{free_port()}/", BODY, headers_for(BODY), policy=LOCAL, timeout=1)
    assert (attempt.ok, attempt.status_code, attempt.error) == (False, None, "connection refused")


def test_the_policy_is_checked_again_at_delivery_time() -> None:
    with receiver(200) as rx:
        attempt = deliver(f"http://127.0.0.1:{rx.port}/", BODY, headers_for(BODY), policy=WebhookPolicy(), timeout=1)
    assert not attempt.ok and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith(INSECURE_SCHEME)
    assert rx.requests == []


def test_delivery_connects_to_the_vetted_address_and_keeps_the_host_name() -> None:
    resolver = Sequenced(["127.0.0.1"])  # hooks.example.test exists nowhere but in this resolver
    with receiver(200) as rx:
        url = f"http://hooks.example.test:{rx.port}/x"
        attempt = deliver(url, BODY, headers_for(BODY), policy=LOCAL, timeout=2, resolver=resolver)
    assert attempt.ok, attempt.error
    assert resolver.calls == [("hooks.example.test", rx.port)]
    assert rx.requests[0].headers["host"] == f"hooks.example.test:{rx.port}"


# --------------------------------------------------------------------------------------------
# Delivery over TLS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for localhost and hooks.example.test."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), TLS_HOSTS)


@pytest.fixture
def server_tls(tls_cert: tuple[Path, Path]) -> ssl.SSLContext:
    return server_context(tls_cert)


@pytest.fixture
def client_tls(tls_cert: tuple[Path, Path]) -> ssl.SSLContext:
    """The default context, trusting the test certificate: the host name is still checked."""
    return ssl.create_default_context(cafile=str(tls_cert[0]))


LOOPBACK_ALLOWED = WebhookPolicy.parse(allowed_networks="127.0.0.0/8")


def test_https_delivery_with_a_verified_certificate(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with receiver(200, secret=SECRET, tls=server_tls) as rx:
        attempt = deliver(
            f"https://localhost:{rx.port}/hook",
            BODY,
            headers_for(BODY),
            policy=LOOPBACK_ALLOWED,
            timeout=2,
            resolver=fixed("127.0.0.1"),
            ssl_context=client_tls,
        )
    assert attempt.ok, attempt.error
    assert attempt.status_code == 200
    assert rx.requests[0].body == BODY


def test_https_to_an_untrusted_certificate_fails(server_tls: ssl.SSLContext) -> None:
    with receiver(200, tls=server_tls) as rx:
        attempt = deliver(
            f"https://localhost:{rx.port}/",
            BODY,
            headers_for(BODY),
            policy=LOOPBACK_ALLOWED,
            timeout=2,
            resolver=fixed("127.0.0.1"),
        )  # the system's trust store: our certificate is not in it
    assert not attempt.ok and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("tls: "), attempt.error
    assert rx.requests == []


def test_https_checks_the_certificate_against_the_url_host(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    with receiver(200, tls=server_tls) as rx:
        attempt = deliver(
            f"https://not-in-the-cert.example:{rx.port}/",
            BODY,
            headers_for(BODY),
            policy=LOOPBACK_ALLOWED,
            timeout=2,
            resolver=fixed("127.0.0.1"),
            ssl_context=client_tls,
        )
    assert not attempt.ok
    assert attempt.error is not None and attempt.error.startswith("tls: "), attempt.error
    assert "hostname" in attempt.error.lower()
    assert rx.requests == []


def test_a_plain_http_server_on_an_https_url_fails(client_tls: ssl.SSLContext) -> None:
    with receiver(200) as rx:
        attempt = deliver(
            f"https://localhost:{rx.port}/",
            BODY,
            headers_for(BODY),
            policy=LOOPBACK_ALLOWED,
            timeout=2,
            resolver=fixed("127.0.0.1"),
            ssl_context=client_tls,
        )
    assert not attempt.ok and attempt.error is not None and attempt.error.startswith("tls: "), attempt.error


# --------------------------------------------------------------------------------------------
# DNS rebinding
# --------------------------------------------------------------------------------------------


def test_dns_rebinding_after_the_check_is_refused_at_delivery(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """The name looked public when the job was submitted, then rebinds to loopback: the delivery
    judges the address it is about to connect to and refuses; the local server sees nothing."""
    resolver = Sequenced([PUBLIC_IP], ["127.0.0.1"])
    policy = WebhookPolicy()
    with receiver(200, tls=server_tls) as rx:
        url = f"https://hooks.example.test:{rx.port}/hook"
        assert policy.check_url(url, resolver=resolver).addresses == (PUBLIC_IP,)  # at submission
        attempt = deliver(
            url, BODY, headers_for(BODY), policy=policy, timeout=2, resolver=resolver, ssl_context=client_tls
        )
    assert not attempt.ok and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith(FORBIDDEN_ADDRESS), attempt.error
    assert len(resolver.calls) == 2
    assert rx.requests == []


def test_delivery_does_not_look_the_name_up_again_after_vetting_it(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    """One lookup per attempt: the vetted answer is the address connected to, whatever a second
    lookup would say (here: the metadata address). The certificate is still checked by name."""
    resolver = Sequenced(["127.0.0.1"], ["169.254.169.254"])
    with receiver(200, tls=server_tls) as rx:
        url = f"https://hooks.example.test:{rx.port}/hook"
        attempt = deliver(
            url, BODY, headers_for(BODY), policy=LOOPBACK_ALLOWED, timeout=2, resolver=resolver, ssl_context=client_tls
        )
    assert attempt.ok, attempt.error
    assert resolver.calls == [("hooks.example.test", rx.port)]
    assert len(rx.requests) == 1


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


def test_next_delay_is_exponential_with_full_jitter() -> None:
    top = [next_delay(n, base=30, cap=900, rng=lambda: 1.0) for n in range(1, 8)]
    assert top == [30, 60, 120, 240, 480, 900, 900]
    assert next_delay(3, base=30, cap=900, rng=lambda: 0.5) == 60
    assert next_delay(3, base=30, cap=900, rng=lambda: 0.0) == 0
    for n in range(1, 10):
        assert 0 <= next_delay(n, base=1, cap=10) <= 10


def test_next_delay_survives_huge_attempt_numbers_and_refuses_zero() -> None:
    assert next_delay(10_000, base=1, cap=60, rng=lambda: 1.0) == 60
    with pytest.raises(ValueError):
        next_delay(0, base=1, cap=60)


def test_max_attempts_is_a_sensible_default() -> None:
    assert 3 <= webhooks.MAX_ATTEMPTS <= 10


# --------------------------------------------------------------------------------------------
# Event bodies
# --------------------------------------------------------------------------------------------


def test_job_events_are_compact_json_with_a_stable_id() -> None:
    view = {
        "job_id": "b" * 32,
        "status": "SUCCEEDED",
        "key": "uploads/x.jpg",
        "updated_at": "2026-01-02T03:04:05.000Z",
        "result": {"detections": [{"label": "cat", "score": 0.9}]},
        "webhook": {"status": "pending", "attempts": []},
    }
    body = job_event(view)
    assert b" " not in body.replace(b"uploads/x.jpg", b"")  # compact separators
    event = json.loads(body)
    assert event["type"] == "job.succeeded"
    assert event["created_at"] == "2026-01-02T03:04:05.000Z"
    assert event["data"]["result"] == view["result"]
    assert "webhook" not in event["data"]  # delivery bookkeeping would change the bytes per attempt
    assert event["id"] == webhooks.job_event_id("b" * 32, "SUCCEEDED")
    # A duplicate (or a retry after the webhook field changed) has the same id and the same bytes.
    again = dict(reversed(list({**view, "webhook": {"status": "failed"}}.items())))
    assert job_event(again) == body


def test_failed_jobs_have_their_own_event_id() -> None:
    failed = json.loads(job_event({"job_id": "c" * 32, "status": "FAILED", "error": {"code": "x", "message": "y"}}))
    succeeded = json.loads(job_event({"job_id": "c" * 32, "status": "SUCCEEDED"}))
    assert failed["type"] == "job.failed"
    assert failed["id"] != succeeded["id"]


@pytest.mark.parametrize("view", [{"job_id": "d" * 32, "status": "RUNNING"}, {"status": "SUCCEEDED"}, {}])
def test_only_finished_jobs_have_events(view: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        job_event(view)


def test_batch_events() -> None:
    view = {"batch_id": "batch-1", "completed_at": "2026-01-02T00:00:00.000Z", "counts": {"SUCCEEDED": 3}}
    event = json.loads(batch_event(view))
    assert event["type"] == "batch.completed"
    assert event["id"] == webhooks.batch_event_id("batch-1")
    assert event["data"] == view
    assert batch_event(view) == batch_event(dict(view))
    with pytest.raises(ValueError):
        batch_event({"completed_at": "x"})


def test_delivery_attempts_round_trip_through_dicts() -> None:
    attempt = DeliveryAttempt(
        at="2026-01-01T00:00:00.000Z", status_code=500, error="HTTP 500", duration_ms=12, ok=False
    )
    assert DeliveryAttempt.from_dict(attempt.to_dict()) == attempt
