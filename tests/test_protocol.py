"""protocol/claims.toml (issue 25) is complete and consistent: every claim judged as chapter 10 numbers it, every
configuration an entry of identity_study.experiments, the new profile fully specified, the families and seeds sound."""
import csv
import math
import shlex
import tomllib
from pathlib import Path

import pytest

from identity_study import experiments
from identity_study.experiments import TABLES
from identity_study.params import PARAMS, PROFILES, RECIPES, resolve_params
from identity_study.protocol import planned_seeds

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = tomllib.loads((ROOT / "protocol" / "claims.toml").read_text())
CLAIMS = PROTOCOL["claims"]
CONFIGS = PROTOCOL["configurations"]
FAMILIES = PROTOCOL["families"]
PROFILE = PROTOCOL["profile"]
NAME = next(iter(PROFILE))                       # the new profile's name
CPU = PROFILE[NAME]
TESTED = [c for c in CLAIMS if c["status"] == "tested"]
UNTESTABLE = [c for c in CLAIMS if c["status"] == "not_testable"]
DIRECTIONS = {"worse", "better", "same"}
# what resolve() insists on (every recipe sets it), and what a CPU profile must set itself
RECIPE_KEYS = ["batch_size", "iterations", "lr", "warmup_lr", "lr_decay", "momentum", "weight_decay", "nesterov",
               "decay_bn_and_bias", "lr_steps", "warmup_iterations", "normalization"]
PROFILE_KEYS = ["width", "eval_every", "eval_subset", "final_eval_subset", "precision"]


def entry(cfg: dict):
    found = [e for e in TABLES[cfg["table"]] if e.row == cfg["row"] and e.case == cfg["case"]]
    assert len(found) == 1, f"{cfg['table']} has no single entry {cfg['row']!r} [{cfg['case']!r}]"
    return found[0]


def schedule(cfg: dict) -> dict:
    "iterations, warm-up, lr steps and evaluation interval of a configuration's runs."
    if cfg["profile"] == NAME and NAME not in PROFILES:        # not implemented yet: the protocol's own values
        s = {k: CPU["cifar"][k] for k in ("iterations", "warmup_iterations", "lr_steps", "eval_every")}
        return {**s, **cfg.get("overrides", {})}
    params = dict(entry(cfg).run_params(cfg["profile"], seeds=[0])[0], **cfg.get("overrides", {}))
    if "schedule_from" in cfg:
        params.update(getattr(experiments, cfg["schedule_from"]))
    r = resolve_params(**params)
    return {k: r[k] for k in ("iterations", "warmup_iterations", "lr_steps", "eval_every")}


def test_the_claims_of_chapter_10():
    "The 34 claims of the protocol, the 7 that amendment 2 added and the 3 of amendment 3's series, each judged."
    ids = [c["id"] for c in CLAIMS]
    original = [c["id"] for c in CLAIMS if "added_by" not in c]
    assert len(ids) == len(set(ids)) == 44 and len(original) == 34
    assert all(c["added_by"].startswith(("amendment 2", "amendment 3")) for c in CLAIMS if "added_by" in c)
    for table, expected in (("findings.csv", ids), ("first_epoch_mini.csv", original)):   # verdicts, first epoch
        with open(ROOT / "figures" / table, newline="") as f:
            assert set(expected) == {row["id"] for row in csv.DictReader(f)}, table
    assert {c["status"] for c in CLAIMS} <= {"tested", "not_testable"}


def test_one_test_for_every_claim():
    p = PROTOCOL["protocol"]
    assert p["test"] == "welch" and p["paired"] is False and p["alpha"] == 0.05
    assert p["multiplicity"] == "holm" and p["precision"] == "fp32"
    assert not any(k in c for c in CLAIMS for k in ("test", "alpha", "paired")), "no claim overrides the test"
    assert set(PROTOCOL["verdicts"]["labels"]) == {"reproduced", "contradicted", "inconclusive",
                                                  "not testable at this scale"}


@pytest.mark.parametrize("claim", TESTED, ids=lambda c: c["id"])
def test_a_tested_claim_is_complete(claim):
    for key in ("paper_claim", "paper", "tested_here", "metric", "direction", "a", "b", "family", "collapse"):
        assert claim.get(key) not in (None, ""), f"{claim['id']}: no {key}"
    assert claim["metric"] in PROTOCOL["metrics"]
    assert claim["direction"] in DIRECTIONS
    assert claim["a"] != claim["b"] and claim["a"] in CONFIGS and claim["b"] in CONFIGS
    assert claim["collapse"] in ("evidence", "counted")
    assert claim["id"] in FAMILIES[claim["family"]]["claims"]
    for side in ("a", "b"):
        assert len(planned_seeds(CONFIGS[claim[side]])) >= 2, f"{claim['id']}: fewer than 2 seeds for {claim[side]}"
    if claim["direction"] == "same":
        assert isinstance(claim.get("margin"), (int, float)) and claim["margin"] > 0
        assert len(claim.get("margin_reason", "")) > 40 and claim.get("margin_rule")
    else:
        assert "margin" not in claim, f"{claim['id']}: a margin on a difference claim"
    # the two sides of a claim ran the same length of training, so the comparison is like with like
    assert schedule(CONFIGS[claim["a"]])["iterations"] == schedule(CONFIGS[claim["b"]])["iterations"]


def test_collapse_is_evidence_only_for_the_fails_claims():
    evidence = {c["id"] for c in TESTED if c["collapse"] == "evidence"}
    assert evidence and all("fail" in next(c for c in CLAIMS if c["id"] == i)["paper_claim"] for i in evidence)
    col = PROTOCOL["collapse"]
    assert col["reference"] == "ln(num_classes)" and 0 < col["tolerance"] < 0.1


def test_families_partition_the_tested_claims():
    listed = [i for f in FAMILIES.values() for i in f["claims"]]
    assert all(f["claims"] for f in FAMILIES.values()), "an empty family"
    assert len(listed) == len(set(listed)), "a claim in two families"
    assert set(listed) == {c["id"] for c in TESTED}
    for name, fam in FAMILIES.items():
        members = [c for c in TESTED if c["id"] in fam["claims"]]
        assert all(c["family"] == name for c in members)
        # one family, one profile: the claims corrected together come from runs of one scale (the post hoc family
        # is never counted, so it may gather claims of several)
        if not fam.get("post_hoc"):
            assert len({CONFIGS[c[s]]["profile"] for c in members for s in "ab"}) == 1, name


@pytest.mark.parametrize("claim", UNTESTABLE, ids=lambda c: c["id"])
def test_an_untestable_claim_has_a_reason_a_cost_and_a_command(claim):
    from identity_study.sweep import build_parser
    assert len(claim.get("reason", "")) > 40 and claim["gpu_hours"] > 0 and claim["gpu_runs"] >= 1
    assert not {"a", "b", "family", "metric"} & set(claim)
    assert claim["gpu_commands"]
    for command in claim["gpu_commands"]:
        words = shlex.split(command)
        assert words[:4] == [".venv/bin/python", "-m", "identity_study.sweep", "run"], command
        args = build_parser().parse_args(words[3:])            # the sweep's own parser accepts it
        assert args.profile == "paper"
        assert args.seeds == (1 if args.table == "table5" else 5)     # ImageNet entries run seed 0 alone
        matched = [e for e in TABLES[args.table] if args.only in e.label and "paper" in e.profiles]
        assert matched, f"{command}: --only matches no entry"


def test_every_configuration_is_an_entry_of_the_tables():
    for key, cfg in CONFIGS.items():
        e = entry(cfg)
        assert len(planned_seeds(cfg)) >= 2 and cfg["lane_hours"] > 0, key
        assert all(0 <= seed < 10 for seed in planned_seeds(cfg)), key
        assert cfg["profile"] in ("mini", *PROFILE), key
        if cfg["profile"] == "mini":
            assert "mini" in e.profiles
        else:
            own = PROFILE[cfg["profile"]]
            assert e.params["dataset"].startswith("cifar") and e.params["depth"] in own["depths"]
            assert e.params["depth"] not in own.get("excluded_depths", []) and cfg["profile"] in e.profiles
        if "schedule_from" in cfg:
            sched = getattr(experiments, cfg["schedule_from"])
            assert isinstance(sched, dict) and {"iterations", "lr_steps", "warmup_iterations"} <= set(sched)
            if e.params["depth"] == 1001:        # the 1,001-layer entries' own mini schedule
                assert e.profile_params.get("mini") == sched
        assert set(cfg.get("overrides", {})) <= set(PARAMS), key
        if cfg["profile"] == "mini":
            resolve_params(**dict(e.run_params("mini", seeds=[0])[0], **cfg.get("overrides", {})))


def test_the_metrics_rows_tile_each_schedule():
    "The lr-0.1 phase and the last 10 % are whole metrics rows in every configuration's schedule."
    for key, cfg in CONFIGS.items():
        s = schedule(cfg)
        every, n = s["eval_every"], s["iterations"]
        assert n % 10 == 0 and (n // 10) % every == 0 and n % every == 0, key
        assert s["warmup_iterations"] % every == 0 and s["lr_steps"][0] % every == 0, key
        assert s["warmup_iterations"] < s["lr_steps"][0], key
        assert (s["lr_steps"][0] - s["warmup_iterations"]) // every >= 4, f"{key}: too few early rows for a median"


def test_the_new_profile_names_every_parameter_it_needs():
    cifar = CPU["cifar"]
    assert NAME != "mini" and CPU["beside"] == "mini" and CPU["recipe"] in RECIPES and CPU["threads"] == 1
    missing = [k for k in RECIPE_KEYS + PROFILE_KEYS if k not in cifar]
    assert not missing, f"profile {NAME} leaves out {missing}"
    assert set(cifar) <= set(PARAMS), sorted(set(cifar) - set(PARAMS))
    recipe = RECIPES[CPU["recipe"]]
    for k in ("lr", "warmup_lr", "lr_decay", "momentum", "weight_decay", "nesterov", "decay_bn_and_bias",
              "normalization"):
        assert cifar[k] == recipe[k], f"{k}: the profile relies on the {CPU['recipe']} recipe's value"
    assert cifar["warmup_iterations"] == recipe["warmup_iterations"] == 400       # the paper's warm-up
    n = cifar["iterations"]
    assert cifar["lr_steps"] == [round(0.6 * n), round(0.8 * n)]
    assert cifar["precision"] == "fp32" and cifar["final_eval_subset"] == "all"
    # the parameter table accepts every value (resolved under the paper profile with the values given explicitly)
    given = {k: v for k, v in cifar.items() if k != "final_eval_subset"}
    r = resolve_params(unit="original", depth=110, dataset="cifar10", seed=0, profile="paper", device="cpu", **given)
    assert r["lr_steps"] == cifar["lr_steps"] and r["width"] == cifar["width"]
    if NAME in PROFILES:       # once implemented, the code holds exactly what the protocol says
        code = PROFILES[NAME]["cifar"]
        for k, v in cifar.items():
            if k in code:
                held = list(code[k]) if isinstance(code[k], tuple) else code[k]
                assert held == (None if v == "all" else v), f"PROFILES[{NAME!r}]: {k} = {code[k]!r}, protocol {v!r}"
        p = resolve_params(unit="original", depth=110, dataset="cifar10", seed=0, profile=NAME, device="cpu")
        assert {k: p[k] for k in RECIPE_KEYS} == {k: cifar[k] for k in RECIPE_KEYS}


def test_seeds_pilot_and_campaign():
    assert PROTOCOL["seeds"]["rule"] and PROTOCOL["protocol"]["status"] in ("provisional", "fixed")
    used = {c[s] for c in TESTED for s in "ab"}
    assert used == set(CONFIGS), sorted(set(CONFIGS) ^ used)
    for run in PROTOCOL["pilot"]["runs"]:
        assert run["configuration"] in CONFIGS
        assert set(run["seeds"]) <= set(planned_seeds(CONFIGS[run["configuration"]]))
    assert 1.5 <= PROTOCOL["pilot"]["lane_hours"] <= 3
    phases = PROTOCOL["campaign"]["order"]
    assert [p["phase"] for p in phases] == sorted(p["phase"] for p in phases)
    assert used <= {c for p in phases for c in p["configurations"]} | set(PROTOCOL["amendments"]["3"]["order"])
    assert all(set(p["configurations"]) <= set(CONFIGS) for p in phases)
    # the baseline shared by the most claims gets at least as many seeds as any configuration compared with it
    base = "original 110"
    assert all(len(planned_seeds(CONFIGS[base])) >= len(planned_seeds(CONFIGS[c["a"]])) for c in TESTED
               if c["b"] == base)
    first_two = sum(p["lane_hours"] for p in phases if p["phase"] <= 2) + PROTOCOL["pilot"]["lane_hours"]
    assert math.isclose(first_two, PROTOCOL["campaign"]["lane_hours"], rel_tol=0.1)


def test_amendment_2_fixes_what_counts_and_plans_fresh_seeds():
    amendment = PROTOCOL["amendments"]["2"]
    assert PROTOCOL["eligibility"]["waived_code"] == [] and PROTOCOL["eligibility"]["waived_code_withdrawn"]
    assert set(amendment["order"]) <= set(CONFIGS) and len(amendment["order"]) == len(set(amendment["order"]))
    for name, seeds in amendment["planned"].items():
        assert set(seeds) <= set(planned_seeds(CONFIGS[name])), name
    # fresh seed numbers: none of them is a seed whose record was made before the protocol (seeds 0-2, 0-1)
    for name in ("original 164", "bn_after_add 164", "preact 164"):
        assert planned_seeds(CONFIGS[name]) == [3, 4, 5, 6, 7]
    for name in ("original 1001", "preact 1001"):
        assert planned_seeds(CONFIGS[name]) == [2, 3, 4, 5]
    added = {c["id"]: c for c in CLAIMS if c.get("added_by", "").startswith("amendment 2")}
    assert {c["family"] for c in added.values()} == {"supplement_110", "posthoc"}
    assert all(c["added_by"].endswith("post hoc") == (c["family"] == "posthoc") for c in added.values())
    assert FAMILIES["posthoc"]["post_hoc"] is True and not FAMILIES["supplement_110"].get("post_hoc")


def test_amendment_3_the_training_length_series():
    series = PROTOCOL["profile"]["cpu8k"]["cifar"]
    short = PROTOCOL["profile"]["cpu2k"]["cifar"]
    # the same width, batch, warm-up and lr rule as cpu2k, four times as long
    assert series["iterations"] == 4 * short["iterations"]
    for key in ("width", "batch_size", "warmup_iterations", "warmup_lr", "lr", "lr_decay", "normalization"):
        assert series[key] == short[key], key
    assert series["lr_steps"] == [round(0.6 * series["iterations"]), round(0.8 * series["iterations"])]
    code = PROFILES["cpu8k"]["cifar"]
    for k, v in series.items():
        if k in code:
            assert (list(code[k]) if isinstance(code[k], tuple) else code[k]) == (None if v == "all" else v), k
    family = FAMILIES["length_110"]
    assert family["series"] is True and len(family["claims"]) == 3
    for cid in family["claims"]:
        claim = next(c for c in CLAIMS if c["id"] == cid)
        repeated = next(c for c in CLAIMS if c["id"] == claim["scale_of"])
        assert (claim["metric"], claim["direction"]) == (repeated["metric"], repeated["direction"])
        for side in "ab":            # each cpu8k configuration names its cpu2k counterpart, the same entry
            long, short_cfg = CONFIGS[claim[side]], CONFIGS[CONFIGS[claim[side]]["short"]]
            assert long["profile"] == "cpu8k" and short_cfg["profile"] == "cpu2k"
            assert short_cfg == CONFIGS[repeated[side]]
            assert [long[k] for k in ("table", "row", "case")] == [short_cfg[k] for k in ("table", "row", "case")]
    order = PROTOCOL["amendments"]["3"]["order"]
    assert order[:len(PROTOCOL["amendments"]["2"]["order"])] == PROTOCOL["amendments"]["2"]["order"]
    assert {c for c in CONFIGS if CONFIGS[c]["profile"] == "cpu8k"} <= set(order)
