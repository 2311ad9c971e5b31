#!/usr/bin/env bash
# The GPU figures of issues 8 and 11 on the `device` tool's machine (an H200 with Python 3.12,
# torch, torchvision, transformers and no network). Prepare here, once per session:
#     python3 bench/gpu/kit.py          # the wheels it lacks, into .whl/ (about 53 MB)
# then call the tool's run with  command: bench/gpu/run.sh   carry: [".whl"]   timeout_s: 580
# Figures so far: bench/RESULTS.md runs 23 and 25, logs and reports in bench/gpu/results/.
# Everything it prints is also in $OUT/run.log; the reports come back as $OUT/*.json.
#
# Steps, each with a time limit, in the order they matter (a step that fails does not stop the
# next; what a step cut at its limit leaves running is killed before the next): the device
# decode's verdicts and speed; yolo11n (architecture, seeded) raw batched, pipelined and naive;
# yolo11n and BLIP in a process of their own fed at full speed against the same models in the
# bench's process (bench/model_process.py); BLIP captioning (base-size architecture) raw and
# pipelined. The models' weights are random (the hub cannot be reached there): the compute is the
# same. The limits add up to 480 s, under the tool's 600. Run 25's
# machine started in about 30 s, so a second call fits in a session's 900 s while the machine is
# warm (30 s), for example the captioning step again with more images:
#     GPU_RUN_STEPS="captioning" N_CAPTION=240 CAPTION_LIMIT=200 bench/gpu/run.sh   (timeout_s: 230)
# Three steps run only when named, their figures taken in runs 23 and 25: `probe` (where yolo11n's
# time goes in a predict call, and each input shape's first call), `ceiling` (the worker's own CPU
# per image with the null model, the JPEG decode off and on the device) and `letterbox` (the
# network's input made on the host or on the device).
#
# Here, as a dry run of the script itself on the CPU (small N, the project's .venv, no kit):
#     GPU_RUN_PYTHON=.venv/bin/python GPU_RUN_SMALL=1 OUT=/tmp/gpu-dry bench/gpu/run.sh
# GPU_RUN_STEPS="yolo11n ceiling" runs only the steps it names (machine, probe, device_decode,
# yolo11n, ceiling, model_process, captioning, letterbox); N_CAPTION, N_DETECT, RAW_REPEATS and
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
  N_BENCH=40 N_CEILING=60 N_CAPTION=2 N_DETECT=4 N_DECODE=8 RAW_REPEATS=1 N_LETTERBOX=16 N_MP_DETECT=8 N_MP_CAPTION=4
  CAPTION_LIMIT=600  # BLIP base on a CPU: about 0.35 images/s
  GPU_RUN_STEPS=${GPU_RUN_STEPS:-machine probe device_decode yolo11n ceiling model_process captioning letterbox}
  MODEL_DEVICE=cpu  # the null model refuses a GPU the machine lacks
else
  N_BENCH=400 N_CEILING=600 N_CAPTION=${N_CAPTION:-320} N_DETECT=${N_DETECT:-96} N_DECODE=80
  RAW_REPEATS=${RAW_REPEATS:-8} CAPTION_LIMIT=${CAPTION_LIMIT:-150} N_LETTERBOX=128 MODEL_DEVICE=cuda:0
  N_MP_DETECT=640 N_MP_CAPTION=160
fi
scratch=$(mktemp -d)

stamp_phases() {  # the bench's phase lines, "(b) pipeline", get the time they began: to size the limits
  local line
  while IFS= read -r line; do
    [[ $line == "("* ]] && printf -v line '%s  [%(%T)T]' "$line" -1
    printf '%s\n' "$line"
  done
}
reap() {  # reap TAG: kill what a step left running. A step cut at its limit leaves its worker,
  # emulators and PostgreSQL behind, still busy finishing (run 25: up to ~40 s, over the next step).
  local pid n=0
  for pid in $(grep -lsz "^GPU_RUN_STEP=$1\$" /proc/[0-9]*/environ | cut -d/ -f3); do
    kill -9 "$pid" 2>/dev/null && n=$((n + 1))
  done
  if [ "$n" -gt 0 ]; then echo "== $1: $n processes it left were killed"; fi
}
step() {  # step NAME SECONDS COMMAND...: run when GPU_RUN_STEPS, or else the default list, names it
  local name=$1 limit=$2 rc
  shift 2
  local steps=${GPU_RUN_STEPS:-machine device_decode yolo11n model_process captioning}
  [[ " $steps " == *" ${name%_decode_*} "* ]] || return 0
  echo "== $name ($(date -u +%T), at most ${limit}s): $*"
  GPU_RUN_STEP=$name timeout "$limit" "$@" 2>&1 | stamp_phases
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc ($(date -u +%T))"
  reap "$name"
}
keep() {  # keep NAME FILE: a step's report back under $OUT
  [ -f "$2" ] && cp "$2" "$OUT/$1.json"
}

step machine 20 bash -c "nvidia-smi -L; df -h /dev/shm | tail -1; $PY -c 'import sys, torch, torchvision, transformers; print(sys.version.split()[0], torch.__version__, torchvision.__version__, transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'"
step probe 90 "$PY" bench/gpu/probe.py  # where yolo11n's time goes in a predict call (run 1 of the H200 asked)
step device_decode 30 "$PY" bench/device_decode_check.py --n "$N_DECODE" --out "$scratch/decode"
keep device_decode "$scratch/decode/device_decode_check.json"
step yolo11n 180 "$PY" bench/run_bench.py --n "$N_BENCH" --latency-n 10 --memory-n 0 --out "$scratch/yolo"
keep yolo11n "$scratch/yolo/results.json"
for mode in off on; do
  # The null model says it runs on the GPU, so that "on" decodes there (run 23's said "cpu").
  step "ceiling_decode_$mode" 70 "$PY" bench/ceiling.py --n "$N_CEILING" --only null_pipeline --model-device "$MODEL_DEVICE" \
    --env VISIONQ_MODEL_PROCESS=1 --env "VISIONQ_DEVICE_DECODE=$mode" --out "$scratch/ceiling_$mode"
  keep "ceiling_decode_$mode" "$scratch/ceiling_$mode/ceiling.json"
done
# The model in its own process fed at full speed against the same model in the bench's process,
# with no emulator to bound it: is the hand-over (the pipe, the decode on the device beside the
# forward pass) what made run 25's caption pipeline 0.69 x its raw model, or the pipeline's batches?
step model_process 100 bash -c "$PY bench/model_process.py --n $N_MP_DETECT --out $scratch/mp_detect.json \
  && $PY bench/model_process.py --caption --n $N_MP_CAPTION --out $scratch/mp_caption.json"
keep model_process_detect "$scratch/mp_detect.json"
keep model_process_caption "$scratch/mp_caption.json"
step captioning "$CAPTION_LIMIT" "$PY" bench/models_bench.py --n-caption "$N_CAPTION" --n-detect "$N_DETECT" \
  --raw-repeats "$RAW_REPEATS" --out "$scratch/models"
keep captioning "$scratch/models/results.json"
# Only when named (measured in runs 23 and 25): the network's input made on the host or on the device.
step letterbox 30 "$PY" bench/letterbox.py --n "$N_LETTERBOX" --rounds 3 --out "$scratch/letterbox"
keep letterbox "$scratch/letterbox/letterbox.json"
echo "== done ($(date -u +%T)); in $OUT: $(ls "$OUT" | tr '\n' ' ')"
