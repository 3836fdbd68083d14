import os
import sys
from pathlib import Path

# One thread per process unless a test asks otherwise (as `make test` exports it): with OMP_NUM_THREADS unset,
# train() lets CpuThreads choose the threads from the machine's load at that moment, so two runs of one test could
# compute with different thread counts (and bits) depending on what else runs. Tests of that rule unset it themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# the rebuilt CIFAR copy that `make data` writes (the Makefile exports the same variable)
os.environ.setdefault("IDENTITY_STUDY_DATA", str(ROOT / "data"))

# IDENTITY_STUDY_FAKE_GPU_HOST=1 runs the suite as if on a GPU host: torch reports one CUDA device (an sm_90 one), so
# that device="auto" resolves to "cuda" as it does there, and a test that silently relies on auto -> cpu fails here
# too. Nothing can compute on the fake device: a test about the CPU passes device="cpu"; a test that needs a real GPU
# is marked `needs_cuda`, which reads the real answer, taken before any mock.
FAKE_GPU_HOST = "IDENTITY_STUDY_FAKE_GPU_HOST"
REAL_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not REAL_CUDA, reason="needs a real CUDA device")


def pretend_gpu_host(mp: pytest.MonkeyPatch):
    "What torch says of a machine with one H100-class GPU, as far as resolving the parameters asks it."
    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(torch.cuda, "device_count", lambda: 1)
    mp.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    mp.setattr(torch.cuda, "get_device_name", lambda device=None: "fake GPU (IDENTITY_STUDY_FAKE_GPU_HOST)")
    mp.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def pytest_configure(config):
    # the rebuilt copy warns once per process that it is not bit-comparable with the official files
    config.addinivalue_line("filterwarnings", "ignore:.*rebuilt copy.*:UserWarning")
    # pytest-xdist's marker, known also where the tests run without it
    config.addinivalue_line("markers", "xdist_group(name): with `-n N --dist loadgroup`, these tests run on one worker")


# Module-scoped fixtures that cost a build or a training run. Under `make pytest` (pytest-xdist, `-n 2 --dist
# loadgroup`) each worker that runs a test needing one builds its own copy, so the tests that share one are kept on
# one worker: tests/test_package.py's `env` (an sdist, a wheel and a virtual environment), tests/test_faults.py's
# `exact_reference` (a reference training run).
SHARED_MODULE_FIXTURES = ("env", "exact_reference")


def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = [name for name in SHARED_MODULE_FIXTURES if name in getattr(item, "fixturenames", ())]
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.path.name}::{shared[0]}"))
    # the slow tests first (the order of the rest kept): on two workers a long test started last would run alone
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config):
    if os.environ.get(FAKE_GPU_HOST) == "1":
        return f"{FAKE_GPU_HOST}=1: torch.cuda is mocked, device='auto' resolves to 'cuda'"


@pytest.fixture(scope="session", autouse=True)
def _fake_gpu_host_when_asked():
    "The session on a pretended GPU host when IDENTITY_STUDY_FAKE_GPU_HOST=1 (collection, so needs_cuda, sees the real)"
    if os.environ.get(FAKE_GPU_HOST) != "1":
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        pretend_gpu_host(mp)
        yield


@pytest.fixture
def fake_gpu_host(monkeypatch):
    "This test on a pretended GPU host (see IDENTITY_STUDY_FAKE_GPU_HOST)."
    pretend_gpu_host(monkeypatch)


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
