"""`visionq`: one entry point for the local stack, the pieces on their own, and the client."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from visionq import cli_batches
from visionq.client import ApiError, NotTheApi
from visionq.config import STATE_DIR
from visionq.errors import ConfigError, VisionqError
from visionq.logs import WORKER_CANNOT_START, WORKER_STOPPED

logger = logging.getLogger("visionq")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)  # defaults from the environment are read here
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"visionq: {exc.message}", file=sys.stderr)
        return 2
    except VisionqError as exc:  # a bad file, an over-long clip, a batch not found...
        print(f"visionq: {exc.message}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"visionq: {exc}", file=sys.stderr)
        return 1
    except NotTheApi as exc:
        print(f"visionq: {exc.message}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"visionq: the API answered {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"visionq: cannot reach the API ({exc}); is `visionq up` running?", file=sys.stderr)
        return 1
    except OSError as exc:  # a file gone or unreadable between listing it and reading it
        print(f"visionq: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionq", description="Asynchronous computer vision on object storage.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack in the foreground (emulator, PostgreSQL, API, worker)")
    up.add_argument("--model", default=os.environ.get("VISIONQ_MODEL", "yolo11n.pt"))
    up.add_argument("--api-port", type=int, default=None)
    up.add_argument("--workers", type=int, default=1, help="worker processes, each restarted if it dies (default 1)")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="bring the stack up, detect objects in sample images, shut down")
    demo.add_argument("--model", default=os.environ.get("VISIONQ_MODEL", "yolo11n.pt"))
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for annotated images")
    demo.add_argument("images", nargs="*", type=Path, help="images or folders (default: Ultralytics' samples)")
    demo.set_defaults(func=cmd_demo)

    cli_batches.add_commands(sub)  # submit, batch, render

    status = sub.add_parser("status", help="print a job as JSON")
    status.add_argument("job_id")
    status.set_defaults(func=cmd_status)

    worker = sub.add_parser("worker", help="run a worker (configured by environment)")
    worker.set_defaults(func=cmd_worker)

    stats = sub.add_parser("stats", help="metrics in the terminal: queue depth and age, images/s, stages, failures")
    stats.add_argument("urls", nargs="*", help="metrics endpoints (default: the API's and the local stack's workers')")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between the two scrapes (0: one)")
    stats.set_defaults(func=cmd_stats)

    notifier = sub.add_parser("notifier", help="deliver webhooks of ended jobs and batches (configured by environment)")
    notifier.set_defaults(func=cmd_notifier)

    api = sub.add_parser("api", help="serve the HTTP API (configured by environment)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    keys = sub.add_parser("keys", help="API keys: create (printed once), list, revoke")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("target", nargs="?", help="create: a name for the key; revoke: the key id")
    keys.set_defaults(func=cmd_keys)

    dlq = sub.add_parser("dlq", help="the dead-letter queue: list parked messages, or send them back")
    dlq.add_argument("action", choices=["list", "redrive"])
    dlq.set_defaults(func=cmd_dlq)

    again = sub.add_parser("reprocess", help="run a model over objects already in the bucket (new results beside old)")
    again.add_argument("url", help="s3://bucket/prefix of the objects")
    again.add_argument("--model", required=True, help="a model name from the registry (VISIONQ_MODELS_FILE)")
    again.add_argument("--wait", action="store_true", help="follow the jobs until they end")
    again.add_argument("--timeout", type=float, default=3600)
    again.set_defaults(func=cmd_reprocess)

    boot = sub.add_parser("bootstrap", help="create the bucket, queues, table and schema (idempotent)")
    boot.add_argument("--bucket", default=os.environ.get("VISIONQ_BUCKET"))
    boot.add_argument("--queue", default=os.environ.get("VISIONQ_QUEUE_NAME"), help="queue name")
    boot.add_argument("--table", default=os.environ.get("VISIONQ_JOBS_TABLE"))
    boot.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    boot.add_argument("--upload-prefix", default=os.environ.get("VISIONQ_UPLOAD_PREFIX"))
    # Unset: what template.yaml declares (infra/template_settings.py), as on AWS.
    boot.add_argument("--max-receive-count", type=int, default=None)
    boot.add_argument("--visibility-timeout", type=int, default=None)
    boot.add_argument(
        "--schema-only", action="store_true", help="only apply the PostgreSQL migrations (a stack deployed by SAM)"
    )
    boot.set_defaults(func=cmd_bootstrap)
    return parser


def cmd_up(args: argparse.Namespace) -> int:
    from visionq.local_stack import LocalStack, ServiceDied

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {args.workers}")
    _console_logging()
    stack = LocalStack(
        state_dir=STATE_DIR,
        model=args.model,
        api_port=args.api_port,
        database_url=os.environ.get("DATABASE_URL"),
        workers=args.workers,
    )
    _raise_on_sigterm()
    try:
        stack.start()
        print("visionq is up:")
        for key in (
            "API_URL",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "DATABASE_URL",
            "VISIONQ_BUCKET",
            "VISIONQ_QUEUE_URL",
            "VISIONQ_JOBS_TABLE",
        ):
            print(f"  {key}={stack.env[key]}")
        print(f"  settings written to {STATE_DIR / 'local.env'}; logs in {STATE_DIR}/*.log")
        print(
            f"  the API, {args.workers} worker(s) and the notifier are restarted if they die; pids in {STATE_DIR}/*.pid"
        )
        print(f"  the console: {stack.env['API_URL']}/ (API key: VISIONQ_API_KEY in local.env); metrics: visionq stats")
        print("  try: visionq submit path/to/image.jpg --wait      (Ctrl-C stops everything)", flush=True)
        while True:
            stack.supervise()  # restarts what died; never blocks
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping (workers first finish what they hold)...", flush=True)
    except ServiceDied as exc:
        print(f"visionq: {exc}", file=sys.stderr)
        return 1
    finally:
        # Stopping takes up to a minute (workers finish what they hold); a second Ctrl-C or SIGTERM
        # must not cut it short and leave the emulator or PostgreSQL running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from visionq.demo import run_demo

    _console_logging()
    _raise_on_sigterm()
    return run_demo(model=args.model, images=args.images, out_dir=args.out, state_dir=STATE_DIR)


def cmd_status(args: argparse.Namespace) -> int:
    from visionq.client import client_from_settings

    print(json.dumps(client_from_settings().get_job(args.job_id), indent=2))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from visionq.config import WorkerSettings, load_settings
    from visionq.logs import configure_logging
    from visionq.worker import serve_worker

    configure_logging(os.environ.get("VISIONQ_LOG_LEVEL", "INFO"))
    settings = load_settings(WorkerSettings)
    try:
        cpus = settings.model_cpu_split
        if cpus is not None:  # the model's process pins itself to cpus[0] (models/own_process.py)
            from visionq.cpus import pin_this_process

            pin_this_process(cpus[1])
        asyncio.run(serve_worker(settings))
    except VisionqError as exc:
        logger.error("%s %s", WORKER_CANNOT_START, exc.message)
        return 2
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            logger.exception("worker failed")
            return 1
        # Raised inside the worker's running stages (the first receive finds no credentials, say):
        # the one sentence, as for an error found before they start.
        logger.error("%s %s", WORKER_STOPPED, known.message)
        return 2
    return 0


def _known_error(exc: BaseException) -> VisionqError | None:
    """The first of our own errors when ``exc`` is one, or a group made only of them."""
    if isinstance(exc, VisionqError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_known_error(inner) for inner in exc.exceptions]
        if found and all(found):
            return found[0]
    return None


def cmd_stats(args: argparse.Namespace) -> int:
    from visionq.config import ClientSettings, load_settings
    from visionq.stats import run_stats

    urls = list(args.urls)
    if not urls:
        try:
            settings = load_settings(ClientSettings)
        except ConfigError as exc:
            raise ConfigError("no metrics endpoints given and no local stack running: run `visionq up` first") from exc
        urls = [settings.api_url, *filter(None, settings.metrics_urls.split(","))]
    print(run_stats(urls, interval=args.interval))
    return 0


def cmd_notifier(args: argparse.Namespace) -> int:
    import threading

    from visionq.config import NotifierSettings, load_settings
    from visionq.logs import configure_logging
    from visionq.notifications import serve_notifier

    configure_logging(os.environ.get("VISIONQ_LOG_LEVEL", "INFO"))
    settings = load_settings(NotifierSettings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    serve_notifier(settings, stop)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from functions.http_api import create_app
    from visionq.config import ApiSettings, load_settings
    from visionq.logs import configure_logging

    configure_logging(os.environ.get("VISIONQ_LOG_LEVEL", "INFO"))
    app = create_app(load_settings(ApiSettings))
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from visionq.api_keys import ApiKeyStore
    from visionq.aws import boto3_client
    from visionq.config import KeySettings, load_settings

    settings = load_settings(KeySettings)
    store = ApiKeyStore(boto3_client("dynamodb", settings), settings.jobs_table)
    if args.action == "create":
        key, record = store.create(args.target or "unnamed")
        print(f"created key {record.key_id} ({record.name}); it is shown only now:\n{key}")
    elif args.action == "list":
        for record in store.list_keys():
            state = "revoked" if record.revoked else "active"
            print(f"{record.key_id}  {state:<8} {record.created_at}  {record.name}")
    else:
        if not args.target:
            raise ConfigError("revoke needs the key id (see `visionq keys list`)")
        if not store.revoke(args.target):
            print(f"visionq: no key {args.target!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.target}")
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    from aiobotocore.session import get_session

    from visionq import dead_letters
    from visionq.aws import aio_client_kwargs, boto3_client
    from visionq.config import DeadLetterSettings, load_settings
    from visionq.stores.job_store import DynamoJobStore
    from visionq.stores.queue import SqsQueue

    settings = load_settings(DeadLetterSettings)
    jobs = DynamoJobStore(boto3_client("dynamodb", settings), settings.jobs_table)

    async def run() -> None:
        async with get_session().create_client(**aio_client_kwargs("sqs", settings)) as sqs:
            dlq, queue = SqsQueue(sqs, settings.dlq_url), SqsQueue(sqs, settings.queue_url)
            if args.action == "list":
                letters = await dead_letters.peek(dlq, settings.upload_prefix, release=True)
                for letter in letters:
                    print(
                        f"{letter.message.message_id}  received {letter.message.receive_count}x  "
                        f"jobs {','.join(letter.job_ids) or '-'}  keys {','.join(letter.keys) or '-'}"
                    )
                print(f"{len(letters)} message(s) in the dead-letter queue")
            else:
                moved = await dead_letters.redrive(dlq, queue, jobs, settings.upload_prefix)
                print(f"sent {moved} message(s) back to the work queue")

    asyncio.run(run())
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from visionq import reprocess
    from visionq.aws import boto3_client
    from visionq.config import ReprocessSettings, load_settings
    from visionq.jobs import JobStatus
    from visionq.models.registry import UnknownModel, registry_from_settings

    settings = load_settings(ReprocessSettings)
    try:
        registry_from_settings(settings).spec(args.model)
    except UnknownModel as exc:  # stops here, naming the models there are
        raise ConfigError(exc.message) from exc
    bucket, prefix = reprocess.parse_s3_url(args.url)
    s3, dynamodb = boto3_client("s3", settings), boto3_client("dynamodb", settings)
    objects = [replace(o, model=args.model) for o in reprocess.stored_objects(s3, bucket, prefix)]
    report = reprocess.reprocess(
        objects,
        upload_prefix=settings.upload_prefix,
        dynamodb=dynamodb,
        table=settings.jobs_table,
        sqs=boto3_client("sqs", settings),
        queue_url=settings.queue_url,
    )
    print(f"{report.listed} object(s) under {args.url}: {report.sent} queued for {args.model}, {report.already} known")
    if not args.wait:
        return 0
    job_ids = reprocess.job_ids_of(objects, upload_prefix=settings.upload_prefix)
    counts = reprocess.watch(dynamodb, settings.jobs_table, job_ids, timeout=args.timeout)
    print(", ".join(f"{count} {status}" for status, count in sorted(counts.items())))
    return 0 if counts.get(JobStatus.SUCCEEDED, 0) == len(job_ids) else 1


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from infra.bootstrap import StackNames, bootstrap_aws
    from visionq.aws import boto3_client
    from visionq.config import AwsSettings

    if args.schema_only:
        # A deployed stack: the template made the AWS resources; only PostgreSQL needs its migrations.
        if not args.database_url:
            raise ConfigError("bootstrap --schema-only needs --database-url (or DATABASE_URL)")
        return _migrate(args.database_url)
    missing = [
        flag
        for flag, value in (("--bucket", args.bucket), ("--queue", args.queue), ("--table", args.table))
        if not value
    ]
    if missing:
        raise ConfigError(
            "bootstrap needs " + ", ".join(missing) + " (or VISIONQ_BUCKET, VISIONQ_QUEUE_NAME, VISIONQ_JOBS_TABLE)"
        )
    aws = AwsSettings()
    given = {
        name: value
        for name, value in (
            ("upload_prefix", args.upload_prefix),
            ("max_receive_count", args.max_receive_count),
            ("visibility_timeout", args.visibility_timeout),
        )
        if value is not None
    }
    names = StackNames(bucket=args.bucket, queue=args.queue, jobs_table=args.table, **given)
    resources = bootstrap_aws(
        names, s3=boto3_client("s3", aws), sqs=boto3_client("sqs", aws), dynamodb=boto3_client("dynamodb", aws)
    )
    if args.database_url and _migrate(args.database_url):
        return 1
    print(f"VISIONQ_BUCKET={resources.bucket}")
    print(f"VISIONQ_QUEUE_URL={resources.queue_url}")
    print(f"VISIONQ_DLQ_URL={resources.dead_letter_queue_url}")
    print(f"VISIONQ_JOBS_TABLE={resources.jobs_table}")
    print(f"VISIONQ_NOTIFY_QUEUE_URL={resources.notify_queue_url}")
    return 0


def _migrate(database_url: str) -> int:
    """Apply the pending PostgreSQL migrations; 0, or 1 with one line saying why not."""
    from infra.bootstrap import bootstrap_database

    try:
        schema = bootstrap_database(database_url)
    except VisionqError as exc:  # a changed or failed migration, PostgreSQL unreachable
        print(f"visionq: {exc.message}", file=sys.stderr)
        return 1
    print(schema, file=sys.stderr)  # stdout stays KEY=VALUE lines
    return 0


def _console_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("botocore", "urllib3", "httpx", "ultralytics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _raise_on_sigterm() -> None:
    """SIGTERM stops the foreground commands the way Ctrl-C does, through their `finally`."""

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
