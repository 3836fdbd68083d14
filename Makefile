# identity-study: set-up, data, the main job and the tests. Every target installs what it needs.
SHELL := /bin/bash
PY := .venv/bin/python
SHARED ?= ../shared
DATA ?= data
export IDENTITY_STUDY_DATA ?= $(abspath $(DATA))
export PYTHONUNBUFFERED := 1

.PHONY: setup data main test check-export lint nbtest pytest lab clean-venv system chapters check-chapters html \
	test-browser test-slurm findings verdicts

# a virtual environment with the pinned versions of settings.ini (and constraints.txt for everything they pull in)
.venv/.installed: settings.ini setup.py constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: .venv/.installed

# CIFAR-10/100 and Tiny ImageNet rebuilt once from the read-only compact copy in $(SHARED)/data; on a machine without
# that folder, the official CIFAR-10/100 files downloaded through torchvision, md5-checked (no Tiny ImageNet)
DATA_SOURCE = $(if $(wildcard $(SHARED)/data/.),--shared $(SHARED)/data --tiny-imagenet,--download)
$(DATA)/.complete: | .venv/.installed
	$(PY) -m identity_study.cli data $(DATA_SOURCE) --root $(DATA)
	touch $@

data: $(DATA)/.complete

# the main job: a short real training run through papermill, then the figure notebook on it
main: setup data
	bash scripts/main.sh

# the whole test suite, as CI runs it. One thread per process: nbdev_test runs two notebooks at a time and several
# tests run papermill kernels beside pytest, and on 2 cores OpenMP threads that share a core wait on each other.
test lint nbtest pytest: export OMP_NUM_THREADS := 1
test: setup data system
	bash scripts/check_export.sh
	$(PY) scripts/readme_results.py --check
	$(MAKE) check-chapters lint nbtest pytest

# ruff over what is Python source outside the notebooks: the exported package, the tests, the benchmarks; then the
# prose and layout checks of tests/prose (README and notebook text, references, metadata, the import graph)
lint:
	.venv/bin/ruff check identity_study tests benchmarks scripts
	.venv/bin/pytest -q tests/prose --durations=5

# every notebook, two at a time; --timing prints each one's seconds
nbtest:
	.venv/bin/nbdev_test --n_workers 2 --timing

# the tests on two processes (pytest-xdist; tests that share an expensive module fixture stay on one, see
# tests/conftest.py), the 30 slowest printed. `pytest -m "not slow"` runs the quick ones.
pytest:
	.venv/bin/pytest -q -n 2 --dist loadgroup --durations=30

lab: setup data
	.venv/bin/jupyter lab nbs

# the Debian packages of the reader's side (graphviz for the unit diagrams, chromium, MathJax), when missing
system:
	bash scripts/system_packages.sh

# execute the chapters on their full path and commit their outputs (ONLY="09_figures 10" for some of them)
chapters: export OMP_NUM_THREADS := 1
chapters: setup data system
	$(PY) -m scripts.chapters $(ONLY)

# the findings from scratch: every missing run of the protocol (two single-thread lanes by default; JOBS=N, and
# SWEEP_FLAGS="--max-hours 3" for a slice), then chapter 10 re-executed and the README's verdicts rewritten from it
JOBS ?= 2
findings: export OMP_NUM_THREADS := 1
findings: setup data system
	$(PY) -m identity_study.sweep run protocol --jobs $(JOBS) --device cpu $(SWEEP_FLAGS)
	$(MAKE) verdicts

# chapter 10 re-executed and the README's verdicts rewritten from the records in runs/, training nothing
verdicts: export OMP_NUM_THREADS := 1
verdicts: setup data system
	$(PY) -m scripts.chapters 10_mini_reproduction
	$(PY) scripts/readme_results.py

# every chapter shows the outputs of the current code: none missing, none older than the code, no machine paths
check-chapters:
	$(PY) -m scripts.check_chapters

# the offline HTML edition of the executed chapters, in _site/
html: setup system
	$(PY) -m scripts.html_edition

# JupyterLab and the HTML edition in Chromium, through Playwright (screenshots in .browser-shots/): tests/browser, which
# plain pytest leaves out (PYTEST_ARGS="-k html" for some of its tests)
test-browser: export OMP_NUM_THREADS := 1
test-browser: setup data system html
	$(PY) -m pytest tests/browser -s $(PYTEST_ARGS)

# the Slurm executor against a real one-node Slurm cluster brought up on this machine from Debian's packages
# (scripts/slurm/cluster.sh: munge, MariaDB, slurmdbd, slurmctld, slurmd, all state in .slurm-test/), stopped again
# however the tests end. Installs the packages when missing (root, apt-get).
test-slurm: export OMP_NUM_THREADS := 1
test-slurm: setup data
	bash scripts/slurm/test.sh
