"""The sweep's command line, its manners as a library (logging, prctl off Linux, what a Slurm job returned read as JSON,
never unpickled) and where it finds the training notebook: fast checks, no training (the sweeps themselves:
test_pipeline, test_faults, test_extend, and tests/slurm against a real cluster)."""
import importlib.resources
import json
import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit

import identity_study
from identity_study import sweep_plan, sweep_slurm
from identity_study.params import PROFILES
from identity_study.sweep import build_parser, main
from identity_study.records import write_json
from identity_study.sweep_slurm import RunFailedError, SlurmRun, job_outcome, outcome_file, write_outcome

SMALL = ["--only", "constant scaling", "--seeds", "1", "--set", "dataset=synthetic"]


def _main(argv, capsys):
    "(exit status or message, stdout) of `python -m identity_study.sweep argv`, in this process."
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_terminal_handler():
    "main() shows the log on stdout (log_to_terminal); leave the package's logger as it was found."
    logger = logging.getLogger("identity_study")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers, logger.level = handlers, level


def test_help_lists_both_subcommands(capsys):
    code, out = _main(["--help"], capsys)
    assert code == 0 and "run" in out and "status" in out and "COMMAND" in out
    code, out = _main(["run", "--help"], capsys)
    assert code == 0 and "--executor" in out and "--wait" in out and "--jobs" in out
    code, out = _main(["status", "--help"], capsys)
    assert code == 0 and "--executor" not in out and "--only" in out


def test_the_profiles_are_the_parameter_tables():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    (profile,) = [a for a in run._actions if a.dest == "profile"]
    assert profile.choices == list(PROFILES)


def test_a_table_without_a_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["table1", "--profile", "smoke"])
    assert e.value.code == 2 and "invalid choice: 'table1' (choose from 'run', 'status')" in capsys.readouterr().err


def test_run_and_status_plan_the_same_runs_and_print_as_before(tmp_path, capsys):
    code, out = _main(["run", "table1", *SMALL, "--runs-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 0 and out.startswith("sweep table1 (smoke, seeds 1): 3 runs under")
    would = sorted(line.split("] ")[1].split(":")[0] for line in out.splitlines() if ": would run (new)" in line)
    assert len(would) == 3
    code, out = _main(["status", "table1", *SMALL, "--runs-dir", str(tmp_path)], capsys)
    assert code == 0 and out.strip().splitlines()[-1].endswith("3 missing")
    assert all(run_id in out for run_id in would)
    code, _ = _main(["run", "table1", *SMALL, "--runs-dir", str(tmp_path), "--executor", "slurm", "--jobs", "2"],
                    capsys)
    assert code == "error: --jobs only apply to --executor local; on Slurm, say --gpus-per-run, --cpus-per-run, " \
                   "--max-parallel"


def test_a_library_call_prints_nothing_and_logs(tmp_path, capsys, caplog):
    from identity_study.sweep import sweep
    caplog.set_level(logging.INFO, logger="identity_study")
    frame = sweep("table1", "smoke", seeds=1, run_dir=tmp_path, overrides=dict(dataset="synthetic"),
                  only="constant scaling", dry_run=True)
    assert list(frame.action) == ["would run"] * 3
    assert capsys.readouterr().out == ""                                       # the caller decides what it shows
    assert "identity_study.sweep_local" in {r.name for r in caplog.records}
    assert sum(": would run (new)" in r.getMessage() for r in caplog.records) == 3


def test_the_training_notebook_of_a_wheel_then_of_a_checkout(tmp_path, monkeypatch):
    checkout = Path(identity_study.__file__).resolve().parent.parent / "nbs" / "train.ipynb"
    real_files = importlib.resources.files
    shipped = tmp_path / "site-packages" / "identity_study"
    shipped.mkdir(parents=True)
    monkeypatch.setattr(importlib.resources, "files",
                        lambda name: shipped if name == "identity_study" else real_files(name))
    assert sweep_plan.train_notebook() == checkout                   # nothing shipped: the checkout's
    (shipped / "train.ipynb").write_text("{}")
    assert sweep_plan.train_notebook() == shipped / "train.ipynb"     # a wheel's own copy first
    (shipped / "train.ipynb").unlink()
    monkeypatch.setattr(identity_study, "__file__", str(shipped / "__init__.py"))
    with pytest.raises(FileNotFoundError, match=r"training notebook is in neither .*pip install -e \."):
        sweep_plan.train_notebook()


@pytest.mark.parametrize("how", ["not linux", "no libc"])
def test_without_prctl_a_sweep_runs_unguarded(how, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="identity_study.sweep_plan")
    sweep_plan._prctl.cache_clear()
    if how == "not linux":
        monkeypatch.setattr(sys, "platform", "darwin")
    else:
        def no_cdll(*a, **k):
            raise OSError("libc.so.6: cannot open shared object file")
        monkeypatch.setattr(sweep_plan.ctypes, "CDLL", no_cdll)
    try:
        assert sweep_plan._prctl() is None and sweep_plan._child_setup() is None
        assert callable(sweep_plan._child_setup(shield_signals=True))     # a Slurm job still shields its signals
        assert "not killed with it" in caplog.text
    finally:
        sweep_plan._prctl.cache_clear()


class _Planted:
    "A pickle that someone who can write runs/.slurm/ could leave there: unpickled, it creates the file `marker`."

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _slurm_job(runs: Path, job_id: str):
    "The submitit job a Slurm sweep follows (nothing is asked of Slurm until its state is), its folder made."
    sjob = submitit.SlurmJob(folder=runs / ".slurm" / "%j", job_id=job_id)
    sjob.paths.folder.mkdir(parents=True, exist_ok=True)
    return sjob


def test_what_a_job_returned_is_read_from_its_json_outcome(tmp_path):
    row = dict(action="trained", status="completed")
    job = _slurm_job(tmp_path, "7_1")
    assert job_outcome(job) is None                                               # cancelled: left nothing
    write_outcome(job.paths, row=row)
    assert outcome_file(job.paths).name == "7_1_0_outcome.json" and job_outcome(job) == row
    write_outcome(job.paths, error=RunFailedError("run r trained -> failed: ValueError: boom\nmore"))
    assert job_outcome(job) == "identity_study.sweep_slurm.RunFailedError: run r trained -> failed: ValueError: boom"
    write_outcome(job.paths, row=row)
    other = submitit.core.utils.JobPaths(job.paths.folder.parent / "%j", job_id="7_1", task_id=1)
    write_outcome(other, error=MemoryError("out of memory"))                      # process 1 of a 2-process run
    assert job_outcome(job) == "MemoryError: out of memory"
    for bad in ("not json", "[1, 2]", '{"row": "text"}'):                         # read as data, whatever it holds
        outcome_file(job.paths).write_text(bad)
        outcome_file(other).unlink(missing_ok=True)
        assert job_outcome(job) is None, bad


def test_the_job_writes_its_outcome_but_not_where_submitit_requeues(tmp_path, monkeypatch):
    paths = submitit.core.utils.JobPaths(tmp_path, job_id="5", task_id=0)
    monkeypatch.setattr(sweep_slurm.submitit, "JobEnvironment", lambda: SimpleNamespace(paths=paths))

    class Run(SlurmRun):
        def _call(self, job, env):
            if isinstance(job, BaseException):
                raise job
            return job
    assert Run()(dict(action="skipped")) == dict(action="skipped")
    assert json.loads(outcome_file(paths).read_text()) == dict(row=dict(action="skipped"))
    with pytest.raises(RunFailedError):
        Run()(RunFailedError("run r retried -> failed: DataError: gone"))
    assert json.loads(outcome_file(paths).read_text())["error"].endswith("RunFailedError: run r retried -> failed: "
                                                                          "DataError: gone")
    outcome_file(paths).unlink()
    with pytest.raises(submitit.core.utils.UncompletedJobError):                 # timed out too often: no outcome
        Run()(submitit.core.utils.UncompletedJobError("Job not requeued because: timed-out too many times."))
    assert not outcome_file(paths).exists()


@pytest.mark.parametrize("state, outcome, expect", [
    ("COMPLETED", None, dict(action="completed", status="completed")),
    ("COMPLETED", dict(row=dict(action="trained", status="completed")), dict(action="trained", status="completed")),
    ("FAILED", None, dict(action="failed", status="interrupted")),
    ("CANCELLED", None, dict(action="cancelled", status="interrupted")),
])
def test_a_planted_result_pickle_runs_nothing(tmp_path, monkeypatch, state, outcome, expect):
    """--wait follows the jobs and reads what they returned: a result pickle planted in runs/.slurm/ (as anyone who
    can write the shared runs folder could) is never unpickled; the row comes from the JSON outcome, or from Slurm's
    state and the run's record."""
    runs, marker = tmp_path / "runs", tmp_path / "unpickled"
    record = runs / "r1"
    record.mkdir(parents=True)
    (record / "summary.json").write_text(json.dumps(dict(status=expect["status"], final_test_error=0.5)))
    sjob = _slurm_job(runs, "9_0")
    payload = pickle.dumps(_Planted(marker))
    sjob.paths.result_pickle.write_bytes(payload)
    if outcome:
        write_json(outcome_file(sjob.paths), outcome)
    monkeypatch.setattr(sweep_slurm, "slurm_states", lambda ids: {j: state for j in ids})
    todo = [dict(run_id="r1", row="a row", seed=0, params=dict(run_dir=str(runs)))]
    [row] = sweep_slurm.follow_jobs([sjob], todo, poll=0)
    assert not marker.exists(), "the planted pickle was unpickled"
    assert {k: row[k] for k in expect} == expect, row
    assert row["slurm_state"] == state and row["job_id"] == "9_0"
    if state == "FAILED":
        assert row["error"].startswith("job 9_0 ended FAILED without an outcome; its log: ")
        assert row["error"].endswith("9_0_0_log.err")
    else:
        assert "error" not in row
    pickle.loads(payload)                   # the control: unpickled, the planted file does run its code
    assert marker.exists()


def test_a_multi_process_slurm_run_gives_each_task_its_own_cpus_as_loader_workers():
    "Slurm binds each task to its --cpus-per-task CPUs: the loader's default would divide them by the tasks again."
    from identity_study.sweep_slurm import slurm_execution, slurm_options
    assert slurm_execution(slurm_options(nodes=1, tasks_per_node=4, cpus_per_run=6))["workers"] == 6
    assert slurm_execution(slurm_options(gpus_per_node=2, cpus_per_run=16))["workers"] == 8      # at most 8
    assert "workers" not in slurm_execution(slurm_options(cpus_per_run=6))                     # one process
