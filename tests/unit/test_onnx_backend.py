"""The ONNX Runtime backend for Ultralytics models (``visionq.models.onnx_export``).

One real export of the shapes detector (a copy in a temporary directory, so the repository is not
written), with the network blocked while it runs; then the ONNX graph through the same
``predict`` call as ``UltralyticsModel.predict`` against the ``.pt``: same boxes (1 px), same
confidences (0.01), same classes, at batch 1 and 4. The cache tests fake the exporter where a real
export would only cost time.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from visionq.errors import ConfigError
from visionq.models import onnx_export
from visionq.models.digest import weights_digest
from visionq.models.onnx_export import choose_backend, onnx_weights, set_onnx_threads
from visionq.shapes import TRAIN_IMGSZ, WEIGHTS_PATH

IMAGE_SIZE = TRAIN_IMGSZ  # 320: what the shapes detector was trained at
SIZES = [(320, 240), (640, 480), (240, 320), (400, 224)]  # (width, height)


@dataclass
class Exported:
    weights: Path
    onnx: Path
    seconds: float


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"network access during the ONNX export: {args!r}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    weights = tmp_path_factory.mktemp("weights") / "shapes_detector.pt"
    shutil.copyfile(WEIGHTS_PATH, weights)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        started = time.perf_counter()
        path = onnx_weights(weights, image_size=IMAGE_SIZE, task="detect")
        seconds = time.perf_counter() - started
    return Exported(weights=weights, onnx=path, seconds=seconds)


@pytest.fixture(scope="module")
def models(exported: Exported) -> tuple[Any, Any]:
    from ultralytics import YOLO

    return YOLO(str(exported.weights), task="detect"), YOLO(str(exported.onnx), task="detect")


def _predict(model: Any, images: Sequence[np.ndarray]) -> list[Any]:
    """What ``UltralyticsModel.predict`` does on a CPU."""
    bgr = [np.ascontiguousarray(img[:, :, ::-1]) for img in images]
    return list(model.predict(bgr, imgsz=IMAGE_SIZE, conf=0.25, device="cpu", quantize=None, verbose=False))


def _boxes(result: Any) -> list[tuple[int, float, list[float]]]:
    boxes = result.boxes
    return list(
        zip(
            boxes.cls.cpu().numpy().astype(int).tolist(),
            boxes.conf.cpu().numpy().tolist(),
            boxes.xyxy.cpu().numpy().tolist(),
            strict=True,
        )
    )


def test_export_is_beside_the_weights_and_nothing_else_is(exported: Exported) -> None:
    digest = weights_digest(exported.weights)
    assert exported.onnx.parent == exported.weights.parent / ".onnx-cache"
    assert exported.onnx.name.startswith(f"shapes_detector-{digest}-{IMAGE_SIZE}-")
    assert exported.onnx.suffix == ".onnx"
    assert sorted(p.name for p in exported.weights.parent.iterdir()) == [".onnx-cache", "shapes_detector.pt"]
    # Only the graph and its lock file: the export's temporary directory is gone.
    assert sorted(p.name for p in exported.onnx.parent.iterdir()) == sorted(
        [exported.onnx.name, exported.onnx.name + ".lock"]
    )


def test_the_graph_has_dynamic_batch_and_size(exported: Exported) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    batch, channels, height, width = session.get_inputs()[0].shape
    assert isinstance(batch, str) and isinstance(height, str) and isinstance(width, str)
    assert channels == 3
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["task"] == "detect"
    assert meta["imgsz"] == f"[{IMAGE_SIZE}, {IMAGE_SIZE}]"


@pytest.mark.parametrize(
    "seeds, sizes",
    [
        pytest.param([10000], [SIZES[0]], id="batch1"),
        pytest.param([10001, 10002, 10003, 10004], SIZES, id="batch4-mixed-shapes"),
        pytest.param([10005, 10006, 10007, 10008], [SIZES[1]] * 4, id="batch4-same-shape"),
    ],
)
def test_onnx_boxes_equal_pytorch_boxes(
    models: tuple[Any, Any], draw_scene: Callable[..., Any], seeds: list[int], sizes: list[tuple[int, int]]
) -> None:
    torch_model, onnx_model = models
    images = [np.asarray(draw_scene(seed, size)[0]) for seed, size in zip(seeds, sizes, strict=True)]

    expected = _predict(torch_model, images)
    got = _predict(onnx_model, images)

    # It really ran through ONNX Runtime, with the graph's batch as large as the call's.
    backend = onnx_model.predictor.model
    assert backend.format == "onnx" and backend.dynamic
    assert type(backend.backend.session).__module__.startswith("onnxruntime")

    assert len(got) == len(expected) == len(images)
    found = 0
    for want_result, got_result in zip(expected, got, strict=True):
        want, have = _boxes(want_result), _boxes(got_result)
        assert len(have) == len(want)
        found += len(want)
        unmatched = list(have)
        for cls, conf, xyxy in want:
            # the ONNX box of the same class nearest to this one
            best = min(
                (b for b in unmatched if b[0] == cls),
                key=lambda b: float(np.abs(np.subtract(b[2], xyxy)).max()),
                default=None,
            )
            assert best is not None, f"no ONNX box of class {cls} for {xyxy}"
            unmatched.remove(best)
            assert float(np.abs(np.subtract(best[2], xyxy)).max()) <= 1.0
            assert abs(best[1] - conf) <= 0.01
    assert found >= len(images)  # every scene has at least one shape: the comparison is not vacuous


def test_set_onnx_threads_rebuilds_the_session(exported: Exported, draw_scene: Callable[..., Any]) -> None:
    from ultralytics import YOLO

    model = YOLO(str(exported.onnx), task="detect")
    with pytest.raises(RuntimeError, match="predict once first"):
        set_onnx_threads(model, exported.onnx, 1)
    images = [np.asarray(draw_scene(seed, SIZES[1])[0]) for seed in (10010, 10011)]
    before = [_boxes(r) for r in _predict(model, images)]

    set_onnx_threads(model, exported.onnx, 1)

    session = model.predictor.model.backend.session
    assert session.get_session_options().intra_op_num_threads == 1
    after = [_boxes(r) for r in _predict(model, images)]
    # The same graph: the same boxes (up to the order of float sums across threads).
    assert [[c for c, _, _ in r] for r in after] == [[c for c, _, _ in r] for r in before]
    for got, want in zip(after, before, strict=True):
        for (_, p1, b1), (_, p2, b2) in zip(got, want, strict=True):
            assert p1 == pytest.approx(p2, abs=1e-4) and b1 == pytest.approx(b2, abs=1e-2)
    assert sum(len(r) for r in before) > 0
    assert model.predictor.model.backend.session is session  # predict kept it


def test_second_call_reuses_the_export(exported: Exported, monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = exported.onnx.stat().st_mtime_ns

    def must_not_export(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "_export", must_not_export)
    assert onnx_weights(exported.weights, image_size=IMAGE_SIZE, task="detect") == exported.onnx
    assert exported.onnx.stat().st_mtime_ns == mtime


def test_changed_weights_get_a_new_export(exported: Exported, tmp_path: Path) -> None:
    from ultralytics import YOLO

    # The same network saved again: other bytes (the checkpoint's date), so another digest.
    weights = tmp_path / "shapes_detector.pt"
    shutil.copyfile(exported.weights, weights)
    first = onnx_weights(weights, image_size=IMAGE_SIZE, task="detect")
    YOLO(str(weights), task="detect").save(str(weights))
    assert weights_digest(weights) != weights_digest(exported.weights)

    second = onnx_weights(weights, image_size=IMAGE_SIZE, task="detect")

    assert second != first
    assert second.is_file() and first.is_file()  # the old graph stays for whoever has it open
    assert weights_digest(weights) in second.name


def test_another_image_size_is_another_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_exporter(monkeypatch)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")

    small = onnx_weights(weights, image_size=320)
    large = onnx_weights(weights, image_size=640)

    assert small != large
    assert [size for _, size in calls] == [320, 640]


def test_unwritable_weights_directory_falls_back_to_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_exporter(monkeypatch)
    weights_dir = tmp_path / "readonly"
    weights_dir.mkdir()
    weights = weights_dir / "w.pt"
    weights.write_bytes(b"weights")
    monkeypatch.setenv("VISIONQ_WEIGHTS_CACHE", str(tmp_path / "cache"))
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == weights_dir / ".onnx-cache":  # as on a read-only mount (root ignores chmod)
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)

    path = onnx_weights(weights, image_size=320)

    assert path.parent == tmp_path / "cache" / "onnx"
    assert path.is_file() and len(calls) == 1
    assert onnx_weights(weights, image_size=320) == path and len(calls) == 1


def test_concurrent_callers_export_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_exporter(monkeypatch, seconds=0.3)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    results: list[Path] = []

    threads = [threading.Thread(target=lambda: results.append(onnx_weights(weights, image_size=320))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(calls) == 1
    assert len(results) == 4 and len(set(results)) == 1


def test_a_failed_export_leaves_nothing_at_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visionq.errors import ModelUnavailable

    weights = tmp_path / "not-a-model.pt"
    weights.write_bytes(b"these are not weights")

    with pytest.raises(ModelUnavailable):
        onnx_weights(weights, image_size=320)

    cache = tmp_path / ".onnx-cache"
    assert [p.suffix for p in cache.iterdir()] == [".lock"]


def test_choose_backend() -> None:
    assert choose_backend("auto", "cpu") == "onnx"
    assert choose_backend("auto", "cuda:0") == "torch"
    assert choose_backend("torch", "cpu") == "torch"
    assert choose_backend("torch", "cuda:0") == "torch"
    assert choose_backend("onnx", "cpu") == "onnx"
    with pytest.raises(ConfigError):
        choose_backend("tensorrt", "cpu")


def test_onnx_on_a_gpu_needs_a_cuda_onnxruntime() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert choose_backend("onnx", "cuda:0") == "onnx"
    else:
        with pytest.raises(ConfigError, match="CUDA"):
            choose_backend("onnx", "cuda:0")


def _fake_exporter(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.0) -> list[tuple[Path, int]]:
    """Replace the real export with one that writes a placeholder graph (and records its calls)."""
    calls: list[tuple[Path, int]] = []

    def export(weights: Path, digest: str, target: Path, *, image_size: int, task: str | None) -> None:
        calls.append((weights, image_size))
        time.sleep(seconds)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(b"onnx")
        os.replace(tmp, target)

    monkeypatch.setattr(onnx_export, "_export", export)
    return calls


def test_the_loader_runs_one_single_threaded_session_per_core_with_the_same_boxes(
    exported: Exported, draw_scene: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionq.models.replicas import Replicas
    from visionq.models.spec import ModelSpec
    from visionq.models.yolo import load_ultralytics

    def load(**options: Any) -> Any:
        options = {"backend": "onnx", "image_size": IMAGE_SIZE, **options}
        spec = ModelSpec(name="shapes", family="ultralytics", weights=str(exported.weights), options=options)
        return load_ultralytics(spec, str(exported.weights), device="cpu")

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})  # as on a 2-core machine
    replicated, single = load(), load(onnx_sessions=1)

    assert isinstance(replicated, Replicas) and replicated.batches_in_flight == 2
    sessions = [copy._model.predictor.model.backend.session for copy in (*replicated.copies, replicated.solo)]
    assert len({id(s) for s in sessions}) == 3
    # One thread each for the batches that overlap; both cores for a batch alone.
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [1, 1, 2]
    assert not isinstance(single, Replicas)
    assert single._model.predictor.model.backend.session.get_session_options().intra_op_num_threads == 0

    images = [np.asarray(draw_scene(seed, SIZES[1])[0]) for seed in (10020, 10021, 10022, 10023)]
    expected = single.predict(images)
    with ThreadPoolExecutor(2) as pool:  # two batches at once, as the core runs them
        got = [o for batch in pool.map(replicated.predict, [images[:2], images[2:]]) for o in batch]
    assert sum(len(o.items) for o in expected) >= len(images)  # not vacuous: every scene has shapes
    got += replicated.predict(images)  # alone: on the solo session
    for want, have in zip(expected * 2, got, strict=True):
        assert [b.class_id for b in have.items] == [b.class_id for b in want.items]
        for b1, b2 in zip(have.items, want.items, strict=True):
            assert b1.confidence == pytest.approx(b2.confidence, abs=1e-3)
            assert [b1.x1, b1.y1, b1.x2, b1.y2] == pytest.approx([b2.x1, b2.y1, b2.x2, b2.y2], abs=0.05)


def test_the_input_made_on_the_device_is_onnx_runtimes_too(exported: Exported, draw_scene: Callable[..., Any]) -> None:
    """VISIONQ_DEVICE_LETTERBOX with an exported model: its predictor letterboxes by the export's
    rules (models/letterbox.py follows them), and the boxes are those of the host path."""
    from visionq.models.letterbox import to_device
    from visionq.models.spec import ModelSpec
    from visionq.models.yolo import UltralyticsModel, load_ultralytics

    options = {"backend": "onnx", "image_size": IMAGE_SIZE, "onnx_sessions": 1}
    spec = ModelSpec(name="shapes", family="ultralytics", weights=str(exported.weights), options=options)
    model = load_ultralytics(spec, str(exported.weights), device="cpu")
    assert isinstance(model, UltralyticsModel) and model._model.predictor.model.format == "onnx"
    for sizes in ([SIZES[1]] * 2, [SIZES[0], SIZES[1]]):  # one shape, and mixed shapes
        images = [np.asarray(draw_scene(10030 + i, size)[0]) for i, size in enumerate(sizes)]
        prepared = model.prepare([to_device(image, "cpu") for image in images])
        reference = model.reference_input(images)
        assert prepared.pixels.shape == reference.shape
        assert float((prepared.pixels - reference).abs().max()) * 255 <= 1.0 + 1e-3  # a resize rounds differently
        want, got = model.predict(images), model.predict_prepared(prepared)
        assert sum(len(o.items) for o in want) >= len(images)  # type: ignore[attr-defined]
        for have, expected in zip(got, want, strict=True):
            assert [b.class_id for b in have.items] == [b.class_id for b in expected.items]  # type: ignore[attr-defined]
            for b1, b2 in zip(have.items, expected.items, strict=True):  # type: ignore[attr-defined]
                assert b1.confidence == pytest.approx(b2.confidence, abs=0.01)
                assert [b1.x1, b1.y1, b1.x2, b1.y2] == pytest.approx([b2.x1, b2.y1, b2.x2, b2.y2], abs=0.5)
