"""aws.ca_bundle: the worker's own calls trust the certificates the SDK trusts, wherever the SDK's
setting comes from (the environment first, then the profile in the config file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.httpsession import where as default_ca_bundle

from visionq.aws import ca_bundle


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config"
    path.write_text("[default]\nca_bundle = /etc/company/ca.pem\n[profile other]\nca_bundle = /etc/other/ca.pem\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_PROFILE", raising=False)
    return path


def test_the_profiles_ca_bundle_is_trusted(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ca_bundle() == "/etc/company/ca.pem"
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert ca_bundle() == "/etc/other/ca.pem"


def test_the_environment_comes_before_the_profile(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/run/ca.pem")
    assert ca_bundle() == "/run/ca.pem"


def test_without_a_setting_botocores_own_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert ca_bundle() == default_ca_bundle()
