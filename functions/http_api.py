"""The HTTP functions: create a job, read a job, find a job by object key, health.

Handlers only translate: parse the request into a typed model, call one function of
``visionq.job_service``, shape the response. The same app serves local HTTP (uvicorn) and AWS
Lambda behind an API Gateway HTTP API (``handler``, through Mangum).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionq import __version__, batch_service
from visionq.api_keys import ApiKey, ApiKeyStore, Unauthorized
from visionq.aws import boto3_client
from visionq.batch_service import BatchItem, BatchState
from visionq.config import ApiSettings, load_settings
from visionq.console import install_console
from visionq.errors import (
    ConfigError,
    InvalidRequest,
    JobNotFound,
    TransientError,
    VisionqError,
)
from visionq.job_service import (
    OutputReader,
    UploadTicket,
    create_upload_job,
    find_job_by_key,
    get_job,
    renew_upload_ticket,
)
from visionq.jobs import Job, JobStatus, public_fields
from visionq.metrics import observe_request, render_latest
from visionq.models.registry import registry_from_settings
from visionq.stores.batch_store import DynamoBatchStore
from visionq.stores.job_store import DynamoJobStore, JobStore
from visionq.webhook_rules import SIGNATURE_HEADER, WebhookRules

logger = logging.getLogger(__name__)

# Exception class -> (HTTP status, error code). Looked up along the class hierarchy, so a new
# subclass gets its parent's answer without another branch anywhere.
ERROR_RESPONSES: dict[type[Exception], tuple[int, str | None]] = {
    InvalidRequest: (400, None),
    Unauthorized: (401, "unauthorized"),
    JobNotFound: (404, None),  # job_not_found, batch_not_found
    TransientError: (503, "service_unavailable"),
    ConfigError: (500, "internal_error"),
    VisionqError: (500, "internal_error"),
}


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=200, examples=["street.jpg"])
    content_type: str = Field(min_length=1, max_length=100, examples=["image/jpeg"])
    # A name from the model registry (GET /v1/models); unset: the registry's default.
    model: str | None = Field(default=None, min_length=1, max_length=64, examples=["caption"])
    # Announced here when the job ends (docs/webhooks.md): https, a public address.
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)


MAX_META_KEY_CHARS = 64
MAX_META_STRING_CHARS = 1024  # 16 fields of at most this per job: far under DynamoDB's 400 KB an item
META_INT_RANGE = 2**63  # what a client's integer fits (DynamoDB keeps 38 digits; JSON readers fewer)


def _storable_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The client's fields as a job record can keep them and JSON can give them back: short keys
    and strings, 64-bit integers, finite numbers (Python's JSON reads NaN and Infinity)."""
    for key, value in (meta or {}).items():
        if not 0 < len(key) <= MAX_META_KEY_CHARS:
            raise ValueError(f"a field name must have 1 to {MAX_META_KEY_CHARS} characters")
        if isinstance(value, str) and len(value) > MAX_META_STRING_CHARS:
            raise ValueError(f"field {key!r}: a string of at most {MAX_META_STRING_CHARS} characters")
        if isinstance(value, int) and not isinstance(value, bool) and not -META_INT_RANGE <= value < META_INT_RANGE:
            raise ValueError(f"field {key!r}: an integer within 64 bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {key!r}: a finite number")
    return meta


Meta = Annotated[dict[str, str | bool | int | float | None] | None, AfterValidator(_storable_meta)]


class BatchItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=200, examples=["frame-000012.jpg"])
    content_type: str = Field(min_length=1, max_length=100, examples=["image/jpeg"])
    # The client's own fields, kept with the job and returned with it (a frame's index and time).
    meta: Meta = Field(default=None, max_length=16)


class CreateBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemRequest] = Field(default_factory=list)
    model: str | None = Field(default=None, min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    meta: Meta = Field(default=None, max_length=32)
    # Members the client will add by uploading under the batch's prefix (they count towards completion).
    expected: int = Field(default=0, ge=0, le=1_000_000, strict=True)  # strict: not `true` as 1
    # Announced here once every member has ended.
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class UploadForm(BaseModel):
    url: str
    fields: dict[str, str]


class JobCreated(BaseModel):
    job_id: str
    status: str
    key: str
    upload: UploadForm
    expires_at: str


class BatchCreated(BaseModel):
    batch_id: str
    # Objects put here directly (any S3 client) join the batch.
    upload_prefix: str
    jobs: list[JobCreated]


class WebhookView(BaseModel):
    status: str  # pending | delivered | failed
    attempts: list[dict[str, Any]]


class WebhookSecret(BaseModel):
    secret: str
    header: str


class ModelList(BaseModel):
    default: str
    models: list[str]


class JobView(BaseModel):
    job_id: str
    status: str
    key: str
    model: str | None
    created_at: str
    updated_at: str
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    filename: str | None = None
    batch_id: str | None = None
    meta: dict[str, Any] | None = None
    webhook: WebhookView | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class BatchView(BaseModel):
    batch_id: str
    status: str  # open | complete
    model: str
    name: str | None
    created_at: str
    upload_prefix: str
    size: int
    expected: int
    total: int
    finished: int
    progress: float
    counts: dict[str, int]
    meta: dict[str, Any] | None
    webhook: WebhookView | None = None
    jobs: list[JobView]
    next_cursor: str | None


def job_view(job: Job) -> JobView:
    return JobView(**public_fields(job), webhook=_webhook_view(job.webhook, wanted=job.webhook_url is not None))


def _webhook_view(record: dict[str, Any] | None, *, wanted: bool) -> WebhookView | None:
    if record is None:
        return WebhookView(status="pending", attempts=[]) if wanted else None
    return WebhookView(status=str(record.get("status", "pending")), attempts=list(record.get("attempts", [])))


def batch_view(state: BatchState) -> BatchView:
    batch, progress = state.batch, state.progress
    return BatchView(
        batch_id=batch.batch_id,
        status="complete" if progress.complete(batch) else "open",
        model=batch.model,
        name=batch.name,
        created_at=batch.created_at,
        upload_prefix=batch.upload_prefix,
        size=batch.size,
        expected=batch.expected,
        total=progress.total,
        finished=progress.finished,
        progress=progress.fraction(batch),
        counts=dict(sorted(progress.counts.items())),
        meta=batch.meta,
        webhook=_webhook_view(batch.webhook, wanted=batch.webhook_url is not None),
        jobs=[job_view(job) for job in state.page.jobs],
        next_cursor=state.page.cursor,
    )


def job_created(ticket: UploadTicket) -> JobCreated:
    return JobCreated(
        job_id=ticket.job.job_id,
        status=str(ticket.job.status),
        key=ticket.job.key,
        upload=UploadForm(url=ticket.upload.url, fields=ticket.upload.fields),
        expires_at=ticket.expires_at,
    )


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


MAX_BODY_BYTES = 16 * 1024  # a job request is a filename and a content type
MAX_BATCH_BODY_BYTES = 1024 * 1024  # a batch request lists up to max_batch_items of them


class BodyLimit:
    """Request bodies over their route's limit get 413 before anything reads them: by their
    Content-Length, or, sent in chunks without one, once more has come than the limit (the body,
    at most that long, is then handed on as it came)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_BATCH_BODY_BYTES if scope["path"] == "/v1/batches" else MAX_BODY_BYTES
        too_large = error_response(413, "request_too_large", f"request bodies are limited to {limit} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > limit:
                await too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="a key from `visionq keys create`")


def caller(request: Request, presented: Annotated[str | None, Depends(API_KEY_HEADER)]) -> ApiKey:
    """The API key the request came with, authenticated (the dependency of every job route)."""
    keys: ApiKeyStore = request.app.state.keys
    return keys.authenticate(presented)


Caller = Annotated[ApiKey, Depends(caller)]


def create_app(
    settings: ApiSettings | None = None,
    *,
    jobs: JobStore | None = None,
    keys: ApiKeyStore | None = None,
    s3_client: Any = None,
    results: OutputReader | None = None,
    batches: DynamoBatchStore | None = None,
) -> FastAPI:
    settings = settings or load_settings(ApiSettings)
    if jobs is None or keys is None:
        dynamodb = boto3_client("dynamodb", settings)
        jobs = jobs or DynamoJobStore(dynamodb, settings.jobs_table)
        keys = keys or ApiKeyStore(dynamodb, settings.jobs_table)
    if batches is None:
        batches = DynamoBatchStore(boto3_client("dynamodb", settings), settings.jobs_table)
    s3_client = s3_client or boto3_client("s3", settings)
    if results is None and settings.database_url:
        from visionq.stores.result_store import PostgresResultStore

        results = PostgresResultStore(settings.database_url)

    registry = registry_from_settings(settings)
    webhooks = WebhookRules.from_settings(settings)

    app = FastAPI(title="visionq", version=__version__, description="Asynchronous computer vision on object storage.")
    app.state.keys = keys
    error_responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)
    }

    app.add_middleware(BodyLimit)

    @app.middleware("http")
    async def record_metrics(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            observe_request(route, status, time.perf_counter() - started)

    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        # Not behind API Gateway: there it would be public, and one container's numbers of many
        # (the functions' CloudWatch metrics and EMF lines are what counts there).
        @app.get("/metrics", include_in_schema=False)
        def metrics_endpoint() -> Response:
            """Prometheus text format: requests by route and status, latency (this process's)."""
            body, content_type = render_latest()
            return Response(body, media_type=content_type)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.post("/v1/jobs", status_code=201, response_model=JobCreated, responses=error_responses)
    def create_job(body: CreateJobRequest, key: Caller) -> JobCreated:
        ticket = create_upload_job(
            filename=body.filename,
            content_type=body.content_type,
            model=body.model,
            owner=key.key_id,
            registry=registry,
            settings=settings,
            jobs=jobs,
            s3_client=s3_client,
            webhook_url=webhooks.check(body.webhook_url) if body.webhook_url is not None else None,
        )
        return job_created(ticket)

    @app.post("/v1/jobs/{job_id}/upload", status_code=201, response_model=JobCreated, responses=error_responses)
    def renew_upload(job_id: str, key: Caller) -> JobCreated:
        """A fresh presigned upload for a job still PENDING (an expired one, a resumed submission)."""
        return job_created(
            renew_upload_ticket(job_id, owner=key.key_id, settings=settings, jobs=jobs, s3_client=s3_client)
        )

    @app.post("/v1/batches", status_code=201, response_model=BatchCreated, responses=error_responses)
    def create_batch(body: CreateBatchRequest, key: Caller) -> BatchCreated:
        created = batch_service.create_batch(
            [BatchItem(filename=i.filename, content_type=i.content_type, meta=i.meta) for i in body.items],
            owner=key.key_id,
            model=body.model,
            registry=registry,
            settings=settings,
            batches=batches,
            s3_client=s3_client,
            name=body.name,
            meta=body.meta,
            expected=body.expected,
            webhook_url=webhooks.check(body.webhook_url) if body.webhook_url is not None else None,
        )
        return BatchCreated(
            batch_id=created.batch.batch_id,
            upload_prefix=created.batch.upload_prefix,
            jobs=[job_created(ticket) for ticket in created.tickets],
        )

    @app.get("/v1/batches/{batch_id}", response_model=BatchView, responses=error_responses)
    def read_batch(
        batch_id: str,
        key: Caller,
        # At most 100: each member carries its result summary, and Lambda answers at most 6 MB.
        limit: Annotated[int, Query(ge=0, le=100, description="members per page; 0: counts only")] = 100,
        cursor: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> BatchView:
        state = batch_service.read_batch(batch_id, owner=key.key_id, batches=batches, limit=limit, cursor=cursor)
        return batch_view(state)

    @app.get("/v1/webhooks/secret", response_model=WebhookSecret, responses=error_responses)
    def webhook_secret(key: Caller) -> WebhookSecret:
        """The secret this key's notices are signed with (docs/webhooks.md shows how to check one)."""
        return WebhookSecret(secret=webhooks.secret_for(key.key_id), header=SIGNATURE_HEADER)

    @app.get("/v1/models", response_model=ModelList, responses=error_responses)
    def list_models(key: Caller) -> ModelList:
        return ModelList(default=registry.default, models=registry.names)

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=error_responses)
    def read_job(job_id: str, key: Caller) -> JobView:
        return job_view(get_job(job_id, owner=key.key_id, jobs=jobs, results=results))

    @app.get("/v1/jobs", response_model=JobView | JobList, responses=error_responses)
    def find_or_list_jobs(
        caller_key: Caller,
        key: Annotated[str | None, Query(min_length=1, max_length=1024, description="an object key: its job")] = None,
        status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
        model: Annotated[str | None, Query(max_length=64, description="only jobs of this model")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> JobView | JobList:
        """With ``key``: the job of that object. Without: this key's jobs, newest first."""
        if key is not None:
            return job_view(
                find_job_by_key(key, owner=caller_key.key_id, settings=settings, jobs=jobs, results=results)
            )
        page = batches.recent_jobs(
            caller_key.key_id, limit=limit, cursor=cursor, status=str(status) if status else None, model=model
        )
        return JobList(jobs=[job_view(job) for job in page.jobs], next_cursor=page.cursor)

    install_console(app)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VisionqError)
    async def on_domain_error(request: Request, exc: VisionqError) -> JSONResponse:
        status, code = _lookup(type(exc))
        if status >= 500:
            logger.error("request failed: %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
            message = "the service could not complete the request; try again later"
        else:
            message = exc.message
        return error_response(status, code or exc.code, message)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "the request is invalid: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's, for a body json cannot read (an integer of 5000 digits)
            return error_response(422, "invalid_request", "the request is invalid: the body is not JSON we can read")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error: %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "the service could not complete the request")


def _lookup(cls: type[Exception]) -> tuple[int, str | None]:
    for klass in cls.__mro__:
        if klass in ERROR_RESPONSES:
            return ERROR_RESPONSES[klass]
    return 500, "internal_error"


_lambda_handler: Any = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """AWS Lambda entry point (API Gateway HTTP API, payload v2). Built on first call, then reused."""
    global _lambda_handler
    if _lambda_handler is None:
        from mangum import Mangum

        _lambda_handler = Mangum(create_app(), lifespan="off")
    result: dict[str, Any] = _lambda_handler(event, context)
    return result
