"""A plain-HTTP forward proxy on loopback for the tests: what a worker behind a corporate proxy
talks to. Each request (its target in absolute form, ``GET http://host:port/path?query``) is sent
on to its origin as it came, headers and body, and the answer relayed; what went through is kept.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "transfer-encoding", "te"}


@dataclass(frozen=True)
class Relayed:
    method: str
    url: str  # as the client asked the proxy for it: absolute
    headers: dict[str, str]


@contextlib.contextmanager
def forward_proxy() -> Iterator[tuple[str, list[Relayed]]]:
    """Yields the proxy's URL and the requests relayed through it, in order."""
    relayed: list[Relayed] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def relay(self) -> None:
            target = urlsplit(self.path)
            if not target.scheme or not target.hostname:
                self.send_error(400, "a proxy needs the absolute form")
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            relayed.append(Relayed(self.command, self.path, dict(self.headers.items())))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            origin = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)
            try:
                path = target.path + (f"?{target.query}" if target.query else "")
                origin.request(self.command, path or "/", body=body, headers=headers)
                answer = origin.getresponse()
                data = answer.read()
            finally:
                origin.close()
            self.send_response_only(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = relay

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", relayed
    finally:
        server.shutdown()
        server.server_close()
