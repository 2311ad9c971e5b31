"""Raw throughput of an Ultralytics detector: eager PyTorch against ONNX Runtime, on this CPU.

    .venv/bin/python bench/onnx_backend.py                 # yolo11n at 640, batch 1 and 4
    .venv/bin/python bench/onnx_backend.py --variants      # and thread / session / export variants

The model is yolo11n built from Ultralytics' ``yolo11n.yaml`` with a fixed seed (the trained
weights cannot be downloaded here; the compute is the same), saved to a ``.pt`` and exported with
``visionq.models.onnx_export.onnx_weights`` exactly as real weights would be. Both engines get the
same call as ``UltralyticsModel.predict`` on a CPU: a list of BGR arrays, ``imgsz``, ``conf``,
``device="cpu"``, ``verbose=False``, so each figure includes Ultralytics' letterbox, tensor
conversion and NMS. Images: Ultralytics' ``bus.jpg`` (810x1080) and ``zidane.jpg`` (1280x720),
decoded once; batch 1 alternates them, batch 4 is [bus, zidane, bus, zidane] (mixed shapes, so
letterboxed to a square).

Each setting runs ``--warmup`` untimed calls, then ``--iterations`` timed calls; images per second
= iterations x batch / seconds; process CPU time per image (all threads) is printed beside it.
The settings are interleaved over ``--rounds`` rounds (this machine is shared and drifts) and the
median and best rounds are reported; the ratio ONNX / PyTorch is taken from this one run.

Threads: Ultralytics sets torch to ``cpu_count - 1`` threads (1 on a 2-core machine) when its
predictor starts; both engines run with the same torch setting (checked before and after every
measurement), since the ONNX path still runs pre- and post-processing in torch. ONNX Runtime's
intra-op pool is its default, one thread per core (checked by counting the threads its session
starts). ``--variants`` adds thread-matched rows (torch on every core; ONNX Runtime on one thread),
so that the engine's share of the speed-up is not confused with the thread count's, and what else
was tried: no spin-waiting in ONNX Runtime's pool, its lower graph optimisation levels, and the
graph exported without onnxslim.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: it must never reach the network

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from visionq.models.onnx_export import EXPORT_ARGS, onnx_weights  # noqa: E402


@dataclass
class Setting:
    name: str
    engine: str  # "torch" | "onnx"
    batch: int
    prepare: Callable[[], None]  # sets threads / session before the setting runs


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=640)
    ap.add_argument("--iterations", type=int, default=30, help="timed calls per setting and round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", action="store_true", help="also thread-matched, session and export variants")
    args = ap.parse_args()

    import onnxruntime as ort
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    cores = os.cpu_count() or 1
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(
        f"machine: {platform.platform()}, {_cpu_model()}, nproc {cores}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, ultralytics {_version('ultralytics')}, onnxruntime {ort.__version__}, "
        f"onnx {_version('onnx')}, onnxslim {_version('onnxslim')}"
    )
    print(
        f"model: yolo11n.yaml, torch.manual_seed({args.seed}), imgsz {args.image_size}; {args.rounds} rounds of "
        f"{args.warmup} warm-up + {args.iterations} timed calls per setting"
    )

    with tempfile.TemporaryDirectory(prefix="visionq-onnx-bench-") as tmp:
        weights = Path(tmp) / "yolo11n-seed.pt"
        torch.manual_seed(args.seed)
        YOLO("yolo11n.yaml", task="detect").save(str(weights))
        started = time.perf_counter()
        onnx_path = onnx_weights(weights, image_size=args.image_size, task="detect")
        print(f"export: {time.perf_counter() - started:.1f} s -> {onnx_path.name}")

        torch_model = YOLO(str(weights), task="detect")
        onnx_model = YOLO(str(onnx_path), task="detect")
        rgb = [np.asarray(Image.open(Path(ASSETS) / name).convert("RGB")) for name in ("bus.jpg", "zidane.jpg")]
        print("images: " + ", ".join(f"{a.shape[1]}x{a.shape[0]}" for a in rgb))
        batches = {1: [[rgb[0]], [rgb[1]]], 4: [[rgb[0], rgb[1], rgb[0], rgb[1]]]}

        def predict(model: Any, images: list[np.ndarray]) -> list[Any]:
            # What UltralyticsModel.predict does on a CPU.
            bgr = [np.ascontiguousarray(img[:, :, ::-1]) for img in images]
            return list(
                model.predict(bgr, imgsz=args.image_size, conf=0.25, device="cpu", quantize=None, verbose=False)
            )

        # First calls: each predictor starts (and sets torch's threads); count ONNX Runtime's threads.
        predict(torch_model, batches[1][0])
        before = _threads()
        predict(onnx_model, batches[1][0])
        ort_threads = _threads() - before + 1  # its pool's workers plus the calling thread
        torch_threads = torch.get_num_threads()
        session = onnx_model.predictor.model.backend.session
        options = session.get_session_options()
        print(
            f"threads: torch {torch_threads} (both engines), ONNX Runtime intra-op {ort_threads} "
            f"(session option {options.intra_op_num_threads}: 0 = one per core), "
            f"graph optimisation {options.graph_optimization_level.name}, providers {session.get_providers()}"
        )
        found = {
            engine: [len(r.boxes) for r in predict(model, batches[4][0])]
            for engine, model in (("torch", torch_model), ("onnx", onnx_model))
        }
        print(f"detections per image at conf 0.25 (batch 4): torch {found['torch']}, onnx {found['onnx']}")

        default_session = session

        def use(torch_n: int, ort_session: Any) -> Callable[[], None]:
            def prepare() -> None:
                torch.set_num_threads(torch_n)
                onnx_model.predictor.model.backend.session = ort_session

            return prepare

        def session_with(path: Path, intra: int, level: Any, spinning: bool = True) -> Any:
            so = ort.SessionOptions()
            so.intra_op_num_threads = intra
            so.graph_optimization_level = level
            if not spinning:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        base = use(torch_threads, default_session)
        settings = [
            Setting(f"{engine} b{batch}", engine, batch, base) for batch in (1, 4) for engine in ("torch", "onnx")
        ]
        if args.variants:
            # The same graph without onnxslim, exported beside a private copy of the weights.
            plain_dir = Path(tmp) / "not-simplified"
            plain_dir.mkdir()
            shutil.copyfile(weights, plain_dir / weights.name)
            plain = YOLO(str(plain_dir / weights.name), task="detect").export(
                imgsz=args.image_size, **{**EXPORT_ARGS, "simplify": False}
            )
            all_opt = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions = {
                "ORT intra-op 1": session_with(onnx_path, 1, all_opt),
                f"ORT intra-op {cores}, no spin-wait": session_with(onnx_path, cores, all_opt, spinning=False),
                "ORT_ENABLE_EXTENDED": session_with(onnx_path, 0, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                "ORT_ENABLE_BASIC": session_with(onnx_path, 0, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                "not simplified (onnxslim off)": session_with(Path(plain), 0, all_opt),
            }
            for batch in (1, 4):
                settings.append(
                    Setting(f"torch b{batch}, torch threads {cores}", "torch", batch, use(cores, default_session))
                )
                settings += [
                    Setting(f"onnx b{batch}, {label}", "onnx", batch, use(torch_threads, sess))
                    for label, sess in sessions.items()
                ]

        rates: dict[str, list[float]] = {s.name: [] for s in settings}
        cpu_ms: dict[str, list[float]] = {s.name: [] for s in settings}
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for round_no in range(args.rounds):
            for setting in settings:
                setting.prepare()
                threads_set = torch.get_num_threads()
                model = torch_model if setting.engine == "torch" else onnx_model
                calls = batches[setting.batch]
                for i in range(args.warmup):
                    predict(model, calls[i % len(calls)])
                started, cpu_started = time.perf_counter(), time.process_time()
                for i in range(args.iterations):
                    predict(model, calls[i % len(calls)])
                seconds = time.perf_counter() - started
                images = args.iterations * setting.batch
                cpu_ms[setting.name].append((time.process_time() - cpu_started) * 1000 / images)
                assert torch.get_num_threads() == threads_set, "torch's threads changed during the measurement"
                rates[setting.name].append(images / seconds)
            print(f"round {round_no + 1}: " + ", ".join(f"{name} {r[-1]:.2f}" for name, r in rates.items()))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    median = {name: statistics.median(r) for name, r in rates.items()}
    best = {name: max(r) for name, r in rates.items()}
    print()
    print("| setting | img/s, median of rounds | img/s, best round | every round | process CPU ms/image, median |")
    print("|---|---|---|---|---|")
    for name, r in rates.items():
        every = " / ".join(f"{x:.2f}" for x in r)
        print(f"| {name} | {median[name]:.2f} | {best[name]:.2f} | {every} | {statistics.median(cpu_ms[name]):.1f} |")
    print()
    for batch in (1, 4):
        ratio, ratio_best = (m[f"onnx b{batch}"] / m[f"torch b{batch}"] for m in (median, best))
        print(
            f"batch {batch}: ONNX Runtime / PyTorch eager = {ratio:.2f}x (medians), {ratio_best:.2f}x (best rounds); "
            f"target >= 2x: {'met' if ratio >= 2 else 'missed'}"
        )
    if args.variants:
        for batch in (1, 4):
            pairs = [
                (f"onnx b{batch}", f"torch b{batch}, torch threads {cores}", f"ORT {cores} / torch {cores}"),
                (f"onnx b{batch}, ORT intra-op 1", f"torch b{batch}", f"ORT 1 / torch {torch_threads}"),
            ]
            print(
                f"batch {batch}, threads matched: "
                + "; ".join(
                    f"{label} = {median[a] / median[b]:.2f}x (medians), {best[a] / best[b]:.2f}x (best)"
                    for a, b, label in pairs
                )
            )


if __name__ == "__main__":
    main()
