"""Trains the tiny YOLO detector of synthetic "shapes" scenes that the tests and the offline demo use.

The scenes come from :func:`visionq.shapes.draw_scene`; running this script regenerates
``src/visionq/assets/shapes_detector.pt``::

    .venv/bin/python tests/assets/make_shapes_detector.py

The dataset and the Ultralytics run directory live in a temporary directory;
only the final weights are copied into place. Training runs fully offline
on the CPU from a model yaml (no pretrained weights are downloaded).
"""

from __future__ import annotations

from pathlib import Path

from visionq.shapes import CLASS_NAMES, TRAIN_IMGSZ, WEIGHTS_PATH, draw_scene

# ----------------------------------------------------------------------------------------------
# Everything below is only used when run as a script (dataset generation + training).
# ----------------------------------------------------------------------------------------------

# Image sizes used for the training set (only the aspect ratio matters after letterboxing).
_TRAIN_SIZES = [(320, 240), (320, 240), (640, 480), (240, 320), (256, 256), (400, 224)]
_VAL_SEED0 = 5_000  # val seeds: 5000.. ; train seeds: 0.. ; keep 10_000+ free for tests


def _write_split(root: Path, split: str, seeds: range) -> None:
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        w, h = _TRAIN_SIZES[seed % len(_TRAIN_SIZES)]
        img, boxes = draw_scene(seed, (w, h))
        img.save(img_dir / f"{seed:06d}.png")
        lines = [
            f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for c, x1, y1, x2, y2 in boxes
        ]
        (lbl_dir / f"{seed:06d}.txt").write_text("\n".join(lines) + "\n")


def _model_yaml(path: Path, width: float) -> Path:
    """Write a narrow YOLO11 detection yaml with nc=len(CLASS_NAMES)."""
    import copy

    from ultralytics.utils import ROOT, YAML

    cfg = copy.deepcopy(YAML.load(ROOT / "cfg/models/11/yolo11.yaml"))
    cfg.pop("scales", None)
    cfg.pop("yaml_file", None)
    cfg.update(nc=len(CLASS_NAMES), depth_multiple=0.5, width_multiple=width)
    YAML.save(path, cfg)
    return path


def main() -> None:
    import argparse
    import os
    import shutil
    import tempfile
    import time

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--imgsz", type=int, default=TRAIN_IMGSZ)
    ap.add_argument("--n-train", type=int, default=480)
    ap.add_argument("--n-val", type=int, default=60)
    ap.add_argument("--width", type=float, default=0.125, help="width_multiple of the YOLO11 yaml (n=0.25)")
    # Wide zoom augmentation so that the detector also works when run at a larger imgsz (e.g. 640) than it was
    # trained at, where the shapes are up to 2x bigger in pixels than at TRAIN_IMGSZ.
    ap.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), help="scale augmentation (min, max) gain")
    ap.add_argument("--multi-scale", type=float, default=0.5, help="per-batch imgsz jitter, fraction of imgsz")
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    ap.add_argument("--keep-tmp", action="store_true", help="do not delete the temporary directory")
    args = ap.parse_args()

    # Never touch the network: no hub, no telemetry, no asset downloads.
    os.environ["YOLO_OFFLINE"] = "1"
    import ultralytics.data.utils as data_utils
    from ultralytics import YOLO

    # check_det_dataset() always calls check_font("Arial.ttf"), which tries to download it when missing;
    # labels are never plotted here (plots=False), so skip it.
    data_utils.check_font = lambda *a, **k: None

    tmp = Path(tempfile.mkdtemp(prefix="shapes_detector_"))
    try:
        t0 = time.time()
        ds = tmp / "dataset"
        _write_split(ds, "train", range(args.n_train))
        _write_split(ds, "val", range(_VAL_SEED0, _VAL_SEED0 + args.n_val))
        data_yaml = ds / "shapes.yaml"
        names = "\n".join(f"  {k}: {v}" for k, v in CLASS_NAMES.items())
        data_yaml.write_text(f"path: {ds}\ntrain: {ds / 'images/train'}\nval: {ds / 'images/val'}\nnames:\n{names}\n")
        print(f"dataset written to {ds} in {time.time() - t0:.1f}s")

        model = YOLO(str(_model_yaml(tmp / "shapes_yolo11.yaml", args.width)), task="detect")
        t1 = time.time()
        model.train(
            data=str(data_yaml),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=16,
            nbs=16,  # one optimizer step per batch (small dataset)
            device="cpu",
            workers=0,
            amp=False,
            plots=False,
            pretrained=False,
            seed=0,
            deterministic=True,
            hsv_h=0.0,  # keep hues (colour is part of the class definition)
            scale=tuple(args.scale),
            multi_scale=args.multi_scale,
            project=str(tmp / "runs"),
            name="shapes",
            exist_ok=True,
            verbose=False,
        )
        train_s = time.time() - t1
        best = Path(model.trainer.best)
        metrics = YOLO(str(best)).val(
            data=str(data_yaml),
            imgsz=args.imgsz,
            batch=16,
            device="cpu",
            workers=0,
            plots=False,
            project=str(tmp / "runs"),
            name="val",
            exist_ok=True,
            verbose=False,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.out)
        print(f"training wall time: {train_s:.1f}s ({train_s / 60:.1f} min), epochs={args.epochs}, imgsz={args.imgsz}")
        print(
            f"val mAP50={metrics.box.map50:.4f} mAP50-95={metrics.box.map:.4f} "
            f"P={metrics.box.mp:.4f} R={metrics.box.mr:.4f}"
        )
        print(f"weights: {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), names={CLASS_NAMES}")
    finally:
        if args.keep_tmp:
            print(f"kept temporary directory {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
