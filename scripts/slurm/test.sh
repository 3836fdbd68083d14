#!/usr/bin/env bash
# `make test-slurm`: bring up the one-node Slurm cluster of cluster.sh, run tests/slurm/ against it through the real
# CLI, and stop exactly the daemons it started however the tests end (success, failure, Ctrl-C, kill).
set -euo pipefail
cd "$(dirname "$0")/../.."
export SLURM_TEST_DIR="${SLURM_TEST_DIR:-$PWD/.slurm-test}"
bash scripts/slurm/cluster.sh install
tests=""
stop() {
  [ -n "$tests" ] && kill -TERM "$tests" 2>/dev/null && wait "$tests" 2>/dev/null
  bash scripts/slurm/cluster.sh down
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
SLURM_CONF="$(bash scripts/slurm/cluster.sh up)"
export SLURM_CONF
# in the background, so that a signal to this script is handled at once (bash runs traps only between commands)
.venv/bin/pytest -q -p no:cacheprovider tests/slurm "$@" &
tests=$!
wait "$tests"
status=$?
tests=""
exit $status
