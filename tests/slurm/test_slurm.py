"""The Slurm executor against a real one-node Slurm cluster (issue 13), through the real command line.

Run by `make test-slurm` (scripts/slurm/test.sh), which brings the cluster up with scripts/slurm/cluster.sh, exports
its SLURM_CONF and stops its daemons afterwards; plain `pytest` does not collect this folder (pyproject.toml).
Every sweep here is the smoke profile of a table on the synthetic data set with a small net, so that a run is
seconds of compute and the time goes to Slurm and papermill, which is what is tested.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from identity_study.params import PARAMS
from identity_study.records import is_locked, load_record, read_status
from identity_study.sweep import Claim, slurm_states

ROOT = Path(__file__).resolve().parents[2]
SLURM_CONF = os.environ.get("SLURM_CONF", "")
# every run: synthetic data, a net of 8 layers, a handful of iterations, fp32
SMALL = dict(dataset="synthetic", depth=8, iterations=8, eval_every=4, precision="fp32")
# the exact mode of the local resume (tests/test_faults.py): CPU, fp32, deterministic, one thread; long enough to be
# caught between two checkpoints
EXACT = dict(SMALL, iterations=200, eval_every=20, deterministic=True, threads=1)
CONSTANT_SCALING = "constant scaling"          # three entries of Table 1


@pytest.fixture(scope="module", autouse=True)
def cluster():
    "The cluster of scripts/slurm/cluster.sh, answering: this folder is only run by `make test-slurm`."
    if not SLURM_CONF or not Path(SLURM_CONF).exists():
        pytest.fail("SLURM_CONF names no cluster: run these tests with `make test-slurm`")
    out = subprocess.run(["sinfo", "-h", "-o", "%P %t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc")), out


@pytest.fixture
def work(request):
    "A fresh folder on the checkout's file system (not /tmp: that one is node-local, and the sweep warns of it)."
    base = Path(os.environ.get("SLURM_TEST_DIR", ROOT / ".slurm-test")) / "work" / request.node.name
    subprocess.run(["rm", "-rf", str(base)], check=True)
    base.mkdir(parents=True)
    return base


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("IN_TEST", None)
    return env


def sweep_cmd(runs, only, sets=SMALL, *extra, table="table1", executor="slurm"):
    cmd = [sys.executable, "-m", "identity_study.sweep", "run", table, "--profile", "smoke", "--seeds", "1",
           "--runs-dir", str(runs), "--only", only, "--executor", executor]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    if executor == "slurm":
        cmd += ["--time", "30", "--poll", "1"]
    return cmd + list(extra)


def run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


def status(runs, only, sets=SMALL):
    out = run([sys.executable, "-m", "identity_study.sweep", "status", "table1", "--profile", "smoke", "--seeds", "1",
               "--runs-dir", str(runs), "--only", only] + [a for k, v in sets.items()
                                                           for a in ("--set", f"{k}={json.dumps(v)}")], timeout=60)
    assert out.returncode == 0, out.stderr
    counts = re.search(r"under .*: (.*)$", out.stdout.strip().splitlines()[-1])[1]
    return {k: int(n) for n, k in (c.split() for c in counts.split(", "))}, out.stdout


def run_folders(runs):
    return sorted(p for p in Path(runs).iterdir() if p.is_dir() and not p.name.startswith("."))


def markers(runs):
    return {p.stem: json.loads(p.read_text())["job_id"] for p in (Path(runs) / ".slurm" / "jobs").glob("*.json")}


def wait_until(predicate, seconds, what):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.5)


def jobs_ended(job_ids):
    states = slurm_states(job_ids)
    return all(states.get(j) not in (None, "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING")
               for j in job_ids)


def assert_complete(path: Path, params_expected=None, requeued=0):
    "A finished record, as the local sweep leaves one, plus its Slurm log."
    params = json.loads((path / "params.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    metrics = pd.read_csv(path / "metrics.csv")
    assert summary["status"] == "completed", summary
    every = params["eval_every"]
    assert list(metrics.iteration) == list(range(every, params["iterations"] + 1, every))
    assert (path / "notebook.ipynb").exists() and not (path / "notebook.failed.ipynb").exists()
    assert not is_locked(path) and not list(path.glob("superseded-*"))
    assert params["scheduler"]["scheduler"] == "slurm" and params["scheduler"]["restart_count"] == 0
    record = load_record(path)
    assert record.requeued == requeued, record.scheduler
    return params, record


# ---------------------------------------------------------------------------------------------------------------

def test_a_smoke_sweep_of_a_table_is_one_job_array_with_every_record_complete(work):
    runs = work / "runs"
    out = run(sweep_cmd(runs, CONSTANT_SCALING, SMALL, "--wait"))
    assert out.returncode == 0, out.stdout + out.stderr
    array = re.search(r"submitted 3 run\(s\) as Slurm job (\d+)", out.stdout)[1]
    jobs = markers(runs)
    assert sorted(jobs.values()) == [f"{array}_{i}" for i in range(3)]          # one array, three elements
    assert set(slurm_states(jobs.values()).values()) == {"COMPLETED"}
    assert "RUNNING" in out.stdout and out.stdout.count("COMPLETED") >= 3         # a line per change of state
    folders = run_folders(runs)
    assert sorted(p.name for p in folders) == sorted(jobs)
    for path in folders:
        params, record = assert_complete(path)
        assert [a["action"] for a in record.scheduler["attempts"]] == ["trained"]
        assert record.scheduler["attempts"][0]["job_id"] == jobs[path.name]
        assert params["world_size"] == 1
    counts, text = status(runs, CONSTANT_SCALING)
    assert counts["done"] == 3 and sum(counts.values()) == 3, text
    again = run(sweep_cmd(runs, CONSTANT_SCALING, SMALL, "--wait"))             # the same command again: nothing
    assert again.returncode == 0 and "submitted" not in again.stdout, again.stdout
    assert again.stdout.count("already completed, skipped") == 3
    assert markers(runs) == jobs


def test_a_requeued_job_resumes_to_the_metrics_of_an_uninterrupted_run(work):
    from conftest import assert_same_run            # tests/conftest.py: metrics, weights and RNG, bit for bit
    only = "constant scaling (0, 1)"
    interrupted, reference = work / "interrupted", work / "reference"
    for runs in (interrupted, reference):           # both at once: the cluster has a core for each
        out = run(sweep_cmd(runs, only, EXACT))
        assert out.returncode == 0 and "submitted 1 run(s)" in out.stdout, out.stdout + out.stderr
    (run_id, job_id), = markers(interrupted).items()
    path = interrupted / run_id
    summary = path / "summary.json"

    def between_checkpoints():
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            return False
        return s["status"] == "interrupted" and 0 < s["iterations_done"] < EXACT["iterations"] / 2
    wait_until(between_checkpoints, 180, "the first checkpoint")
    # what a preemption does to a submitit job: SIGTERM, then submitit's requeue signal (USR2)
    for sig in ("SIGTERM", "USR2"):
        subprocess.run(["scancel", job_id, "--signal", sig], check=True, timeout=30)
    wait_until(lambda: jobs_ended([job_id, *markers(reference).values()]), 240, "the jobs to end")
    assert slurm_states([job_id]) == {job_id: "COMPLETED"}
    _, record = assert_complete(path, requeued=1)
    first, second = record.scheduler["attempts"]
    assert (first["action"], first["restart_count"]) == ("trained", 0) and "ended" not in first   # stopped by Slurm
    assert (second["action"], second["restart_count"], second["status"]) == ("resumed", 1, "completed")
    resumed_at = int(re.search(r"resuming \S+ at iteration (\d+)", (path / "notebook.ipynb").read_text())[1])
    assert 0 < resumed_at < EXACT["iterations"]
    (ref_id, _), = markers(reference).items()
    assert ref_id == run_id
    _, ref_record = assert_complete(reference / ref_id)
    assert [a["action"] for a in ref_record.scheduler["attempts"]] == ["trained"]
    assert_same_run(path, reference / ref_id)
    counts, text = status(interrupted, only, EXACT)
    assert counts["done"] == 1 and "requeued" in text.splitlines()[0], text


def test_a_cancelled_job_is_reported_by_status_while_the_others_finish(work):
    runs = work / "runs"
    # long enough that the cancelled run cannot finish in the seconds Slurm gives it between SIGTERM and SIGKILL
    # (KillWait=5): the job's training processes leave SIGTERM to submitit's handler (chapter 8)
    sets = dict(SMALL, iterations=300, eval_every=10)
    out = run(sweep_cmd(runs, CONSTANT_SCALING, sets, "--max-parallel", "2"))
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = markers(runs)
    victim = sorted(jobs, key=jobs.get)[0]

    def training(run_id):
        return read_status(runs / run_id) == "interrupted"
    wait_until(lambda: training(victim), 180, "the first run to start training")
    subprocess.run(["scancel", jobs[victim]], check=True, timeout=30)
    wait_until(lambda: jobs_ended(list(jobs.values())), 300, "the jobs to end")
    states = slurm_states(jobs.values())
    assert states[jobs[victim]] == "CANCELLED" and [states[jobs[r]] for r in jobs if r != victim] == ["COMPLETED"] * 2
    counts, text = status(runs, CONSTANT_SCALING, sets)
    assert (counts["done"], counts["cancelled"], sum(counts.values())) == (2, 1, 3), text
    line = next(ln for ln in text.splitlines() if victim in ln)
    assert "cancelled" in line and "CANCELLED" in line and "interrupted" in line, line
    wait_until(lambda: not is_locked(runs / victim), 60, "the cancelled run's processes to end")
    for run_id in jobs:
        if run_id != victim:
            assert_complete(runs / run_id)


def test_two_sweeps_at_once_and_a_local_one_train_every_run_once(work):
    runs = work / "runs"
    cmds = [sweep_cmd(runs, CONSTANT_SCALING, SMALL, "--wait")] * 2
    cmds.append(sweep_cmd(runs, CONSTANT_SCALING, SMALL, executor="local"))    # the same claims, on this machine
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for c in cmds]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    folders = run_folders(runs)
    assert len(folders) == 3
    for path in folders:
        attempts = load_record(path).scheduler.get("attempts", [])
        local = sum(f"{path.name}: trained -> completed" in line for line in outs[2].splitlines())
        # a Slurm job notes its action; the local pool notes its start with its machine (executor "local")
        on_slurm = sum(a.get("action") in ("trained", "resumed", "retried") for a in attempts)
        assert on_slurm + local == 1, (attempts, outs)
        assert sum(a.get("executor") == "local" for a in attempts) == local, (attempts, outs)
        summary = json.loads((path / "summary.json").read_text())
        assert summary["status"] == "completed" and not list(path.glob("superseded-*"))
        claim = Claim(runs, path.name)
        assert claim.try_acquire()                              # no claim outlives its holder
        claim.release()
    submitted = [int(m) for out in outs[:2] for m in re.findall(r"submitted (\d+) run\(s\)", out)]
    assert sum(submitted) <= 3, outs                            # the second sweep did not submit what the first had


def test_one_run_as_two_processes_with_ddp_on_gloo(work):
    runs = work / "runs"
    out = run(sweep_cmd(runs, "constant scaling (0, 1)", SMALL, "--tasks-per-node", "2", "--cpus-per-run", "1",
                        "--wait"))
    assert out.returncode == 0, out.stdout + out.stderr
    (run_id, job_id), = markers(runs).items()
    params, record = assert_complete(runs / run_id)
    assert params["world_size"] == 2 and params["scheduler"]["tasks"] == 2
    assert [a["processes"] for a in record.scheduler["attempts"]] == [2]
    logs = sorted((runs / ".slurm" / job_id).glob("*_log.out"))
    assert len(logs) == 2 and "trained -> completed" in logs[0].read_text()       # process 0 wrote the record
    assert "global_rank=1(2)" in logs[1].read_text()                               # and process 1 trained with it


# ---------------------------------------------------------------------------------------------------------------
# bad input: one clear error before anything is submitted. The command line's own main(), in this process: the
# same code as `python -m identity_study.sweep`, without a second of importing torch per case.

def _submitted_count():
    return len(subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "--starttime", "2000-01-01"], capture_output=True,
                              text=True, timeout=30).stdout.split())


def _main(argv, monkeypatch, capsys, **env):
    "What `python -m identity_study.sweep argv` says (argv: the whole command): (exit status or message, stdout)."
    from identity_study.sweep import main
    capsys.readouterr()
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        try:
            code = main(argv[3:])
        except SystemExit as e:
            code = e.code
    return code, capsys.readouterr().out


@pytest.mark.parametrize("case, extra, env, message", [
    ("no sbatch", [], {"PATH": "/nonexistent"}, "not found on PATH"),
    ("unknown partition", ["--partition", "nope"], {}, "unknown partition 'nope'; valid partitions: debug"),
    ("GPUs of a CPU partition", ["--gpus-per-run", "1"], {}, "partition 'debug' has no GPUs"),
    ("more CPUs than a node has", ["--cpus-per-run", "64"], {}, "have at most"),
    ("precision auto", None, {}, "needs a precision the login node can decide"),
    ("a local flag", ["--jobs", "2"], {}, "--jobs only apply to --executor local"),
    ("a bad time", ["--time", "6h"], {}, "not a Slurm time limit"),
])
def test_bad_input_is_refused_before_anything_is_submitted(work, monkeypatch, capsys, case, extra, env, message):
    runs = work / "runs"
    sets = dict(SMALL, precision="auto") if extra is None else SMALL
    before = _submitted_count()
    code, _ = _main(sweep_cmd(runs, CONSTANT_SCALING, sets, *(extra or [])), monkeypatch, capsys, **env)
    assert isinstance(code, str) and code.startswith("error: ") and message in code, code
    assert _submitted_count() == before and not (runs / ".slurm" / "jobs").exists()


def test_a_cluster_without_accounting_is_refused(work, tmp_path, monkeypatch, capsys):
    "sacct as Slurm has it without slurmdbd: a copy of this cluster's slurm.conf with accounting_storage/none."
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"(?m)^AccountingStorage\w*=.*$", "", Path(SLURM_CONF).read_text())
                    + "AccountingStorageType=accounting_storage/none\n")
    code, _ = _main(sweep_cmd(work / "runs", CONSTANT_SCALING), monkeypatch, capsys, SLURM_CONF=str(conf))
    assert isinstance(code, str) and "sacct does not work here" in code and "slurmdbd" in code, code


def test_without_a_precision_the_runs_take_the_default(work, monkeypatch, capsys):
    "The default precision (fp32) means the same on every node: the plan uses it, and the run ids say so."
    sets = {k: v for k, v in SMALL.items() if k != "precision"}
    code, out = _main(sweep_cmd(work / "runs", CONSTANT_SCALING, sets, "--dry-run"), monkeypatch, capsys)
    assert code == 0, out
    default = PARAMS["precision"].default
    assert default != "auto" and out.count(": would submit (new)") == 3, out

    def ids(text):
        return sorted(re.findall(r"\] (\S+): would submit", text))

    code, out_explicit = _main(sweep_cmd(work / "runs", CONSTANT_SCALING, dict(SMALL, precision=default),
                                         "--dry-run"), monkeypatch, capsys)
    assert code == 0, out_explicit
    assert ids(out) == ids(out_explicit) and len(ids(out)) == 3, (out, out_explicit)


def test_a_node_local_runs_folder_is_warned_of(tmp_path, monkeypatch, capsys):
    code, out = _main(sweep_cmd(tmp_path / "runs", CONSTANT_SCALING, SMALL, "--dry-run"), monkeypatch, capsys)
    assert code == 0, out
    assert re.search(r"warning: the runs folder .* may not be visible to the compute nodes: it is under /tmp", out), out
    assert out.count(": would submit (new)") == 3 and not (tmp_path / "runs" / ".slurm" / "jobs").exists()


def test_a_dry_run_of_the_protocol_plans_on_slurm_what_the_local_pool_plans(work, monkeypatch, capsys):
    "`sweep run protocol --executor slurm --dry-run` lists the same run ids, in the same order, as the local pool."
    base = [sys.executable, "-m", "identity_study.sweep", "run", "protocol", "--claims", "11", "--runs-dir",
            str(work / "runs"), "--dry-run"]
    code, local = _main(base + ["--jobs", "2"], monkeypatch, capsys)
    assert code == 0, local
    code, slurm = _main(base + ["--executor", "slurm", "--time", "30"], monkeypatch, capsys)
    assert code == 0, slurm

    def ids(text):
        return re.findall(r"^\[\d+/\d+\] (\S+): missing", text, re.M)

    assert ids(slurm) == ids(local) and len(ids(local)) == 20, (local, slurm)
    # a dry run trains nothing and claims nothing: no run folder and no run's claim (the cluster check probes flock
    # in runs/.claims before it lists anything)
    runs = work / "runs"
    assert not [p for p in runs.glob("*") if p.name not in (".slurm", ".claims")], list(runs.iterdir())
    assert not list(runs.glob(".claims/*.lock")), list(runs.glob(".claims/*"))
