"""Building AWS clients from settings: the only place endpoints and addressing are decided.

Nothing here runs at import time; entry points call these once and pass the clients down.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from visionq.config import AwsSettings


def client_config(settings: AwsSettings, **extra: Any) -> Config:
    # Emulators and MinIO serve buckets by path, not by virtual host name.
    s3_options: Any = {"addressing_style": "path"} if settings.aws_endpoint_url else {}
    return Config(
        region_name=settings.aws_region, s3=s3_options, retries={"mode": "standard", "max_attempts": 3}, **extra
    )


def boto3_client(service: str, settings: AwsSettings, **config: Any) -> Any:
    """A boto3 client for ``service`` at the configured endpoint (None means AWS itself)."""
    session: Any = boto3.session.Session()
    return session.client(
        service,
        endpoint_url=settings.aws_endpoint_url,
        region_name=settings.aws_region,
        config=client_config(settings, **config),
    )


def aio_client_kwargs(service: str, settings: AwsSettings, **config: Any) -> dict[str, Any]:
    """Keyword arguments for aiobotocore's ``session.create_client``, with the same choices."""
    return {
        "service_name": service,
        "endpoint_url": settings.aws_endpoint_url,
        "region_name": settings.aws_region,
        "config": client_config(settings, **config),
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
