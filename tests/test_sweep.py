"""The sweep's command line, its manners as a library (logging, prctl off Linux, submitit's public API) and where it
finds the training notebook: fast checks, no training (the sweeps themselves: test_pipeline, test_faults,
test_extend, and tests/slurm against a real cluster)."""
import importlib.resources
import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import identity_study
from identity_study import sweep_plan
from identity_study.params import PROFILES
from identity_study.sweep import build_parser, main
from identity_study.sweep_slurm import job_outcome

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


def _job(tmp_path, exception=None, results=None, pickled=True):
    "A finished submitit job as job_outcome sees it: its result file (or none), exception() and results()."
    folder = Path(tmp_path) / f"job{len(list(Path(tmp_path).iterdir()))}"
    folder.mkdir()
    result = folder / "1_0_result.pkl"
    if pickled:
        result.write_bytes(pickle.dumps(("success", None)))

    def fails():
        raise ModuleNotFoundError("No module named 'submitit.core.v2'")
    return SimpleNamespace(paths=SimpleNamespace(result_pickle=result, stdout=folder / "1_0_log.out"),
                           exception=exception or (lambda: None), results=results or fails)


def test_what_a_job_returned_degrades_to_a_clear_answer(tmp_path):
    row = dict(action="trained", status="completed")
    assert job_outcome(_job(tmp_path, results=lambda: [row])) == row
    assert job_outcome(_job(tmp_path, pickled=False)) is None                    # cancelled: left nothing
    unreadable = job_outcome(_job(tmp_path))                                      # another version's result
    assert unreadable.startswith("the job's result cannot be read back (ModuleNotFoundError")
    odd = job_outcome(_job(tmp_path, exception=lambda: RuntimeError("job 1 failed: out of memory\nmore")))
    assert odd == "job 1 failed: out of memory"                                  # a message laid out otherwise


def test_a_multi_process_slurm_run_gives_each_task_its_own_cpus_as_loader_workers():
    "Slurm binds each task to its --cpus-per-task CPUs: the loader's default would divide them by the tasks again."
    from identity_study.sweep_slurm import slurm_execution, slurm_options
    assert slurm_execution(slurm_options(nodes=1, tasks_per_node=4, cpus_per_run=6))["workers"] == 6
    assert slurm_execution(slurm_options(gpus_per_node=2, cpus_per_run=16))["workers"] == 8      # at most 8
    assert "workers" not in slurm_execution(slurm_options(cpus_per_run=6))                     # one process
