"""Weights that are not in S3 pass through untouched; S3 errors read as one sentence (stubbed S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from visionq.errors import ModelUnavailable
from visionq.models.weights import default_cache_dir, resolve_weights


class NoS3:
    """Fails any use: a source that is not an S3 URI must not touch S3."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"S3 client used: {name}")


def test_a_local_file_or_directory_is_returned_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"weights")
    model_dir = tmp_path / "blip"
    model_dir.mkdir()
    cache = tmp_path / "cache"
    for source in (str(weights), str(model_dir)):
        assert resolve_weights(source, cache_dir=cache, s3_client=NoS3()) == source
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("best.pt", cache_dir=cache, s3_client=NoS3()) == "best.pt"
    assert not cache.exists()


@pytest.mark.parametrize(
    "source", ["yolo11n.pt", "yolo11n-seg.pt", "Salesforce/blip-image-captioning-base", "/no/such/weights.pt"]
)
def test_a_hub_name_is_returned_unchanged_for_its_library(tmp_path: Path, source: str) -> None:
    assert resolve_weights(source, cache_dir=tmp_path / "cache", s3_client=NoS3()) == source
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("source", ["s3://", "s3:///key", "s3://bucket"])
def test_an_s3_uri_without_bucket_or_key_is_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(ModelUnavailable, match=f"^Model weights {source} cannot be had: it is not an s3://"):
        resolve_weights(source, cache_dir=tmp_path, s3_client=NoS3())


def test_the_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VISIONQ_WEIGHTS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "visionq" / "weights"
    monkeypatch.setenv("VISIONQ_WEIGHTS_CACHE", "~/models")
    assert default_cache_dir() == tmp_path / "models"


@pytest.fixture
def stubbed() -> Any:
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_access_denied_is_said_plainly(stubbed: Any, tmp_path: Path) -> None:
    client, stubber = stubbed
    stubber.add_client_error("head_object", service_error_code="403", http_status_code=403)
    stubber.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)
    for uri in ("s3://private/models/best.pt", "s3://private/models/blip/"):
        with pytest.raises(ModelUnavailable) as raised:
            resolve_weights(uri, cache_dir=tmp_path, s3_client=client)
        assert raised.value.message == f"Model weights {uri} cannot be had: access is denied."
    assert not any(tmp_path.iterdir())
