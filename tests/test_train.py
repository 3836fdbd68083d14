"The training engine: recipes, resolution, records, exact resumption, divergence, bad input, DDP."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from identity_study.params import resolve_params
from identity_study.train import lr_at
from identity_study.records import load_record
from identity_study.train import train
from conftest import assert_same_run

# the engine on the CPU, said explicitly: on a GPU host device="auto" is CUDA
TINY = dict(unit="preact", depth=20, dataset="synthetic", iterations=12, eval_every=4, batch_size=16,
            train_subset=256, progress=False, device="cpu")
# bit-identical runs need one thread count for all of them: threads=None would let each run choose its own from the
# machine's load at that moment (CpuThreads), and a reduction over other threads rounds differently
EXACT = dict(TINY, precision="fp32", channels_last=False, deterministic=True, threads=1)


@pytest.mark.parametrize("recipe,boundaries", [
    ("paper", {0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001,
               63_999: 0.001}),
    ("official", {0: 0.1, 62_479: 0.1, 62_480: 0.01, 94_500: 0.01, 94_501: 0.001, 156_199: 0.001}),
])
def test_recipe_learning_rate_at_its_boundaries(recipe, boundaries):
    p = resolve_params(recipe=recipe)
    for it, lr in boundaries.items():
        assert math.isclose(lr_at(it, p), lr), (recipe, it)


def test_imagenet_recipe_boundaries():
    p = resolve_params(dataset="imagenet", depth=200, recipe="imagenet")
    per_epoch = 1_281_167 // 256
    assert p["iterations"] == 90 * per_epoch
    assert math.isclose(lr_at(30 * per_epoch - 1, p), 0.1) and math.isclose(lr_at(30 * per_epoch, p), 0.01)
    assert math.isclose(lr_at(60 * per_epoch, p), 0.001)


def test_recipes_are_the_papers():
    paper, official = resolve_params(recipe="paper"), resolve_params(recipe="official")
    assert (paper["batch_size"], paper["momentum"], paper["weight_decay"], paper["nesterov"]) == (128, 0.9, 1e-4, False)
    assert paper["normalization"] == "per_pixel_mean" and official["normalization"] == "per_channel"
    assert (official["batch_size"], official["nesterov"], official["decay_bn_and_bias"]) == (64, True, True)
    assert official["iterations"] == 200 * (50_000 // 64) and official["warmup_iterations"] == 0


def test_schedules_stay_in_iterations_when_the_batch_changes():
    p = resolve_params(recipe="paper", batch_size=64)
    assert p["lr_steps"] == [32_000, 48_000] and p["iterations"] == 64_000


def test_run_id_follows_from_the_parameters_only():
    a = resolve_params(unit="preact", depth=110)
    assert a["run_id"] == resolve_params(unit="preact", depth=110, device="cpu", compile=True, progress=False)["run_id"]
    assert resolve_params(unit="preact", depth=110, precision="bf16")["run_id"] != resolve_params(
        unit="preact", depth=110, precision="fp32")["run_id"]
    assert a["run_id"].startswith("preact-110-basic-cifar10-paper-s0-")


def test_record_files_and_contents(runs):
    r = train(**TINY, run_dir=runs)
    assert r.status == "completed"
    assert {p.name for p in r.path.iterdir()} == {".lock", "params.json", "metrics.csv", "summary.json",
                                                   "checkpoint.pt", "checkpoint.prev.pt"}
    params = json.loads((r.path / "params.json").read_text())
    for key in ("unit", "depth", "lr", "iterations", "git_commit", "versions", "device", "device_name", "net"):
        assert key in params
    m = pd.read_csv(r.path / "metrics.csv")
    assert list(m.columns) == ["iteration", "epoch", "lr", "train_loss", "train_error", "test_loss", "test_error",
                               "test_top5_error", "seconds", "images_per_second"]
    assert list(m.iteration) == [4, 8, 12] and (m.images_per_second > 0).all()
    s = json.loads((r.path / "summary.json").read_text())
    assert s["status"] == "completed" and s["iterations_done"] == 12
    assert s["final_test_error"] == m.test_error.iloc[-1]          # the last iteration's, never the best
    assert not list(r.path.glob(".*.tmp"))


def test_finished_run_is_not_trained_again_unless_asked(runs, monkeypatch):
    import identity_study.train as T
    trained, loop = [], T.Run.train
    monkeypatch.setattr(T.Run, "train", lambda self: trained.append(self.p["run_id"]) or loop(self))
    first = train(**TINY, run_dir=runs)
    again = train(**TINY, run_dir=runs)
    assert again.summary == first.summary and len(trained) == 1            # the stored record, not a second run
    forced = train(**TINY, run_dir=runs, rerun=True)
    assert len(trained) == 2 and forced.status == "completed"
    old = json.loads((first.path / "superseded-1" / "summary.json").read_text())
    assert old == first.summary                                             # the old record is kept, not deleted


@pytest.mark.parametrize("unit", ["dropout_shortcut", "preact"])
def test_resume_is_bit_identical_on_cpu_fp32(runs, unit):
    cfg = dict(EXACT, unit=unit)
    straight = train(**cfg, run_dir=runs / "a")
    part = train(**cfg, run_dir=runs / "b", stop_after=6)
    assert part.status == "interrupted" and part.summary["iterations_done"] == 4
    resumed = train(**cfg, run_dir=runs / "b")
    assert_same_run(straight.path, resumed.path)


def test_divergence_ends_the_run_with_its_record(runs):
    r = train(**dict(TINY, unit="original", lr=1e6, warmup_iterations=0), run_dir=runs)
    assert r.status == "diverged" and r.summary["diverged_at"] <= 12
    assert r.summary["final_test_error"] is None
    assert load_record(r.path).status == "diverged"
    again = train(**dict(TINY, unit="original", lr=1e6, warmup_iterations=0), run_dir=runs)
    assert again.summary["updated"] == r.summary["updated"]            # a diverged run is a result: not retried


def test_unwritable_run_dir_fails_before_compute(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"        # root ignores permissions: use a path under a regular file
        blocker.write_text("x")
        run_dir = blocker / "runs"
    else:
        run_dir = tmp_path / "ro"
        run_dir.mkdir(mode=0o500)
    import identity_study.train as T
    monkeypatch.setattr(T, "make_source", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ValueError, match="cannot be written"):
        train(**TINY, run_dir=run_dir)


def test_real_cifar_smoke_run(runs):
    r = train(unit="preact", depth=20, profile="smoke", run_dir=runs, device="cpu")
    assert r.status == "completed" and r.params["dataset"] == "cifar10" and len(r.metrics) == 2


def test_ddp_on_gloo_two_processes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: the rendezvous takes a free port of its own (a fixed one may be taken by a neighbour's test run)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path / "runs"), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["status"] == ranks[1]["status"] == "completed"
    assert ranks[0]["metrics"] == ranks[1]["metrics"]                  # both ranks agree on every metric
    records = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(records) == 1                                           # one record, written by rank 0
    params = json.loads((records[0] / "params.json").read_text())
    assert params["world_size"] == 2
    stored = pd.read_csv(records[0] / "metrics.csv")
    assert stored.test_error.tolist() == ranks[0]["metrics"]["test_error"]
