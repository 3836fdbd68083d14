"""An amendment's `equivalent_code` (protocol/claims.toml) lets records of changed computing code count beside the
campaign's. This shows the claim it rests on: the checkout's code computes every kind of campaign run, in one process,
bit for bit as the campaign's code does (the metrics rows, the final weights and the summary), a cut-and-resumed run
included. The campaign's code is taken from the commit the amendment names (`compared_with`), whose fingerprint must
be `[amendments.1].campaign_code`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from identity_study.params import resolve_params
from identity_study.protocol import checkout, configuration_params, load_protocol
from identity_study.records import code_differences, code_fingerprint

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
# two units a stage: a stage's first unit and a later one (at one unit a stage some variants compute the same function)
SMALL_DEPTH = {"basic": 14, "bottleneck": 20}


def small_configurations(protocol: dict) -> dict:
    """One small run for every kind of campaign run: each configuration's unit, block, options and warm-up (or none),
    two units a stage and 8 iterations of its own profile's batch, width and rule, with an evaluation midway."""
    kinds = {}
    for name, cfg in protocol["configurations"].items():
        p = configuration_params(cfg, seeds=[0])[0]
        block = resolve_params(**p)["block"]
        small = {**p, "block": block, "depth": SMALL_DEPTH[block], "iterations": 8, "eval_every": 4, "lr_steps": [5, 7],
                 "warmup_iterations": min(p.get("warmup_iterations", 3), 3), "train_subset": 512,
                 "eval_subset": 200, "final_eval_subset": 300, "threads": 1, "progress": False, "device": "cpu"}
        if small["profile"] == "cpu8k":     # cpu2k made longer: with the iterations set here, the same run
            small["profile"] = "cpu2k"
        kind = json.dumps({k: v for k, v in small.items() if k != "seed"}, sort_keys=True)
        kinds.setdefault(kind, (name, small))
    runs = dict(kinds.values())
    runs["preact 110, cut and resumed"] = {**runs["preact 110"], "seed": 1, "cut_at": 4}
    return runs


def computed(package_root: Path, tmp: Path, configurations: dict) -> dict:
    tmp.mkdir()
    (tmp / "configurations.json").write_text(json.dumps(configurations))
    env = {**os.environ, "PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "code_equivalence_worker.py"), str(tmp / "out.json"),
                           str(tmp / "runs"), str(tmp / "configurations.json")],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out.json").read_text())


def test_an_amendments_equivalent_code_computes_the_campaigns_runs_bit_for_bit(tmp_path):
    protocol, repo = load_protocol(repo=checkout()), checkout()
    amendments = protocol["amendments"]
    campaign = amendments["1"]["campaign_code"]
    running = code_fingerprint()
    claimed = [a for a in amendments.values() if "equivalent_code" in a
               and not code_differences(running, a["equivalent_code"])]
    if not claimed:
        assert not code_differences(running, campaign), "the running code is neither the campaign's nor equivalent"
        pytest.skip("the running code is the campaign's own: nothing to compare")
    commit = claimed[-1]["compared_with"]
    old = tmp_path / "campaign-code"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "identity_study"], capture_output=True)
    assert archive.returncode == 0, f"the campaign's commit {commit} is not in this clone: {archive.stderr.decode()}"
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)

    configurations = small_configurations(protocol)
    before = computed(old, tmp_path / "before", configurations)
    after = computed(repo, tmp_path / "after", configurations)
    # each side ran the code it was meant to: the campaign's from the named commit, the checkout's from here
    assert Path(before["package"]) == (old / "identity_study").resolve()
    assert not code_differences(before["code"], campaign)
    assert Path(after["package"]) == (repo / "identity_study").resolve() and after["code"] == running
    assert code_differences(before["code"], after["code"])       # the code did change
    assert set(before["runs"]) == set(after["runs"]) == set(configurations) and len(configurations) >= 15
    for name in configurations:
        assert before["runs"][name]["status"] == "completed", name
        assert after["runs"][name] == before["runs"][name], name
