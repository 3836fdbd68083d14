#!/usr/bin/env bash
# The main job: the paper's point in one figure. ResNet-110 trained twice through papermill, once with identity
# shortcuts and once with every shortcut scaled by 0.5 (Table 1's "constant scaling (0.5, 1)"), side by side, each
# beside the gradient that reaches its units at initialisation (chapter 0). Outputs: runs/quickstart/ and
# figures/quickstart/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
export IDENTITY_STUDY_DATA="${IDENTITY_STUDY_DATA:-$PWD/data}"
# the two runs train side by side, one thread each: on 2 cores, threads that share a core wait on each other
export OMP_NUM_THREADS=1
PM=".venv/bin/papermill --no-progress-bar"
# the mini profile's net (width 8) on a short schedule: 400 iterations of batch 32, a 10 % warm-up at 0.01, then 0.1
# divided by 10 at 60 % and 80 % of the run; the last evaluation on 2,000 test images
RUN=(-p depth 110 -p profile mini -p batch_size 32 -p iterations 400 -p warmup_iterations 40 -p lr_steps "[240, 320]"
     -p eval_every 100 -p final_eval_subset 2000 -p threads 1 -p run_dir runs/quickstart -p progress False)
mkdir -p runs/quickstart figures/quickstart
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT     # a failed run does not leave the other training

echo "== 1/2: ResNet-110 on CIFAR-10, identity shortcuts and shortcuts scaled by 0.5, trained side by side"
$PM nbs/train.ipynb runs/quickstart/train-identity.ipynb -p unit original "${RUN[@]}" &
identity=$!
$PM nbs/train.ipynb runs/quickstart/train-scaled.ipynb -p unit constant_scaling -p shortcut_scale 0.5 \
    -p residual_scale 1.0 "${RUN[@]}" &
scaled=$!
wait $identity
wait $scaled

echo "== 2/2: the two runs beside their gradients at initialisation"
.venv/bin/python scripts/main_figure.py runs/quickstart figures/quickstart
