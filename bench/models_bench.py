"""Captioning and two models in one worker, in one run, on this machine.

    .venv/bin/python bench/models_bench.py                 # defaults: N=24 captions, 48 detections

Phases, one after another:
  (a) raw captioner: BLIP with the architecture of Salesforce/blip-image-captioning-base (random
      weights: the hub cannot be reached here; the compute is the same), on images already decoded
      to its input size, at batch 1, 4 and 8. Generation length is fixed (min = max new tokens), so
      random weights do not make captions shorter than real ones would be;
  (b) caption pipeline: N images in the bucket, a `visionq worker` serving the captioner, timed
      from "worker started" to the last job SUCCEEDED;
  (c) detect pipeline: the same for yolo11n (architecture, seeded) at 640;
  (d) even mix: a worker serving both, half the images for each, interleaved in the queue.
The captioner's batch is the raw model's best, set in its registry entry (``max_batch``); the
detector's is the worker's default (8 on a GPU, 1 on a CPU), alone and in the mix alike (before
run 26 the mix ran the detector at the captioner's batch too).
Targets (issue 8): b/a >= 0.9; d >= 0.9 x the harmonic mean of b and c (each model alone).
Every process runs torch with the same thread count (VISIONQ_TORCH_THREADS, default 1: the worker
leaves a core for decoding and I/O, as Ultralytics does by default on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run_bench import BenchStack, RunFigures, machine, make_images, rates, throughput_run  # noqa: E402

from visionq.images import ImageLimits, decode_image  # noqa: E402
from visionq.models import pick_device  # noqa: E402
from visionq.models.spec import ModelSpec  # noqa: E402

TOKENS = 20  # generated per caption, fixed


def build_blip_base(directory: Path) -> Path:
    """BLIP-base's architecture (BlipConfig's defaults are blip-image-captioning-base's shapes) with
    random weights and a stand-in tokenizer of the same vocabulary size, saved like a checkpoint."""
    out = directory / "blip-base-random"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    torch.manual_seed(0)
    config = BlipConfig()
    vocab_size = config.text_config.vocab_size
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")  # noqa: S106 - a token, not a password
    config.text_config.bos_token_id = vocab["[DEC]"]
    config.text_config.sep_token_id = config.text_config.eos_token_id = vocab["[SEP]"]
    config.text_config.pad_token_id = vocab["[PAD]"]
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def caption_options() -> dict[str, Any]:
    return {"max_new_tokens": TOKENS, "min_new_tokens": TOKENS}


def raw_captioner(weights: Path, images: list[bytes], repeats: int) -> dict[str, Any]:
    from visionq.models.blip import load_blip

    spec = ModelSpec(name="caption", family="blip", weights=str(weights), options=caption_options())
    model = load_blip(spec, str(weights), device=pick_device(os.environ.get("VISIONQ_DEVICE")))  # as the worker does
    decoded = [decode_image(b, ImageLimits(), max_side=model.input_size).rgb for b in images]
    by_batch: dict[int, dict[str, float]] = {}
    # On a GPU generation is bound by kernel launches, and a call cost nearly the same at 1, 4 and
    # 8 images (run 25): larger batches too, to see where that ends.
    for size in (1, 4, 8, 16, 32) if model.device.startswith("cuda") else (1, 4, 8):
        total = max(repeats, size * 2)
        model.predict([decoded[k % len(decoded)] for k in range(size)])  # warm at this shape
        started, done = time.perf_counter(), 0
        while done < total:
            model.predict([decoded[(done + k) % len(decoded)] for k in range(size)])
            done += size
        elapsed = time.perf_counter() - started
        by_batch[size] = {"images_per_second": done / elapsed, "ms_per_image": elapsed * 1000 / done}
        print(f"  raw caption batch {size}: {by_batch[size]['images_per_second']:.3f} img/s", flush=True)
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_second"])
    return {"by_batch": by_batch, "best_batch": best, **by_batch[best], "version": model.version}


def write_registry(path: Path, blip: Path, default: str, caption_batch: int) -> Path:
    """The detector and the captioner; the captioner with its own batch (the raw model's best), the
    detector with the worker's (the device's default), alone as in the mix."""
    options = "".join(f"{k} = {v}\n" for k, v in {**caption_options(), "max_batch": caption_batch}.items())
    path.write_text(
        f'default = "{default}"\n\n'
        '[models.detect]\nfamily = "ultralytics"\nweights = "yolo11n.yaml"\n\n'
        f'[models.caption]\nfamily = "blip"\nweights = "{blip}"\n{options}'
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-caption", type=int, default=24, help="images for the caption runs")
    parser.add_argument("--n-detect", type=int, default=48, help="images for the detect run")
    parser.add_argument("--raw-repeats", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "models")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    threads = int(os.environ.setdefault("VISIONQ_TORCH_THREADS", "1"))
    import torch

    torch.set_num_threads(threads)
    command = "python bench/models_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"command": command.strip(), "machine": machine(), "torch_threads": threads}
    images = make_images(max(args.n_caption, args.n_detect))
    blip = build_blip_base(args.out)

    print("(a) raw captioner", flush=True)
    raw = raw_captioner(blip, images[:8], args.raw_repeats)
    report["raw_caption"] = raw

    def save() -> None:  # after each phase: a run cut at its time limit keeps what it measured
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str))

    save()
    batch = raw["best_batch"]
    (args.out / "state").mkdir(exist_ok=True)
    stack = BenchStack(args.out / "state")
    try:
        env = {"VISIONQ_TORCH_THREADS": str(threads)}
        captioning = {
            **env,
            "VISIONQ_MODELS_FILE": str(write_registry(args.out / "caption.toml", blip, "caption", batch)),
        }

        def caption_run(name: str, extra_env: dict[str, str]) -> RunFigures:
            figures = throughput_run(
                stack, images[: args.n_caption], "unused", 0.0, args.out / f"worker-{name}.log", captioning | extra_env
            )
            report[name] = asdict(figures)
            report[f"{name}_over_raw"] = figures.images_per_second / raw["images_per_second"]
            save()
            print(f"  {rates(figures)}", flush=True)
            return figures

        print(f"(b) caption pipeline, batch {batch}", flush=True)
        caption = caption_run("caption_pipeline", {})
        if pick_device(os.environ.get("VISIONQ_DEVICE")).startswith("cuda"):
            # Run 25: in the model's process BLIP's calls ran slower than in the raw loop. There, a
            # second thread decodes the next batch's JPEGs on the GPU while the model runs; with
            # the decode on the CPU (in the worker's decode processes) it only maps their pixels.
            print("(b2) caption pipeline, the JPEGs decoded on the CPU", flush=True)
            caption_run("caption_pipeline_cpu_decode", {"VISIONQ_DEVICE_DECODE": "off"})
        print("(c) detect pipeline", flush=True)
        detect = throughput_run(
            stack,
            images[: args.n_detect],
            "unused",
            0.0,
            args.out / "worker-detect.log",
            {**env, "VISIONQ_MODELS_FILE": str(write_registry(args.out / "detect.toml", blip, "detect", batch))},
        )
        report["detect_pipeline"] = asdict(detect)
        save()
        print(f"  {rates(detect)}", flush=True)
        print("(d) even mix in one worker", flush=True)
        n_mix = 2 * args.n_caption
        mix = throughput_run(
            stack,
            images[:n_mix] if len(images) >= n_mix else (images * 2)[:n_mix],
            "unused",
            0.0,
            args.out / "worker-mix.log",
            {**env, "VISIONQ_MODELS_FILE": str(write_registry(args.out / "mix.toml", blip, "detect", batch))},
            key_for=lambda i: f"uploads/models/caption/{i:06d}.jpg" if i % 2 else f"uploads/mix/{i:06d}.jpg",
        )
        print(f"  {mix.images_per_second:.3f} img/s", flush=True)
    finally:
        stack.stop()
    harmonic = 2 / (1 / caption.images_per_second + 1 / detect.images_per_second)
    report.update(
        mix_pipeline=asdict(mix),
        harmonic_mean_alone=harmonic,
        mix_over_harmonic_mean=mix.images_per_second / harmonic,
    )
    save()
    print(summary(report))
    return 0


def summary(r: dict[str, Any]) -> str:
    raw = r["raw_caption"]
    by = ", ".join(f"batch {b}: {v['images_per_second']:.3f}" for b, v in raw["by_batch"].items())
    return "\n".join(
        [
            f"machine: {r['machine']}; torch threads {r['torch_threads']}",
            f"(a) raw captioner img/s: {by} (best batch {raw['best_batch']})",
            f"(b) caption pipeline: {r['caption_pipeline']['images_per_second']:.3f} img/s"
            f" ({r['caption_pipeline']['images']} in {r['caption_pipeline']['seconds']:.1f} s)",
            f"(c) detect pipeline:  {r['detect_pipeline']['images_per_second']:.3f} img/s"
            f" ({r['detect_pipeline']['images']} in {r['detect_pipeline']['seconds']:.1f} s)",
            f"(d) even mix:         {r['mix_pipeline']['images_per_second']:.3f} img/s"
            f" ({r['mix_pipeline']['images']} in {r['mix_pipeline']['seconds']:.1f} s)",
            f"b/a = {r['caption_pipeline_over_raw']:.3f} (target >= 0.9)",
            f"harmonic mean of b and c: {r['harmonic_mean_alone']:.3f} img/s;"
            f" d / that = {r['mix_over_harmonic_mean']:.3f} (target >= 0.9)",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
