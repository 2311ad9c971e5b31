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
