# identity-study: set-up, data, the main job and the tests. Every target installs what it needs.
SHELL := /bin/bash
PY := .venv/bin/python
SHARED ?= ../shared
DATA ?= data
export IDENTITY_STUDY_DATA ?= $(abspath $(DATA))
export PYTHONUNBUFFERED := 1

.PHONY: setup data main test check-export lint nbtest pytest lab clean-venv

# a virtual environment with the pinned versions of settings.ini (and constraints.txt for everything they pull in)
.venv/.installed: settings.ini setup.py constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: .venv/.installed

# CIFAR-10/100 and Tiny ImageNet rebuilt once from the read-only compact copy in $(SHARED)/data
$(DATA)/.complete: | .venv/.installed
	$(PY) -m identity_study.data --shared $(SHARED)/data --root $(DATA) --tiny-imagenet
	touch $@

data: $(DATA)/.complete

# the main job: a short real training run through papermill, then the figure notebook on it
main: setup data
	bash scripts/main.sh

# the whole test suite, as CI runs it. One thread per process: nbdev_test runs two notebooks at a time and several
# tests run papermill kernels beside pytest, and on 2 cores OpenMP threads that share a core wait on each other.
test nbtest pytest: export OMP_NUM_THREADS := 1
test: setup data
	bash scripts/check_export.sh
	$(MAKE) lint nbtest pytest

# ruff over what is Python source outside the notebooks: the exported package, the tests, the benchmarks
lint:
	.venv/bin/ruff check identity_study tests benchmarks

nbtest:
	.venv/bin/nbdev_test --n_workers 2 --timing

pytest:
	.venv/bin/pytest -q

lab: setup data
	.venv/bin/jupyter lab nbs
