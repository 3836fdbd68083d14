import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

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


TIMING = ["seconds", "images_per_second"]


def final_state(path: Path) -> dict:
    "The last checkpoint of the run recorded in `path`."
    return torch.load(Path(path) / "checkpoint.pt", weights_only=False)


def assert_same_run(a: Path, b: Path):
    "Two finished records computed the same thing: every metric but timing, every weight and buffer, bit for bit."
    pd.testing.assert_frame_equal(pd.read_csv(Path(a) / "metrics.csv").drop(columns=TIMING),
                                  pd.read_csv(Path(b) / "metrics.csv").drop(columns=TIMING))
    sa, sb = final_state(a), final_state(b)
    assert sa["model"].keys() == sb["model"].keys()
    different = [k for k in sa["model"] if not torch.equal(sa["model"][k], sb["model"][k])]
    assert not different, different
    assert torch.equal(sa["rng"]["cpu"], sb["rng"]["cpu"])


@pytest.fixture
def my_units():
    "examples/my_units.py imported afresh (it registers learned_scale and zero_init_preact), unregistered afterwards."
    import importlib.util

    from identity_study.units import UNITS
    spec = importlib.util.spec_from_file_location("my_units", ROOT / "examples" / "my_units.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_units"] = module
    spec.loader.exec_module(module)
    yield module
    for name in ("learned_scale", "zero_init_preact"):
        UNITS.pop(name, None)
    del sys.modules["my_units"]
