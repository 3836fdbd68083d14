"""Does bf16 autocast change what the study measures at depth? The mini profile (chapter 5) of the original and the
full pre-activation unit at 110 and 164 layers, three seeds each, trained once in bf16 autocast and once in fp32, on
the real CIFAR-10. These are the Table 2 runs of the mini reproduction (chapter 10), so nothing here is trained twice.

  .venv/bin/python benchmarks/precision_at_depth.py --train fp32 &   # two lanes: one per precision (resumable)
  .venv/bin/python benchmarks/precision_at_depth.py --train bf16
  .venv/bin/python benchmarks/precision_at_depth.py                  # the comparison, from the records

Training goes through the sweep (chapter 8), one `python -m identity_study.sweep run` per configuration and precision,
so a run that is finished is skipped, an interrupted one resumes, and two lanes never train the same run. bf16 should
only be trained where the CPU computes it natively (`identity_study.data.native_bf16`); elsewhere it is emulated and
about ten times slower (benchmarks/README.md).

Outputs: precision_at_depth.csv (one row per run: its final numbers, the machine it ran on),
precision_at_depth_stats.csv (one row per configuration and metric: the fp32 and bf16 seed means, their difference
with the paired t-test's 95 % interval for it — the same seed gives both precisions the same initial weights and
batches — and the equivalence test at its stated margin) and precision_at_depth.png (test error and training loss
against iteration, one line per seed). The statistics are the study's one engine (`identity_study.findings`, paired
by seed here), so the benchmark and the study's verdicts use one rule.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from _common import ROOT  # noqa: E402
from identity_study.experiments import TABLE2  # noqa: E402
from identity_study.params import resolve_params  # noqa: E402

ROWS = ("original Residual Unit", "full pre-activation")
DEPTHS = (110, 164)
PRECISIONS = ("fp32", "bf16")
METRICS = {"final_test_error": "final test error (%)", "final_train_loss": "final training loss"}
# "the same precision effect" means a difference inside these margins, fixed when this benchmark was written: 5 points
# of test error (its mini runs end at 30-70 % error) and 0.1 of training loss (they end near 1.0-1.5)
MARGINS = {"final_test_error": 5.0, "final_train_loss": 0.1}


def entries():
    "The Table 2 entries compared: (row, depth) -> entry."
    return {(e.row, int(e.case.split("-")[1])): e for e in TABLE2 if e.row in ROWS}


def run_ids(seeds) -> list:
    "One dict per run of the comparison: row, depth, precision, seed and run id."
    out = []
    for (row, depth), e in entries().items():
        for precision in PRECISIONS:
            for c in e.run_params("mini", seeds):
                out.append(dict(row=row, depth=depth, precision=precision, seed=c["seed"],
                                run_id=resolve_params(**c, precision=precision)["run_id"]))
    return out


def train(precisions, seeds: int, runs_dir: Path, reverse: bool = False, rerun_stale: bool = False) -> int:
    """Train the missing runs of `precisions`, one after the other in this process's lane (one thread); `reverse`
    takes the configurations from the deepest, so that a second lane on the same precision meets the first in the
    middle instead of waiting behind it."""
    code = 0
    configs = [(depth, row) for depth in DEPTHS for row in ROWS]
    for precision in precisions:
        for depth, row in (configs[::-1] if reverse else configs):
            cmd = [sys.executable, "-m", "identity_study.sweep", "run", "table2", "--profile", "mini", "--seeds",
                   str(seeds),
                   "--only", f"{row} [ResNet-{depth}]", "--set", f"precision={precision}", "--set", "threads=1",
                   "--jobs", "1", "--runs-dir", str(runs_dir)] + (["--set", "rerun=true"] if rerun_stale else [])
            code = max(code, subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT).returncode)
    return code


def gather(runs_dir: Path, seeds) -> tuple[pd.DataFrame, pd.DataFrame]:
    "The finished runs of the comparison (final numbers) and their metric rows."
    from identity_study.records import TERMINAL_STATUSES, load_record, read_status
    rows, curves = [], []
    for r in run_ids(seeds):
        path = runs_dir / r["run_id"]
        if read_status(path) not in TERMINAL_STATUSES:
            continue
        try:
            record = load_record(path)
        except (OSError, ValueError):
            continue
        summary, params, m = record.summary, record.params, record.metrics
        train_rows = m.dropna(subset=["train_loss"])
        rows.append(dict(r, status=summary["status"], final_test_error=100 * summary["final_test_error"],
                         final_train_loss=float(train_rows.train_loss.iloc[-1]),
                         minutes=summary.get("wall_seconds", float("nan")) / 60,
                         device_name=params.get("device_name"), cpu_capability=params.get("cpu_capability"),
                         native_bf16=params.get("native_bf16"), code=json.dumps(params.get("code"), sort_keys=True)))
        curves.append(m.assign(**r))
    return pd.DataFrame(rows), (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())


def compare(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and metric: bf16 against fp32 over the seeds run in both, by the study's engine
    (`findings.claim_test`) paired by seed (the same seed gives both the same initial weights and batches): the
    difference with its 95 % interval and p, and the equivalence test at MARGINS."""
    from identity_study.findings import claim_test
    out = []
    for (row, depth), group in runs.groupby(["row", "depth"], sort=False):
        for metric in METRICS:
            both = group.pivot_table(index="seed", columns="precision", values=metric)
            both = both.reindex(columns=list(PRECISIONS)).dropna()
            # a = bf16, b = fp32, as chapter 5 reads them
            base = dict(row=row, depth=depth, seeds=",".join(map(str, both.index)), metric=metric, test="paired t",
                        n_a=len(both), n_b=len(both), mean_a=both["bf16"].mean(), mean_b=both["fp32"].mean(),
                        margin=MARGINS[metric])
            if len(both) < 2:
                out.append(base)
                continue
            differ = claim_test("worse", both["bf16"], both["fp32"], matched=True)
            same = claim_test("same", both["bf16"], both["fp32"], margin=MARGINS[metric], matched=True)
            out.append(dict(base, difference=differ["difference"], ci_low=differ["ci_low"], ci_high=differ["ci_high"],
                            p_difference=differ["p"],
                            # TOST's p that |d| < margin: the engine's "same" p when d lies inside, else 1 - its p
                            # that d lies beyond the margin (the two one-sided tests meet at the margin)
                            p_equivalence=same["p"] if same["inside"] else 1 - same["p"]))
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, out: Path):
    sns.set_theme(style="whitegrid", font_scale=0.8)
    configs = list(entries())
    fig, axes = plt.subplots(2, len(configs), figsize=(3.4 * len(configs), 5.6), sharex="col")
    for j, (row, depth) in enumerate(configs):
        c = curves[(curves.row == row) & (curves.depth == depth)] if len(curves) else curves
        for i, (col, label) in enumerate((("test_error", "test error (eval subset)"), ("train_loss", "training loss"))):
            ax = axes[i, j]
            if len(c):
                d = c.dropna(subset=[col]).assign(**{col: lambda f: f[col] * (100 if col == "test_error" else 1)})
                sns.lineplot(d, x="iteration", y=col, hue="precision", units="seed", estimator=None, ax=ax,
                             hue_order=list(PRECISIONS), palette={"fp32": "#1f77b4", "bf16": "#d62728"}, lw=1)
            ax.set_title(f"{row}, ResNet-{depth}" if i == 0 else "")
            ax.set_ylabel(label + (" (%)" if col == "test_error" else ""))
            if col == "train_loss":
                ax.set_yscale("log")
    fig.suptitle("mini profile, CIFAR-10: bf16 autocast against fp32, one line per seed")
    fig.tight_layout()
    from identity_study.plotting import save_figure
    save_figure(fig, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", nargs="*", choices=PRECISIONS, default=None, metavar="PRECISION",
                    help="train the missing runs of these precisions first (default: both), through the sweep, in "
                         "one single-thread lane; start one process per precision for two lanes")
    ap.add_argument("--reverse", action="store_true", help="train the deepest configurations first")
    ap.add_argument("--rerun-stale", action="store_true",
                    help="retrain the records that older code computed (the old record is moved aside)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "precision_at_depth")
    args = ap.parse_args(argv)
    if args.train is not None and train(args.train or PRECISIONS, args.seeds, args.runs_dir, args.reverse,
                                         args.rerun_stale):
        print("some runs failed: see the sweep's output above", file=sys.stderr)
    runs, curves = gather(args.runs_dir, range(args.seeds))
    if not len(runs):
        sys.exit("no finished run of the comparison yet: train them with --train")
    runs.drop(columns=["code"]).to_csv(f"{args.out}.csv", index=False)
    stats = compare(runs)
    stats.to_csv(f"{args.out}_stats.csv", index=False)
    plot(curves, Path(f"{args.out}.png"))
    print(runs.groupby(["row", "depth", "precision"]).final_test_error.agg(["count", "mean", "std"]).round(2))
    print(stats.to_string(index=False))
    if runs.code.nunique() > 1:
        print("warning: the runs were computed by different code (see the code column of the records)")


if __name__ == "__main__":
    main()
