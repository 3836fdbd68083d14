#!/usr/bin/env bash
# The first run on a lent GPU machine, in one command of at most TOTAL_S seconds (570: the device's 600 s command limit
# less a margin): the bundle's wheels (benchmarks/prepare_gpu_bundle.sh) installed, then every section of
# gpu_acceptance.py in what is left of TOTAL_S. A wheel that fails to install fails the sections that need it (the
# two notebook sections need papermill and ipykernel), never the whole run: the wheels are installed together, and
# where that fails one by one, and the sections run whatever happened.
#   IDENTITY_STUDY_COMMIT=<commit> bash benchmarks/gpu_first_run.sh OUT [gpu_acceptance.py arguments]
# The machine's copy of the tree has no .git: `python3 benchmarks/gpu_acceptance.py --print-command` prints this line
# here with the checkout's commit filled in, and every record and CSV row of the run carries it.
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: IDENTITY_STUDY_COMMIT=<commit> bash benchmarks/gpu_first_run.sh OUT [gpu_acceptance.py arguments]}
shift
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
TOTAL_S=${TOTAL_S:-570}
start=$(date +%s)
mkdir -p "$OUT"
{
    echo "===== setup $(date +%H:%M:%S): commit ${IDENTITY_STUDY_COMMIT:-unknown}, $("$PY" -V 2>&1)"
    if compgen -G ".whl/*.whl" >/dev/null; then
        if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl; then
            echo "the wheels together did not install; one by one:"
            for w in .whl/*.whl; do
                "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$w" || echo "FAILED: $w"
            done
        fi
    else
        echo "no .whl/ here: papermill and ipykernel must be installed already"
    fi
    echo "setup took $(( $(date +%s) - start )) s"
} >>"$OUT/acceptance.log" 2>&1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" IDENTITY_STUDY_COMMIT="${IDENTITY_STUDY_COMMIT:-}"
budget=$(( TOTAL_S - ($(date +%s) - start) - 15 ))     # 15 s: the driver's start and its last writes
exec "$PY" benchmarks/gpu_acceptance.py --out "$OUT" --budget-s "$budget" "$@"
