"""moto's HTTP server as the local stack runs it: ``python -m visionq.moto_server -H HOST -p PORT``.

moto's own application (S3, SQS and DynamoDB at one endpoint), with costs taken out that made the
co-located emulator the pipeline's bottleneck and inflated the worker's own CPU figures
(bench/RESULTS.md, run 11). None of them changes an answer:

- **Connections are kept open.** moto's server is werkzeug's development server, which closes
  the connection after every response (``Connection: close``) and starts a thread per
  connection: every AWS call of the worker paid a TCP connect and close on both sides, which AWS
  itself never makes a client pay (its endpoints keep connections alive). The application is
  served by uvicorn instead (HTTP/1.1 keep-alive, a pool of threads for the WSGI calls).
  The environ gets what werkzeug's server adds and moto relies on (the raw request path, the body
  read to its end; tests/integration/test_emulator_http.py). ``VISIONQ_EMULATOR_SERVER=werkzeug``
  serves it as ``moto.server`` does, to compare or should something need werkzeug's handler (it
  keeps the spelling of header names with underscores, which uvicorn folds as WSGI does; visionq
  sets no such header).
- **SQS receives in time linear in the queue's depth per message.** For every message it hands
  out, moto's ``receive_message`` checks the message against the queue's retention period by
  asking ``get_queue_attributes`` for it, which builds *every* attribute of the queue first,
  three of them counts that walk the whole queue. Receiving a backlog of N messages therefore cost
  O(N²): with 600 images queued, 43 % of the emulator's CPU. The check below reads the retention
  period from the queue itself, as that attribute is built from.
- **SQS receives read the clock once.** Which messages a receive may hand out was decided by
  reading the clock twice per queued message (16 % of the emulator's time with 3,000 queued);
  ``speed_up_sqs_visibility`` reads it once per receive.
- **SQS sends in constant time.** Each send (an upload's S3 event among them) built every queue
  attribute to read one, so uploading N images cost O(N²) while the queue filled: 13.7 ms per
  put with 0-500 messages queued, 88.4 ms at 2500-3000. And a read of named attributes built them
  all 1 + 2 x (names) times. See ``speed_up_sqs_attributes``.
- **Finding the service for each request** listed moto's package directory and stat'ed each of
  its ~150 entries, then tried every service's URL patterns, under a lock (11 %). The directory
  and the patterns do not change while the server runs, so the answer for a host is kept.
- **DynamoDB updates without repeated work** (``moto_dynamodb.py``): each update expression parsed
  once, the validator's copy of it made by pickle, its passes' tables built once per pass.
- **DynamoDB's single-item calls are answered in the event loop** (``moto_inline.py``): moto's
  DynamoDB handler called directly, without the hand-off to a pool thread and Flask's routing
  (0.79 x the DynamoDB process's CPU per job; bench/RESULTS.md, run 27).
- **Each handler class's methods are listed once** (``speed_up_action_lookup``), not at every call.
- **A log line per request** (werkzeug's access log: 8 % of the emulator's CPU), and uvicorn's,
  are off unless ``VISIONQ_EMULATOR_LOG_REQUESTS=1``.

Each change to moto's code is applied only where moto still has the shape it was written
against, and says so in the log otherwise, so a moto upgrade can make the emulator slower but
never wrong.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from visionq.moto_dynamodb import (
    speed_up_dynamodb_conditions,
    speed_up_dynamodb_responses,
    speed_up_dynamodb_updates,
)
from visionq.moto_inline import inline_dynamodb

logger = logging.getLogger("visionq.moto_server")


def speed_up_sqs_receive() -> bool:
    """Make moto's per-message retention check O(1); False where moto's code is not as expected."""
    from moto.core.utils import unix_time
    from moto.sqs.models import Queue, SQSBackend

    original = getattr(SQSBackend, "is_message_valid_based_on_retention_period", None)
    if original is None or "MessageRetentionPeriod" not in getattr(Queue, "BASE_ATTRIBUTES", ()):
        logger.warning("moto's SQS is not as this fix expects; receives stay linear in the queue's depth")
        return False

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period
        return bool(int(retention_period) + message.sent_timestamp / 1000 > unix_time())

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]
    return True


def speed_up_sqs_visibility() -> bool:
    """A receive that reads the clock once, not twice for every message in the queue; False where
    moto's code is not as expected.

    ``Queue.messages`` (the messages a receive may hand out) asks each message whether it is
    visible and not delayed, and each answer reads the clock through four datetime calls: with a
    backlog of 3,000 images, 16 % of the emulator's busy time went there (a py-spy profile of
    ``bench/ceiling.py --n 3000``). The same comparisons against one reading of the clock per call
    give the same list, as of the instant the call began."""
    from moto.core.utils import unix_time_millis
    from moto.sqs.models import Message, Queue

    # Each check as written against: one comparison of the clock with the attribute it names.
    expected = {"visible": "current_time > self.visible_at", "delayed": "current_time < self.delayed_until"}
    checks = {name: getattr(Message.__dict__.get(name), "fget", None) for name in expected}
    if not isinstance(Queue.__dict__.get("messages"), property) or not all(
        check is not None and expected[name] in inspect.getsource(check) for name, check in checks.items()
    ):
        logger.warning("moto's SQS is not as this fix expects; receives read the clock per message")
        return False

    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()
        # Message.visible: now > visible_at; Message.delayed: now < delayed_until.
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    Queue.messages = property(messages)  # type: ignore[method-assign,assignment]
    return True


# The queue's attributes that walk every message it holds.
COUNTS = (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
)
_sqs_call = threading.local()  # what the SQS call running in this thread needs of Queue.attributes


def speed_up_sqs_attributes() -> bool:
    """Sends and attribute reads that no longer walk the whole queue; False where moto's code is not
    as expected.

    - A send (``send_message``, ``send_message_batch``; S3's object events come this way) reads
      one attribute, ``ContentBasedDeduplication``, from ``Queue.attributes``, which builds all of
      them, the three counts included: each upload cost time in proportion to the messages
      already queued (13.7 ms per put at depth 0-500, 88.4 ms at 2500-3000; with this, 4.5-5.5 ms
      at any depth: bench/emulator_ingest.py, bench/RESULTS.md run 20). During a send the counts
      are not taken (they read 0 in the dictionary the send looks at and throws away).
    - ``get_queue_attributes`` with named attributes builds them all 1 + 2 x (names) times; during
      one call they are built once per queue (one snapshot, as SQS answers)."""
    from moto.sqs.models import Queue, SQSBackend

    properties = [Queue.__dict__.get(name) for name in (*COUNTS, "attributes")]
    calls = ("send_message", "send_message_batch", "get_queue_attributes")
    if not all(isinstance(p, property) and p.fget for p in properties) or not all(
        callable(getattr(SQSBackend, name, None)) for name in calls
    ):
        logger.warning("moto's SQS is not as this fix expects; sends stay linear in the queue's depth")
        return False

    for name, original in zip(COUNTS, properties[: len(COUNTS)], strict=True):

        def count(self: Any, _take: Any = original.fget) -> int:  # type: ignore[union-attr]
            return 0 if getattr(_sqs_call, "sending", False) else int(_take(self))

        setattr(Queue, name, property(count))

    build = properties[-1].fget  # type: ignore[union-attr]

    def attributes(self: Any) -> dict[str, Any]:
        built: dict[int, dict[str, Any]] | None = getattr(_sqs_call, "built", None)
        if built is None:
            return build(self)  # type: ignore[no-any-return]
        if id(self) not in built:
            built[id(self)] = build(self)
        return built[id(self)]

    Queue.attributes = property(attributes)  # type: ignore[method-assign,assignment]

    def within(name: str, flag: str, value: Callable[[], Any]) -> None:
        call = getattr(SQSBackend, name)

        @functools.wraps(call)
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            before = getattr(_sqs_call, flag, None)
            if not before:  # an outer call of this thread keeps its own (a batch's sends)
                setattr(_sqs_call, flag, value())
            try:
                return call(self, *args, **kwargs)
            finally:
                setattr(_sqs_call, flag, before)

        setattr(SQSBackend, name, wrapped)

    within("send_message", "sending", lambda: True)
    within("send_message_batch", "sending", lambda: True)
    within("get_queue_attributes", "built", dict)
    return True


def speed_up_dispatch() -> bool:
    """Remember which backend serves a host (a pure function of the host and moto's own files)."""
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    lookup = getattr(DomainDispatcherApplication, "get_backend_for_host", None)
    modules = getattr(backends, "list_of_moto_modules", None)
    if lookup is None or modules is None:
        logger.warning("moto's dispatcher is not as this fix expects; it stays uncached")
        return False
    known = tuple(modules())
    backends.list_of_moto_modules = lambda: known
    cached: dict[str | None, Any] = {}

    @functools.wraps(lookup)
    def get_backend_for_host(self: Any, host: str | None) -> Any:
        if host not in cached:
            cached[host] = lookup(self, host)
        return cached[host]

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]
    return True


def speed_up_action_lookup() -> bool:
    """Remember the methods of each of moto's handler classes; False where moto's code is not as
    expected.

    To tell whether a request's action is one it implements, moto's handler lists its class's
    methods on every call (``inspect.getmembers`` over the class and its bases): 3.5 % of the
    DynamoDB process's time under the job store's writes. The list is a function of the class,
    whose methods do not change once the server runs (this module's changes are made first)."""
    from moto.core import responses

    lookup = getattr(responses, "method_names_from_class", None)
    if lookup is None:
        logger.warning("moto's handlers are not as this fix expects; each call lists its class's methods")
        return False
    kept: dict[object, list[str]] = {}

    @functools.wraps(lookup)
    def method_names_from_class(clazz: object) -> list[str]:
        if clazz not in kept:
            kept[clazz] = lookup(clazz)
        return kept[clazz]

    responses.method_names_from_class = method_names_from_class  # type: ignore[attr-defined]
    return True


def quiet_request_log() -> None:
    if os.environ.get("VISIONQ_EMULATOR_LOG_REQUESTS") != "1":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)


def serve_keeping_connections(host: str, port: int) -> None:
    """moto's application under uvicorn: HTTP/1.1 connections kept open between requests."""
    import warnings

    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it points to a2wsgi, one more package
        import uvicorn.middleware.wsgi as uvicorn_wsgi

    uvicorn_wsgi.build_environ = _as_werkzeug_builds(uvicorn_wsgi.build_environ)
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server sets it (presigned URLs use it)
    app = DomainDispatcherApplication(create_backend_app)
    # Threads for the WSGI calls, made as needed: SQS long polls hold one each for up to 20 s
    # (two per worker, one per notifier), and werkzeug's server had no cap at all.
    served = uvicorn_wsgi.WSGIMiddleware(app, workers=256)  # type: ignore[attr-defined]
    if os.environ.get("VISIONQ_EMULATOR_INLINE_DYNAMODB", "1") != "0":
        served = inline_dynamodb(served, uvicorn_wsgi.build_environ)
    uvicorn.run(
        served,
        host=host,
        port=port,
        log_level="warning",
        access_log=os.environ.get("VISIONQ_EMULATOR_LOG_REQUESTS") == "1",
        timeout_graceful_shutdown=1,  # long polls in flight do not hold up a stop
        # Idle connections stay open a minute, as AWS endpoints keep them. aiohttp (aiobotocore)
        # drops its idle ones first (15 s); urllib3 (boto3) and the worker's own connections
        # (stores/http1.py) check a kept connection before reusing it, and the rare request that
        # meets a connection closing under it is sent again (by botocore, or by the worker's own).
        timeout_keep_alive=60,
    )


def _as_werkzeug_builds(build: Callable[..., MutableMapping[str, Any]]) -> Callable[..., MutableMapping[str, Any]]:
    """uvicorn's WSGI environ with what werkzeug's server adds and moto relies on:
    - ``RAW_URI``, the path as sent: without it moto decodes an S3 key's percent-escapes twice
      (``x%41.jpg`` would be stored as ``xA.jpg``, ``a%3Fb.jpg`` as ``a``);
    - ``wsgi.input_terminated``: uvicorn has read the whole body, so a chunked upload (no
      Content-Length) is read to its end instead of as empty."""

    def build_environ(scope: Any, message: Any, body: Any) -> MutableMapping[str, Any]:
        environ = build(scope, message, body)
        raw = (scope.get("raw_path") or scope["path"].encode("utf-8")).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        environ["RAW_URI"] = environ["REQUEST_URI"] = f"{raw}?{query}" if query else raw
        environ["wsgi.input_terminated"] = True
        return environ

    return build_environ


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    speed_up_sqs_receive()
    speed_up_sqs_visibility()
    speed_up_sqs_attributes()
    speed_up_dispatch()
    speed_up_action_lookup()
    speed_up_dynamodb_updates()
    speed_up_dynamodb_responses()
    speed_up_dynamodb_conditions()
    quiet_request_log()
    args = argv if argv is not None else sys.argv[1:]
    if os.environ.get("VISIONQ_EMULATOR_SERVER", "uvicorn") != "werkzeug":
        serve_keeping_connections(args[args.index("-H") + 1], int(args[args.index("-p") + 1]))
        return
    from moto.server import main as moto_main

    moto_main(args)


if __name__ == "__main__":
    main()
