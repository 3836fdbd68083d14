#!/usr/bin/env bash
# The main job: a short real training run through papermill, then the figure notebook that shows it, then the
# propagation analysis. Outputs: runs/quickstart/, figures/quickstart/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
export IDENTITY_STUDY_DATA="${IDENTITY_STUDY_DATA:-$PWD/data}"
PM=".venv/bin/papermill --no-progress-bar --log-output"
mkdir -p runs/quickstart figures/quickstart

echo "== 1/3: pre-activation ResNet-20 on CIFAR-10, mini profile (a few minutes on a 2-core CPU)"
$PM nbs/train.ipynb runs/quickstart/train-preact-20.ipynb \
    -p unit preact -p depth 20 -p profile mini -p run_dir runs/quickstart -p progress False

echo "== 2/3: the figure notebook on that run"
$PM nbs/09_figures.ipynb runs/quickstart/figures.ipynb \
    -p runs_dir runs/quickstart -p figures_dir figures/quickstart -p profile mini

echo "== 3/3: the propagation analysis (chapter 0)"
$PM nbs/00_propagation.ipynb runs/quickstart/propagation.ipynb -p figures_dir figures/quickstart

.venv/bin/python - <<'PY'
import json, pathlib
for s in pathlib.Path("runs/quickstart").glob("*/summary.json"):
    s = json.loads(s.read_text())
    print(f"{s['run_id']}: {s['status']}, final test error {100 * s['final_test_error']:.2f}% "
          f"after {s['iterations_done']} iterations ({s['wall_seconds'] / 60:.1f} min)")
PY
echo "figures: $(ls figures/quickstart)"
