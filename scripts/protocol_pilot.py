"""What the protocol's rules give from its pilot (amendments 1 and 2 of protocol/claims.toml), computed, not typed.

    .venv/bin/python scripts/protocol_pilot.py                 # amendment 1's numbers
    .venv/bin/python scripts/protocol_pilot.py --amendment 2   # amendment 2's: claim 11's power, the new claims
    .venv/bin/python scripts/protocol_pilot.py --amendment 3   # amendment 3's: seeds of the training-length series
    .venv/bin/python scripts/protocol_pilot.py --amendment 6   # amendment 6's: the series' lane-hours from its pilot

Reads the pilot's runs (original and full pre-activation ResNet-110 under cpu2k, seeds 0-3) and the committed mini
records, and prints: the pilot's means and seed SDs of the three metrics, the ratio r that scales the mini records'
differences to cpu2k, the margins of the two "same" claims (M = min(2 s, d_ref / 2)), and for every cpu2k claim the
simulated power at each number of seeds from the lower to the upper bound, at Holm's first-step level of its family,
with the seeds the rule gives (the smallest number with 80 % power, else the upper bound), and the waiver check.
The paper's "fails" claims (collapse = "evidence") are planned with the failure they predict: the variant at
chance error against the baseline's pilot mean (amendment 1).
"""
from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from identity_study.findings import Record, configuration_params, load_protocol
from identity_study.params import find_records
from identity_study.records import load_record, read_runs

ROOT = Path(__file__).resolve().parent.parent

RUNS = ROOT / "runs"
METRICS = ("final_test_error", "final_train_loss", "early_log_loss")
MINI_PILOT_CONTRAST = {"final_test_error": 13.36, "final_train_loss": 0.32, "early_log_loss": 0.18}  # protocol/README
DRAWS = 4000
POWER = 0.8


def records(cfg: dict, seeds, profile: str, precisions=("fp32", "bf16")) -> list[Record]:
    """One finished record a seed, in the first of `precisions` it has (as the provisional numbers were planned): each
    record found by its own params.json in the one reading of runs/ (`records.read_runs`), no precision guessed."""
    runs = _runs()
    finished = runs[runs.status.isin(("completed", "diverged")) & runs.precision.isin(precisions)]
    configs = [{k: v for k, v in c.items() if k != "precision"}
               for c in configuration_params(cfg, seeds, profile=profile)]
    out = []
    for found in find_records(finished, configs):
        found = sorted(found, key=lambda f: precisions.index(finished.precision[f]))
        if found:
            out.append(Record.of(finished.record[found[0]]))
    return out


@functools.lru_cache(maxsize=None)
def _runs():
    return read_runs(RUNS)


def welch_power(delta, sigma, n_a, n_b, level, rng) -> float:
    a = rng.normal(delta, sigma, (DRAWS, n_a))
    b = rng.normal(0.0, sigma, (DRAWS, n_b))
    return float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < level).mean())


def tost_power(margin, sigma, n_a, n_b, level, rng) -> float:
    a = rng.normal(0.0, sigma, (DRAWS, n_a))
    b = rng.normal(0.0, sigma, (DRAWS, n_b))
    lower = stats.ttest_ind(a + margin, b, axis=1, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(a - margin, b, axis=1, equal_var=False, alternative="less").pvalue
    return float((np.maximum(lower, upper) < level).mean())


def pilot_values(proto) -> dict:
    "The pilot's metric values: {configuration: {metric: array over seeds 0-3}}."
    configs = proto["configurations"]
    pilot = {name: records(configs[name], range(4), "cpu2k", ("fp32",)) for name in ("original 110", "preact 110")}
    return {name: {m: np.array([r.metric(m) for r in rs]) for m in METRICS} for name, rs in pilot.items()}


def amendment_2():
    """Claim 11's power from the SD of its own configuration (both sides are full pre-activation; amendment 1 used
    the pooled original + pre-activation SD), and the power of the claims amendment 2 adds before their runs."""
    proto = load_protocol(repo=ROOT)
    configs, alpha = proto["configurations"], proto["protocol"]["alpha"]
    values = pilot_values(proto)
    rng = np.random.default_rng(2)
    err = "final_test_error"
    o, p = values["original 110"][err], values["preact 110"][err]
    pooled = math.sqrt((o.var(ddof=1) + p.var(ddof=1)) / 2)
    ratio = (o.mean() - p.mean()) / MINI_PILOT_CONTRAST[err]
    for family_name in ("activation_110", "supplement_110"):
        family = proto["families"][family_name]
        level = alpha / len(family["claims"])
        for cid in family["claims"]:
            c = next(c for c in proto["claims"] if c["id"] == cid)
            n_a, n_b = len(configs[c["a"]]["seeds"]) if isinstance(configs[c["a"]]["seeds"], list) else \
                configs[c["a"]]["seeds"], configs[c["b"]]["seeds"]
            if cid == "11":
                sd_own = p.std(ddof=1)
                own = tost_power(c["margin"], sd_own, n_a, n_b, level, rng)
                first = tost_power(c["margin"], pooled, n_a, n_b, level, rng)
                print(f"11 (TOST, M = {c['margin']}, level {level:.4f}, {n_a} v {n_b}): power with the SD of preact "
                      f"110 itself ({sd_own:.2f}): {own:.2f}; with amendment 1's pooled SD ({pooled:.2f}): {first:.2f}")
            elif family_name == "supplement_110":
                mini_a = [r.metric(err) for r in records(configs[c["a"]], range(10), "mini")]
                mini_b = [r.metric(err) for r in records(configs[c["b"]], range(10), "mini")]
                if mini_a and mini_b:
                    delta = (np.mean(mini_a) - np.mean(mini_b)) * ratio
                    planned = f"mini {np.mean(mini_a) - np.mean(mini_b):+.2f} ({len(mini_a)} v {len(mini_b)} " \
                              f"records) x r {ratio:.3f} = {delta:+.2f}"
                else:
                    delta = -(o.mean() - p.mean()) if c["direction"] == "better" else (o.mean() - p.mean())
                    planned = f"no mini record without warm-up; planned at the pilot's gap {delta:+.2f}"
                print(f"{cid} (Welch, level {level:.4f}, {n_a} v {n_b}): {planned}, sigma {pooled:.2f}: power "
                      f"{welch_power(delta, pooled, n_a, n_b, level, rng):.2f}")


def amendment_3():
    """The training-length series (cpu8k): for each of its three contrasts, the power of the claim's Welch test at the
    family's first Holm level for 4..10 seeds a side, if the cpu2k difference and seed SDs held at 8,000 iterations
    ('staying'), and the power of the series contrast d(cpu8k) - d(cpu2k) to see the difference shrink to a quarter
    of its cpu2k size ('shrinking'); the seeds are the smallest number giving 0.8 for the claim, within 4..10."""
    from identity_study.findings import gather_runs
    proto = load_protocol(repo=ROOT)
    alpha, family = proto["protocol"]["alpha"], proto["families"]["length_110"]
    level = alpha / len(family["claims"])
    gathered = gather_runs(RUNS, proto, repo=ROOT)
    rng = np.random.default_rng(3)
    for cid in family["claims"]:
        c = next(c for c in proto["claims"] if c["id"] == cid)
        short = {side: proto["configurations"][c[side]]["short"] for side in "ab"}
        va = np.array([r.metric(c["metric"]) for r in gathered[short["a"]]["used"]])
        vb = np.array([r.metric(c["metric"]) for r in gathered[short["b"]]["used"]])
        d, sa, sb = va.mean() - vb.mean(), va.std(ddof=1), vb.std(ddof=1)
        staying, shrinking = {}, {}
        for n in range(4, 11):
            a = rng.normal(d, sa, (DRAWS, n))
            b = rng.normal(0.0, sb, (DRAWS, n))
            staying[n] = float((stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < level).mean())
            # the contrast: the cpu2k sides as measured, the cpu8k difference a quarter of it
            a8, b8 = rng.normal(d / 4, sa, (DRAWS, n)), rng.normal(0.0, sb, (DRAWS, n))
            a2, b2 = rng.normal(d, sa, (DRAWS, len(va))), rng.normal(0.0, sb, (DRAWS, len(vb)))
            parts = [x.var(axis=1, ddof=1) / x.shape[1] for x in (a8, b8, a2, b2)]
            se = np.sqrt(sum(parts))
            dof = sum(parts) ** 2 / sum(p ** 2 / (x.shape[1] - 1) for p, x in zip(parts, (a8, b8, a2, b2)))
            t = ((a8.mean(1) - b8.mean(1)) - (a2.mean(1) - b2.mean(1))) / se
            shrinking[n] = float((2 * stats.t.sf(np.abs(t), dof) < level).mean())
        n = next((n for n, p in staying.items() if p >= POWER), 10)
        print(f"{cid}: cpu2k {short['a']} - {short['b']} = {d:+.3f} (SD {sa:.3f} v {sb:.3f}, {len(va)} v {len(vb)}); "
              f"level {level:.4f}; power 'staying' at 4..10 seeds: {' '.join(f'{p:.2f}' for p in staying.values())}; "
              f"'shrinking to a quarter': {' '.join(f'{p:.2f}' for p in shrinking.values())} -> {n} seeds")


SERIES_PACE_ROWS = ((200, 1800), (6000, 7800))   # the pilot's stretches without the CI run beside it (amendment 6)


def amendment_6():
    """The training-length series' lane-hours from its pilot (seed 0 of original 110 8k): its recorded wall time, its
    pace over the stretches of its metrics rows that ran without a CI run beside it, and for each cpu8k configuration
    the pilot's recorded hours scaled by the configuration's cpu2k median over the original's (never below 1), on the
    pilot's CPU where both have cpu2k records there, else on the CPU where both do."""
    proto = load_protocol(repo=ROOT)
    configs = proto["configurations"]
    gate = proto["campaign"]["pilot"]
    pilot = records(configs[gate["configuration"]], [gate["seed"]], gate["profile"], ("fp32",))[0]
    wall = pilot.summary["wall_seconds"] / 3600
    cpu = pilot.params["device_name"]
    metrics = pilot.rows.set_index("iteration")
    iterations = proto["profile"][gate["profile"]]["cifar"]["iterations"]
    for start, end in SERIES_PACE_ROWS:
        pace = (metrics.seconds[end] - metrics.seconds[start]) / (end - start) * iterations / 3600
        print(f"pilot pace, iterations {start}-{end}: {pace:.3f} h per {iterations} iterations")
    print(f"pilot {pilot.path.name}: {wall:.3f} lane-hours by wall_seconds on {cpu}")

    def twin(name):
        "The cpu2k configuration that `name` lengthens: the same table, row and case, no overrides."
        cfg = configs[name]
        return next(n for n, c in configs.items() if c["profile"] == "cpu2k" and not c.get("overrides")
                    and (c["table"], c["row"], c.get("case", "")) == (cfg["table"], cfg["row"], cfg.get("case", "")))

    def medians_by_cpu(name) -> dict:
        "The median wall seconds of the configuration's counted-seed cpu2k records, per CPU model."
        by_cpu = {}
        for r in records(configs[name], range(10), "cpu2k", ("fp32",)):
            by_cpu.setdefault(r.params["device_name"], []).append(r.summary["wall_seconds"])
        return {k: float(np.median(v)) for k, v in by_cpu.items()}

    original = twin(gate["configuration"])
    original_medians = medians_by_cpu(original)
    total = 0.0
    for name, cfg in configs.items():
        if cfg["profile"] != gate["profile"]:
            continue
        base = twin(name)
        base_medians = medians_by_cpu(base)
        shared = [k for k in base_medians if k in original_medians]
        on = cpu if cpu in shared else shared[0]
        ratio = base_medians[on] / original_medians[on]
        # no series net computes less than the original (the same convolutions; pre-activation only moves BN and
        # ReLU), so a ratio under 1 is the clock of a quieter machine, not the net's: never plan below the pilot
        hours = round(wall * max(1.0, ratio), 2)
        left = cfg["seeds"] - (1 if name == gate["configuration"] else 0)
        total += hours * left
        print(f"{name}: cpu2k {base} / {original} on {on}: {base_medians[on]:.0f} s / {original_medians[on]:.0f} s "
              f"= {ratio:.3f} -> lane_hours {hours}; {left} runs to go")
    print(f"the held runs: {total:.1f} lane-hours at the pilot's clock")


def main():
    later = {"2": amendment_2, "3": amendment_3, "6": amendment_6}
    which = sys.argv[sys.argv.index("--amendment") + 1] if "--amendment" in sys.argv else "1"
    if which in later:
        return later[which]()
    if which != "1":
        sys.exit(f"--amendment {which}: no numbers to print; the choices are 1 (the default), {', '.join(later)}")
    proto = load_protocol(repo=ROOT)
    configs, alpha = proto["configurations"], proto["protocol"]["alpha"]
    lo, hi = 3, 10
    pilot = {name: records(configs[name], range(4), "cpu2k", ("fp32",)) for name in ("original 110", "preact 110")}
    print("pilot runs:", ", ".join(r.path.name for rs in pilot.values() for r in rs))
    values = {name: {m: np.array([r.metric(m) for r in rs]) for m in METRICS} for name, rs in pilot.items()}
    pooled, ratio = {}, {}
    for m in METRICS:
        o, p = values["original 110"][m], values["preact 110"][m]
        pooled[m] = math.sqrt((o.var(ddof=1) + p.var(ddof=1)) / 2)
        ratio[m] = (o.mean() - p.mean()) / MINI_PILOT_CONTRAST[m]
        print(f"{m}: original {o.round(4)} mean {o.mean():.4f} sd {o.std(ddof=1):.4f}; preact {p.round(4)} mean "
              f"{p.mean():.4f} sd {p.std(ddof=1):.4f}; pooled sd {pooled[m]:.4f}; difference "
              f"{o.mean() - p.mean():+.4f}; r = {ratio[m]:.3f}")
    err = values["original 110"]["final_test_error"], values["preact 110"]["final_test_error"]
    d_ref = math.floor(abs(err[0].mean() - err[1].mean()) * 2) / 2
    sd = {"original 110": err[0].std(ddof=1), "preact 110": err[1].std(ddof=1)}
    margins = {}
    for c in proto["claims"]:
        if c.get("direction") == "same":
            s = math.ceil(sd[c["b"]] * 2) / 2
            margins[c["id"]] = min(2 * s, d_ref / 2)
            print(f"margin {c['id']}: s = {s} (b = {c['b']}), d_ref = {d_ref}: M = min({2 * s}, {d_ref / 2}) = "
                  f"{margins[c['id']]}")
    rng = np.random.default_rng(0)
    need = {}
    for family, fam in proto["families"].items():
        level = alpha / len(fam["claims"])
        for cid in fam["claims"]:
            c = next(c for c in proto["claims"] if c["id"] == cid)
            if configs[c["a"]]["profile"] != "cpu2k":
                continue            # mini families keep the numbers planned from the mini records
            m = c["metric"]
            if c["direction"] == "same":
                powers = {n: tost_power(margins[cid], pooled[m], n, n, level, rng) for n in range(lo, hi + 1)}
                planned = "true difference 0"
            elif c.get("collapse") == "evidence":
                # the paper's "fails": the variant ends at chance, so the planning difference is chance minus the
                # baseline's cpu2k mean (scaling a collapsed mini row by r would shrink a failure into a gap)
                chance = 100 * (1 - 1 / proto["protocol"]["num_classes"])
                delta = chance - values[c["b"]][m].mean()
                powers = {n: welch_power(delta, pooled[m], n, n, level, rng) for n in range(lo, hi + 1)}
                planned = f"fails: chance {chance:.1f} - pilot {values[c['b']][m].mean():.3f} = {delta:+.3f}"
            else:
                mini_a = [r.metric(m) for r in records(configs[c["a"]], range(hi), "mini")]
                mini_b = [r.metric(m) for r in records(configs[c["b"]], range(hi), "mini")]
                delta = (np.mean(mini_a) - np.mean(mini_b)) * ratio[m]
                powers = {n: welch_power(delta, pooled[m], n, n, level, rng) for n in range(lo, hi + 1)}
                planned = f"mini {np.mean(mini_a) - np.mean(mini_b):+.3f} x r = {delta:+.3f}"
            n = next((n for n, p in powers.items() if p >= POWER), hi)
            for name in (c["a"], c["b"]):
                need[name] = max(need.get(name, lo), n)
            print(f"{cid:>9} ({family}, level {level:.4f}): {planned}, sigma {pooled[m]:.4f}; power at "
                  f"{lo}..{hi} seeds a side: {' '.join(f'{p:.2f}' for p in powers.values())} -> {n}")
    print("seeds by the rule:", need)
    committed = RUNS / "original-110-basic-cifar10-mini-s0-0e66ee72"
    a, b = (load_record(path).metrics for path in (committed, RUNS / "pilot-waiver" / committed.name))
    columns = [col for col in a.columns if col not in ("seconds", "images_per_second")]
    print(f"waiver check {committed.name}: {len(a)} rows, every column but the clock equal: "
          f"{a[columns].equals(b[columns])}")


if __name__ == "__main__":
    main()
