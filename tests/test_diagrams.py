"""Every registered unit, built-in or user, is drawn from its own code (chapter 11, identity_study.diagrams)."""
import shutil

import pytest
from torch import nn

from identity_study.diagrams import build_unit, unit_diagram, unit_graph, units_figure
from identity_study.units import UNITS, PreActUnit, register_unit

BUILT_IN = ["original", "bn_after_add", "relu_before_add", "relu_preact", "preact", "constant_scaling",
            "exclusive_gating", "shortcut_gating", "conv_shortcut", "dropout_shortcut"]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed "
                               "(bash scripts/system_packages.sh)")


def layers_of(unit: nn.Module) -> list:
    "The unit's layers: its modules without submodules, Identity aside (it computes nothing)."
    return [n for n, m in unit.named_modules() if next(m.children(), None) is None and not isinstance(m, nn.Identity)]


def check_drawn(name: str, **build):
    unit = build_unit(name, **build)
    graph = unit_graph(unit)
    assert graph.layers() and sorted(graph.layers()) == sorted(layers_of(unit)), name
    # every layer is a node whose label says what the layer is, and the DOT source names it
    source = units_figure({name: unit}).source
    for info in graph.nodes.values():
        if info["module"]:
            module = unit.get_submodule(info["module"])
            kind = {nn.Conv2d: "conv", nn.BatchNorm2d: "BN", nn.ReLU: "ReLU"}.get(type(module), type(module).__name__)
            assert kind in info["label"], (name, info)
            assert info["module"] in source, (name, info["module"])
    # one addition merges the branch with the shortcut, which reaches it along the marked (grey) path
    assert [i["label"] for i in graph.nodes.values()].count("+") == 1, name
    assert any(on_shortcut for *_, on_shortcut in graph.edges), name
    return graph


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("block,channels", [("basic", 16), ("bottleneck", 64), ("one_layer", 16)])
def test_every_built_in_unit_is_drawn_with_its_layers(name, block, channels):
    check_drawn(name, block=block, channels=channels)


def test_the_registry_is_the_papers_ten_units():
    assert [n for n in UNITS if n in BUILT_IN] == BUILT_IN


def test_the_diagrams_show_what_differs():
    nodes = {name: [(i["part"], i["label"]) for i in unit_graph(build_unit(name)).nodes.values()]
             for name in BUILT_IN}
    # Fig. 4: the order of BN and ReLU around the weight layers, and what follows the addition
    assert [label for part, label in nodes["preact"] if part in ("preact", "branch")] == [
        "BN", "ReLU", "3×3 conv", "BN", "ReLU", "3×3 conv"]
    assert [label for part, label in nodes["original"] if part == "after_addition"] == ["ReLU"]
    assert [label for part, label in nodes["bn_after_add"] if part == "after_addition"] == ["BN", "ReLU"]
    assert not [p for p, _ in nodes["preact"] + nodes["relu_before_add"] if p == "after_addition"]
    # Fig. 2: what sits on the shortcut
    assert ("merge", "× 0.5") in nodes["constant_scaling"] and ("branch", "× 0.5") in nodes["constant_scaling"]
    assert ("gate", "sigmoid") in nodes["exclusive_gating"] and ("gate", "1 − ·") in nodes["shortcut_gating"]
    assert [label for part, label in nodes["conv_shortcut"] if part == "shortcut"] == ["1×1 conv", "BN"]
    assert any(p == "shortcut" and "Dropout" in label for p, label in nodes["dropout_shortcut"])


def test_the_grey_path_is_the_shortcut():
    graph = unit_graph(build_unit("conv_shortcut"))
    grey = [(graph.nodes[a]["module"] or graph.nodes[a]["label"], graph.nodes[b]["module"] or graph.nodes[b]["label"])
            for a, b, on_shortcut in graph.edges if on_shortcut]
    assert grey == [("x_l", "shortcut.0"), ("shortcut.0", "shortcut.1"), ("shortcut.1", "+")]


@pytest.mark.parametrize("name", ["learned_scale", "zero_init_preact"])
def test_a_user_unit_is_drawn_with_no_drawing_of_its_own(my_units, name):
    graph = check_drawn(name)
    if name == "learned_scale":          # λ, the unit's parameter, multiplies the shortcut
        assert any(i["kind"] == "parameter" and "scale" in i["label"] for i in graph.nodes.values())


def test_a_unit_registered_here_is_drawn_too():
    try:
        @register_unit("preact_with_tanh_after_add")
        class TanhAfterAdd(PreActUnit):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                self.after_addition = nn.Tanh()

            def forward(self, x):
                return self.after_addition(super().forward(x))
        graph = check_drawn("preact_with_tanh_after_add")
        assert [i["label"] for i in graph.nodes.values() if i["part"] == "after_addition"] == ["Tanh"]
    finally:
        UNITS.pop("preact_with_tanh_after_add", None)


def test_an_unknown_unit_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown unit 'nope'; valid choices: original, "):
        build_unit("nope")


@needs_dot
def test_the_drawing_renders_as_png_and_svg(tmp_path):
    figure = units_figure({"(a) original": "original", "(e) preact": "preact"})
    png = figure._repr_png_()
    assert png.startswith(b"\x89PNG") and len(png) > 2_000
    svg = figure.save(tmp_path / "units.svg", format="svg").read_text()
    assert "(a) original" in svg and "(e) preact" in svg and "branch.3" in svg
    assert unit_diagram(build_unit("preact"))._repr_png_().startswith(b"\x89PNG")
