"""DynamoDB's single-item calls answered in the emulator's event loop (``moto_server.py`` serves it).

Under uvicorn, each request to moto's WSGI application crosses from the event loop to a pool
thread and back (a task, the hand-off, a wake-up of the loop through its self-pipe for each piece
of the answer), then passes through moto's host dispatcher, Flask's routing and request context
and flask-cors before it reaches moto's DynamoDB handler. Without that path the job store's calls
(two ``UpdateItem`` per job) cost the DynamoDB process 0.79 x its CPU per job, and that process is
what bounds the local stack on a GPU host (bench/RESULTS.md, runs 25 and 27).

Here a call that moto would give to its DynamoDB handler anyway (a signed ``POST /`` for the
``dynamodb`` service whose ``X-Amz-Target`` names one of the single-item actions below) goes to
that handler directly, in the loop's thread, with the request object moto's Flask application
makes from the same environ, and its answer is built as Flask builds it (werkzeug's response from
the handler's status, headers and body, plus flask-cors's headers). tests/integration/
test_emulator_http.py sends the same calls both ways and compares the answers.

One difference, for the better: moto's DynamoDB takes no lock, so two conditional writes to one
item in two pool threads could both pass their conditions, given a switch of the GIL between one's
check and its write. In the loop's thread each single-item call runs to its end before another
begins: atomic among themselves, as DynamoDB makes each write.

Only single-item actions: in the loop's thread a call holds up the process's other connections
until it ends, and a Scan, a Query or a batch may walk a whole table; those, the other services,
and a request from a browser (an ``Origin`` header, which flask-cors answers per origin) go the
usual way. ``VISIONQ_EMULATOR_INLINE_DYNAMODB=0`` sends everything the usual way.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

logger = logging.getLogger("visionq.moto_server")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
BuildEnviron = Callable[[Any, Any, io.BytesIO], MutableMapping[str, Any]]

INLINE_ACTIONS = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem"})
TARGET_PREFIX = b"DynamoDB_20120810."
# What flask-cors adds, with moto's settings (every origin, always), to an answer for a request
# without an Origin header; moto leaves flask-cors out when MOTO_DISABLE_GLOBAL_CORS is set.
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"),)
# The headers takes_inline reads; a request that gives one of them twice is not taken.
_HEADERS_READ = frozenset({b"x-amz-target", b"authorization", b"content-type"})


def takes_inline(scope: Any) -> bool:
    """Whether moto would route this request to its DynamoDB handler and it is one handled here.

    Where moto's application could answer otherwise than its handler, the request goes there: an
    action named in the query string (moto reads it before ``X-Amz-Target``), a header read here
    given twice (uvicorn passes both values on, and moto reads them its own way), and a form, which
    werkzeug parses as moto reads the request and may refuse with an answer of its own (413)."""
    if (
        scope.get("type") != "http"
        or scope.get("method") != "POST"
        or scope.get("path") != "/"
        or scope.get("query_string")
    ):
        return False
    seen: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        if name in _HEADERS_READ:
            if name in seen:
                return False
            seen[name] = value
        elif name == b"origin":
            return False
    target, authorization = seen.get(b"x-amz-target", b""), seen.get(b"authorization", b"")
    if not target.startswith(TARGET_PREFIX) or target[len(TARGET_PREFIX) :].decode("latin-1") not in INLINE_ACTIONS:
        return False
    media_type = seen.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if media_type.startswith(b"multipart/") or media_type == b"application/x-www-form-urlencoded":
        return False
    # The service is read from the signature's credential scope, as moto's dispatcher reads it
    # ("AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, ...").
    try:
        _, _, _, service, _ = authorization.split(b",")[0].split()[1].split(b"/")
    except (IndexError, ValueError):  # unsigned, or signed otherwise: moto's dispatcher decides
        return False
    return service.lower() == b"dynamodb"


def inline_dynamodb(app: ASGIApp, build_environ: BuildEnviron) -> ASGIApp:
    """``app`` with DynamoDB's single-item calls answered inline; ``app`` itself, and a warning in
    the log, where moto's code is not as this expects (a moto upgrade makes it slower, not wrong)."""
    try:
        from moto.core.request import Request
        from moto.dynamodb.responses import DynamoHandler
        from moto.moto_api import recorder

        expected = callable(getattr(DynamoHandler, "dispatch", None)) and callable(
            getattr(recorder, "_record_request", None)
        )
        expected = expected and isinstance(getattr(Request, "raw_url", None), property)
    except ImportError:
        expected = False
    if not expected:
        logger.warning("moto's DynamoDB handler is not as this expects; its calls take the usual path")
        return app
    return InlineDynamoDB(app, build_environ)


class InlineDynamoDB:
    """ASGI: the calls ``takes_inline`` accepts answered here, the rest passed to ``app``."""

    def __init__(self, app: ASGIApp, build_environ: BuildEnviron) -> None:
        # What each call needs, looked up once here rather than on every call.
        from botocore.exceptions import ClientError
        from moto import settings
        from moto.core.request import Request
        from moto.dynamodb.responses import DynamoHandler
        from moto.moto_api import recorder
        from werkzeug.wrappers import Response

        class BackendRequest(Request):
            from_wsgi_server = True  # as moto's Flask application's request class

        self.app = app
        self.build_environ = build_environ
        self.request_class = BackendRequest
        self.handler = DynamoHandler
        self.record = recorder._record_request
        self.client_error = ClientError
        self.response_class = Response
        self.cors_headers = () if settings.DISABLE_GLOBAL_CORS else CORS_HEADERS

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not takes_inline(scope):
            await self.app(scope, receive, send)
            return
        message = await receive()
        pieces = [message.get("body", b"")]
        while message.get("more_body", False):
            message = await receive()
            pieces.append(message.get("body", b""))
        # What moto raises (a body that is not JSON) goes to uvicorn, as from the WSGI application:
        # it logs it and answers 500, closing the connection.
        status, headers, content = self.answer(self.build_environ(scope, message, io.BytesIO(b"".join(pieces))))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def answer(self, environ: MutableMapping[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """moto's answer, as its Flask view (``convert_to_flask_response``) and flask-cors make it."""
        request = self.request_class(environ)
        try:
            self.record(request)
            result = self.handler.dispatch(request, request.raw_url, dict(request.headers))
        except self.client_error as exc:
            result = 400, {}, exc.response["Error"]["Message"]
        status, headers, content = result if len(result) == 3 else (200, {}, result)
        response = self.response_class(response=content, status=status, headers=headers)
        for name, value in self.cors_headers:
            response.headers.setdefault(name, value)
        chunks, status_line, header_list = response.get_wsgi_response(cast(dict[str, Any], environ))
        return (
            int(status_line.split(" ", 1)[0]),
            [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in header_list],
            b"".join(chunks),
        )
