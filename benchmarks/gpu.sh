#!/usr/bin/env bash
# All GPU measurements of the README, on a CUDA machine that has torch but maybe not diffusers/av.
# Wheels missing there come from ../shared/tools/gpu-wheels.sh (into .whl/, run beforehand where pip
# can reach PyPI). Usage, from the project root:
#   bash benchmarks/gpu.sh [vae] [vae-variants] [generate] [finetune]    (default: all of them; one per call where calls are time-limited)
# Results go to $OUT (when set, e.g. by the device tool) or benchmarks/results.
set -euo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/gpu-site" .whl/*.whl
  export PYTHONPATH=$PWD:$HOME/gpu-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(vae vae-variants generate finetune)
for t in "${tasks[@]}"; do
  case $t in
    vae) python3 -m benchmarks.vae_speed --out "$out" ;;
    vae-variants)  # the optimisations one by one, bf16 at default tiling
      python3 -m benchmarks.vae_speed --dtypes bf16 --tiling default --variants eager channels_last compile \
        --out "$out/variants" ;;
    generate) python3 -m benchmarks.svd_speed generate --native --out "$out" ;;
    finetune) python3 -m benchmarks.svd_speed finetune --out "$out" ;;
    *) echo "unknown task $t (vae, vae-variants, generate, finetune)" >&2; exit 2 ;;
  esac
done
