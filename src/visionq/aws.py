"""Building AWS clients from settings: the only place endpoints and addressing are decided.

Nothing here runs at import time; entry points call these once and pass the clients down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.httpsession import where as default_ca_bundle
from botocore.utils import get_environ_proxies

from visionq.config import AwsSettings

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from visionq.stores.dynamodb_wire import DynamoDBWire

# Explicit bounds on every HTTP call, so that no AWS call waits on a silent peer for botocore's
# default 60 s per attempt (times the retries). The read timeout is per socket read, not per
# request: a large S3 download that keeps receiving bytes is not cut off by it.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0  # above SQS's longest long poll (20 s), which sends nothing until it ends
# Attempts per call, the first included: the SDK's standard retry mode, and the same for the calls the
# worker sends itself (stores/s3_reader.py, stores/dynamodb_wire.py, stores/sqs_wire.py).
MAX_ATTEMPTS = 3


def client_config(
    settings: AwsSettings,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    **extra: Any,
) -> Config:
    """The botocore ``Config`` for every client: region, addressing, retries and timeouts.

    ``extra`` goes to ``Config`` as well (``max_pool_connections=...``). A client that long-polls
    SQS with ``WaitTimeSeconds=w`` needs ``read_timeout`` above ``w``, or every empty poll fails.
    """
    if connect_timeout <= 0 or read_timeout <= 0:
        # botocore would pass 0 on to the socket as "no timeout" or "non-blocking": neither is a bound.
        raise ValueError(f"timeouts must be positive (connect {connect_timeout}, read {read_timeout})")
    # Emulators and MinIO serve buckets by path, not by virtual host name.
    s3_options: Any = {"addressing_style": "path"} if settings.endpoint_for("s3") else {}
    return Config(
        region_name=settings.aws_region,
        s3=s3_options,
        # total_max_attempts counts the first attempt; botocore's max_attempts would count retries only.
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        **extra,
    )


def boto3_client(
    service: str,
    settings: AwsSettings,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    **config: Any,
) -> Any:
    """A boto3 client for ``service`` at the configured endpoint (None means AWS itself)."""
    session: Any = boto3.session.Session()
    return session.client(
        service,
        endpoint_url=settings.endpoint_for(service),
        region_name=settings.aws_region,
        config=client_config(settings, connect_timeout=connect_timeout, read_timeout=read_timeout, **config),
        **settings.credentials(),
    )


def aio_client_kwargs(
    service: str,
    settings: AwsSettings,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    **config: Any,
) -> dict[str, Any]:
    """Keyword arguments for aiobotocore's ``session.create_client``, with the same choices."""
    return {
        "service_name": service,
        "endpoint_url": settings.endpoint_for(service),
        "region_name": settings.aws_region,
        "config": client_config(settings, connect_timeout=connect_timeout, read_timeout=read_timeout, **config),
        **settings.credentials(),
    }


def count_requests(client: Any, counts: dict[str, int]) -> Any:
    """Count every HTTP request ``client`` sends (retries included) into ``counts`` by operation.

    Each request is billed in the cloud and costs CPU in a local emulator; the worker reports
    these counts when it stops, and the benchmark divides them by the images processed.
    """

    def on_send(event_name: str, **_: Any) -> None:
        # event_name is "before-send.<service>.<Operation>"
        key = event_name.split(".", 1)[-1]
        counts[key] = counts.get(key, 0) + 1

    client.meta.events.register("before-send", on_send)
    return client


def ca_bundle() -> str:
    """The certificates the SDK trusts: ``AWS_CA_BUNDLE`` where it is set, else the profile's
    ``ca_bundle`` in the AWS config file, else botocore's own bundle. The calls the worker sends
    itself (``stores/s3_reader.py``, ``stores/dynamodb_wire.py``, ``stores/sqs_wire.py``) trust
    the same, so a private CA (a proxy's, MinIO's) set for the SDK works for them too."""
    configured = botocore.session.get_session().get_config_variable("ca_bundle")
    return str(configured) if configured else default_ca_bundle()


def proxy_for(url: str) -> str | None:
    """The HTTP proxy the SDK would send ``url``'s requests through, from the environment
    (``HTTP_PROXY``/``HTTPS_PROXY`` by the URL's scheme, unless ``NO_PROXY`` names its host), or None.

    The calls the worker sends itself (``stores/sqs_wire.py``, ``stores/dynamodb_wire.py``,
    ``stores/s3_reader.py``) speak no proxy: where one is named for their endpoint they give way to
    the SDK's clients, which honour it, at the SDK's cost in CPU per request.
    """
    return get_environ_proxies(url).get(urlsplit(url).scheme) or None


def job_table_client(settings: AwsSettings, *, counts: dict[str, int] | None = None) -> Any:
    """The worker's DynamoDB client for the job store: its own (``dynamodb_wire``), or boto3's
    where an HTTP proxy is named for the endpoint (``proxy_for``). ``counts`` as ``count_requests``."""
    client = boto3_client("dynamodb", settings)
    if proxy_for(client.meta.endpoint_url) is None:
        return _wire_of(client, counts)
    logger.info("an HTTP proxy is named for %s: the job table's calls go through the SDK", client.meta.endpoint_url)
    return count_requests(client, counts) if counts is not None else client


def dynamodb_wire(settings: AwsSettings, *, counts: dict[str, int] | None = None) -> DynamoDBWire:
    """The worker's DynamoDB client (``stores/dynamodb_wire.py``): the endpoint and credentials
    are those a boto3 client made from ``settings`` uses (its endpoint resolution, its credential
    chain), resolved here once."""
    return _wire_of(boto3_client("dynamodb", settings), counts)


def _wire_of(client: Any, counts: dict[str, int] | None) -> DynamoDBWire:
    from visionq.stores.dynamodb_wire import DynamoDBWire

    return DynamoDBWire(
        endpoint_url=client.meta.endpoint_url,
        region=client.meta.region_name,
        credentials=client._request_signer._credentials,  # the client's, refreshed as it refreshes them
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        read_timeout=DEFAULT_READ_TIMEOUT,
        ca_bundle=ca_bundle(),
        counts=counts,
    )
