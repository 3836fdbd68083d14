"""records.read_runs (issue 38): the one reader of run folders, each record found by its own params.json — its
precision and profile read, never guessed from its id — and the lookups that stand on it."""
import json
from pathlib import Path

import pandas as pd
import pytest

from identity_study.experiments import entry_run_ids, table_entry
from identity_study.params import find_records, resolve_params
from identity_study.records import RUN_COLUMNS, RunRecord, load_record, read_metrics, read_runs

ENTRY = table_entry("table1", "original")


def write(runs: Path, precision: str, seed: int = 0, status="completed", profile="mini", summary=True, rows=2):
    "A record of ENTRY as train() leaves it, in `precision`: its folder is the id its parameters resolve to."
    p = resolve_params(**ENTRY.run_params(profile, [seed])[0], precision=precision)
    folder = runs / p["run_id"]
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(dict(p, net={"unit": p["unit"]})))
    if summary:
        (folder / "summary.json").write_text(json.dumps(dict(status=status, final_test_error=0.5)))
    (folder / "metrics.csv").write_text("iteration,train_loss,test_error\n" +
                                        "".join(f"{30 * (i + 1)},2.0,0.8\n" for i in range(rows)))
    return folder


def test_read_runs_reads_every_record_once_by_its_own_params(tmp_path):
    fp32, bf16 = write(tmp_path, "fp32"), write(tmp_path, "bf16")
    unfinished = write(tmp_path, "fp32", seed=1, summary=False)
    (tmp_path / "not-a-record").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "params.json").write_text("{")                 # half a file: not a record
    runs = read_runs(tmp_path)
    assert list(runs.index) == sorted([fp32.name, bf16.name, unfinished.name])
    assert list(runs.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert runs.loc[bf16.name, "precision"] == "bf16" and runs.loc[fp32.name, "precision"] == "fp32"
    assert runs.loc[unfinished.name, "status"] == "interrupted" and not runs.loc[unfinished.name, "summarized"]
    record = runs.loc[fp32.name, "record"]
    assert isinstance(record, RunRecord) and record.path == fp32 and len(record.metrics) == 2
    assert "net" not in runs                       # nested parameters stay in the record, not in the table
    metrics = read_metrics(runs)
    assert len(metrics) == 6 and set(metrics.run_id) == set(runs.index)
    assert read_metrics(tmp_path).equals(metrics)
    assert read_runs(tmp_path / "nowhere").empty and read_metrics(tmp_path / "nowhere").empty


def test_load_record_keeps_its_shape_and_reads_an_empty_metrics_file(tmp_path):
    folder = write(tmp_path, "fp32", rows=0)
    (folder / "metrics.csv").write_text("")
    r = load_record(folder)
    assert r.status == "completed" and r.metrics.empty and r.run_id == folder.name


def test_records_are_found_by_the_precision_their_params_give(tmp_path):
    fp32, bf16 = write(tmp_path, "fp32"), write(tmp_path, "bf16", seed=1)
    write(tmp_path, "bf16", seed=2)
    write(tmp_path, "fp32", seed=2)
    runs = read_runs(tmp_path)
    configs = ENTRY.run_params("mini", range(4))
    found = find_records(runs, configs)
    assert found[0] == [fp32.name] and found[1] == [bf16.name] and found[3] == []
    assert [runs.loc[f, "precision"] for f in found[2]] == ["fp32", "bf16"]         # PRECISIONS' order
    assert find_records(runs, [dict(configs[2], precision="bf16")])[0] == [found[2][1]]
    # a seed in both precisions shows its fp32 record; the rest as their params say
    assert entry_run_ids(ENTRY, "mini", range(4), available=runs) == [fp32.name, bf16.name, found[2][0]]
    # a record whose folder is another configuration's id is not found: the id must follow from its own params
    moved = tmp_path / "original-110-basic-cifar10-mini-s3-00000000"
    write(tmp_path, "fp32", seed=3).rename(moved)
    assert find_records(read_runs(tmp_path), configs[3:])[0] == []
    assert find_records(pd.DataFrame(), configs) == [[] for _ in configs]


def test_one_entry_lookup():
    assert table_entry("table3", "CIFAR-10 ResNet-1001", "preact").params["unit"] == "preact"
    with pytest.raises(KeyError, match="no single entry"):
        table_entry("table1", "no such row")


def test_each_start_of_a_run_says_what_it_was_made_with(tmp_path, monkeypatch):
    "Issue 39.8: a run resumed or requeued on another machine keeps every start's machine, device and versions."
    import identity_study.records as R
    here = R.device_kind("cpu")
    R.note_attempt(tmp_path, device="cpu", action="trained")
    monkeypatch.setattr(R, "device_kind", lambda device: dict(device_name="Another CPU", cpu_capability="AVX2",
                                                              native_bf16=False))
    real_id = R.machine_id()
    monkeypatch.setattr(R, "machine_id", lambda: "another-machine")
    R.note_attempt(tmp_path, device="cpu", action="resumed")
    monkeypatch.setattr(R, "device_kind", lambda device: (_ for _ in ()).throw(RuntimeError("no GPU visible")))
    R.note_attempt(tmp_path, device="cuda:3", action="resumed")
    first, second, third = R.scheduler_log(tmp_path)["attempts"]
    assert first["device_name"] == here["device_name"] and first["hostname"] == second["hostname"]
    assert (second["device_name"], second["cpu_capability"], second["machine_id"]) == ("Another CPU", "AVX2",
                                                                                     "another-machine")
    assert first["machine_id"] == real_id
    assert first["versions"]["torch"] == second["versions"]["torch"] and "fp32_math" not in first
    assert third["device"] == "cuda:3" and "no GPU visible" in third["machine_error"]
    # load_record reads the log back: both resumptions are starts, neither a Slurm requeue
    assert R.scheduler_log(tmp_path)["requeued"] == 0
