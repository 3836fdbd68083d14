"""What can be checked of the figures mechanically, on small synthetic runs and profiles (no training, no nets):
one legend entry a series, no clipped title in the saved file, no raw underscore in any text, log axes only over
ranges wider than a factor of ten, one shared axis a family of propagation panels, distinct colours."""
import re
from types import SimpleNamespace

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from identity_study.experiments import TABLES
from identity_study.figures import (FIGURES, table_entry, seeds_figure, curve_data, depth_figure, draw_figure,
                                    entry_run_ids,
                                    plot_training_curves, save_figure, series_label)
from identity_study.propagation import plot_propagation

PROFILE = "mini"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def synthetic_records(entries, seeds_of, iterations=300, precision="fp32", loss=(2.6, 1.8)):
    """(runs, metrics) shaped like gather_runs and gather_metrics: the runs chapter 9 would look up for `entries`,
    `seeds_of(entry)` seeds each, the training loss falling linearly from loss[0] to loss[1]."""
    runs, metrics = [], []
    for k, entry in enumerate(entries):
        for run_id in entry_run_ids(entry, PROFILE, range(seeds_of(entry))):
            runs.append(dict(run_id=run_id, status="completed", profile=PROFILE, precision=precision,
                             iterations=iterations, iterations_done=iterations))
            steps = np.arange(30, iterations + 1, 30)
            jitter = 0.01 * (len(runs) % 3)              # seeds differ a little, so a band has a width
            metrics.append(pd.DataFrame(dict(
                run_id=run_id, iteration=steps, train_loss=np.linspace(*loss, len(steps)) + jitter,
                test_error=np.linspace(0.9, 0.5 + 0.05 * k, len(steps)) - jitter)))
    return pd.DataFrame(runs), pd.concat(metrics, ignore_index=True)


def figure_records(name, seeds_of):
    keys = dict.fromkeys(key for panel in FIGURES[name]["panels"] for key in panel)   # an entry once, in order
    entries = [table_entry(*key) for key in keys]
    return synthetic_records(entries, seeds_of)


def synthetic_profiles(nets=("ResNet-110", "ResNet-1001")):
    "Frames shaped like propagation_profile's, for three variants of two families; the scaled one spans 1e-90."
    frames = []
    for net in nets:
        n = 12
        position = np.linspace(0, 1, n)
        for variant, unit, decades in (("original", "original", 2), ("preact", "preact", 1),
                                       ("constant_scaling h×0.5 F×1", "constant_scaling", 90),
                                       ("exclusive_gating b_g=-6", "exclusive_gating", 0.5)):
            prod = 10.0 ** (-decades * (1 - position))
            frames.append(pd.DataFrame(dict(
                net=net, variant=variant, unit=unit, position=position, unit_index=np.arange(n), n_images=4,
                dtype="float64", grad_norm_rel=10 ** (3 * (1 - position)), direct_term_rel=prod, prod_lambda=prod,
                forward_norm_rel=1 + position, forward_prod_lambda=prod[::-1])))
    return pd.concat(frames, ignore_index=True)


def depth_records():
    entries = [table_entry("table3", f"CIFAR-10 ResNet-{d}", u) for d in (164, 1001) for u in ("original", "preact")]
    runs, metrics = synthetic_records(entries, lambda e: 2)
    # the 1001-layer runs are shorter, as chapter 7 makes them
    short = runs.run_id.str.contains("-1001-")
    runs.loc[short, "iterations"] = 150
    metrics = metrics[~(metrics.run_id.str.contains("-1001-") & (metrics.iteration > 150))]
    curves = pd.concat([curve_data(metrics, runs, entry_run_ids(e, PROFILE, range(2)), series_label(e))
                        for e in entries], ignore_index=True)
    return curves


def all_figures():
    "Every figure of the study, drawn from synthetic inputs: (name, Figure)."
    out = []
    for name in FIGURES:
        runs, metrics = figure_records(name, lambda e: 3 if e.params["unit"] == "original" else 1)
        out.append((name, draw_figure(name, metrics, runs, PROFILE)))
    profiles = synthetic_profiles()
    out += [(f"propagation {d}", plot_propagation(profiles, d)) for d in ("backward", "forward")]
    out.append(("depth", depth_figure(depth_records(), profiles[profiles.variant.isin(["original", "preact"])],
                                      PROFILE, title="depth")))
    return out


def legends(fig):
    return [leg for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg is not None]


def error_lines(fig):
    "The test-error lines (solid, on the right axes) of the training-curve panels: one a series."
    return [line for ax in fig.axes if ax.get_ylabel().startswith("test error") for line in ax.get_lines()]


def test_one_legend_entry_per_series_and_seeds_counted_per_series():
    for name in FIGURES:
        runs, metrics = figure_records(name, lambda e: 3 if e.params["unit"] == "original" else 1)
        fig = draw_figure(name, metrics, runs, PROFILE)
        texts = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
        series = sum(len(panel) for panel in FIGURES[name]["panels"])
        assert len(texts) == series == len(error_lines(fig)), name
        # one seed is said as such, and a series counts its own runs only
        for text in texts:
            assert ("(3 seeds" in text) == text.startswith("original"), text
            assert ("(1 seed," in text) == (not text.startswith("original")), text
    # Fig. 1: the original and the pre-activation runs are two series, never one pooled line
    runs, metrics = figure_records("fig1", lambda e: 2)
    fig = draw_figure("fig1", metrics, runs, PROFILE)
    texts = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert texts == ["original, ResNet-1001 (2 seeds, fp32)", "pre-activation, ResNet-1001 (2 seeds, fp32)"]
    assert "300 iterations" in fig._suptitle.get_text() and "fp32" in fig._suptitle.get_text()


def test_a_single_seed_is_drawn_without_a_band():
    runs, metrics = figure_records("fig3", lambda e: 3 if e.params["unit"] == "original" else 1)
    fig = draw_figure("fig3", metrics, runs, PROFILE)
    for ax in fig.axes:
        if ax.get_ylabel().startswith("test error"):
            # one band (a PolyCollection) for the 3-seed original, none for the single-seed variant
            assert len(ax.collections) == 1


def border_is_blank(image) -> bool:
    rgb = image[..., :3]
    edges = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return bool((edges > 0.98).all())


def test_saved_titles_are_not_clipped(tmp_path):
    for name, fig in all_figures():
        image = mpimg.imread(save_figure(fig, tmp_path / f"{name}.png", dpi=80))
        assert border_is_blank(image), f"{name}: something drawn touches the edge of the saved image"
        fig.set_dpi(80)                          # the title's width as drawn at the saved resolution
        fig.canvas.draw()
        assert image.shape[1] >= fig._suptitle.get_window_extent().width, name
    # the check can fail: a title wider than its figure, saved without the helper, is cut at the edges
    fig = plt.figure(figsize=(3, 2))
    fig.suptitle("a title much wider than the three inches of its figure, cut off on both sides")
    fig.savefig(tmp_path / "clipped.png", dpi=80)
    assert not border_is_blank(mpimg.imread(tmp_path / "clipped.png"))


def raw_underscores(fig) -> list:
    "Every text of `fig` with an underscore outside $…$ mathtext."
    texts = [t.get_text() for t in fig.findobj(Text)]
    return [t for t in texts if "_" in re.sub(r"\$[^$]*\$", "", t)]


def test_no_raw_underscores_in_any_text():
    for name, fig in all_figures():
        assert not raw_underscores(fig), name
    # a run record is named by its unit and net, not by its run id
    steps = [30, 60]
    record = SimpleNamespace(run_id="exclusive_gating-110-basic-cifar10-mini-s0-0", params=dict(
        unit="exclusive_gating", depth=110, seed=0, precision="fp32", iterations=60,
        net=dict(unit_options=dict(gate_bias=-6.0))), metrics=pd.DataFrame(dict(
            iteration=steps, train_loss=[2.3, 2.2], test_error=[0.9, 0.8])))
    assert not raw_underscores(plot_training_curves([record]))
    # the check can fail: a label as the data names it
    fig, ax = plt.subplots()
    ax.set_ylabel("grad_norm_rel")
    assert raw_underscores(fig) == ["grad_norm_rel"]


def line_range(ax) -> float:
    "max / min of the positive data on `ax`'s y axis, with every panel that shares it."
    lines = [line for other in ax.get_shared_y_axes().get_siblings(ax) for line in other.get_lines()]
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in lines] or [[]])
    values = values[np.isfinite(values) & (values > 0)]
    return values.max() / values.min()


def test_log_axes_only_over_more_than_a_factor_of_ten():
    for name, fig in all_figures():
        for ax in fig.axes:
            if ax.get_yscale() == "log" and ax.get_lines():
                assert line_range(ax) > 10, (name, ax.get_title())
    # the loss axis: linear over 1.8-2.6, logarithmic where a run's loss spans decades
    def frame(loss):
        return pd.DataFrame(dict(label="a", run_id="r", iteration=[30, 60, 90], train_loss=loss,
                                 test_error_pct=[90, 80, 70]))

    narrow = plot_training_curves(frame([2.6, 2.2, 1.8])).axes[0]
    wide = plot_training_curves(frame([300.0, 2.2, 1.8])).axes[0]
    assert narrow.get_yscale() == "linear" and wide.get_yscale() == "log"


def test_propagation_panels_of_a_family_share_one_axis():
    fig = plot_propagation(synthetic_profiles(), "backward")
    by_title = {ax.get_title(): ax for ax in fig.axes}
    assert len(fig.axes) == 4
    # same family: one y axis; another family: its own range
    assert by_title["original"].get_ylim() == by_title["pre-activation"].get_ylim()
    scaled, gated = by_title[r"constant scaling ($h\times 0.5$, $\mathcal{F}\times 1$)"], \
        by_title["exclusive gating ($b_g=-6$)"]
    assert scaled.get_ylim() == gated.get_ylim() != by_title["original"].get_ylim()
    # every series (3 quantities × 2 nets) has its legend entry
    assert len(fig.legends[0].get_texts()) == 6


def test_depth_figure_series_have_distinct_colours():
    profiles = synthetic_profiles(("ResNet-1001",))
    fig = depth_figure(depth_records(), profiles[profiles.variant.isin(["original", "preact"])], PROFILE)
    lines = error_lines(fig)
    assert len(lines) == 4 and len({line.get_color() for line in lines}) == 4
    # the shorter 1001-layer runs say how long they are
    texts = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert sum("150 iterations" in t for t in texts) == 2 and sum("300 iterations" in t for t in texts) == 2
    # a profiled net takes the colour of its training curve
    entries = zip(legends(fig)[0].get_texts(), lines)
    curve_colour = {text.get_text().split(" (")[0]: line.get_color() for text, line in entries}
    profile_axes = next(ax for ax in fig.axes if ax.get_xlabel().startswith("residual unit"))
    assert profile_axes.get_lines()[0].get_color() == curve_colour["original, ResNet-1001"]


def test_series_labels_name_the_unit_and_the_net():
    labels = {series_label(e) for e in TABLES["table3"] if e.row == "CIFAR-10 ResNet-1001"}
    assert labels == {"original, ResNet-1001", "pre-activation, ResNet-1001"}
    gated = table_entry("table1", "exclusive gating, b_g = -6", "")
    assert series_label(gated) == "exclusive gating ($b_g=-6$), ResNet-110"


def test_seeds_figure_marks_each_collapse_and_names_each_profile():
    counted = pd.DataFrame(dict(configuration=["a", "a", "b"], profile=["cpu2k", "cpu2k", "mini"],
                                final_test_error=[45.0, 90.0, 60.0], final_train_loss=[1.3, 2.30, 1.8],
                                collapsed=[False, True, False]))
    for chance, lines in ((2.302585, 1), (None, 0)):
        fig = seeds_figure(counted, chance_loss=chance)
        left, right = fig.axes
        assert [t.get_text() for t in left.get_yticklabels()] == ["a (2, cpu2k)", "b (1, mini)"]
        crosses = [c for ax in (left, right) for c in ax.collections
                   if c.get_facecolor().size and len(c.get_offsets()) and c.get_paths()
                   and tuple(np.round(c.get_edgecolor()[0][:3], 3)) == (0.835, 0.369, 0.0)]
        assert sorted(float(c.get_offsets()[0][0]) for c in crosses) == [2.30, 90.0]
        assert sum(1 for ln in right.get_lines() if ln.get_linestyle() == ":") == lines
        plt.close(fig)
