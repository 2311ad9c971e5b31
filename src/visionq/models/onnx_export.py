"""ONNX Runtime backend for Ultralytics models: the .pt exported once to ONNX, cached on disk.

``onnx_weights(weights, image_size=...)`` returns the path of an ONNX graph equivalent to the
``.pt`` (fp32, batch, height and width dynamic), exporting it with Ultralytics the first time::

    <weights dir>/.onnx-cache/<stem>-<digest>-<size>-<recipe>.onnx

``digest`` is ``weights_digest`` of the ``.pt`` (new weights, new file), ``size`` the image size
exported at (stored in the graph's metadata), ``recipe`` a short hash of everything else that
shapes the graph: the export arguments, the task, and the versions of Ultralytics, torch, onnx
and onnxslim. Where the weights' directory cannot be written, the cache is
``$VISIONQ_WEIGHTS_CACHE/onnx`` (else ``~/.cache/visionq/onnx``). An export runs in a temporary
directory inside the cache and is renamed into place with ``os.replace``: the final path either
does not exist or is a complete graph. An exclusive ``fcntl.flock`` per entry makes concurrent
exporters (threads or processes) export once; the others wait and find it done.

Load the result with ``YOLO(path, task=<the .pt's task>)`` and call ``predict`` as for the
``.pt``: with a dynamic graph Ultralytics letterboxes each batch to the same (rectangular)
shape as it does for PyTorch, so boxes agree with the ``.pt``'s (see tests/unit/test_onnx_backend.py).

Offline: Ultralytics' exporter calls ``check_requirements`` for onnx, onnxruntime and onnxslim,
which would try ``pip install`` for a missing one (unless ``YOLO_OFFLINE`` was set before
Ultralytics was imported). ``onnx_weights`` checks the same requirements first with
``install=False`` and refuses to export if one is missing, so the exporter only ever finds them
satisfied and never reaches the network.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from visionq.errors import ConfigError, ModelUnavailable
from visionq.models.digest import weights_digest
from visionq.models.spec import ModelSpec
from visionq.models.weights import file_lock

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
CACHE_DIR_ENV = "VISIONQ_WEIGHTS_CACHE"
CACHE_SUBDIR = ".onnx-cache"

# What Ultralytics' exporter is asked for. dynamic: batch, height and width are free, so any batch
# size runs and Ultralytics letterboxes to the same minimal rectangle as for the .pt (a static
# graph forces square imgsz x imgsz inputs, and the export's batch); simplify: onnxslim folds
# constants (Ultralytics' default; no speed difference measured: ONNX Runtime's optimiser does the
# same); batch=1 is only the trace's example input; fp32 (no quantize): int8/fp16 move the boxes;
# nms not embedded: Ultralytics' own NMS runs after, as for the .pt. opset: Ultralytics' default
# for this torch (18).
EXPORT_ARGS: dict[str, Any] = {"format": "onnx", "dynamic": True, "simplify": True, "batch": 1, "device": "cpu"}

# What the exporter itself requires (ultralytics 8.4.190, engine/exporter.py export_onnx), so
# that it never finds one missing and tries to install it.
_REQUIREMENTS: list[str | tuple[str, ...]] = [
    "onnx>=1.12.0,<2.0.0",
    ("onnxruntime", "onnxruntime-gpu", "onnxruntime-qnn", "onnxruntime-vitisai", "onnxruntime-windowsml"),
    "onnxslim>=0.1.82",
]
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_LOCK_SUFFIX = ".lock"
_TMP_PREFIX = ".export-"
_STALE_TMP_SECONDS = 3600.0


def choose_backend(requested: str, device: str) -> str:
    """Which engine runs an Ultralytics model: ``"torch"`` (eager PyTorch) or ``"onnx"`` (ONNX Runtime).

    ``auto`` is ONNX Runtime on a CPU and PyTorch on anything else. Measured on the project's
    2-core CPU machine (bench/onnx_backend.py, bench/RESULTS.md), yolo11n at 640 through the same
    ``predict`` call: 2.26x (batch 1) / 2.31x (batch 4) the images per second of eager PyTorch as
    each comes (torch on the 1 thread Ultralytics gives it, ONNX Runtime on one thread per core);
    thread for thread 1.48x / 1.44x on one thread and 1.25x / 0.96x on two (par at worst);
    boxes agree within a pixel (tests/unit/test_onnx_backend.py). On CUDA, PyTorch runs in fp16, and
    this project's onnxruntime is the CPU build (no CUDA execution provider): ``onnx`` there would
    silently run on the CPU, so it is refused.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}: one of {', '.join(BACKENDS)}")
    on_cpu = device == "cpu" or device.startswith("cpu:")
    if requested == "auto":
        return "onnx" if on_cpu else "torch"
    if requested == "onnx" and not on_cpu:
        import onnxruntime  # type: ignore[import-untyped]

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ConfigError(
                f"backend 'onnx' on {device}: this onnxruntime has no CUDA execution provider "
                "(it would run on the CPU); use backend 'torch' or 'auto' on a GPU"
            )
    return requested


def onnx_weights(weights: Path, *, image_size: int, task: str | None = None) -> Path:
    """The path of ``weights`` (an Ultralytics ``.pt``) exported to ONNX at ``image_size``, exported
    on the first call and cached (see the module's docstring). ``task`` is passed to ``YOLO()``
    (None: what the weights say). Raises ``ModelUnavailable`` when the export cannot be done."""
    weights = Path(weights)
    if not weights.is_file():
        raise ModelUnavailable(f"cannot export {weights} to ONNX: not a weights file")
    if image_size <= 0:
        raise ConfigError(f"ONNX export image size {image_size}: must be positive")
    digest = weights_digest(weights)
    name = f"{weights.stem}-{digest}-{image_size}-{_recipe(task)}.onnx"
    for cache in _cache_dirs(weights):
        try:
            cache.mkdir(parents=True, exist_ok=True)
            target = cache / name
            if target.is_file():
                return target
            with file_lock(cache / (name + _LOCK_SUFFIX)):
                if target.is_file():  # another exporter finished it while we waited
                    return target
                _sweep(cache)
                _export(weights, digest, target, image_size=image_size, task=task)
            return target
        except OSError as exc:
            if exc.errno not in _NOT_WRITABLE:
                raise
            logger.info("ONNX cache %s is not writable (%s); trying the next", cache, exc.strerror or exc)
    raise ModelUnavailable(f"cannot export {weights} to ONNX: no writable cache directory")


# More sessions than this is memory (a copy of the weights each) for little gain: past it, each
# session gets more threads instead.
MAX_SESSIONS = 8


def onnx_sessions(spec: ModelSpec) -> tuple[int, int, int]:
    """(sessions, intra-op threads each, threads of a solo session or 0 for none) for an Ultralytics
    model on ONNX Runtime on a CPU, from the model's options ``onnx_sessions``, ``onnx_threads``
    (0: one per core) and ``onnx_solo`` (default true).

    Unset, one session per core this process may run on (at most MAX_SESSIONS), each on one thread
    (or on cores / sessions past the cap), running batches at once (``models/replicas.py``): on
    this project's 2-core CPU, 1.36-1.64 x the images per second of one session on both cores
    (batches of one; bench/onnx_sessions.py, bench/RESULTS.md run 20). ``onnx_threads`` alone keeps
    as many sessions as fit (0: one session on every core, ONNX Runtime's own way). With several
    sessions on fewer threads than the cores, a solo session on every core takes a batch that
    arrives while no other runs, so a lone image is not slowed to one core's pace."""
    cores = len(os.sched_getaffinity(0))
    sessions, threads = spec.option("onnx_sessions"), spec.option("onnx_threads")
    for name, value in (("onnx_sessions", sessions), ("onnx_threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"model {spec.name!r}: {name} {value!r} must be a whole number, at least 0")
    solo = spec.option("onnx_solo", True)
    if not isinstance(solo, bool):
        raise ConfigError(f"model {spec.name!r}: onnx_solo {solo!r} must be true or false")
    if sessions is None or sessions == 0:
        sessions = 1 if threads == 0 else max(1, min(MAX_SESSIONS, cores // (threads or 1)))
    if threads is None:
        threads = 0 if sessions == 1 else max(1, cores // sessions)
    solo_threads = cores if solo and sessions > 1 and 0 < threads < cores else 0
    return sessions, threads, solo_threads


def set_onnx_threads(model: Any, onnx_path: Path, threads: int, *, spinning: bool = True) -> None:
    """Run a loaded ``YOLO(<onnx>)`` on ``threads`` ONNX Runtime intra-op threads (0: one per
    core), spin-waiting between operators or not (``spinning``: off leaves the CPU to the rest of a
    worker between forward passes).

    Ultralytics builds its session with ONNX Runtime's defaults (one intra-op thread per core,
    spin-waiting between operators) and has no argument to change them; this rebuilds the session
    its predictor holds, on the same graph and the CPU. Call it after the first ``predict`` (the
    warm-up), when the predictor exists; a predictor built again later gets the defaults again.
    """
    backend = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
    if backend is None or not hasattr(backend, "session"):
        raise RuntimeError("set_onnx_threads: the model has no ONNX Runtime predictor yet (predict once first)")
    if threads < 0:
        raise ConfigError(f"ONNX Runtime threads {threads}: must be at least 0 (0: one per core)")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    backend.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _cache_dirs(weights: Path) -> list[Path]:
    configured = os.environ.get(CACHE_DIR_ENV)
    fallback = Path(configured).expanduser() / "onnx" if configured else Path.home() / ".cache" / "visionq" / "onnx"
    return [weights.resolve().parent / CACHE_SUBDIR, fallback]


def _recipe(task: str | None) -> str:
    """A short hash of what, besides the weights and the image size, shapes the exported graph."""
    versions = {name: _version(name) for name in ("ultralytics", "torch", "onnx", "onnxslim")}
    text = json.dumps({"args": EXPORT_ARGS, "task": task, "versions": versions}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def _export(weights: Path, digest: str, target: Path, *, image_size: int, task: str | None) -> None:
    """Export in a temporary directory beside ``target``, then rename the graph into place."""
    _check_requirements()
    from ultralytics import YOLO  # type: ignore[attr-defined]

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_TMP_PREFIX))
    try:
        # Ultralytics writes the .onnx beside the .pt it loaded: export a private copy, so nothing
        # appears beside the caller's weights and a half-written graph is never at ``target``.
        copy = tmp / weights.name
        shutil.copyfile(weights, copy)
        if weights_digest(copy) != digest:
            raise ModelUnavailable(f"cannot export {weights} to ONNX: the file changed while it was read")
        try:
            model = YOLO(str(copy), task=task)
            exported = Path(str(model.export(imgsz=image_size, **EXPORT_ARGS)))
        except Exception as exc:  # Ultralytics raises plain exceptions
            raise ModelUnavailable(f"cannot export {weights} to ONNX ({type(exc).__name__}: {exc})") from exc
        if not exported.is_file() or exported.stat().st_size == 0:
            raise ModelUnavailable(f"cannot export {weights} to ONNX: the exporter wrote no graph")
        with exported.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(exported, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "exported %s to ONNX at %d px in %.0f ms: %s",
        weights,
        image_size,
        (time.perf_counter() - started) * 1000,
        target,
    )


def _check_requirements() -> None:
    from ultralytics.utils.checks import check_requirements

    if not check_requirements(_REQUIREMENTS, install=False):  # type: ignore[no-untyped-call]
        raise ModelUnavailable(
            "cannot export to ONNX: onnx, onnxruntime and onnxslim must be installed "
            f"({', '.join(str(r) for r in _REQUIREMENTS)}); nothing is installed at run time"
        )


def _sweep(cache: Path) -> None:
    """Remove temporary directories that an exporter killed mid-export left (older than an hour,
    so that another entry's export in progress is never touched)."""
    now = time.time()
    for leftover in cache.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue
