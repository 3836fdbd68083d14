"The study pipeline: the papermill training notebook, the registry, sweeps and the figure notebook, end to end."
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from identity_study.experiments import FAIL, TABLES, configs
from identity_study.figures import table_frame
from identity_study.records import read_metrics as gather_metrics, read_runs as gather_runs
from identity_study.sweep import sweep

ROOT = Path(__file__).resolve().parent.parent
PAPERMILL = [sys.executable, "-m", "papermill", "--no-progress-bar"]


def _outputs(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "\n".join(o.get("text", "") if o.get("output_type") == "stream" else json.dumps(o.get("data", {}))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _outputs_so_far(nb_path) -> str:
    "_outputs of a notebook papermill is still writing: empty while it is missing or half-written."
    try:
        return _outputs(nb_path)
    except (OSError, ValueError):      # not there yet, or caught mid-write (NotJSONError is a ValueError)
        return ""


@pytest.mark.slow
def test_train_notebook_smoke_run_through_papermill(tmp_path):
    out = tmp_path / "out.ipynb"
    runs = tmp_path / "runs"
    proc = subprocess.run([*PAPERMILL, str(ROOT / "nbs/train.ipynb"), str(out), "-p", "unit", "original",
                           "-p", "depth", "20", "-p", "profile", "smoke", "-p", "run_dir", str(runs)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = _outputs(out)
    assert '"profile": "smoke"' in text and '"unit": "original"' in text          # the resolved configuration
    assert "final test error" in text and "image/png" in text                      # final numbers and the curve
    (record,) = [p for p in runs.iterdir() if p.is_dir()]
    assert json.loads((record / "summary.json").read_text())["status"] == "completed"
    # the same command again: not trained again, and the notebook says so
    out2 = tmp_path / "again.ipynb"
    subprocess.run([*PAPERMILL, str(ROOT / "nbs/train.ipynb"), str(out2), "-p", "unit", "original", "-p", "depth",
                    "20", "-p", "profile", "smoke", "-p", "run_dir", str(runs)], check=True, capture_output=True,
                   cwd=ROOT, timeout=300)
    assert "already completed: showing the stored record, not training again" in _outputs(out2)


def test_the_documented_command_starts_the_papers_recipe(tmp_path):
    "papermill nbs/train.ipynb runs/x.ipynb -p unit preact -p depth 164: stopped once it has printed its configuration."
    out = tmp_path / "x.ipynb"
    env = {**os.environ, "IDENTITY_STUDY_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*PAPERMILL, "nbs/train.ipynb", str(out), "-p", "unit", "preact", "-p", "depth", "164"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # polled on what the notebook has written; the deadline is only a guard against a hang (a kernel start and
        # the paper recipe's set-up take seconds on a quiet machine, minutes on a busy one)
        deadline = time.monotonic() + 600
        while '"iterations": 64000' not in _outputs_so_far(out):
            assert proc.poll() is None, f"papermill ended (exit {proc.returncode}) before printing the configuration"
            assert time.monotonic() < deadline, "no configuration printed in 600 s"
            time.sleep(0.5)
        text = _outputs(out)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    config = json.loads(text[text.index("{"):text.index("}") + 1])
    assert (config["unit"], config["depth"], config["block"], config["recipe"], config["profile"]) == \
        ("preact", 164, "bottleneck", "paper", "paper")
    assert (config["batch_size"], config["lr"], config["lr_steps"], config["warmup_iterations"],
            config["iterations"]) == (128, 0.1, [32000, 48000], 400, 64000)


def test_registry_covers_every_row_of_tables_1_to_5():
    assert [len({e.row for e in TABLES[t]}) for t in ("table1", "table2", "table3", "table5")] == [11, 5, 6, 5]
    assert sum(e.paper == FAIL for e in TABLES["table1"]) == 9            # (0,1), (0.5,1), b_g 0..-5 and dropout
    t4 = [e for e in TABLES["table4"] if "batch 64" in e.row]
    assert t4[0].params["recipe"] == "official" and t4[0].paper == 4.62
    assert len(configs("table2", "paper")) == 50                          # 10 entries x the paper's 5 seeds


@pytest.mark.slow
def test_smoke_sweep_of_tables_1_and_2_and_the_figure_notebook(tmp_path, caplog):
    """Table 2 whole and two slices of table 1 (its original unit, and the constant-scaling rows), then the figure
    notebook on them: a slice keeps the suite's cost at 13 trained runs, and the rows left out show as missing."""
    runs, figs = tmp_path / "runs", tmp_path / "figures"
    caplog.set_level(logging.INFO, logger="identity_study")       # the sweep reports through logging
    first = pd.concat([sweep("table2", "smoke", seeds=1, run_dir=runs, jobs=2),
                       sweep("table1", "smoke", seeds=1, run_dir=runs, only="original"),
                       sweep("table1", "smoke", seeds=1, run_dir=runs, jobs=2, only="constant scaling")])
    # table 1's original is table 2's original ResNet-110: found done, not trained again
    assert (first.status == "completed").all() and (first.action == "skipped").sum() == 1
    assert len(first) == 14 and first.row.str.contains("constant scaling").sum() == 3
    assert len({p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")}) == 13
    assert all((runs / r / "notebook.ipynb").exists() for r in first.run_id)   # executed notebook beside the record
    again = sweep("table1", "smoke", seeds=1, run_dir=runs, only="constant scaling")
    assert len(again) == 3 and (again.action == "skipped").all()
    assert caplog.text.count("trained -> completed") == 13 and caplog.text.count("already completed, skipped") == 4

    frame = gather_runs(runs)
    assert len(frame) == 13 and (frame.status == "completed").all()
    assert {"run_id", "unit", "depth", "seed", "final_test_error"} <= set(frame.columns)
    assert len(gather_metrics(runs)) == 26                                 # two evaluation rows per smoke run
    t1 = table_frame("table1", frame, "smoke", seeds=[0])
    swept = t1.row.str.contains("constant scaling") | (t1.row == "original")
    assert swept.sum() == 4 and (t1[swept].seeds == 1).all() and "missing" not in set(t1[swept]["median"])
    assert (t1[~swept]["median"] == "missing").all()
    assert "missing" in set(table_frame("table3", frame, "smoke", seeds=[0])["median"])   # never a zero

    proc = subprocess.run([*PAPERMILL, str(ROOT / "nbs/09_figures.ipynb"), str(tmp_path / "figures.ipynb"),
                           "-p", "runs_dir", str(runs), "-p", "figures_dir", str(figs), "-p", "profile", "smoke"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("fig1_smoke.png", "fig3_smoke.png", "fig6_smoke.png", "table1_smoke.csv", "table2_smoke.csv"):
        assert (figs / name).stat().st_size > 0
    assert (figs / "fig3_smoke.png").stat().st_size > 30_000               # four panels with curves
    rendered = pd.read_csv(figs / "table2_smoke.csv")
    assert len(rendered) == 10 and (rendered.seeds == 1).all()
