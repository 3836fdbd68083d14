#!/usr/bin/env bash
# What an offline GPU machine whose Python (3.12) has torch, torchvision, numpy, pandas, matplotlib, seaborn, scipy,
# tqdm, PyYAML, requests and click, but no Jupyter, needs to run benchmarks/gpu_acceptance.py, prepared here (with a
# package registry) into two folders of the checkout that git should ignore:
#   .whl/       papermill, ipykernel and every package of theirs that such a machine lacks, as Python 3.12 manylinux
#               x86-64 wheels at the versions pinned in constraints.txt (pure-Python ones are py3-none-any)
#   .gpu_data/  CIFAR-10's compact JPEG copy (19 MB) and the script that rebuilds torchvision's layout from it;
#               gpu_acceptance.py rebuilds it into the data root when CIFAR-10 is missing there
# Usage: bash benchmarks/prepare_gpu_bundle.sh [SHARED]    (SHARED: the shared folder, default ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
PY=${PY:-python3}

# papermill -> nbclient, nbformat, entrypoints, tenacity; ipykernel -> ipython, jupyter_client, pyzmq, tornado, ...
PACKAGES="papermill nbclient nbformat entrypoints tenacity fastjsonschema jsonschema jsonschema-specifications
referencing rpds-py jupyter_client jupyter_core platformdirs traitlets pyzmq tornado ipykernel comm debugpy
matplotlib-inline nest-asyncio2 ipython ipython_pygments_lexers jedi parso pexpect ptyprocess prompt_toolkit wcwidth
stack_data executing asttokens pure_eval pillow"
# pillow at constraints.txt's pin: CIFAR-10 is rebuilt from JPEGs on the GPU machine, and the package accepts only the
# md5s of the copy this Pillow decodes (identity_study.data.REBUILT_MD5); another libjpeg may decode differently

pins=()
for name in $PACKAGES; do
    # constraints.txt spells names either way (jupyter_client, jsonschema-specifications): match both
    pattern=$(echo "$name" | sed 's/[-_]/[-_]/g')
    pin=$(grep -iE "^${pattern}==" constraints.txt || true)
    [ -n "$pin" ] || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done

mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"

mkdir -p .gpu_data/compact
cp "$SHARED/data/make_torchvision_layout.py" .gpu_data/
cp "$SHARED/data/compact/manifest.json" "$SHARED/data/compact/jpeg_header.bin" .gpu_data/compact/
cp -r "$SHARED/data/compact/cifar10" .gpu_data/compact/
chmod -R u+w .gpu_data
du -sh .whl .gpu_data
