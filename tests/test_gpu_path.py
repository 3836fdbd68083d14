"""The GPU path, checked on the CPU where it can be: the fp32 math mode, generator states that survive a change of
visible devices or processes, DDP evaluation of the saved model, and the process group's start and end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import identity_study.train as T
from identity_study.data import fp32_math, set_fp32_math
from identity_study.params import resolve_params
from identity_study.records import load_record

HERE = Path(__file__).parent
TINY = dict(unit="preact", depth=20, dataset="synthetic", iterations=4, eval_every=2, batch_size=16,
            train_subset=64, progress=False, device="cpu")


@pytest.fixture
def restore_math_flags():
    "The global fp32 math flags as they were before the test."
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.mkldnn.matmul.fp32_precision, torch.backends.mkldnn.conv.fp32_precision)
    yield
    (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
     torch.backends.mkldnn.matmul.fp32_precision, torch.backends.mkldnn.conv.fp32_precision) = saved


def test_fp32_is_ieee_on_cuda_and_tf32_only_when_asked(restore_math_flags):
    torch.backends.cudnn.conv.fp32_precision = "tf32"             # PyTorch's default for cuDNN convolutions
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert fp32_math("cuda") == {"matmul": "tf32", "conv": "tf32"}
    for precision in ("fp32", "bf16"):
        assert set_fp32_math("cuda", precision) == {"matmul": "ieee", "conv": "ieee"}
        # read back from torch's own flags, not from what the function returned
        assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert set_fp32_math("cuda", "tf32") == {"matmul": "tf32", "conv": "tf32"}
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "tf32"


def test_tf32_is_a_cuda_precision():
    with pytest.raises(ValueError, match=r"precision 'tf32'.*'cpu'.*valid choices on it: auto, fp32, bf16"):
        resolve_params(unit="preact", depth=20, precision="tf32", device="cpu")


def test_a_run_sets_its_math_before_building_and_records_it(runs, monkeypatch, restore_math_flags):
    torch.backends.mkldnn.conv.fp32_precision = "bf16"        # a CPU allowed to compute fp32 convolutions in bf16
    order = []
    real_set, real_build = T.set_fp32_math, T.build
    monkeypatch.setattr(T, "set_fp32_math", lambda d, p: order.append(("math", d, p)) or real_set(d, p))
    monkeypatch.setattr(T, "build", lambda spec: order.append(("build",)) or real_build(spec))
    record = T.train(**TINY, precision="fp32", run_dir=runs)
    assert order == [("math", "cpu", "fp32"), ("build",)]
    assert torch.backends.mkldnn.conv.fp32_precision == "ieee"
    assert record.params["fp32_math"] == {"matmul": "ieee", "conv": "ieee"}


class FakeCuda:
    "torch.cuda's generator functions on a node with `count` GPUs, each with a state of its own."
    def __init__(self, count):
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(count)}

    def index(self, device):
        i = torch.device(device).index or 0
        if i not in self.states:
            raise IndexError(f"no GPU {i}: {len(self.states)} visible")
        return i

    def get_rng_state(self, device="cuda"):
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        self.states[self.index(device)] = state.clone()

    def get_rng_state_all(self):
        return [s.clone() for s in self.states.values()]


def test_resume_on_fewer_visible_gpus_than_were_saved(monkeypatch):
    four = FakeCuda(4)
    monkeypatch.setattr(torch.cuda, "get_rng_state", four.get_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", four.get_rng_state_all)
    saved = T._rng_state("cuda:3")               # trained on GPU 3 of a 4-GPU node
    assert torch.equal(saved["device"], four.states[3]) and "cuda" not in saved
    one = FakeCuda(1)                            # requeued onto a node where one GPU is visible
    monkeypatch.setattr(torch.cuda, "set_rng_state", one.set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: [one.set_rng_state(s, i) for i, s in enumerate(states)])
    T._set_rng_state(saved, "cuda:0")
    assert torch.equal(one.states[0], four.states[3])       # the training device's stream continues on the new one


def test_generators_when_the_number_of_processes_changes(monkeypatch):
    states = [dict(cpu=torch.get_rng_state(), device=None) for _ in range(2)]
    assert T._rng_for_rank(states, 1, 2, seed=0, iteration=8, device="cpu") is None
    assert torch.equal(torch.get_rng_state(), states[1]["cpu"])
    message = T._rng_for_rank(states, 0, 1, seed=0, iteration=8, device="cpu")
    assert "2 process(es) and is resumed by 1" in message
    draw = torch.rand(3)
    T._rng_for_rank(states, 0, 1, seed=0, iteration=8, device="cpu")
    assert torch.equal(torch.rand(3), draw)                 # seeded afresh, but from (seed, iteration, rank)


def torchrun(*args, nproc=2, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), str(HERE / "ddp_gpu_path_worker.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_a_ddp_step_sees_exactly_the_one_process_batch(tmp_path):
    proc = torchrun("batch", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "batch.json").read_text())
    assert r["share"][0] * 2 == r["whole"][0] == 16              # each of the 2 ranks holds half the global batch
    assert r["labels_equal"] == [True] * 3                       # the same images...
    assert r["images_equal"] == [True] * 3                       # ...with the same crops and flips, bit for bit
    assert not r["draws_equal"]                                  # and each rank draws its own dropout masks


def test_one_process_keeps_the_runs_seed_and_ranks_get_their_own():
    torch.manual_seed(7)
    want = torch.rand(4)
    torch.manual_seed(7)
    T.seed_rank(7, 0, 1)                                         # one process: untouched, the run's own stream
    assert torch.equal(torch.rand(4), want)
    draws = []
    for rank in (0, 1):
        torch.manual_seed(7)
        T.seed_rank(7, rank, 2)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], want)


@pytest.mark.slow
def test_ddp_reports_the_error_of_the_saved_model(tmp_path):
    proc = torchrun("bn", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"bn{r}.json").read_text()) for r in (0, 1))
    # the ranks' own statistics give another answer: without the broadcast the report would mix two models
    assert r0["without_sync"]["test_error"] != r0["saved_model"]["test_error"]
    for r in (r0, r1):
        assert r["reported"]["test_error"] == r0["saved_model"]["test_error"]
        assert r["reported"]["test_top5_error"] == r0["saved_model"]["test_top5_error"]
        assert r["reported"]["test_loss"] == pytest.approx(r0["saved_model"]["test_loss"], rel=1e-9)


@pytest.mark.slow
def test_ddp_run_resumed_by_a_different_number_of_processes(tmp_path):
    runs = tmp_path / "runs"
    proc = torchrun("train", runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = [p for p in runs.iterdir() if p.is_dir()]
    assert load_record(path).summary["iterations_done"] == 4
    worker = {k: v for k, v in json.loads((path / "params.json").read_text()).items() if k in (
        "unit", "depth", "dataset", "batch_size", "train_subset", "precision", "channels_last", "deterministic")}
    with pytest.warns(UserWarning, match="written by 2 process"):
        record = T.train(**worker, iterations=12, eval_every=4, eval_subset=None, final_eval_subset=None,
                         progress=False, device="cpu", threads=1, run_dir=runs)
    assert record.path == path and record.status == "completed" and list(record.metrics.iteration) == [4, 8, 12]
