"""The synthetic models the ceiling benchmark measures the worker with: loaded through the registry
like any family, answering at once (null) or after a set time (delay), never touching torch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.registry import Registry, load_models


def registry(tmp_path: Path, body: str) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(body)
    return Registry.from_toml(path)


def test_null_and_delay_models_load_from_a_registry_and_answer(tmp_path: Path) -> None:
    reg = registry(
        tmp_path,
        '[models.null]\nfamily = "synthetic"\nweights = "null"\n'
        '[models.gpu]\nfamily = "synthetic"\nweights = "delay"\ndelay_ms = 30\nper_image_ms = 5\ninput_size = 320\n',
    )
    loaded = load_models(reg)
    images = [np.zeros((240, 320, 3), np.uint8)] * 4
    started = time.perf_counter()
    (out, *_) = loaded.get("null").predict(images)
    assert time.perf_counter() - started < 0.02
    assert (out.width, out.height, out.count) == (320, 240, 1)
    started = time.perf_counter()
    outputs = loaded.get("gpu").predict(images)
    assert time.perf_counter() - started >= 0.030 + 4 * 0.005
    assert len(outputs) == 4 and loaded.get("gpu").input_size == 320
    assert loaded.get("null").version != loaded.get("gpu").version


def test_an_unknown_synthetic_kind_is_refused(tmp_path: Path) -> None:
    reg = registry(tmp_path, '[models.x]\nfamily = "synthetic"\nweights = "fast"\n')
    with pytest.raises(ConfigError, match="synthetic weights must be one of null, delay"):
        load_models(reg)


def test_loading_them_imports_no_model_runtime(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys, pathlib; from visionq.models.registry import Registry, load_models;"
        f"load_models(Registry.from_toml(pathlib.Path({str(tmp_path / 'm.toml')!r})));"
        "print(sorted(m for m in ('torch', 'ultralytics', 'transformers') if m in sys.modules))"
    )
    (tmp_path / "m.toml").write_text('[models.null]\nfamily = "synthetic"\nweights = "null"\n')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_synthetic_model_reports_the_device_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceiling bench gives the null model a GPU so the worker hands it JPEGs to decode there
    (VISIONQ_DEVICE_DECODE): a model that always said "cpu" had them decoded on the CPU instead."""
    from visionq.models import synthetic

    monkeypatch.setattr(synthetic, "cuda_usable", lambda: True)  # as on a machine with a GPU
    reg = registry(
        tmp_path,
        '[models.null]\nfamily = "synthetic"\nweights = "null"\n'
        '[models.gpu]\nfamily = "synthetic"\nweights = "null"\ndevice = "cuda:0"\n',
    )
    loaded = load_models(reg)
    assert loaded.get("null").device == "cpu"
    assert loaded.get("gpu").device == "cuda:0"


def test_a_synthetic_model_on_a_gpu_this_machine_lacks_is_refused_at_load(tmp_path: Path) -> None:
    """As a real model is: before, its process died on every batch (a CUDA stream it could not make)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    reg = registry(tmp_path, '[models.gpu]\nfamily = "synthetic"\nweights = "null"\ndevice = "cuda:0"\n')
    with pytest.raises(ModelUnavailable, match="model 'gpu': device 'cuda:0' cannot be used here"):
        load_models(reg)
