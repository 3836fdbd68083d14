import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the rebuilt CIFAR copy that `make data` writes (the Makefile exports the same variable)
os.environ.setdefault("IDENTITY_STUDY_DATA", str(ROOT / "data"))


def pytest_configure(config):
    # the rebuilt copy warns once per process that it is not bit-comparable with the official files
    config.addinivalue_line("filterwarnings", "ignore:.*rebuilt copy.*:UserWarning")


@pytest.fixture
def runs(tmp_path):
    "An empty runs folder."
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def python():
    return sys.executable


def tree(path: Path) -> list:
    "Every file and folder under `path`, relative, sorted."
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))
