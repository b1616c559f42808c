#!/usr/bin/env bash
# One prepared run on the GPU machine: installs what it lacks from the wheels in .whl/ (fetched here with
# ../shared/tools/gpu-wheels.sh), then runs each step in order of priority, writing its figures under $OUT
# as soon as it finishes, so a run killed at its time limit still returns what it had. Under 8 minutes.
#
#   benchmarks/gpu.sh             # on the GPU machine (OUT is set there)
#   benchmarks/gpu.sh --dry-run   # the same steps at tiny sizes on the CPU (what the tests run)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry-run" ]] && dry=1
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
summary=$OUT/summary.txt
: >"$summary"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, one summary line
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$(($(date +%s) - start))" | tee -a "$summary"
}

if [[ $dry == 0 ]]; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/gpu-site" \
      .whl/*.whl >"$OUT/install.log" 2>&1
  fi
  export PYTHONPATH=$PWD:$HOME/gpu-site
  export HF_HUB_OFFLINE=1
  # 1. correctness on CUDA: parity (TF32 off), bf16/fp16 against fp32, tiled memory, offload
  step gpu-tests 100 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts=""
  # 2. the VAE at 576x1024, bf16, random weights: the default policy, whole clip, forced exact tiling
  step vae-speed 150 $PY -m benchmarks.vae_speed --dtypes bf16 --cases 97x576x1024 385x576x1024 \
    --tiling default off exact --repeats 3 --out "$OUT/vae"
  # 3. SVD-XT in CV-VAE latents, 25 latents -> 97 frames at 576x1024, fp16: seconds per step, VAE share
  step svd-speed 110 $PY -m benchmarks.svd_speed generate --latents 25 --steps 3 --out "$OUT/svd"
  # 5. fine-tuning steps at 320x576, bf16 (4, the app through gradio_client, needs gradio's wheels too)
  step finetune-speed 100 $PY -m benchmarks.svd_speed finetune --sizes 320 576 --modes conv_out lora \
    --repeats 2 --out "$OUT/finetune"
  # 6. does the sub-pixel upsampler pay with cuDNN too (it does on CPU: docs/performance.md)?
  step conv-layers 40 $PY -m benchmarks.conv_layers --device cuda --dtype bf16 --frames 33 --size 576 \
    --ways phases channels-last
else
  export HF_HUB_OFFLINE=1
  step gpu-tests 120 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts=""
  step vae-speed 300 $PY -m benchmarks.vae_speed --device cpu --small --repeats 1 --out "$OUT/vae"
  step svd-speed 300 $PY -m benchmarks.svd_speed generate --device cpu --small --steps 1 --out "$OUT/svd"
  step finetune-speed 300 $PY -m benchmarks.svd_speed finetune --device cpu --small --modes conv_out lora \
    --repeats 1 --out "$OUT/finetune"
  step conv-layers 120 $PY -m benchmarks.conv_layers --frames 5 --size 16 --repeats 1 --ways phases
fi
! grep -v "rc=0 " "$summary" | grep -q . # exit 1 when a step failed
