"""`python -m identity_study.sweep run protocol` (issue 36): the protocol's plan is the findings' runs, the same for
the local pool and the Slurm executor; bad input is one line, a non-zero exit and nothing written; a run resumes only
on the machine that started it; a budget takes a slice."""
import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

from identity_study.protocol import (ProtocolError, configuration_run_ids, fit_hours, lane_hours, load_protocol,
                                     plan_protocol, select_configurations, this_machine)
from identity_study.sweep import main, protocol_states
from identity_study.sweep_slurm import slurm_execution, slurm_options

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = load_protocol(repo=ROOT)


def cli(*argv) -> tuple:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
    logging.getLogger("identity_study").handlers.clear()
    return code, out.getvalue()


def test_the_plan_is_every_configuration_with_its_planned_run_ids(tmp_path):
    plan = plan_protocol(tmp_path, PROTOCOL)
    for name, cfg in PROTOCOL["configurations"].items():
        assert [j["run_id"] for j in plan if j["configuration"] == name] == configuration_run_ids(cfg), name
    assert len({j["run_id"] for j in plan}) == len(plan)
    # the campaign's order: amendment 2's configurations first
    assert [j["configuration"] for j in plan][:1] == PROTOCOL["amendments"]["2"]["order"][:1]


def test_slurm_plans_the_same_runs_as_the_local_pool(tmp_path):
    local = plan_protocol(tmp_path, PROTOCOL, claims=["11"], fixed=dict(device="cpu"), defaults=dict(threads=1))
    opts = slurm_options(None, cpus_per_run=1)
    slurm = plan_protocol(tmp_path, PROTOCOL, claims=["11"], fixed=slurm_execution(opts), resolve_on="cpu")
    assert [j["run_id"] for j in slurm] == [j["run_id"] for j in local] and len(local) == 20
    gpu = plan_protocol(tmp_path, PROTOCOL, claims=["11"], fixed=slurm_execution(slurm_options(None, gpus_per_run=1)),
                        resolve_on="cpu")
    assert [j["run_id"] for j in gpu] == [j["run_id"] for j in local]     # where it runs is not what it computes


def test_claims_are_chosen_by_id_or_leading_number():
    assert set(select_configurations(PROTOCOL, claims=["7"])) == {"relu_before_add 110", "original 110"}
    assert set(select_configurations(PROTOCOL, configurations=["preact 1001"])) == {"preact 1001"}
    with pytest.raises(ProtocolError, match=r"claim '13' is not testable at this scale"):
        select_configurations(PROTOCOL, claims=["13"])
    with pytest.raises(ProtocolError, match=r"no configuration 'nope' in the protocol; its configurations are: "):
        select_configurations(PROTOCOL, configurations=["nope"])


@pytest.mark.parametrize("argv, message", [
    (["--claims", "99"], "error: no claim '99' in the protocol; its tested claims are: 1a, 1b"),
    (["--configurations", "original 110;nope"], "error: no configuration 'nope' in the protocol"),
    (["--seeds", "3"], "error: --seeds select runs of a table"),
    (["--profile", "mini"], "error: --profile select runs of a table"),
    (["--set", "width=16"], "error: --set width would change what the protocol's runs compute"),
    (["--wait"], "error: --wait only apply to --executor slurm"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, argv, message):
    runs = tmp_path / "runs"
    code, _ = cli("run", "protocol", "--runs-dir", str(runs), *argv)
    assert isinstance(code, str) and code.startswith(message) and "\n" not in code, code
    assert not runs.exists()


def test_jobs_zero_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "protocol", "--jobs", "0", "--runs-dir", str(tmp_path / "runs")])
    assert e.value.code == 2 and "'0' is not a whole number of runs at a time" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_protocol_that_does_not_parse_is_named(tmp_path):
    bad = tmp_path / "claims.toml"
    bad.write_text("[protocol\\n")
    with pytest.raises(ProtocolError, match=r"the protocol .*claims.toml does not parse"):
        load_protocol(bad)
    code, _ = cli("run", "protocol", "--protocol", str(bad), "--runs-dir", str(tmp_path / "runs"), "--dry-run")
    assert code.startswith("error: the protocol") and not (tmp_path / "runs").exists()


def test_a_missing_data_folder_stops_the_sweep_before_any_run(tmp_path):
    runs = tmp_path / "runs"
    code, _ = cli("run", "protocol", "--claims", "11", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "none"))
    assert code.startswith("error: no cifar10 under") and not runs.exists()


def test_the_dry_run_lists_every_planned_run_with_its_state():
    code, text = cli("run", "protocol", "--claims", "9 (110)", "--runs-dir", str(ROOT / "runs"), "--dry-run")
    assert code == 0
    lines = [line for line in text.splitlines() if line.startswith("[")]
    assert len(lines) == 20 and all(": counts (" in line for line in lines), text   # original and preact 110
    code, text = cli("status", "protocol", "--claims", "10a", "--runs-dir", str(ROOT / "runs"))
    assert code == 0 and "original 164" in text and "counts" in text


def test_an_interrupted_run_resumes_only_on_the_machine_that_started_it(tmp_path):
    plan = plan_protocol(tmp_path, PROTOCOL, configurations=["preact 110 no warm-up"])
    here = this_machine()
    for job, device in zip(plan[:2], (here["device_name"], "Some Other CPU")):
        folder = tmp_path / job["run_id"]
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(dict(here, device_name=device)))
        (folder / "summary.json").write_text(json.dumps(dict(status="interrupted")))
    states = protocol_states(plan, tmp_path, PROTOCOL)
    assert list(states.state[:2]) == ["interrupted: resumes here",
                                      f"interrupted on Some Other CPU ({here['hostname']}): resumes only there"]
    assert list(states.runnable[:3]) == [True, False, True] and states.state[2] == "missing"


def test_a_budget_takes_the_runs_that_fit_in_order(tmp_path):
    plan = plan_protocol(tmp_path, PROTOCOL, claims=["11"])
    assert lane_hours(PROTOCOL["configurations"]["preact 110 no warm-up"], tmp_path) == 0.25   # the estimate
    fitted, left = fit_hours(plan, 0.6, lanes=2)
    assert len(fitted) == 4 and len(left) == len(plan) - 4 and fitted == plan[:4]
    code, text = cli("run", "protocol", "--claims", "11", "--runs-dir", str(ROOT / "runs"), "--jobs", "2",
                     "--max-hours", "0.6", "--dry-run")
    assert code == 0 and "--max-hours 0.6 on 2 lane(s):" in text


def test_the_series_pilot_runs_alone_until_an_amendment_lifts_it(tmp_path):
    series = ["original 110 8k", "preact 110 8k", "bn_after_add 110 8k", "1x1 conv 8k"]
    lifting = [k for k, a in PROTOCOL["amendments"].items() if a.get("lifts_pilot") == "cpu8k"]
    assert lifting == ["6"]                                  # amendment 6 lifts it, after the pilot's record
    gated = {**PROTOCOL, "amendments": {k: a for k, a in PROTOCOL["amendments"].items() if k not in lifting}}
    plan = plan_protocol(tmp_path, gated, configurations=series)
    states = protocol_states(plan, tmp_path, gated)
    runnable = states[states.runnable]
    assert list(zip(runnable.configuration, runnable.seed)) == [("original 110 8k", 0)]      # amendment 3's pilot
    assert len(states) == 28 and states.state.str.startswith("held: waits for the cpu8k pilot").sum() == 27
    fitted, _ = fit_hours([j for j, ok in zip(plan, states.runnable) if ok], 100, lanes=2)
    assert len(fitted) == 1                                  # however large the budget, one lane takes the pilot alone
    assert protocol_states(plan, tmp_path, PROTOCOL).runnable.all()
