#!/usr/bin/env bash
# The GPU figures of issues 8 and 11 in one command on the `device` tool's machine (an H200 with
# Python 3.12, torch, torchvision, transformers and no network). Prepare here, once per session:
#     python3 bench/gpu/kit.py          # the wheels it lacks, into .whl/ (about 53 MB)
# then call the tool's run with  command: bench/gpu/run.sh   carry: [".whl"]   timeout_s: 580
# Figures of the first session lent a GPU: bench/gpu/results/2026-12-04/, bench/RESULTS.md run 23.
# Everything it prints is also in $OUT/run.log; the reports come back as $OUT/*.json.
#
# Steps, each with a time limit, in the order they matter (a step that fails does not stop the
# next): the device decode's verdicts and speed; yolo11n (architecture, seeded) raw batched,
# pipelined and naive; the worker's own ceiling with the JPEG decode off and on the device; BLIP
# captioning (base-size architecture) raw and pipelined; the letterbox on the host or the device.
# The limits add up to 565 s: under the tool's 600, and with a machine's start (1-2 min) inside a
# session's 900 s of device time. The models' weights are random (the hub cannot be reached there):
# the compute is the same. First, a probe of where yolo11n's time goes (bench/gpu/probe.py).
#
# Here, as a dry run of the script itself on the CPU (small N, the project's .venv, no kit):
#     GPU_RUN_PYTHON=.venv/bin/python GPU_RUN_SMALL=1 OUT=/tmp/gpu-dry bench/gpu/run.sh
# GPU_RUN_STEPS="yolo11n ceiling" runs only the steps it names (machine, probe, device_decode,
# yolo11n, ceiling, captioning, letterbox), for a second call; N_CAPTION, N_DETECT, RAW_REPEATS and
# CAPTION_LIMIT override the captioning step's sizes.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
PY=${GPU_RUN_PYTHON:-python3}
if [ -z "${GPU_RUN_PYTHON:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD/src:$PWD"
fi
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 VISIONQ_MODEL_PROCESS=1
if [ -n "${GPU_RUN_SMALL:-}" ]; then
  N_BENCH=40 N_CEILING=60 N_CAPTION=2 N_DETECT=4 N_DECODE=8 RAW_REPEATS=1 N_LETTERBOX=16
  CAPTION_LIMIT=600  # BLIP base on a CPU: about 0.35 images/s
  MODEL_DEVICE=cpu  # the null model refuses a GPU the machine lacks
else
  N_BENCH=400 N_CEILING=600 N_CAPTION=${N_CAPTION:-48} N_DETECT=${N_DETECT:-96} N_DECODE=80
  RAW_REPEATS=${RAW_REPEATS:-16} CAPTION_LIMIT=${CAPTION_LIMIT:-120} N_LETTERBOX=128 MODEL_DEVICE=cuda:0
fi
scratch=$(mktemp -d)

step() {  # step NAME SECONDS COMMAND...: run unless GPU_RUN_STEPS names others ("yolo11n captioning")
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_RUN_STEPS:-}" ] && [[ " $GPU_RUN_STEPS " != *" ${name%_decode_*} "* ]]; then
    return
  fi
  echo "== $name ($(date -u +%T), at most ${limit}s): $*"
  timeout "$limit" "$@"
  echo "== $name: exit $?"
}
keep() {  # keep NAME FILE: a step's report back under $OUT
  [ -f "$2" ] && cp "$2" "$OUT/$1.json"
}

step machine 20 bash -c "nvidia-smi -L; $PY -c 'import sys, torch, torchvision, transformers; print(sys.version.split()[0], torch.__version__, torchvision.__version__, transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'"
step probe 90 "$PY" bench/gpu/probe.py  # where yolo11n's time goes in a predict call (run 1 of the H200 asked)
step device_decode 45 "$PY" bench/device_decode_check.py --n "$N_DECODE" --out "$scratch/decode"
keep device_decode "$scratch/decode/device_decode_check.json"
step yolo11n 140 "$PY" bench/run_bench.py --n "$N_BENCH" --latency-n 10 --memory-n 0 --out "$scratch/yolo"
keep yolo11n "$scratch/yolo/results.json"
for mode in off on; do
  # The null model says it runs on the GPU, so that "on" decodes there (run 23's said "cpu").
  step "ceiling_decode_$mode" 60 "$PY" bench/ceiling.py --n "$N_CEILING" --only null_pipeline --model-device "$MODEL_DEVICE" \
    --env VISIONQ_MODEL_PROCESS=1 --env "VISIONQ_DEVICE_DECODE=$mode" --out "$scratch/ceiling_$mode"
  keep "ceiling_decode_$mode" "$scratch/ceiling_$mode/ceiling.json"
done
step captioning "$CAPTION_LIMIT" "$PY" bench/models_bench.py --n-caption "$N_CAPTION" --n-detect "$N_DETECT" \
  --raw-repeats "$RAW_REPEATS" --out "$scratch/models"
keep captioning "$scratch/models/results.json"
# Last, as the least of them: the network's input made on the host or on the device (issue 11).
step letterbox 30 "$PY" bench/letterbox.py --n "$N_LETTERBOX" --rounds 3 --out "$scratch/letterbox"
keep letterbox "$scratch/letterbox/letterbox.json"
echo "== done ($(date -u +%T)); in $OUT: $(ls "$OUT" | tr '\n' ' ')"
