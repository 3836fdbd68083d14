"""The main job's figure: the identity shortcut beside a scaled one (lambda = 0.5), trained and at initialisation.

Left: the two runs' training loss and test error (from their records). Right: the gradient that reaches each unit at
initialisation, relative to the last unit's (chapter 0's `propagation_profile` of the same two nets, same seed), in
total (solid) and through the shortcuts alone (dashed: the first term of Eq. 5, whose product of lambdas Eq. 8 is).
With h(x) = x the shortcut path carries the gradient to every unit unchanged; with h(x) = 0.5 x it carries 0.5 per
unit, 0.5^54 across ResNet-110's units, and what reaches the shallow units comes through the weight layers alone.

    python scripts/main_figure.py RUNS_DIR FIGURES_DIR
"""
import json
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from identity_study.data import load_cifar, normalization_stats  # noqa: E402
from identity_study.models import NetSpec, build  # noqa: E402
from identity_study.plotting import save_figure  # noqa: E402
from identity_study.propagation import propagation_profile  # noqa: E402
from identity_study.records import read_runs  # noqa: E402

COLOURS = {"original": "#0072B2", "constant_scaling": "#D55E00"}      # Okabe-Ito: colour-blind safe


def label(params: dict) -> str:
    if params["unit"] == "constant_scaling":
        return rf"$h(x)={params['shortcut_scale']:g}\,x$ (constant scaling)"
    return r"$h(x)=x$ (identity shortcut)"


def main(runs_dir: Path, figures_dir: Path):
    runs = read_runs(runs_dir)
    records = sorted((r for r in runs.get("record", []) if r.summary), key=lambda r: r.params["unit"] != "original")
    if len(records) != 2 or any(r.status != "completed" for r in records):
        sys.exit(f"expected two completed runs in {runs_dir}, found {[(r.run_id, r.status) for r in records]}")
    p0 = records[0].params
    images, labels = load_cifar("cifar10", train=True)
    batch = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:128]
    mean, std = normalization_stats(images, p0["normalization"])
    x = (images[batch].float() / 255 - mean) / std

    fig, (ax_loss, ax_err, ax_grad) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    rows = []
    for r in records:
        p, m, c = r.params, r.metrics, COLOURS.get(r.params["unit"], "0.3")
        ax_loss.plot(m.iteration, m.train_loss, color=c, label=label(p))
        ax_err.plot(m.iteration, 100 * m.test_error, color=c, marker="o", ms=3, label=label(p))
        torch.manual_seed(p["seed"])      # the net the run started from: same seed, same initial weights
        net = dict(p["net"])
        spec = NetSpec(**dict(net, units_per_stage=tuple(net["units_per_stage"]), widths=tuple(net["widths"])))
        prof = propagation_profile(build(spec), x, labels[batch])
        ax_grad.plot(prof.unit_index, prof.grad_norm_rel, color=c, label=label(p))
        ax_grad.plot(prof.unit_index, prof.direct_term_rel.where(prof.direct_term_rel > 0), color=c, ls="--")
        rows.append(dict(shortcut=label(p), final_test_error=100 * r.summary["final_test_error"],
                         final_train_loss=r.summary["final_train_loss"],
                         gradient_at_first_unit=prof.grad_norm_rel.iloc[0],
                         through_shortcuts_at_first_unit=prof.direct_term_rel.iloc[0],
                         minutes=r.summary["wall_seconds"] / 60))
    ax_loss.axhline(torch.log(torch.tensor(10.0)).item(), color="0.6", lw=0.8, ls=":", label=r"chance: $\ln 10$")
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="training loss (running mean)")
    ax_err.set(xlabel="iteration", ylabel="test error (%)", title="test error", ylim=(0, 100))
    ax_grad.set(xlabel="residual unit $l$", ylabel=r"$\Vert\partial\mathcal{E}/\partial x_l\Vert$ / last unit's",
                yscale="log", title="gradient at initialisation: total (solid), through the shortcuts (dashed)")
    for ax in (ax_loss, ax_err, ax_grad):
        ax.grid(alpha=0.3)
    ax_loss.legend(frameon=False, fontsize=8)
    fig.suptitle(f"ResNet-{p0['depth']} on CIFAR-10, width {p0['width']}, batch {p0['batch_size']}, "
                 f"{p0['iterations']} iterations, {p0['precision']}, seed {p0['seed']}: the identity shortcut "
                 "beside a scaled one", fontsize=11)
    out = save_figure(fig, figures_dir / "identity_vs_scaling.png")
    table = pd.DataFrame(rows).set_index("shortcut")
    (figures_dir / "identity_vs_scaling.json").write_text(json.dumps(rows, indent=1))
    print(table.to_string(float_format="{:.4g}".format))
    print(f"figure: {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
