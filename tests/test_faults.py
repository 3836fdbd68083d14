"""Faults and bad input (issue 6): kill -9 and resume, killed and concurrent sweeps, bad parameters through train()
and through papermill, corrupt data and checkpoints, divergence, the papermill parameters tag, unwritable records.

Everything runs on tiny configurations (the synthetic data set, ResNet-8/20, a few iterations) so that CI runs it all.
Subprocesses get OMP_NUM_THREADS=1: on a busy 2-core machine one thread per process is much faster than two."""
import concurrent.futures
import contextlib
import copy
import errno
import io
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

import identity_study.records as R
import identity_study.train as T
from identity_study.data import DataError
from identity_study.models import build, net_spec
from identity_study.sweep import Claim, sweep
from identity_study.params import resolve_params
from identity_study.records import RecordWriteError, is_locked, read_status
from identity_study.train import train
from bad_params import BAD_PARAMS, MORE_BAD_PARAMS
from conftest import assert_same_run, final_state, tree

ROOT = Path(__file__).resolve().parent.parent
# the exact mode: CPU, fp32, deterministic algorithms, one thread; the dropout shortcut also draws from the RNG
EXACT = dict(unit="dropout_shortcut", depth=8, dataset="synthetic", iterations=16, eval_every=2, batch_size=16,
             train_subset=128, precision="fp32", channels_last=False, deterministic=True, progress=False, threads=1,
             device="cpu")
# what a sweep in these tests changes in every run of a table: the synthetic data, a small net, a few iterations
SWEEP_SET = dict(dataset="synthetic", depth=20, iterations=16, eval_every=4)


@contextlib.contextmanager
def _torch_state_kept():
    "train() in this process sets torch's thread count and deterministic mode: give the next tests theirs back."
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(autouse=True)
def _torch_global_state():
    with _torch_state_kept():
        yield


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("IN_TEST", None)        # the training notebook would switch to its own smoke run
    return env


def _leftovers(path: Path) -> list:
    "Temporary files of the atomic writes (a write killed half-way leaves one behind)."
    return sorted(p.name for p in Path(path).iterdir() if p.name.endswith(".tmp") or p.name.endswith(".new"))


def _assert_record_readable(path: Path, status=None):
    "Every record file present is complete: JSON parses, the CSV parses, checkpoints load and match the metrics."
    params = json.loads((path / "params.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    metrics = pd.read_csv(path / "metrics.csv")
    assert list(metrics.columns) == R.METRIC_COLUMNS
    assert metrics.iteration.is_unique and metrics.iteration.is_monotonic_increasing
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        if (path / name).exists():
            with zipfile.ZipFile(path / name) as z:
                assert z.testzip() is None, name
            state = torch.load(path / name, weights_only=False)
            assert state["identity"] == params["run_id"].rsplit("-", 1)[1]
            assert [r["iteration"] for r in state["metrics"]][-1:] in ([], [state["iteration"]])
    if status:
        assert summary["status"] == status, summary
    return params, summary, metrics


# ---------------------------------------------------------------------------------------------------------------
# 1. kill -9 at five seeded random moments, then resume: bit-identical to an uninterrupted run, 5 of 5

def _train_logged(cfg: dict, log: str):
    "train(**cfg) with what it prints and logs in the file `log` (the target of the forked training processes)."
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        handler, logger = logging.StreamHandler(f), logging.getLogger("identity_study")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            train(**cfg)
        finally:
            logger.removeHandler(handler)


def _train_logged_held_at_the_end(cfg: dict, log: str):
    """_train_logged, but the process stops before it writes its last checkpoint and waits there to be killed: a
    kill at any moment, however fast this run goes beside the reference, finds a run that has not finished."""
    real_atomic_write, checkpoints = R.atomic_write, []

    def atomic_write(path, write):
        if Path(path).name == ".checkpoint.pt.new":
            checkpoints.append(path)
            if len(checkpoints) == cfg["iterations"] // cfg["eval_every"]:
                while True:
                    time.sleep(1)
        return real_atomic_write(path, write)
    R.atomic_write = atomic_write
    _train_logged(cfg, log)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path):
    # training processes are forked from a server that has imported torch once: no 3 s import per process
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["identity_study.train", "pandas"])
    run_id = resolve_params(**EXACT)["run_id"]

    def start(run_dir, log, target=_train_logged):
        proc = ctx.Process(target=target, args=({**EXACT, "run_dir": str(run_dir)}, str(log)))
        proc.start()
        return proc

    ref = start(tmp_path / "reference", tmp_path / "reference.log")
    while not (tmp_path / "reference" / run_id / "checkpoint.pt").exists():
        assert ref.exitcode is None, (tmp_path / "reference.log").read_text()
        time.sleep(0.002)
    t_first = time.perf_counter()
    ref.join(300)
    assert ref.exitcode == 0, (tmp_path / "reference.log").read_text()
    window = time.perf_counter() - t_first          # from the first checkpoint to the end of the process
    reference = tmp_path / "reference" / run_id

    def trial(seed):
        rng = random.Random(seed)
        run_dir = tmp_path / f"killed-{seed}"
        path = run_dir / run_id
        proc = start(run_dir, tmp_path / f"killed-{seed}.log", _train_logged_held_at_the_end)
        while not (path / "checkpoint.pt").exists():
            assert proc.exitcode is None, (tmp_path / f"killed-{seed}.log").read_text()
            time.sleep(0.002)
        # inside training, sometimes in the middle of a checkpoint write; never after the end (the process waits
        # before its last checkpoint), so a trial that runs faster than the reference did is killed all the same
        time.sleep(rng.uniform(0, 0.6 * window))
        assert proc.exitcode is None, (tmp_path / f"killed-{seed}.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        mid_write = _leftovers(path)
        params, summary, metrics = _assert_record_readable(path, status="interrupted")
        assert summary["iterations_done"] < EXACT["iterations"]
        last = [torch.load(path / n, weights_only=False)["iteration"] for n in ("checkpoint.pt", ".checkpoint.pt.new")
                if (path / n).exists()]
        resumed = start(run_dir, tmp_path / f"resumed-{seed}.log")
        resumed.join(300)
        log = (tmp_path / f"resumed-{seed}.log").read_text()
        assert resumed.exitcode == 0, log
        return dict(seed=seed, done_at_kill=max(last, default=0), mid_write=mid_write, started=params["started"],
                    log=log)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(trial, range(5)))
    matched = 0
    for r in results:
        path = tmp_path / f"killed-{r['seed']}" / run_id
        params, summary, _ = _assert_record_readable(path, status="completed")
        assert params["started"] == r["started"]                  # the resumed run is the same run, not a new one
        assert _leftovers(path) == []                             # a killed write's temporary file is cleaned up
        if r["done_at_kill"]:
            assert f"resuming {run_id} at iteration {r['done_at_kill']}" in r["log"]   # from the newest checkpoint
        assert_same_run(reference, path)
        matched += 1
    print("kills (iteration of the newest checkpoint, temporary files left by the kill):",
          [(r["done_at_kill"], r["mid_write"]) for r in results])
    assert matched == 5


def _train_killed_during(cfg: dict, log: str, moment: str):
    "train(**cfg), killed by SIGKILL at `moment` of its second checkpoint write (the target of a forked process)."
    real_replace, real_atomic_write, checkpoints = os.replace, R.atomic_write, []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        if len(checkpoints) == 2 and ((moment == "before the rotation" and Path(src).name == "checkpoint.pt") or
                                      (moment == "between the renames" and Path(src).name == ".checkpoint.pt.new")):
            die()
        return real_replace(src, dst)

    def atomic_write(path, write):
        name = Path(path).name
        if name == ".checkpoint.pt.new":
            checkpoints.append(path)
            if len(checkpoints) == 2 and moment == "writing the checkpoint":
                def half(f):
                    buffer = io.BytesIO()
                    write(buffer)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    die()
                return real_atomic_write(path, half)
        if name == "metrics.csv" and len(checkpoints) == 2 and moment == "before the metrics":
            die()
        return real_atomic_write(path, write)
    os.replace, R.atomic_write = replace, atomic_write
    _train_logged(cfg, log)


# what each moment of save_checkpoint leaves behind: its temporary file, or a complete checkpoint not yet in place
CHECKPOINT_MOMENTS = {"writing the checkpoint": [".tmp"], "before the rotation": [".checkpoint.pt.new"],
                      "between the renames": [".checkpoint.pt.new"], "before the metrics": []}


@pytest.mark.parametrize("moment", CHECKPOINT_MOMENTS)
def test_kill_9_at_each_step_of_a_checkpoint_write_then_resume_is_exact(moment, exact_reference, tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["identity_study.train", "pandas"])
    cfg = {**EXACT, "run_dir": str(tmp_path)}
    path = tmp_path / resolve_params(**EXACT)["run_id"]
    proc = ctx.Process(target=_train_killed_during, args=(cfg, str(tmp_path / "killed.log"), moment))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    left = _leftovers(path)
    assert [s for s in CHECKPOINT_MOMENTS[moment] if not any(n.endswith(s) for n in left)] == [], left
    _assert_record_readable(path, status="interrupted")
    resumed = ctx.Process(target=_train_logged, args=(cfg, str(tmp_path / "resumed.log")))
    resumed.start()
    resumed.join(300)
    log = (tmp_path / "resumed.log").read_text()
    assert resumed.exitcode == 0, log
    assert f"at iteration {4 if moment != 'writing the checkpoint' else 2} from checkpoint.pt" in log, log
    _assert_record_readable(path, status="completed")
    assert _leftovers(path) == []
    assert_same_run(exact_reference, path)


def _train_killed_after_the_final_checkpoint(cfg: dict, log: str):
    "train(**cfg), killed by SIGKILL once its final checkpoint is in place, before metrics.csv and summary.json."
    real_atomic_write, checkpoints = R.atomic_write, []

    def atomic_write(path, write):
        name = Path(path).name
        if name == ".checkpoint.pt.new":
            checkpoints.append(path)
        if name == "metrics.csv" and len(checkpoints) == cfg["iterations"] // cfg["eval_every"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_atomic_write(path, write)
    R.atomic_write = atomic_write
    _train_logged(cfg, log)


def test_kill_9_after_the_final_checkpoint_completes_without_training_again(exact_reference, tmp_path, monkeypatch,
                                                                            caplog):
    "Issue 40: the final checkpoint's rows hold the final evaluation; the next call only writes the completed record."
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["identity_study.train", "pandas"])
    cfg = {**EXACT, "run_dir": str(tmp_path)}
    path = tmp_path / resolve_params(**EXACT)["run_id"]
    proc = ctx.Process(target=_train_killed_after_the_final_checkpoint, args=(cfg, str(tmp_path / "killed.log")))
    proc.start()
    proc.join(300)
    assert proc.exitcode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    _, summary, metrics = _assert_record_readable(path, status="interrupted")
    assert final_state(path)["iteration"] == EXACT["iterations"] and metrics.iteration.max() < EXACT["iterations"]
    checkpoint = (path / "checkpoint.pt").read_bytes()

    monkeypatch.setattr(T, "train_step", lambda *a, **k: pytest.fail("the run was trained again"))
    monkeypatch.setattr(T.Run, "evaluate", lambda *a, **k: pytest.fail("the run was evaluated again"))
    with caplog.at_level(logging.INFO, logger="identity_study"):
        record = train(**EXACT, run_dir=tmp_path)
    assert "recorded as completed" in caplog.text, caplog.text
    assert record.status == "completed"
    _assert_record_readable(path, status="completed")
    assert (path / "checkpoint.pt").read_bytes() == checkpoint            # no checkpoint written, no row added
    assert_same_run(exact_reference, path)                                  # every row but timing, every weight
    untimed = ("updated", "wall_seconds")
    reference = json.loads((exact_reference / "summary.json").read_text())
    assert {k: v for k, v in record.summary.items() if k not in untimed} == \
        {k: v for k, v in reference.items() if k not in untimed}
    assert record.summary["final_test_error"] == reference["final_test_error"] == record.metrics.test_error.iloc[-1]
    assert record.summary["wall_seconds"] == round(final_state(path)["seconds"], 3)
    assert train(**EXACT, run_dir=tmp_path).summary == record.summary    # finished: the stored record from now on


class _Killed(BaseException):
    "A death that no handler of the training loop catches, as a SIGKILL's (in-process, for a loader-based run)."


TINY_IMAGENET = dict(unit="preact", depth=18, dataset="tiny_imagenet", profile="smoke", progress=False, device="cpu")


@pytest.mark.parametrize("checkpoint", ["this code's", "older code's"])
def test_imagenet_run_killed_after_the_final_checkpoint_keeps_its_other_test_protocols(checkpoint, tmp_path,
                                                                                       monkeypatch):
    "The other test protocols' final errors (Table 5) come from the checkpoint, or from an evaluation if it has none."
    from identity_study.data import data_root
    if not (data_root() / "tiny-imagenet-200").is_dir():
        pytest.skip("no Tiny ImageNet copy under the data root (make data)")
    reference = train(**TINY_IMAGENET, run_dir=tmp_path / "reference")
    assert "final_test_error_224@256" in reference.summary
    real_atomic_write, checkpoints = R.atomic_write, []

    def atomic_write(path, write):
        checkpoints.extend([path] if Path(path).name == ".checkpoint.pt.new" else [])
        if Path(path).name == "metrics.csv" and len(checkpoints) == 2:     # 4 iterations, a checkpoint every 2
            raise _Killed
        return real_atomic_write(path, write)
    monkeypatch.setattr(R, "atomic_write", atomic_write)
    with pytest.raises(_Killed):
        train(**TINY_IMAGENET, run_dir=tmp_path / "killed")
    monkeypatch.setattr(R, "atomic_write", real_atomic_write)
    path = tmp_path / "killed" / reference.params["run_id"]
    assert read_status(path) == "interrupted"
    if checkpoint == "older code's":
        state = final_state(path)
        del state["final_extra"]
        torch.save(state, path / "checkpoint.pt")
    else:
        monkeypatch.setattr(T.Run, "evaluate", lambda *a, **k: pytest.fail("the run was evaluated again"))
    monkeypatch.setattr(T, "train_step", lambda *a, **k: pytest.fail("the run was trained again"))
    record = train(**TINY_IMAGENET, run_dir=tmp_path / "killed")
    untimed = ("updated", "wall_seconds")
    assert {k: v for k, v in record.summary.items() if k not in untimed} == \
        {k: v for k, v in reference.summary.items() if k not in untimed}
    assert len(record.metrics) == len(reference.metrics)


# ---------------------------------------------------------------------------------------------------------------
# 2. a sweep killed in the middle of a table, then started again

def _sweep_cmd(run_dir, only, sets=SWEEP_SET):
    cmd = [sys.executable, "-m", "identity_study.sweep", "run", "table1", "--profile", "smoke", "--seeds", "1",
           "--runs-dir", str(run_dir), "--only", only]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    return cmd


def _run_folders(run_dir: Path) -> list:
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and not p.name.startswith("."))


def _assert_complete_sweep_record(path: Path):
    params, summary, metrics = _assert_record_readable(path, status="completed")
    every = params["eval_every"]
    assert list(metrics.iteration) == list(range(every, params["iterations"] + 1, every))   # one row per evaluation
    assert summary["iterations_done"] == params["iterations"] and summary["updated"] >= params["started"]
    assert final_state(path)["iteration"] == params["iterations"]
    assert (path / "notebook.ipynb").exists() and not (path / "notebook.failed.ipynb").exists()
    assert _leftovers(path) == [] and not list(path.glob("superseded-*"))
    assert not is_locked(path)
    return params, summary


@pytest.mark.slow
def test_killed_sweep_restarts_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("IN_TEST", raising=False)
    runs = tmp_path / "runs"
    # long enough that the run caught between checkpoints cannot finish in the second its orphaned kernel
    # lingers (ipykernel notices a dead parent by polling once a second)
    sets = dict(SWEEP_SET, iterations=96, eval_every=8)
    log = open(tmp_path / "sweep1.log", "w")
    proc = subprocess.Popen(_sweep_cmd(runs, "constant scaling", sets), cwd=ROOT, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while True:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "sweep1.log").read_text()[-3000:]
            folders = _run_folders(runs) if runs.exists() else []
            done = [p for p in folders if read_status(p) == "completed"]
            going = [p for p in folders if read_status(p) == "interrupted" and (p / "checkpoint.pt").exists()]
            if done and going:
                break
            time.sleep(0.02)
        before = {p.name: json.loads((p / "params.json").read_text())["started"] for p in done + going}
        updated = {p.name: json.loads((p / "summary.json").read_text())["updated"] for p in done}
        proc.send_signal(signal.SIGKILL)        # the sweep process only: its papermill and kernel follow by themselves
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    interrupted = going[0].name

    frame = sweep("table1", "smoke", seeds=1, run_dir=runs, overrides=sets, only="constant scaling",
                  wait_poll=0.2)
    actions = dict(zip(frame.run_id, frame.action))
    assert len(frame) == 3 and (frame.status == "completed").all(), frame.to_string()
    for run_id in updated:
        assert actions[run_id] == "skipped"                       # finished before the kill: not trained again
    assert actions[interrupted] == "resumed"
    assert sum(a == "trained" for a in actions.values()) == 3 - len(updated) - 1
    for path in _run_folders(runs):
        params, summary = _assert_complete_sweep_record(path)
        if path.name in before:
            assert params["started"] == before[path.name]         # params.json written once: the same run
        if path.name in updated:
            assert summary["updated"] == updated[path.name]       # its record untouched
    assert "resuming" in (runs / interrupted / "notebook.ipynb").read_text()
    assert len(_run_folders(runs)) == 3


# ---------------------------------------------------------------------------------------------------------------
# 3. two sweeps at once on the same runs/

@pytest.mark.slow
def test_two_concurrent_sweeps_train_every_run_once(tmp_path):
    runs = tmp_path / "runs"
    sets = dict(SWEEP_SET, depth=8, iterations=8)
    procs = [subprocess.Popen(_sweep_cmd(runs, "constant scaling", sets), cwd=ROOT, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = _run_folders(runs)
    assert len(folders) == 3
    trained = {p.name: sum(f"{p.name}: trained -> completed" in line for out in outs for line in out.splitlines())
               for p in folders}
    assert trained == {p.name: 1 for p in folders}, outs          # the two sweeps trained 3 runs between them
    assert not any("resumed" in out or "retried" in out for out in outs), outs
    for path in folders:
        _assert_complete_sweep_record(path)
        claim = Claim(runs, path.name)
        assert claim.try_acquire()                                # no claim outlives its sweep
        claim.release()


# ---------------------------------------------------------------------------------------------------------------
# 4. bad parameters: one clear error before any compute, nothing written, through train() and through papermill

BASE = dict(unit="preact", depth=20, dataset="synthetic", profile="smoke")


def _bad(params, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    return {**BASE, **{k: (str(blocker) if v == "<file>" else v) for k, v in params.items()}}


def _papermill_reads(texts, folder: Path) -> dict:
    """{text: the value papermill's CLI makes of `-p NAME text`}, asked of the real CLI (not a copy of its private
    rules): it prepares a notebook with every text as a parameter (--prepare-only: no kernel, nothing executed) and
    records the values it read in the notebook's metadata."""
    texts = sorted(set(texts))
    source = "\n".join(f"p{i} = None" for i in range(len(texts)))
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "parameters", "metadata": {"tags": [
        "parameters"]}, "outputs": [], "source": source}], "metadata": {"kernelspec": {
        "name": "python3", "language": "python", "display_name": "Python 3"}}, "nbformat": 4, "nbformat_minor": 5}
    (folder / "reads.ipynb").write_text(json.dumps(nb))
    args = [a for i, text in enumerate(texts) for a in ("-p", f"p{i}", text)]
    proc = subprocess.run([sys.executable, "-m", "papermill", str(folder / "reads.ipynb"), str(folder / "read.ipynb"),
                           *args, "--prepare-only", "--no-progress-bar"], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    read = json.loads((folder / "read.ipynb").read_text())["metadata"]["papermill"]["parameters"]
    return {text: read[f"p{i}"] for i, text in enumerate(texts)}


def _papermill_args(params: dict, reads: dict) -> list:
    "`-p NAME VALUE` where papermill reads VALUE back as the same value (`reads`), else `-y` with the value in YAML."
    args = []
    for k, v in params.items():
        text = str(v)
        same = reads[text] == v and type(reads[text]) is type(v)
        args += ["-p", k, text] if same else ["-y", json.dumps({k: v})]
    return args


@pytest.mark.parametrize("name,bad,message", BAD_PARAMS + MORE_BAD_PARAMS,
                         ids=[b[0] for b in BAD_PARAMS + MORE_BAD_PARAMS])
def test_bad_parameters_through_train(name, bad, message, runs, tmp_path, monkeypatch):
    if bad.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(T, "make_source", lambda *a, **k: pytest.fail("data was loaded"))
    monkeypatch.setattr(T, "build", lambda *a, **k: pytest.fail("a net was built"))
    params = _bad(bad, tmp_path)
    with pytest.raises(ValueError) as e:
        train(**{"run_dir": runs, **params})
    assert message in str(e.value)
    assert tree(runs) == []
    if bad.get("run_dir"):
        assert Path(params["run_dir"]).read_text() == "x"


# The bad parameter sets that go through a real papermill kernel: one per path a parameter takes through the
# notebook's first cells. A name papermill injects that the notebook does not define (found among the kernel's
# globals, beside IPython's own), a list given with -p as a string (read back with ast.literal_eval), a number given
# as a string, a run_dir that cannot be written (nothing may appear beside it), and a value resolve_params refuses.
# Every set of BAD_PARAMS goes through the same cells in test_bad_parameters_through_the_notebooks_cells, without
# a kernel (a kernel start costs seconds each).
THROUGH_A_KERNEL = ["unknown parameter name", "lr_steps that are not numbers", "depth of a wrong type",
                    "a run_dir that is a file", "unknown unit"]


def _bad_cases(tmp_path, names=None) -> list:
    "(name, message, folder, params) of each BAD_PARAMS set (of `names` only, when given), each in its own folder."
    cases = []
    for i, (name, bad, message) in enumerate(BAD_PARAMS):
        if names is None or name in names:
            case = tmp_path / f"case{i}"
            (case / "runs").mkdir(parents=True)
            cases.append((name, message, case, {"run_dir": str(case / "runs"), **_bad(bad, case)}))
    return cases


@pytest.mark.slow
def test_bad_parameters_through_papermill(tmp_path):
    "Bad parameter sets through nbs/train.ipynb in a kernel: the notebook stops at one ValueError, runs/ stays empty."
    assert set(THROUGH_A_KERNEL) <= {name for name, *_ in BAD_PARAMS}
    cases = _bad_cases(tmp_path, THROUGH_A_KERNEL)
    reads = _papermill_reads((str(v) for *_, params in cases for v in params.values()), tmp_path)

    def one(case):
        name, message, folder, params = case
        out_nb = folder / "out.ipynb"
        proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "nbs" / "train.ipynb"), str(out_nb),
                               *_papermill_args(params, reads), "--cwd", str(ROOT), "--no-progress-bar"],
                              capture_output=True, text=True, env=_env(), timeout=300)
        return name, message, proc, out_nb, folder / "runs"

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, cases))
    problems = []
    for name, message, proc, out_nb, runs in results:
        errors = [o for c in json.loads(out_nb.read_text())["cells"] for o in c.get("outputs", [])
                  if o["output_type"] == "error"] if out_nb.exists() else []
        ok = (proc.returncode != 0 and len(errors) == 1 and errors[0]["ename"] == "ValueError"
              and message in errors[0]["evalue"] and tree(runs) == [])
        if not ok:
            problems.append((name, proc.returncode, [(e["ename"], e["evalue"][:200]) for e in errors], tree(runs),
                             proc.stderr[-800:]))
    assert len(results) == len(THROUGH_A_KERNEL) and not problems, problems


def test_bad_parameters_through_the_notebooks_cells(tmp_path, monkeypatch):
    """Every set of BAD_PARAMS through nbs/train.ipynb's own cells, as papermill parameterizes them (the values its
    CLI reads from `-p`, its injected-parameters cell), executed in order in a fresh namespace of this process: the
    notebook stops at one ValueError that says what is wrong, before any data is loaded or net built, runs/ empty."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    cases = _bad_cases(tmp_path)
    reads = _papermill_reads((str(v) for *_, params in cases for v in params.values()), tmp_path)
    monkeypatch.setattr(T, "make_source", lambda *a, **k: pytest.fail("data was loaded"))
    monkeypatch.setattr(T, "build", lambda *a, **k: pytest.fail("a net was built"))
    monkeypatch.delenv("IN_TEST", raising=False)       # as _env(): the notebook would switch to its own smoke run
    monkeypatch.chdir(ROOT)                             # papermill's --cwd
    log = logging.getLogger("identity_study")
    handlers, level = list(log.handlers), log.level     # the notebook's first cell adds a handler to show the log
    notebook = load_notebook_node(str(ROOT / "nbs" / "train.ipynb"))
    problems = []
    try:
        for name, message, folder, params in cases:
            values = {k: json.loads(a[1])[k] if a[0] == "-y" else reads[a[2]]
                      for k, a in ((k, _papermill_args({k: v}, reads)) for k, v in params.items())}
            nb = parameterize_notebook(copy.deepcopy(notebook), values)
            namespace, error = {"__name__": "__main__"}, None
            with contextlib.redirect_stdout(io.StringIO()):
                for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
                    try:
                        exec(compile(cell.source, f"<train.ipynb code cell {i}>", "exec"), namespace)
                    except Exception as e:             # the first error ends the notebook, as in a kernel
                        error = e
                        break
            ok = type(error) is ValueError and message in str(error) and tree(folder / "runs") == []
            if not ok:
                problems.append((name, repr(error)[:300], tree(folder / "runs")))
    finally:
        log.handlers[:] = handlers
        log.setLevel(level)
    assert not problems, problems


# ---------------------------------------------------------------------------------------------------------------
# 5. corrupt data and corrupt checkpoints

def _cifar_copy_with(tmp_path, name: str, damage) -> Path:
    "A CIFAR-10 root whose files link to the real ones, except `name`, which is a damaged copy."
    from identity_study import data as D
    real = D.data_root()
    root = tmp_path / "data"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    for f in (real / "cifar-10-batches-py").iterdir():
        target = root / "cifar-10-batches-py" / f.name
        if f.name == name:
            target.write_bytes(damage(f.read_bytes()))
        else:
            target.symlink_to(f)
    return root


def _flip(raw: bytes, at=None) -> bytes:
    raw = bytearray(raw)
    raw[len(raw) // 2 if at is None else at] ^= 0xFF
    return bytes(raw)


@pytest.mark.parametrize("name,damage,message", [
    ("data_batch_3", lambda b: b[:1000], "data_batch_3 is corrupt or truncated"),
    ("test_batch", _flip, "test_batch is corrupt"),
])
def test_corrupt_cifar_file_stops_train_with_a_clear_error(name, damage, message, runs, tmp_path):
    root = _cifar_copy_with(tmp_path, name, damage)
    with pytest.raises(DataError) as e:
        train(unit="preact", depth=8, profile="smoke", data_dir=root, run_dir=runs, progress=False, device="cpu")
    assert message in str(e.value) and "rebuild" in str(e.value)
    assert tree(runs) == []                                           # found before anything is written


def _interrupted_copy(tmp_path, stop_after=9):
    "An EXACT run stopped after `stop_after` iterations: checkpoint.pt at 8, checkpoint.prev.pt at 6."
    part = train(**EXACT, run_dir=tmp_path / "part", stop_after=stop_after)
    assert part.status == "interrupted"
    assert final_state(part.path)["iteration"] == 8
    assert torch.load(part.path / "checkpoint.prev.pt", weights_only=False)["iteration"] == 6
    return part.path


@pytest.fixture(scope="module")
def exact_reference(tmp_path_factory):
    with _torch_state_kept():
        return train(**EXACT, run_dir=tmp_path_factory.mktemp("reference")).path


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "other parameters"])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(damage, exact_reference, tmp_path, caplog):
    path = _interrupted_copy(tmp_path)
    ckpt = path / "checkpoint.pt"
    if damage == "bit flip":              # bit rot in the weights: torch.load alone would accept it
        ckpt.write_bytes(_flip(ckpt.read_bytes()))
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        other = train(**dict(EXACT, seed=1), run_dir=tmp_path / "other", stop_after=2)
        os.replace(other.path / "checkpoint.pt", ckpt)
    caplog.set_level(logging.INFO, logger="identity_study")          # the run says what it does through logging
    with pytest.warns(UserWarning, match="checkpoint.pt is unusable") as caught:
        resumed = train(**EXACT, run_dir=tmp_path / "part")
    said = caplog.text + "\n".join(str(w.message) for w in caught)
    assert "set aside as checkpoint.corrupt.pt" in said
    assert "at iteration 6 from checkpoint.prev.pt" in said           # says where it resumed from
    assert resumed.status == "completed" and (path / "checkpoint.corrupt.pt").exists()
    assert_same_run(exact_reference, path)


def test_both_checkpoints_corrupt_restarts_and_says_so(exact_reference, tmp_path, caplog):
    path = _interrupted_copy(tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (path / name).write_bytes(_flip((path / name).read_bytes()))
    caplog.set_level(logging.INFO, logger="identity_study")
    with pytest.warns(UserWarning) as caught:
        resumed = train(**EXACT, run_dir=tmp_path / "part")
    warned = [str(w.message) for w in caught]
    assert sum("is unusable" in w for w in warned) == 2 and sum("restarts from iteration 0" in w for w in warned) == 1
    assert "no usable checkpoint is left; the run restarts from iteration 0" in caplog.text + "\n".join(warned)
    assert resumed.status == "completed"
    assert list(resumed.metrics.iteration) == list(range(2, 17, 2))   # the old rows are not kept twice
    assert_same_run(exact_reference, path)


# ---------------------------------------------------------------------------------------------------------------
# 6. diverging configurations end with their record, and the sweep goes on

@pytest.mark.slow
def test_constant_scaling_0_5_1_at_the_papers_lr_leaves_a_complete_record(runs):
    "Whether this run diverges within a smoke run or not, its record says which, consistently."
    r = train(unit="constant_scaling", depth=110, shortcut_scale=0.5, residual_scale=1.0, profile="smoke",
              run_dir=runs, progress=False, device="cpu")
    assert r.params["lr"] == 0.1 and r.status in ("diverged", "completed")
    if r.status == "diverged":
        assert r.summary["final_test_error"] is None and math.isnan(r.metrics.train_loss.iloc[-1])
        assert r.summary["diverged_at"] == r.metrics.iteration.iloc[-1]
    else:
        assert r.summary["final_test_error"] == r.metrics.test_error.iloc[-1] and r.summary["iterations_done"] == 8
    _assert_record_readable(r.path, status=r.status)


def test_absurd_lr_diverges_with_its_record(runs):
    r = train(**dict(EXACT, lr=1e6, warmup_iterations=0), run_dir=runs)
    assert r.status == "diverged" and 1 <= r.summary["diverged_at"] <= EXACT["iterations"]
    params, summary, metrics = _assert_record_readable(r.path, status="diverged")
    assert summary["final_test_error"] is None and math.isnan(metrics.train_loss.iloc[-1])


@pytest.mark.slow
def test_sweep_records_a_diverged_run_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("IN_TEST", raising=False)
    runs = tmp_path / "runs"
    overrides = dict(SWEEP_SET, depth=8, lr=1e6, warmup_iterations=0)
    frame = sweep("table1", "smoke", seeds=1, run_dir=runs, overrides=overrides, only="constant scaling (0.5")
    assert list(frame.action) == ["trained", "trained"] and list(frame.status) == ["diverged", "diverged"], frame
    for path in _run_folders(runs):
        _assert_record_readable(path, status="diverged")
        assert (path / "notebook.ipynb").exists()                     # the notebook ran to its end
    again = sweep("table1", "smoke", seeds=1, run_dir=runs, overrides=overrides, only="constant scaling (0.5")
    assert list(again.action) == ["skipped", "skipped"]               # diverging is a result: not retried


# ---------------------------------------------------------------------------------------------------------------
# 7. the papermill parameters tag survives nbdev_clean

@pytest.mark.slow
def test_parameters_tag_survives_nbdev_clean_and_depth_56_is_built(tmp_path):
    copy = tmp_path / "train.ipynb"
    copy.write_text((ROOT / "nbs" / "train.ipynb").read_text())
    clean = subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(copy)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)     # a hang guard, not a bound
    assert clean.returncode == 0, clean.stderr
    cells = json.loads(copy.read_text())["cells"]
    assert [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    runs = tmp_path / "runs"
    out_nb = tmp_path / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(copy), str(out_nb), "-p", "depth", "56", "-p",
                           "unit", "original", "-p", "profile", "smoke", "-p", "dataset", "synthetic", "-p",
                           "iterations", "2", "-p", "run_dir", str(runs), "--cwd", str(ROOT), "--no-progress-bar"],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = _run_folders(runs)
    params = json.loads((path / "params.json").read_text())
    assert params["depth"] == 56 and params["net"]["depth"] == 56
    weights = final_state(path)["model"]
    net = build(net_spec("original", 56, "synthetic"))
    assert len(net.residual_units()) == 27 and net.weighted_layers() == 56
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in weights.items()}
    branch_convs = [k for k, v in weights.items() if k.startswith("stages.") and v.dim() == 4 and "branch" in k]
    assert len(branch_convs) == 54                                     # 27 units of two 3x3 convolutions
    default = build(net_spec("original", 164, "synthetic")).state_dict()
    assert default.keys() != weights.keys()                          # not the notebook's default depth


# ---------------------------------------------------------------------------------------------------------------
# 8. records that cannot be written: a full disk, a failing write

def _train_with_a_full_disk(cfg: dict, out: str):
    "train(**cfg) under an OS limit of 64 kB per file (the target of a forked process); RecordWriteError -> exit 3."
    import resource
    Path(out).write_text("")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # writes past the limit fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        train(**cfg)
    except RecordWriteError as e:
        with open(out, "a") as f:
            f.write(f"RecordWriteError: {e}")
        os._exit(3)


def test_full_disk_while_writing_a_checkpoint(runs):
    "A real OS limit on file size: the checkpoint (about 600 kB) cannot be written, the small files can."
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["identity_study.train", "pandas"])
    out = runs.parent / "error.txt"
    proc = ctx.Process(target=_train_with_a_full_disk, args=({**EXACT, "run_dir": str(runs)}, str(out)))
    proc.start()
    proc.join(300)
    message = out.read_text()
    assert proc.exitcode == 3, message
    path = runs / resolve_params(**EXACT)["run_id"]
    assert f"could not write {path}" in message and "File too large" in message, message
    assert "checkpoint.pt" in message
    _assert_record_readable(path, status="interrupted")
    assert _leftovers(path) == [] and not (path / "checkpoint.pt").exists()


def test_no_space_left_while_writing_metrics(runs, exact_reference, monkeypatch):
    "ENOSPC half-way through the second metrics.csv: a clear error, the previous files intact, then a clean resume."
    original, calls = R.atomic_write, []

    def failing(path, write):
        calls.append(Path(path).name)
        if Path(path).name == "metrics.csv" and calls.count("metrics.csv") == 3:
            def half(f):
                f.write(b"iteration,epoch,lr\n4,")
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(path, half)
        return original(path, write)
    monkeypatch.setattr(R, "atomic_write", failing)
    with pytest.raises(RecordWriteError) as e:
        train(**EXACT, run_dir=runs)
    run_id = resolve_params(**EXACT)["run_id"]
    path = runs / run_id
    assert f"could not write {path / 'metrics.csv'}" in str(e.value) and "No space left" in str(e.value)
    _, summary, metrics = _assert_record_readable(path, status="interrupted")
    assert list(metrics.iteration) == [2] and summary["iterations_done"] == 2   # the versions before the failure
    assert _leftovers(path) == []
    monkeypatch.setattr(R, "atomic_write", original)
    assert train(**EXACT, run_dir=runs).status == "completed"
    assert_same_run(exact_reference, path)
