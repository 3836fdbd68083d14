"""identity_study.findings (chapter 9a): the protocol's rules, each checked on records built for the purpose —
the three metrics and collapse, which records count and why not, Welch's test, TOST, Holm within a family that never
shrinks, verdicts in both directions, and claims that wait for their planned seeds."""
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from identity_study.findings import (VERDICTS, Record, amendment_commit, claim_test, configuration_run_ids,
                                     descends_from,
                                     counted_runs, familywise_bound, findings, gather_runs, holm, holm_levels,
                                     judge_claims, load_protocol, machine_check, protocol_commit, series_contrasts,
                                     p_text, SERIES_MEANING, series_in_words, verdict,
                                     within_seed_correlation)
from identity_study.records import code_fingerprint

stats = pytest.importorskip("scipy.stats")
ROOT = Path(__file__).resolve().parent.parent
HEAD = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
MINI = dict(iterations=900, eval_every=90, warmup_iterations=90, lr_steps=[450, 675])


def write_record(folder: Path, error: float, losses, status="completed", **params):
    "A record as train() leaves it: params.json, summary.json and one metrics row per evaluation."
    folder.mkdir(parents=True)
    p = {**MINI, "precision": "fp32", "code": code_fingerprint(), "git_commit": HEAD, **params}
    (folder / "params.json").write_text(json.dumps(p))
    (folder / "summary.json").write_text(json.dumps(dict(status=status, final_test_error=error / 100)))
    rows = ["iteration,train_loss"] + [f"{(i + 1) * p['eval_every']},{v}" for i, v in enumerate(losses)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def protocol(seeds=3, margin=2.0, waived=()):
    "A two-configuration protocol under mini: a worse-claim, a same-claim and a claim this scale cannot test."
    return {
        "protocol": dict(precision="fp32", alpha=0.05, num_classes=10),
        "collapse": dict(tolerance=0.02),
        "eligibility": dict(waived_code=list(waived)),
        "configurations": {
            "scaled": dict(table="table1", row="constant scaling (0.5, 1)", case="", profile="mini", seeds=seeds),
            "identity": dict(table="table1", row="original", case="", profile="mini", seeds=seeds)},
        "families": {"f": dict(claims=["w", "s"])},
        "claims": [
            dict(id="w", status="tested", paper_claim="scaling is worse", paper="fail", metric="final_test_error",
                 direction="worse", a="scaled", b="identity", family="f"),
            dict(id="s", status="tested", paper_claim="about the same", paper="6.6 vs 6.6",
                 metric="final_test_error", direction="same", a="scaled", b="identity", family="f", margin=margin),
            dict(id="g", status="not_testable", paper_claim="needs a GPU", paper="8.70", reason="converged nets",
                 gpu_hours=5.8, gpu_commands=["sweep ..."])],
    }


def fill(runs: Path, proto: dict, errors: dict, seeds=None, **params):
    "Records of each configuration with the given final errors, one per seed (loss curves that learn)."
    for name, values in errors.items():
        ids = configuration_run_ids(proto["configurations"][name], range(seeds or len(values)), params.get(
            "precision", "fp32"))
        for seed, (run_id, e) in enumerate(zip(ids, values)):
            write_record(runs / run_id, e, [2.0] * 9 + [1.5], seed=seed, **params)


# --- metrics and collapse -----------------------------------------------------------------------------------------
def test_metrics_read_as_the_protocol_defines_them(tmp_path):
    losses = [2.3, 2.1, 100.0, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2]       # a spike at row 270
    r = Record.read(write_record(tmp_path / "r", 55.0, losses))
    assert r.final_test_error() == pytest.approx(55.0)
    assert r.final_train_loss() == pytest.approx(1.2)                  # row 900 alone covers the last 10 %
    # lr-0.1 phase rows: 180, 270, 360, 450 (90 < i <= 450): the median of their logs, the spike one rank only
    assert r.early_log_loss() == pytest.approx(np.median(np.log([2.1, 100.0, 1.8, 1.7])))
    assert not r.collapsed()


def test_a_diverged_run_counts_at_chance_and_has_collapsed(tmp_path):
    r = Record.read(write_record(tmp_path / "d", 0.0, [2.3, 2.2, float("nan")], status="diverged"))
    assert r.final_test_error() == pytest.approx(90.0) and r.final_train_loss() == pytest.approx(math.log(10))
    # rows 180 and 270 missing or non-finite count at max(ln 10, the largest finite phase loss) before the log
    assert r.early_log_loss() == pytest.approx(math.log(math.log(10)))
    assert r.collapsed()


@pytest.mark.parametrize("last_loss, collapsed", [(2.29, True), (math.log(10) - 0.019, True), (2.25, False)])
def test_collapse_is_a_last_loss_within_the_tolerance_of_chance(tmp_path, last_loss, collapsed):
    r = Record.read(write_record(tmp_path / "c", 88.0, [2.3] * 9 + [last_loss]))
    assert r.collapsed() is collapsed


# --- the tests ----------------------------------------------------------------------------------------------------
def test_welch_p_and_interval_are_scipys():
    a, b = [71.0, 74.5, 69.8, 73.1, 70.2], [63.9, 66.0, 61.2]
    t = claim_test("worse", a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert t["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_same_claims_are_decided_both_ways():
    rng = np.random.default_rng(0)
    base = list(60 + rng.normal(0, 0.3, 8))
    inside = claim_test("same", [x + 0.1 for x in base], base, margin=2.0)
    outside = claim_test("same", [x + 6.0 for x in base], base, margin=2.0)
    wide = claim_test("same", [60, 70, 50], [58, 66, 55], margin=2.0)
    assert inside["inside"] and inside["p"] < 1e-6 and verdict("same", inside, inside["p"], 0.05) == "reproduced"
    assert not outside["inside"] and verdict("same", outside, outside["p"], 0.05) == "contradicted"
    assert verdict("same", wide, wide["p"], 0.05) == "inconclusive"
    # TOST: p is the larger of the two one-sided p-values at -M and +M
    d = np.array([x + 0.1 for x in base])
    lower = stats.ttest_ind(d + 2.0, base, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(d - 2.0, base, equal_var=False, alternative="less").pvalue
    assert inside["p"] == pytest.approx(max(lower, upper), rel=1e-8)


def test_a_significant_difference_against_the_paper_contradicts_it():
    t = claim_test("worse", [60.0, 61.0, 60.5], [70.0, 71.0, 70.4])
    assert verdict("worse", t, t["p"], 0.05) == "contradicted"
    assert verdict("better", t, t["p"], 0.05) == "reproduced"
    assert verdict("worse", t, 0.2, 0.05) == "inconclusive"


def test_holm_steps_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03, 1.0]) == pytest.approx([0.04, 0.09, 0.09, 1.0])
    assert holm([0.001]) == pytest.approx([0.001])
    # a NaN is no test: it stays NaN and the family is the tests that exist (chapter 9's first-epoch view uses that)
    assert np.allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan], equal_nan=True)


# --- which records count, and the findings ------------------------------------------------------------------------
def test_clear_difference_is_reproduced_and_the_family_counts_every_member(tmp_path):
    proto = protocol()
    fill(tmp_path, proto, {"scaled": [80.0, 82.0, 81.0], "identity": [60.0, 61.0, 59.5]})
    claims, configs = findings(tmp_path, proto, repo=ROOT)
    w, s, g = (claims.set_index("id").loc[i] for i in "wsg")
    assert w.verdict == "reproduced" and w.agrees == "yes" and (w.n_a, w.n_b) == (3, 3)
    assert s.verdict == "contradicted"                      # 21 points apart: wholly outside the ±2 margin
    assert g.verdict == "not testable at this scale" and g.gpu_hours == 5.8
    assert (w.p_holm, s.p_holm) == pytest.approx(tuple(holm([w.p, s.p])))        # one family: w and s
    assert set(claims.verdict) <= set(VERDICTS)
    assert configs.set_index("configuration").seeds.to_dict() == {"scaled": 3, "identity": 3}


def test_a_claim_waits_for_its_planned_seeds(tmp_path):
    proto = protocol(seeds=4)
    fill(tmp_path, proto, {"scaled": [80.0, 82.0, 81.0], "identity": [60.0, 61.0, 59.5]})
    claims, _ = findings(tmp_path, proto, repo=ROOT)
    w = claims.set_index("id").loc["w"]
    assert w.verdict == "inconclusive" and w.why == "runs pending: 3 of 4 and 3 of 4 seeds" and w.p == 1.0


def test_records_that_may_not_count_are_left_out_with_their_reason(tmp_path):
    proto = protocol(seeds=2)
    fill(tmp_path, proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]})
    fill(tmp_path, proto, {"scaled": [81.0]}, precision="bf16")
    other = configuration_run_ids(proto["configurations"]["identity"], [2])[0]       # beyond the planned seeds
    write_record(tmp_path / other, 60.0, [1.5] * 10)
    _, configs = findings(tmp_path, proto, repo=ROOT)
    not_used = configs.set_index("configuration").not_used
    assert not_used["scaled"] == "1 bf16" and not_used["identity"] == "1 not a planned seed"


def test_other_code_and_older_commits_do_not_count_unless_waived(tmp_path):
    old_code = {"units": "000000000000", "models": "0", "data": "0", "train": "0"}
    first = subprocess.run(["git", "-C", str(ROOT), "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                           text=True).stdout.split()[0]
    for name, params in (("other code", dict(code=old_code)), ("made before the protocol", dict(git_commit=first))):
        runs = tmp_path / name.replace(" ", "_")
        proto = protocol(seeds=2)
        fill(runs, proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, **params)
        claims, configs = findings(runs, proto, repo=ROOT)
        assert set(configs.not_used) == {f"2 {name}"} and (claims.n_a.dropna() == 0).all()
    assert protocol_commit(str(ROOT)) != first
    waived = protocol(seeds=2, waived=[old_code])
    runs = tmp_path / "waived"
    fill(runs, waived, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, code=old_code, git_commit=first)
    claims, _ = findings(runs, waived, repo=ROOT)
    assert (claims.n_a.dropna() == 2).all()          # a waived fingerprint counts, whatever commit made it


def test_the_committed_records_are_judged_by_the_committed_protocol():
    proto = load_protocol(repo=ROOT)
    claims, configs = findings(ROOT / "runs", proto, repo=ROOT)
    assert list(claims.id) == [c["id"] for c in proto["claims"]]
    assert set(claims.verdict) <= set(VERDICTS)
    decided = claims[claims.verdict.isin(["reproduced", "contradicted"])]
    assert (decided.p_holm < proto["protocol"]["alpha"]).all()
    assert (decided.n_a >= decided.planned_a).all() and (decided.n_b >= decided.planned_b).all()
    assert len(configs) == len(proto["configurations"])


def test_campaign_runs_must_follow_amendment_1_and_pilot_runs_count_by_name(tmp_path):
    first_fixed = protocol_commit(str(ROOT))          # after the protocol, before its amendment 1
    proto = protocol(seeds=2)
    pilot = configuration_run_ids(proto["configurations"]["identity"], [0, 1])
    proto["amendments"] = {"1": dict(pilot_runs=pilot)}
    runs = tmp_path / "before"
    fill(runs, proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, git_commit=first_fixed)
    claims, configs = findings(runs, proto, repo=ROOT)
    not_used = configs.set_index("configuration").not_used
    assert not_used["scaled"] == "2 made before amendment 1" and not_used["identity"] == ""
    assert (claims.n_b.dropna() == 2).all() and (claims.n_a.dropna() == 0).all()
    runs = tmp_path / "after"                          # made at this checkout's HEAD, which follows amendment 1
    fill(runs, proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]})
    claims, _ = findings(runs, proto, repo=ROOT)
    assert (claims.n_a.dropna() == 2).all() and (claims.n_b.dropna() == 2).all()


def test_counted_runs_are_the_runs_findings_counts_with_their_collapses(tmp_path):
    proto = protocol(seeds=2)
    fill(tmp_path, proto, {"scaled": [80.0, 82.0, 79.0], "identity": [60.0, 61.0]})   # scaled's seed 2: not planned
    fill(tmp_path, proto, {"identity": [59.0]}, precision="bf16")
    collapsed = Record.read(tmp_path / configuration_run_ids(proto["configurations"]["scaled"], [1])[0])
    (collapsed.path / "metrics.csv").write_text("iteration,train_loss\n900,2.30\n")
    gathered = gather_runs(tmp_path, proto, repo=ROOT)
    counted = counted_runs(gathered, proto)
    assert list(counted.configuration) == ["scaled", "scaled", "identity", "identity"]
    assert list(counted.seed) == [0, 1, 0, 1] and set(counted.profile) == {"mini"}
    assert list(counted.collapsed) == [False, True, False, False]
    assert list(counted.final_test_error) == pytest.approx([80.0, 82.0, 60.0, 61.0])
    _, configs = judge_claims(gathered, proto)
    assert list(configs.collapsed) == [1, 0] and list(configs.seeds) == [2, 2]
    assert findings(tmp_path, proto, repo=ROOT)[1].equals(configs)      # the one-call form judges the same runs


# --- amendment 2: what counts, and what every verdict shows ------------------------------------------------------
def test_amendment_2_refuses_dirty_trees_withdraws_the_waiver_and_dates_its_own_seeds(tmp_path):
    old_code = {"units": "000000000000", "models": "0", "data": "0", "train": "0"}
    first = subprocess.run(["git", "-C", str(ROOT), "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                           text=True).stdout.split()[0]
    amended_1 = amendment_commit(str(ROOT))           # after amendment 1, before amendment 2
    proto = protocol(seeds=[0, 1], waived=[old_code])
    proto["amendments"] = {"1": dict(pilot_runs=[]), "2": dict(planned={"scaled": [1]})}
    fill(tmp_path / "dirty", proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, git_dirty=True)
    fill(tmp_path / "waived", proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, code=old_code,
         git_commit=first)
    fill(tmp_path / "between", proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, git_commit=amended_1)
    reasons = {name: findings(tmp_path / name, proto, repo=ROOT)[1].set_index("configuration").not_used.to_dict()
               for name in ("dirty", "waived", "between")}
    assert reasons["dirty"] == {"scaled": "2 from a dirty tree", "identity": "2 from a dirty tree"}
    assert reasons["waived"] == {"scaled": "2 made before the protocol", "identity": "2 made before the protocol"}
    # seed 1 of "scaled" is amendment 2's: made at amendment 1's commit it does not count; everything else does
    assert reasons["between"] == {"scaled": "1 made before amendment 2", "identity": ""}


def test_an_amendment_may_accept_code_that_computes_the_same(tmp_path):
    """`equivalent_code`: records of a fixed code count beside the campaign's, single-process and made after the
    amendment that names it; a checkout whose code is neither judges only its own records."""
    running = code_fingerprint()
    fixed = {**running, "train": "fixed0000000"}
    amended_1, amended_2 = amendment_commit(str(ROOT)), amendment_commit(str(ROOT), 2)
    proto = protocol(seeds=2)
    # amendment 2's commit stands in for the commit of the amendment that names the fixed code
    proto["amendments"] = {"1": dict(pilot_runs=[], campaign_code=running), "2": dict(equivalent_code=fixed)}
    cases = dict(campaign=dict(), fixed=dict(code=fixed), early=dict(code=fixed, git_commit=amended_1),
                 ranks=dict(code=fixed, world_size=2), other=dict(code={**running, "data": "other0000000"}))
    for name, params in cases.items():
        fill(tmp_path / name, proto, {"scaled": [80.0, 82.0], "identity": [60.0, 61.0]}, **params)
    reasons = {name: findings(tmp_path / name, proto, repo=ROOT)[1].set_index("configuration").not_used.to_dict()
               for name in cases}
    assert reasons["campaign"] == reasons["fixed"] == {"scaled": "", "identity": ""}
    assert reasons["early"]["scaled"] == "2 made before its code's amendment"
    assert reasons["ranks"]["scaled"] == "2 other code (equivalent for one process only)"
    assert reasons["other"]["scaled"] == "2 other code"
    assert descends_from(HEAD, amended_2, str(ROOT))
    # this checkout's code is none of the protocol's: only its own records count
    proto["amendments"] = {"1": dict(pilot_runs=[], campaign_code=fixed)}
    assert findings(tmp_path / "campaign", proto, repo=ROOT)[1].not_used.eq("").all()
    assert findings(tmp_path / "fixed", proto, repo=ROOT)[1].not_used.eq("2 other code").all()


def test_every_verdict_carries_its_scale_spread_and_holm_level(tmp_path):
    proto = protocol(seeds=3)
    fill(tmp_path, proto, {"scaled": [80.0, 82.0, 81.0], "identity": [60.0, 61.0, 59.5]})
    claims, _ = findings(tmp_path, proto, repo=ROOT)
    w = claims.set_index("id").loc["w"]
    assert w.scale == "mini: 900 iterations (1.15 epochs), width 8" and w.epochs == 1.15
    assert w.sd_a == pytest.approx(np.std([80.0, 82.0, 81.0], ddof=1))
    levels = holm_levels(claims.set_index("id").loc[["w", "s"]].p, 0.05)
    assert w.holm_level == pytest.approx(levels[0])
    assert claims.set_index("id").loc[["w", "s"]].holm_level.min() == pytest.approx(0.025)   # m = 2
    # the interval at the Holm level is the wider one, and it is Welch's at that level
    ref = stats.ttest_ind([80.0, 82.0, 81.0], [60.0, 61.0, 59.5], equal_var=False).confidence_interval(
        1 - w.holm_level)
    assert (w.ci_holm_low, w.ci_holm_high) == pytest.approx((ref.low, ref.high), rel=1e-8)
    assert w.ci_holm_low <= w.ci_low and not w.leans_against


def test_holm_levels_step_down():
    assert np.allclose(holm_levels([0.01, 0.04, 0.03], 0.05), [0.05 / 3, 0.05, 0.05 / 2])
    assert np.allclose(holm_levels([0.2, np.nan], 0.05), [0.05, np.nan], equal_nan=True)


def test_a_complete_claim_pointing_the_other_way_leans_against_the_paper(tmp_path):
    proto = protocol(seeds=3)
    fill(tmp_path, proto, {"scaled": [60.0, 66.0, 57.0], "identity": [61.0, 62.0, 63.0]})
    w = findings(tmp_path, proto, repo=ROOT)[0].set_index("id").loc["w"]
    assert w.difference < 0 and w.verdict == "inconclusive" and w.agrees == "no" and w.leans_against


def test_the_machine_is_checked_as_a_covariate_and_said_when_it_cannot_be(tmp_path):
    proto = protocol(seeds=4)
    xeon, epyc = dict(device_name="Intel(R) Xeon(R) Processor"), dict(device_name="AMD EPYC 7B13")
    for name, values in {"scaled": [80.0, 82.0, 81.0, 79.0], "identity": [60.0, 61.0, 59.5, 62.0]}.items():
        ids = configuration_run_ids(proto["configurations"][name], range(4))
        for seed, (run_id, e) in enumerate(zip(ids, values)):
            machine = (xeon if seed % 2 else epyc) if name == "scaled" else (xeon if seed < 2 else epyc)
            write_record(tmp_path / "mixed" / run_id, e, [2.0] * 9 + [1.5], seed=seed, **machine)
            write_record(tmp_path / "aliased" / run_id, e, [2.0] * 9 + [1.5], seed=seed,
                         **(xeon if name == "scaled" else epyc))
    for folder, covariate in (("mixed", "estimated"), ("aliased", "not separable")):
        gathered = gather_runs(tmp_path / folder, proto, repo=ROOT)
        claims, _ = judge_claims(gathered, proto)
        check = machine_check(gathered, proto, claims).set_index("id")
        assert check.loc["w", "covariate"] == covariate
        assert check.loc["w", "machines_a"] in ("EPYC 2, Xeon 2", "Xeon 2, EPYC 2", "Xeon 4")
    assert check.loc["w", "machine_sensitive"] is False or not check.loc["w", "machine_sensitive"]
    mixed = gather_runs(tmp_path / "mixed", proto, repo=ROOT)
    claims, _ = judge_claims(mixed, proto)
    w = machine_check(mixed, proto, claims).set_index("id").loc["w"]
    assert w.difference_adjusted > 15 and w.p_adjusted < 1e-3 and "EPYC" in w.within and "Xeon" in w.within
    corr = within_seed_correlation(mixed, proto, claims).set_index("id").loc["w"]
    expect = np.corrcoef([80.0, 82.0, 81.0, 79.0], [60.0, 61.0, 59.5, 62.0])[0, 1]
    assert corr.common_seeds == 4 and corr.correlation == pytest.approx(expect)
    assert familywise_bound(claims, proto) == dict(families=["f"], alpha=0.05, bound=0.05)


@pytest.mark.parametrize("long_gap, outcome, approaches", [
    (5.0, "shrinks toward the paper", False), (0.5, "shrinks toward the paper", True), (40.0, "grows", False),
    (20.5, "holds its size", False), (-15.0, "flips sign", False)])
def test_the_training_length_series_says_how_a_difference_moves(tmp_path, long_gap, outcome, approaches):
    proto = protocol(seeds=4)
    configs = proto["configurations"]
    for name in ("scaled", "identity"):
        configs[f"{name} long"] = dict(configs[name], overrides=dict(iterations=1800), short=name)
    proto["families"] = {"f": dict(claims=["w"]), "L": dict(claims=["w long"], series=True)}
    proto["claims"] = [dict(proto["claims"][0]),
                       dict(proto["claims"][0], id="w long", a="scaled long", b="identity long", family="L",
                            scale_of="w", paper="50.5 vs 50.0")]
    noise = [0.0, 0.4, -0.3, -0.1]         # mean 0
    fill(tmp_path, proto, {"scaled": [80 + e for e in noise], "identity": [60 - e for e in noise],
                           "scaled long": [50 + long_gap + e for e in noise], "identity long": [50 - e for e in noise]})
    gathered = gather_runs(tmp_path, proto, repo=ROOT)
    claims, _ = judge_claims(gathered, proto)
    assert claims.set_index("id").series.to_dict() == {"w": False, "w long": True}
    series = series_contrasts(gathered, proto, claims)
    row = series.set_index("id").loc["w long"]
    assert row.d_short == pytest.approx(20.0) and row.d_long == pytest.approx(long_gap)
    assert row.change == pytest.approx(long_gap - 20.0) and row.outcome == outcome
    # the paper's difference (0.5) lies inside the long interval only where the long gap is the paper's
    assert row.paper == pytest.approx(0.5) and bool(row.approaches_paper) is approaches
    assert row.long_verdict == claims.set_index("id").verdict["w long"]
    # in words: the two differences at their scales, the rule's outcome and what amendment 3 says it means
    (said,) = series_in_words(series)
    assert said.startswith(f"w: +20.0 points at mini (1.15 epochs), {long_gap:+.1f} [")
    assert f"it {outcome}" in said and ("contains the paper's difference" in said) is approaches
    assert f"(Holm p {p_text(row.p_holm)})" in said      # the verdict table's form of p, not a second one
    assert SERIES_MEANING[outcome] in said or (outcome == "shrinks toward the paper"
                                               and row.long_verdict != "reproduced" and "cannot say" in said)


def test_a_pending_series_claim_is_said_to_be_pending_and_nothing_more(tmp_path):
    proto = protocol(seeds=4)
    proto["configurations"]["scaled long"] = dict(proto["configurations"]["scaled"], overrides=dict(iterations=1800),
                                                  short="scaled")
    proto["configurations"]["identity long"] = dict(proto["configurations"]["identity"],
                                                    overrides=dict(iterations=1800), short="identity")
    proto["families"] = {"f": dict(claims=["w"]), "L": dict(claims=["w long"], series=True)}
    proto["claims"] = [dict(proto["claims"][0]),
                       dict(proto["claims"][0], id="w long", a="scaled long", b="identity long", family="L",
                            scale_of="w", paper="50.5 vs 50.0")]
    fill(tmp_path, proto, {"scaled": [80, 81, 79, 80], "identity": [60, 61, 59, 60], "scaled long": [55, 56]})
    gathered = gather_runs(tmp_path, proto, repo=ROOT)
    claims, _ = judge_claims(gathered, proto)
    series = series_contrasts(gathered, proto, claims)
    assert list(series.outcome) == ["pending"] and list(series.long_verdict) == ["pending"]
    assert series_in_words(series) == ["w: pending, its runs at mini (2.3 epochs) not all in."]


# --- issue 38: one reader, one engine: the committed verdicts and counted runs are what the code derives ------------
def test_the_committed_verdicts_and_counted_runs_are_what_the_records_give():
    """figures/findings.csv and figures/findings_runs.csv (chapter 10's outputs, committed) hold every verdict and every
    counted run; judged again here from runs/ through records.read_runs and findings, they must come out the same —
    the proof that issue 38's one reader and one engine changed no verdict and no counted run. The records are those
    committed with the verdicts (the campaign commits records as they finish, before chapter 10 is executed again)."""
    import pandas as pd
    from identity_study.findings import load_protocol
    from identity_study.records import read_runs
    committed = pd.read_csv(ROOT / "figures" / "findings.csv", dtype=str, keep_default_na=False)
    committed_runs = pd.read_csv(ROOT / "figures" / "findings_runs.csv")
    protocol = load_protocol(repo=ROOT)

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout
    written = git("log", "-1", "--format=%H", "--", "figures/findings.csv", "figures/findings_runs.csv").strip()
    if not written:
        pytest.skip("no git history here to say which records the committed verdicts were made from")
    then = {Path(p).name for p in git("ls-tree", "--name-only", written, "runs/").split()}
    runs = read_runs(ROOT / "runs")
    gathered = gather_runs(runs[runs.index.isin(then)], protocol, repo=ROOT)
    found, _ = judge_claims(gathered, protocol)
    counted = counted_runs(gathered, protocol)
    # not vacuous: every claim is there, several are decided, and the counted runs are many
    assert len(committed) == len(protocol["claims"]) == len(found)
    assert (committed.verdict == "reproduced").sum() >= 10 and len(committed_runs) >= 100
    assert list(found.id) == list(committed.id) and list(found.verdict) == list(committed.verdict)
    assert list(counted.run_id) == list(committed_runs.run_id)
    assert list(counted.configuration) == list(committed_runs.configuration)
    assert counted.final_test_error.to_numpy() == pytest.approx(committed_runs.final_test_error.to_numpy())


def test_the_first_epoch_view_is_judged_by_the_engine_from_the_protocol_section(tmp_path):
    "Chapter 10's first-epoch view: claims and configurations from [first_epoch], one record a seed (fp32 first)."
    import pandas as pd
    from identity_study.findings import first_epoch_view
    from identity_study.params import resolve_params
    from identity_study.experiments import table_entry
    proto = protocol()
    proto["first_epoch"] = dict(status="exploratory", counted=False, profile="mini", seeds=10, configurations={
        "scaled": dict(table="table1", row="constant scaling (0.5, 1)", case=""),
        "identity": dict(table="table1", row="original", case="")}, claims=[
        dict(id="w", paper_claim="scaling is worse", status="tested", tested_here="worse", direction="worse",
             a="scaled", b="identity", metric="final_test_error", paper="fail"),
        dict(id="s", paper_claim="the same", status="tested", tested_here="same", direction="same",
             a="scaled", b="identity", metric="final_test_error", margin=2.5),
        dict(id="g", paper_claim="needs a GPU", status="not_testable", tested_here="not testable")])
    for name, errors in (("scaled", [80.0, 82.0, 81.0]), ("identity", [60.0, 61.0, 59.5])):
        row = proto["first_epoch"]["configurations"][name]
        for seed, e in enumerate(errors):
            p = table_entry(row["table"], row["row"]).run_params("mini", [seed])[0]
            for precision, error in (("fp32", e), ("bf16", e + 50)):      # a bf16 twin: never the one shown
                run_id = resolve_params(**p, precision=precision)["run_id"]
                write_record(tmp_path / run_id, min(error, 99.0), [2.0] * 9 + [1.5], seed=seed, precision=precision)
    table, configs = first_epoch_view(tmp_path, proto)
    w, s, g = (table.set_index("id").loc[i] for i in "wsg")
    assert (w.n_a, w.n_b) == (3, 3) and w.mean_a == pytest.approx(81.0) and w.mean_b == pytest.approx(60.1667, 1e-4)
    assert w.p == pytest.approx(claim_test("worse", [80.0, 82.0, 81.0], [60.0, 61.0, 59.5])["p"])
    assert s.p == pytest.approx(claim_test("same", [80.0, 82.0, 81.0], [60.0, 61.0, 59.5], 2.5)["p"])
    assert (w.p_holm, s.p_holm) == pytest.approx(tuple(holm([w.p, s.p]))) and pd.isna(g.p_holm)
    assert all(r.params["precision"] == "fp32" for c in configs.values() for r in c["records"])
    assert "difference +20.83" in w.study and g.study == ""


def test_the_engine_pairs_by_seed_as_scipy_does():
    "claim_test(matched=True): the paired t-test (difference, interval, p) and, for 'same', TOST on the pairs."
    from scipy import stats
    from identity_study.findings import claim_test
    a, b = np.array([80.1, 61.3, 99.5, 70.2]), np.array([67.0, 60.1, 77.4, 69.0])
    ref = stats.ttest_rel(a, b)
    got = claim_test("worse", a, b, matched=True)
    ci = ref.confidence_interval(0.95)
    assert got["p"] == pytest.approx(ref.pvalue) and (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert got["p"] != pytest.approx(claim_test("worse", a, b)["p"])      # Welch's answer differs on the same data
    same = claim_test("same", a, b, margin=5.0, matched=True)
    tost = max(stats.ttest_rel(a + 5.0, b, alternative="greater").pvalue,
               stats.ttest_rel(a - 5.0, b, alternative="less").pvalue)
    assert (1 - same["p"] if not same["inside"] else same["p"]) == pytest.approx(tost)
    with pytest.raises(ValueError, match="as many values"):
        claim_test("worse", a, b[:3], matched=True)


def test_the_computing_code_is_the_campaigns():
    """The judge counts a record only when its code fingerprint is one the protocol accepts (`accepted_codes`), so a
    change to what computes (units, models, data, train) would stop every campaign record counting. The protocol names
    the campaign's fingerprint ([amendments.1].campaign_code) and, in an amendment, code shown to compute the same
    (`equivalent_code`); the running code must be one of them."""
    from identity_study.findings import accepted_codes, load_protocol
    proto = load_protocol(repo=ROOT)
    codes = [code for code, _ in accepted_codes(proto, ROOT)]
    assert code_fingerprint() in codes and proto["amendments"]["1"]["campaign_code"] in codes
