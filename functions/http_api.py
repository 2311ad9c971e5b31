"""The HTTP functions: create a job, read a job, find a job by object key, health.

Handlers only translate: parse the request into a typed model, call one function of
``visionq.job_service``, shape the response. The same app serves local HTTP (uvicorn) and AWS
Lambda behind an API Gateway HTTP API (``handler``, through Mangum).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionq import __version__
from visionq.api_keys import ApiKey, ApiKeyStore, Unauthorized
from visionq.aws import boto3_client
from visionq.config import ApiSettings, load_settings
from visionq.errors import (
    ConfigError,
    InvalidRequest,
    JobNotFound,
    TransientError,
    VisionqError,
)
from visionq.job_service import OutputReader, create_upload_job, find_job_by_key, get_job
from visionq.jobs import Job
from visionq.models.registry import registry_from_settings
from visionq.stores.job_store import DynamoJobStore, JobStore

logger = logging.getLogger(__name__)

# Exception class -> (HTTP status, error code). Looked up along the class hierarchy, so a new
# subclass gets its parent's answer without another branch anywhere.
ERROR_RESPONSES: dict[type[Exception], tuple[int, str | None]] = {
    InvalidRequest: (400, None),
    Unauthorized: (401, "unauthorized"),
    JobNotFound: (404, "job_not_found"),
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


def job_view(job: Job) -> JobView:
    return JobView(
        job_id=job.job_id,
        status=str(job.status),
        key=job.key,
        model=job.model,
        created_at=job.created_at,
        updated_at=job.updated_at,
        result=job.result,
        error=ErrorBody(code=job.error.code, message=job.error.message) if job.error else None,
    )


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


MAX_BODY_BYTES = 16 * 1024  # a job request is a filename and a content type
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
) -> FastAPI:
    settings = settings or load_settings(ApiSettings)
    if jobs is None or keys is None:
        dynamodb = boto3_client("dynamodb", settings)
        jobs = jobs or DynamoJobStore(dynamodb, settings.jobs_table)
        keys = keys or ApiKeyStore(dynamodb, settings.jobs_table)
    s3_client = s3_client or boto3_client("s3", settings)
    if results is None and settings.database_url:
        from visionq.stores.result_store import PostgresResultStore

        results = PostgresResultStore(settings.database_url)

    registry = registry_from_settings(settings)

    app = FastAPI(title="visionq", version=__version__, description="Asynchronous computer vision on object storage.")
    app.state.keys = keys
    error_responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)
    }

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(413, "request_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

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
        )
        return JobCreated(
            job_id=ticket.job.job_id,
            status=str(ticket.job.status),
            key=ticket.job.key,
            upload=UploadForm(url=ticket.upload.url, fields=ticket.upload.fields),
            expires_at=ticket.expires_at,
        )

    @app.get("/v1/models", response_model=ModelList, responses=error_responses)
    def list_models(key: Caller) -> ModelList:
        return ModelList(default=registry.default, models=registry.names)

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=error_responses)
    def read_job(job_id: str, key: Caller) -> JobView:
        return job_view(get_job(job_id, owner=key.key_id, jobs=jobs, results=results))

    @app.get("/v1/jobs", response_model=JobView, responses=error_responses)
    def find_job(
        caller_key: Caller,
        key: Annotated[str, Query(min_length=1, max_length=1024, description="the object key")],
    ) -> JobView:
        return job_view(find_job_by_key(key, owner=caller_key.key_id, settings=settings, jobs=jobs, results=results))

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
