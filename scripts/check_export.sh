#!/usr/bin/env bash
# The notebooks are the source: nbdev_export and nbdev_clean must change nothing (new untracked modules count), and
# nor may rewriting train.ipynb's parameters cell from the parameter table of chapter 5.
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot() { git status --porcelain --untracked-files=all; git diff; }
before=$(snapshot)
.venv/bin/nbdev_export
.venv/bin/python -c "from identity_study.params import write_parameter_cell; write_parameter_cell('nbs/train.ipynb')"
.venv/bin/nbdev_clean
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "nbdev_export / nbdev_clean changed the tree: identity_study/ or nbs/ is out of step. What changed:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "nbdev_export and nbdev_clean: nothing to change"
