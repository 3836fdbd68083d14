"""Does the fast path change results? Pre-act ResNet-20 on the real CIFAR-10 for a few hundred iterations through
identity_study.train.train, precision bf16 (the fast path, with channels_last) against fp32 over the same seeds:
the curves, and the bf16-fp32 difference of the seed means next to the seed-to-seed spread.

  .venv/bin/python benchmarks/fastpath_equivalence.py --threads 1 --jobs 2         # 3 seeds x 400 iterations
  .venv/bin/python benchmarks/fastpath_equivalence.py --iterations 20 --eval-every 10 --seeds 0 --out benchmarks/x.local

The recipe is the paper's, shortened the way the trainer's profiles shorten it: batch 128, lr 0.1 with the steps at
1/2 and 3/4 of the run and the warm-up scaled by iterations / 64k. Evaluation every --eval-every iterations on a fixed
2,000-image subset of the test set, and at the end on the full test set. Runs go to benchmarks/runs_equivalence/
(ignored by git); finished runs are reused, so an interrupted benchmark resumes (--rerun trains them again).
Outputs: OUT.png (training loss and test error against iteration, one line per seed) and rows appended to OUT.csv:
one `run` row per training and one `comparison` row per evaluation point and metric.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import warnings
from concurrent.futures import ProcessPoolExecutor

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from _common import ROOT, append_csv, load1, machine, warn_if_busy  # noqa: E402


def train_one(params: dict) -> str:
    warnings.filterwarnings("ignore", message=".*rebuilt copy.*")
    from identity_study.train import train
    return str(train(**params).path)


def comparison(frame: pd.DataFrame, metric: str) -> list:
    "Per evaluation point: bf16 and fp32 seed means and spreads, and the difference of the means in units of it."
    rows = []
    for it, g in frame.groupby("iteration"):
        v = {p: g[g.precision == p][metric].tolist() for p in ("bf16", "fp32")}
        mean = {p: statistics.fmean(x) for p, x in v.items()}
        std = {p: statistics.stdev(x) if len(x) > 1 else float("nan") for p, x in v.items()}
        seed_std = ((std["bf16"] ** 2 + std["fp32"] ** 2) / 2) ** 0.5    # pooled seed-to-seed standard deviation
        diff = abs(mean["bf16"] - mean["fp32"])
        rows.append(dict(kind="comparison", metric=metric, iteration=int(it), seeds=len(v["bf16"]),
                         bf16_mean=mean["bf16"], bf16_std=std["bf16"], fp32_mean=mean["fp32"], fp32_std=std["fp32"],
                         abs_diff=diff, seed_std=seed_std, diff_over_seed_std=diff / seed_std if seed_std else None,
                         within_noise=diff <= seed_std if seed_std == seed_std else None))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-subset", type=int, default=2000, help="test images of the intermediate evaluations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--jobs", type=int, default=2, help="trainings run at once, in separate processes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run-dir", default=str(ROOT / "benchmarks" / "runs_equivalence"))
    ap.add_argument("--rerun", action="store_true", help="train finished runs again")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "fastpath_equivalence"),
                    help="OUT.png and OUT.csv are written")
    args = ap.parse_args(argv)

    start_load = warn_if_busy("the runs' images_per_second")        # the results themselves do not depend on it
    n = args.iterations
    common = dict(unit="preact", depth=args.depth, dataset="cifar10", recipe="paper", batch_size=args.batch_size,
                  iterations=n, lr_steps=[n // 2, 3 * n // 4], warmup_iterations=round(400 * n / 64_000),
                  eval_every=args.eval_every, eval_subset=args.eval_subset, threads=args.threads,
                  device=args.device, run_dir=args.run_dir, progress=False, rerun=args.rerun)
    # fp32 is the exact reference: plain NCHW; bf16 is the trainer's default fast path
    jobs = [dict(common, seed=s, precision=p, channels_last=p == "bf16") for s in args.seeds for p in ("bf16", "fp32")]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        paths = list(pool.map(train_one, jobs))

    from identity_study.records import load_record
    curves, runs = [], []
    for job, path in zip(jobs, paths):
        rec = load_record(path)
        m = rec.metrics.assign(precision=job["precision"], seed=job["seed"])
        curves.append(m)
        runs.append(dict(kind="run", precision=job["precision"], seed=job["seed"], run_id=rec.run_id,
                         final_test_error=rec.summary["final_test_error"],
                         final_train_loss=rec.summary["final_train_loss"],
                         images_per_second=float(m.images_per_second.median()),
                         wall_seconds=rec.summary["wall_seconds"]))
    curves = pd.concat(curves, ignore_index=True)
    comp = comparison(curves, "train_loss") + comparison(curves, "test_error")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in zip(axes, ("train_loss", "test_error"),
                                 ("training loss (mean of each interval)", "test error")):
        sns.lineplot(curves, x="iteration", y=metric, hue="precision", hue_order=["fp32", "bf16"], units="seed",
                     estimator=None, marker="o", ax=ax)
        ax.set(ylabel=label)
    axes[1].set(title=f"{args.eval_subset} test images; last point: all 10,000", xlabel="iteration")
    fig.suptitle(f"pre-act ResNet-{args.depth}, CIFAR-10, batch {args.batch_size}, {n} iterations: bf16 + "
                 f"channels_last vs fp32, seeds {', '.join(map(str, args.seeds))}")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)

    env = dict(machine(args.device), threads=args.threads, jobs=args.jobs, load1_at_start=start_load,
               load1_at_end=load1(), depth=args.depth, iterations=n, batch_size=args.batch_size)
    print(pd.DataFrame(runs).drop(columns="kind").to_string(index=False))
    final = [r for r in comp if r["iteration"] == n]
    print(pd.DataFrame(final).drop(columns="kind").to_string(index=False))
    within = [r["within_noise"] for r in comp if r["within_noise"] is not None]
    if within:
        print(f"|mean bf16 - mean fp32| <= seed-to-seed std at {sum(within)} of {len(within)} evaluation points")
    append_csv(args.out + ".csv", [dict(env, **r) for r in runs + comp])
    print(f"wrote {args.out}.png, appended {len(runs) + len(comp)} rows to {args.out}.csv")


if __name__ == "__main__":
    main()
