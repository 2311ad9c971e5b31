"""Settings, read once at start-up, failing fast with the name of what is missing.

Resource names (bucket, queue, table, database) have no defaults: a deployed function that
silently pointed at a table called "jobs" would be worse than one that refuses to start. The
local stack writes every name explicitly into `.visionq/local.env`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from visionq.errors import ConfigError

STATE_DIR = Path(".visionq")  # the local stack's state, logs and settings; the client's batch manifests
LOCAL_ENV_FILE = STATE_DIR / "local.env"

# Defaults, in one place: the settings below, `visionq bootstrap` and the local stack use these.
DEFAULT_UPLOAD_PREFIX = "uploads/"
DEFAULT_VISIBILITY_TIMEOUT = 120  # seconds; the worker extends it while a job runs
# Deliveries before SQS parks a message in the dead-letter queue; the worker gives up on a job
# (FAILED) after DEFAULT_MAX_ATTEMPTS, below this, so the job ends before its message is parked.
DEFAULT_MAX_RECEIVE_COUNT = 5
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_JOB_TTL_DAYS = 7
DEFAULT_MODEL_WEIGHTS = "yolo11n.pt"  # where there is network, Ultralytics fetches it on first use


@dataclass(frozen=True)
class ImageFormat:
    name: str  # Pillow's name for it; images.py recognises each by its bytes and tries only these
    content_type: str  # what a client declares for an upload
    extensions: tuple[str, ...]  # what the upload's filename must end in


# The one list of formats we accept: the decoder, the API's checks and its docs derive from it.
IMAGE_FORMATS = (
    ImageFormat("JPEG", "image/jpeg", (".jpg", ".jpeg")),
    ImageFormat("PNG", "image/png", (".png",)),
    ImageFormat("WEBP", "image/webp", (".webp",)),
    ImageFormat("BMP", "image/bmp", (".bmp",)),
    ImageFormat("TIFF", "image/tiff", (".tif", ".tiff")),
)
IMAGE_CONTENT_TYPES = {f.content_type: f for f in IMAGE_FORMATS}


def image_content_type(filename: str) -> str | None:
    """The content type of a file visionq accepts as an image, by its name's extension; else None."""
    lower = filename.lower()
    return next((f.content_type for f in IMAGE_FORMATS if lower.endswith(f.extensions)), None)


class AwsSettings(BaseSettings):
    """Where AWS is. ``AWS_ENDPOINT_URL`` (the standard variable) points everything at an emulator."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    aws_endpoint_url: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL")
    # botocore's per-service variables for the services visionq uses, as fields so that an env file
    # gives them too (the local stack's `local.env` puts DynamoDB on an emulator process of its own).
    aws_endpoint_url_s3: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL_S3")
    aws_endpoint_url_sqs: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL_SQS")
    aws_endpoint_url_dynamodb: str | None = Field(default=None, validation_alias="AWS_ENDPOINT_URL_DYNAMODB")
    aws_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    # Credentials that come with the settings (the local stack's env file for operator commands);
    # unset: boto3's own chain (environment, profile, instance or task role).
    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(default=None, validation_alias="AWS_SECRET_ACCESS_KEY")

    def endpoint_for(self, service: str) -> str | None:
        """Where ``service`` is: ``AWS_ENDPOINT_URL_<SERVICE>`` (botocore's own per-service variable,
        e.g. ``AWS_ENDPOINT_URL_S3``) if set, else ``AWS_ENDPOINT_URL``, else AWS itself. Lets one
        stack mix endpoints: LocalStack for S3 and SQS with moto's DynamoDB, or presigned URLs
        signed for the host's name of a container."""
        variable = f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_')}"
        specific = getattr(self, variable.lower(), None) or os.environ.get(variable)
        return specific or self.aws_endpoint_url

    def credentials(self) -> dict[str, str]:
        """Keyword arguments for a boto3/aiobotocore client: the credentials given here, if any."""
        if self.aws_access_key_id is None or self.aws_secret_access_key is None:
            return {}
        return {
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key.get_secret_value(),
        }


class LocalEnvSettings(AwsSettings):
    """Settings of the operator commands (keys, dlq, reprocess, submit, status): the environment
    first, then the running local stack's env file, so they work against `visionq up` as they are."""

    model_config = SettingsConfigDict(env_file=LOCAL_ENV_FILE, env_prefix="", extra="ignore", populate_by_name=True)


class WebhookSettings(AwsSettings):
    """Who may receive completion notices (webhooks/): the rules the API checks a URL against when
    a job or batch names one, and the notifier again before every delivery."""

    # Signs every notice (HMAC-SHA256); each API key gets its own secret derived from it
    # (GET /v1/webhooks/secret). Unset: requests naming a webhook are refused.
    webhook_secret: SecretStr | None = Field(default=None, validation_alias="VISIONQ_WEBHOOK_SECRET")
    # Plain http to a loopback address (the local stack's receivers); https only otherwise.
    webhook_allow_http_loopback: bool = Field(default=False, validation_alias="VISIONQ_WEBHOOK_ALLOW_HTTP_LOOPBACK")
    # Comma-separated networks (CIDR) a receiver may resolve to although private (a receiver in
    # your own VPC); every private, loopback and link-local address is refused otherwise.
    webhook_allowed_networks: str = Field(default="", validation_alias="VISIONQ_WEBHOOK_ALLOWED_NETWORKS")
    # Comma-separated exact host names admitted whatever they resolve to.
    webhook_allowed_hosts: str = Field(default="", validation_alias="VISIONQ_WEBHOOK_ALLOWED_HOSTS")
    # Comma-separated SNS topic ARNs a job or batch may name as its webhook_url instead of a URL.
    webhook_sns_topics: str = Field(default="", validation_alias="VISIONQ_WEBHOOK_SNS_TOPICS")


class NotifierSettings(WebhookSettings):
    """The notifier (`visionq notifier`, functions/notifier.py): it delivers completion notices."""

    notify_queue_url: str = Field(validation_alias="VISIONQ_NOTIFY_QUEUE_URL")
    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")
    # Attempts per notice (the first included); retries wait base * 2^n seconds, with full jitter,
    # at most cap (SQS delays a message by at most 900 s).
    webhook_max_attempts: int = Field(default=6, ge=1, le=20, validation_alias="VISIONQ_WEBHOOK_MAX_ATTEMPTS")
    webhook_backoff_seconds: float = Field(default=30.0, gt=0, validation_alias="VISIONQ_WEBHOOK_BACKOFF_SECONDS")
    webhook_backoff_cap_seconds: float = Field(
        default=900.0, gt=0, le=900, validation_alias="VISIONQ_WEBHOOK_BACKOFF_CAP_SECONDS"
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=30, validation_alias="VISIONQ_WEBHOOK_TIMEOUT_SECONDS")
    # Deliveries in flight at once (each a thread: a slow receiver holds one, never the others).
    notifier_concurrency: int = Field(default=16, ge=1, le=256, validation_alias="VISIONQ_NOTIFIER_CONCURRENCY")


class ApiSettings(WebhookSettings):
    """What the HTTP functions need: where uploads go and where jobs are recorded."""

    bucket: str = Field(validation_alias="VISIONQ_BUCKET")
    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")
    upload_prefix: str = Field(default=DEFAULT_UPLOAD_PREFIX, validation_alias="VISIONQ_UPLOAD_PREFIX")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, validation_alias="VISIONQ_MAX_UPLOAD_BYTES")
    upload_expiry_seconds: int = Field(default=600, validation_alias="VISIONQ_UPLOAD_EXPIRY_SECONDS")
    job_ttl_days: int = Field(default=DEFAULT_JOB_TTL_DAYS, validation_alias="VISIONQ_JOB_TTL_DAYS")
    # Jobs one POST /v1/batches may create (each gets a presigned upload in the answer).
    max_batch_items: int = Field(default=1000, ge=1, le=5000, validation_alias="VISIONQ_MAX_BATCH_ITEMS")
    # The models a job may ask for (models/registry.py): a registry file, else one model, "default".
    models_file: Path | None = Field(default=None, validation_alias="VISIONQ_MODELS_FILE")
    model: str = Field(default=DEFAULT_MODEL_WEIGHTS, validation_alias="VISIONQ_MODEL")
    # Optional: where the full results are, for jobs whose summary in the job record was cut short.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")


class WorkerSettings(AwsSettings):
    """What the worker needs: the queue it drains and the two stores it writes."""

    queue_url: str = Field(validation_alias="VISIONQ_QUEUE_URL")
    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")
    database_url: str = Field(validation_alias="DATABASE_URL")
    upload_prefix: str = Field(default=DEFAULT_UPLOAD_PREFIX, validation_alias="VISIONQ_UPLOAD_PREFIX")
    # The model registry (models/registry.py); without one, the worker serves one Ultralytics model,
    # "default", from VISIONQ_MODEL (with VISIONQ_IMAGE_SIZE and VISIONQ_CONFIDENCE).
    models_file: Path | None = Field(default=None, validation_alias="VISIONQ_MODELS_FILE")
    # Comma-separated names of the registry's models this worker serves; unset: all of them.
    serve_models: str | None = Field(default=None, validation_alias="VISIONQ_SERVE_MODELS")
    # Where weights from s3:// URIs are cached (models/weights.py); unset: ~/.cache/visionq/weights.
    weights_cache: Path | None = Field(default=None, validation_alias="VISIONQ_WEIGHTS_CACHE")
    model: str = Field(default=DEFAULT_MODEL_WEIGHTS, validation_alias="VISIONQ_MODEL")
    device: str | None = Field(default=None, validation_alias="VISIONQ_DEVICE")
    image_size: int | None = Field(default=None, validation_alias="VISIONQ_IMAGE_SIZE")  # None: the model's own
    confidence: float = Field(default=0.25, validation_alias="VISIONQ_CONFIDENCE")
    # Ultralytics models on a CPU: "auto" runs them on ONNX Runtime (exported once, cached beside the
    # weights; measured faster here, bench/RESULTS.md), "torch" on PyTorch eager, "onnx" forces it.
    backend: str = Field(default="auto", validation_alias="VISIONQ_BACKEND")
    # On ONNX Runtime, this many sessions of the model, each running a batch at once (unset: one
    # per core, each on one thread; 1: one session on every core). models/onnx_export.onnx_sessions.
    onnx_sessions: int | None = Field(default=None, ge=1, validation_alias="VISIONQ_ONNX_SESSIONS")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, validation_alias="VISIONQ_MAX_IMAGE_BYTES")
    max_image_pixels: int = Field(default=50_000_000, validation_alias="VISIONQ_MAX_IMAGE_PIXELS")
    # Throughput knobs (see the README): a batch runs when full or when its oldest image has
    # waited max_wait_ms, and at once when nothing else is on its way.
    # None: 8 on a GPU; 1 on a CPU, where batching was measured to lose (bench/RESULTS.md).
    max_batch: int | None = Field(default=None, ge=1, validation_alias="VISIONQ_MAX_BATCH")
    max_wait_ms: float = Field(default=20.0, ge=0, validation_alias="VISIONQ_MAX_WAIT_MS")
    # Messages held at once. None: 32, or more for big batches (poller.default_prefetch).
    prefetch: int | None = Field(default=None, ge=1, validation_alias="VISIONQ_PREFETCH")
    receivers: int = Field(default=2, ge=1, validation_alias="VISIONQ_RECEIVERS")  # concurrent long-polls
    decode_workers: int = Field(default=2, ge=1, validation_alias="VISIONQ_DECODE_WORKERS")
    # Decode in this many processes of their own (decode_pool.py): an image that crashes the decoder
    # fails its job (decoder_crashed) instead of killing the worker (on Lambda: the runtime, which
    # would send every record of the event back). 0: in threads (decode_workers). Unset: one per
    # core this process may run on (at least decode_workers).
    decode_processes: int | None = Field(default=None, ge=0, validation_alias="VISIONQ_DECODE_PROCESSES")
    # A decode process that has spent this long on one image is killed; the image is tried once
    # more alone, then its job fails (decode_timeout). A 50 MP JPEG decodes in about a second.
    decode_timeout_seconds: float = Field(default=60.0, gt=0, validation_alias="VISIONQ_DECODE_TIMEOUT_SECONDS")

    @property
    def decode_processes_wanted(self) -> int:
        if self.decode_processes is not None:
            return self.decode_processes
        return max(self.decode_workers, len(os.sched_getaffinity(0)))

    torch_threads: int | None = Field(default=None, ge=1, validation_alias="VISIONQ_TORCH_THREADS")
    # Each model in a process of its own (models/own_process.py): its Python never waits on the
    # worker's for the GIL, and a crash in it fails the image, not the worker. Never on Lambda.
    model_process: bool = Field(default=False, validation_alias="VISIONQ_MODEL_PROCESS")

    @property
    def model_process_wanted(self) -> bool:
        return self.model_process and not os.environ.get("AWS_LAMBDA_FUNCTION_NAME")

    # JPEG pixels decoded by the model's process on its device (models/device_decode.py): the
    # worker only checks their header. auto: for a model in its own process on a GPU (nvjpeg);
    # on: for a model in its own process wherever it runs (on a CPU this moves the decode into the
    # model's process, for tests and measurement); off: the worker decodes every image.
    device_decode: Literal["auto", "on", "off"] = Field(default="auto", validation_alias="VISIONQ_DEVICE_DECODE")
    # The network's input (an Ultralytics letterbox) made on the model's device from pixels already
    # there, instead of on the host and copied (models/letterbox.py). auto: for a model in its own
    # process on a GPU, once a check at its start finds the same input as Ultralytics'; on: for a
    # model in its own process wherever it runs (on a CPU, for tests and measurement); off: never.
    device_letterbox: Literal["auto", "on", "off"] = Field(default="auto", validation_alias="VISIONQ_DEVICE_LETTERBOX")

    # CPUs for the model's process alone, such as "1" (cpus.py); the worker and its decode processes
    # (and, locally, the emulator and PostgreSQL) run on the others. Needs model_process.
    model_cpus: str | None = Field(default=None, validation_alias="VISIONQ_MODEL_CPUS")

    @functools.cached_property
    def model_cpu_split(self) -> tuple[frozenset[int], frozenset[int]] | None:
        """(the model's CPUs, the rest) or None; ConfigError for a value that cannot be honoured.
        Worked out once, before the worker pins itself to the rest (which changes what is usable)."""
        from visionq.cpus import SETTING, split_cpus

        if self.model_cpus and not self.model_process_wanted:
            raise ConfigError(
                f"{SETTING} needs VISIONQ_MODEL_PROCESS=1: only a model in its own process has cores of its own"
            )
        return split_cpus(self.model_cpus)

    # One message at a time, batch 1, no overlap: the same code path, for comparison.
    naive: bool = Field(default=False, validation_alias="VISIONQ_NAIVE")
    visibility_timeout: int = Field(default=DEFAULT_VISIBILITY_TIMEOUT, validation_alias="VISIONQ_VISIBILITY_TIMEOUT")
    # Deliveries after which a job that keeps failing is marked FAILED; keep it below the queue's
    # maxReceiveCount so the job has its terminal state before SQS moves the message to the DLQ.
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, validation_alias="VISIONQ_MAX_ATTEMPTS")
    poll_wait_seconds: int = Field(default=20, validation_alias="VISIONQ_POLL_WAIT_SECONDS")
    # The dead-letter queue to sweep (jobs of parked messages become FAILED); unset: no sweeping.
    dlq_url: str | None = Field(default=None, validation_alias="VISIONQ_DLQ_URL")
    dlq_sweep_seconds: float = Field(default=30.0, validation_alias="VISIONQ_DLQ_SWEEP_SECONDS")
    # A job still unfinished this long after its message arrived is FAILED (deadline_exceeded).
    job_deadline_seconds: float = Field(default=600.0, validation_alias="VISIONQ_JOB_DEADLINE_SECONDS")
    shutdown_grace_seconds: float = Field(default=30.0, validation_alias="VISIONQ_SHUTDOWN_GRACE_SECONDS")
    job_ttl_days: int = Field(default=DEFAULT_JOB_TTL_DAYS, validation_alias="VISIONQ_JOB_TTL_DAYS")
    # The longest any one store call (S3, DynamoDB, PostgreSQL) may take before it counts as a
    # transient failure; above PostgreSQL's own statement timeout, so the server's cancel comes first.
    store_timeout_seconds: float = Field(default=30.0, gt=0, validation_alias="VISIONQ_STORE_TIMEOUT_SECONDS")
    # Items per list kept in the job record's summary (DynamoDB items are capped at 400 KB); the
    # whole output is always in PostgreSQL, where the API reads it when the summary is cut short.
    summary_max_items: int = Field(default=300, ge=1, validation_alias="VISIONQ_SUMMARY_MAX_ITEMS")
    # Created once the models are loaded and the worker is about to receive (`visionq up` waits for it).
    ready_file: Path | None = Field(default=None, validation_alias="VISIONQ_READY_FILE")
    # Prometheus' /metrics of the worker on this port (every interface); unset: no endpoint (metrics.py).
    metrics_port: int | None = Field(default=None, ge=0, le=65535, validation_alias="VISIONQ_METRICS_PORT")
    # CloudWatch embedded metric format in the logs: on by default on Lambda, off elsewhere
    # (metrics.emf_enabled reads the same variable, so the Lambda handler needs no settings object).
    metrics_emf: bool | None = Field(default=None, validation_alias="VISIONQ_METRICS_EMF")
    # Where ended jobs that asked for a webhook are handed to the notifier; unset: not announced.
    notify_queue_url: str | None = Field(default=None, validation_alias="VISIONQ_NOTIFY_QUEUE_URL")
    # Lambda: stop this long before the invocation's end, so the outcome can still be reported.
    lambda_margin_seconds: float = Field(default=10.0, ge=0, validation_alias="VISIONQ_LAMBDA_MARGIN_SECONDS")


class KeySettings(LocalEnvSettings):
    """What `visionq keys` needs: the table the keys live in."""

    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")


class DeadLetterSettings(LocalEnvSettings):
    """What `visionq dlq` needs."""

    queue_url: str = Field(validation_alias="VISIONQ_QUEUE_URL")
    dlq_url: str = Field(validation_alias="VISIONQ_DLQ_URL")
    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")
    upload_prefix: str = Field(default=DEFAULT_UPLOAD_PREFIX, validation_alias="VISIONQ_UPLOAD_PREFIX")
    # Jobs the sweeper ends are announced like any other (webhooks).
    notify_queue_url: str | None = Field(default=None, validation_alias="VISIONQ_NOTIFY_QUEUE_URL")


class ReprocessSettings(LocalEnvSettings):
    """What `visionq reprocess` needs: the work queue, the jobs table and the model registry."""

    queue_url: str = Field(validation_alias="VISIONQ_QUEUE_URL")
    jobs_table: str = Field(validation_alias="VISIONQ_JOBS_TABLE")
    upload_prefix: str = Field(default=DEFAULT_UPLOAD_PREFIX, validation_alias="VISIONQ_UPLOAD_PREFIX")
    models_file: Path | None = Field(default=None, validation_alias="VISIONQ_MODELS_FILE")
    model: str = Field(default=DEFAULT_MODEL_WEIGHTS, validation_alias="VISIONQ_MODEL")


class ClientSettings(LocalEnvSettings):
    """Where `visionq submit` / `status` find the API, and the key they present."""

    api_url: str = Field(validation_alias="API_URL")
    api_key: str | None = Field(default=None, validation_alias="VISIONQ_API_KEY")
    # Comma-separated /metrics endpoints of the workers (`visionq stats`; `visionq up` writes them).
    metrics_urls: str = Field(default="", validation_alias="VISIONQ_METRICS_URLS")


def environment_names() -> set[str]:
    """Every environment variable some settings class here reads (for checks that a deployment
    sets only names visionq knows)."""
    names: set[str] = set()
    for value in list(globals().values()):
        if isinstance(value, type) and issubclass(value, BaseSettings):
            for field in value.model_fields.values():
                alias = field.validation_alias
                if isinstance(alias, str):
                    names.add(alias)
                elif isinstance(alias, AliasChoices):
                    names.update(str(choice) for choice in alias.choices)
    return names


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build a settings object, turning pydantic's error into one naming the missing variables."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"])
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError(
            "configuration incomplete: "
            + "; ".join(problems)
            + " (run `visionq up` for a local stack, or source .visionq/local.env)"
        ) from exc
