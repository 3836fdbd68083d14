"Tests of identity_study.propagation: the toy residual stacks and the signal-propagation profile of real nets."
import math

import numpy as np
import pandas as pd
import pytest
import torch

from identity_study.models import resnet
from identity_study.units import UNITS, PreActUnit, register_unit
from identity_study.propagation import (PROFILE_VARIANTS, ToyResidualStack, plot_propagation, profile_variants,
                                        propagation_profile, silence_residual_branches, toy_loss, variant_label)

COLUMNS = {"net", "depth", "unit", "variant", "dtype", "n_images", "unit_index", "n_units", "position", "stage",
           "forward_norm", "forward_norm_rel", "grad_norm", "grad_norm_rel", "direct_term_rel", "shortcut_gain",
           "prod_lambda", "forward_gain", "forward_prod_lambda"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Small float64 convolutions: extra threads only spin when the cores are shared (pytest -n, CI)."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def profile(unit, batch, depth=20, silence=False, **options):
    torch.manual_seed(0)
    net = resnet(unit, depth, **options)
    if silence:
        silence_residual_branches(net)
    return propagation_profile(net, *batch)


def test_profile_is_tidy_one_row_per_unit(batch):
    df = profile("preact", batch)
    assert isinstance(df, pd.DataFrame) and COLUMNS <= set(df.columns)
    assert len(df) == 9 and df.unit_index.tolist() == list(range(9))
    assert df.stage.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (df.net == "ResNet-20").all() and (df.variant == "preact").all() and (df.n_images == 4).all()
    assert np.isfinite(df.select_dtypes("number")).all().all() and (df.grad_norm > 0).all()


def test_normalisation_rows(batch):
    df = profile("original", batch)
    assert df.grad_norm_rel.iloc[-1] == 1 and df.prod_lambda.iloc[-1] == 1 and df.direct_term_rel.iloc[-1] == 1
    assert df.forward_norm_rel.iloc[0] == 1 and df.forward_prod_lambda.iloc[0] == 1
    assert np.allclose(df.grad_norm_rel, df.grad_norm / df.grad_norm.iloc[-1])


def test_identity_shortcut_gain_is_one_except_at_dimension_changes(batch):
    df = profile("preact", batch)
    same_shape = df.stage.diff() == 0
    assert (df.shortcut_gain[same_shape] == 1).all()
    assert (df.shortcut_gain[[3, 6]] < 1).all()       # zero-padding drops the padded channels' gradient


def test_constant_scaling_direct_prediction_far_below_preact(batch):
    scaled = profile("constant_scaling", batch, shortcut_scale=0.5, residual_scale=1.0)
    preact = profile("preact", batch)
    assert np.allclose(scaled.shortcut_gain[scaled.stage.diff() == 0], 0.5, rtol=1e-12)
    assert scaled.prod_lambda.iloc[0] <= 0.5 ** 8 * (1 + 1e-9)
    assert scaled.prod_lambda.iloc[0] < 0.05 * preact.prod_lambda.iloc[0]


def test_silenced_constant_scaling_gradient_follows_prod_lambda(batch):
    scaled = profile("constant_scaling", batch, silence=True, shortcut_scale=0.5, residual_scale=1.0)
    preact = profile("preact", batch, silence=True)
    assert np.allclose(scaled.grad_norm_rel, scaled.prod_lambda, rtol=1e-9)
    # within the last stage the measured ratio is exactly λ per unit
    assert np.allclose(scaled.grad_norm_rel.iloc[6:], [0.25, 0.5, 1.0], rtol=1e-12)
    assert scaled.grad_norm_rel.iloc[0] < 1e-2 * preact.grad_norm_rel.iloc[0]


@pytest.mark.parametrize("unit", ["original", "bn_after_add", "conv_shortcut", "dropout_shortcut", "preact"])
def test_silenced_net_gradient_is_the_direct_term(batch, unit):
    df = profile(unit, batch, silence=True)
    assert np.allclose(df.grad_norm_rel, df.direct_term_rel, rtol=1e-9, atol=0)


def test_bn_after_add_shrinks_the_direct_term_but_not_prod_lambda(batch):
    df = profile("bn_after_add", batch, depth=56)
    assert df.prod_lambda.iloc[0] > 0.1                      # the shortcut h is the identity...
    assert df.direct_term_rel.iloc[0] < 0.01 * df.prod_lambda.iloc[0]   # ...but BN on the path divides at every unit


def test_gate_gain_measured_from_gate_values(batch):
    open_gate = profile("shortcut_gating", batch, gate_bias=0.0)
    closed_gate = profile("shortcut_gating", batch, gate_bias=-6.0)
    assert 0.3 < open_gate.shortcut_gain.iloc[1] < 0.8
    assert 0.9 < closed_gate.shortcut_gain.iloc[1] <= 1


def test_caller_net_is_left_untouched(batch):
    net = resnet("bn_after_add", 20).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    propagation_profile(net, *batch)
    assert not net.training and next(net.parameters()).dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_float32_and_float64_agree(batch):
    torch.manual_seed(0)
    net = resnet("original", 20)
    f32 = propagation_profile(net, *batch, dtype=torch.float32)
    f64 = propagation_profile(net, *batch, dtype=torch.float64)
    assert (f32.dtype == "float32").all() and (f64.dtype == "float64").all()
    assert np.allclose(f32.grad_norm_rel, f64.grad_norm_rel, rtol=1e-3)
    assert np.allclose(f32.forward_norm, f64.forward_norm, rtol=1e-4)


def test_profile_variants_concatenates(batch):
    df = profile_variants(20, *batch, variants=[("preact", {}), ("exclusive_gating", dict(gate_bias=-6.0))])
    assert len(df) == 18
    assert df.variant.unique().tolist() == ["preact", "exclusive_gating b_g=-6"]
    assert df.groupby("variant").grad_norm_rel.last().eq(1).all()


def test_plot_writes_a_figure(batch, tmp_path):
    df = profile_variants(20, *batch, variants=PROFILE_VARIANTS[:2])
    grid = plot_propagation(df, path=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000 and len(grid.axes) == 2
    plot_propagation(df, "forward", path=tmp_path / "f.png")
    assert (tmp_path / "f.png").exists()
    import matplotlib.pyplot as plt
    plt.close("all")


def test_profile_variants_cover_every_unit():
    assert {u for u, _ in PROFILE_VARIANTS} == set(UNITS)


def test_variant_label():
    assert variant_label(resnet("constant_scaling", 20, residual_scale=1.0).spec) == "constant_scaling h×0.5 F×1"
    assert variant_label(resnet("exclusive_gating", 20, gate_bias=-6.0).spec) == "exclusive_gating b_g=-6"
    assert variant_label(resnet("preact", 20).spec) == "preact"


def test_silence_residual_branches_zeroes_every_branch():
    for unit in ("original", "relu_before_add", "preact"):
        net = silence_residual_branches(resnet(unit, 20))
        x = torch.randn(2, 16, 8, 8)
        assert not net.residual_units()[1].branch(x).any()


def test_toy_stack_forward_is_a_sum_of_residuals():
    stack = ToyResidualStack(10)
    xs, residuals = stack.states(torch.randn(3, 8, dtype=torch.float64))
    assert torch.allclose(xs[-1] - xs[0], sum(residuals), rtol=0, atol=1e-13)
    relu_stack = ToyResidualStack(10, after_add="relu")
    xs, residuals = relu_stack.states(torch.randn(3, 8, dtype=torch.float64))
    assert not torch.allclose(xs[-1] - xs[0], sum(residuals), atol=1e-3)


@pytest.mark.parametrize("lam", [0.5, 1.1])
def test_toy_silenced_scaled_stack_gradient_is_prod_lambda(lam):
    stack = ToyResidualStack(30, scale=lam, shortcut="scale").silence()
    x0 = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    xs, _ = stack.states(x0)
    grad_x0, grad_xL = torch.autograd.grad(toy_loss(xs[-1], torch.zeros_like(xs[-1])), [x0, xs[-1]])
    assert torch.allclose(grad_x0, lam ** 30 * grad_xL, rtol=1e-12, atol=0)


def test_toy_unit_rejects_unknown_options():
    with pytest.raises(ValueError, match="shortcut"):
        ToyResidualStack(2, shortcut="conv")
    with pytest.raises(ValueError, match="after_add"):
        ToyResidualStack(2, after_add="tanh")
    with pytest.raises(ValueError, match="scales"):
        ToyResidualStack(3, scale=[0.5, 0.5])
    assert math.isclose(ToyResidualStack(2, scale=0.5, shortcut="scale").scales[1], 0.5)


# ---- a unit the analysis has never seen: it reads the unit's hooks, not its class



@pytest.mark.parametrize("init_scale", [0.5, 0.25])
def test_learned_scale_gains_read_its_lambda(batch, my_units, init_scale):
    df = profile("learned_scale", batch, init_scale=init_scale)
    same_shape = df.stage.diff() == 0
    assert same_shape.sum() == 6
    assert np.allclose(df.shortcut_gain[same_shape], init_scale, rtol=1e-12, atol=0)
    assert np.allclose(df.forward_gain[same_shape], init_scale, rtol=1e-12, atol=0)
    assert (df.shortcut_gain[[3, 6]] < init_scale).all()            # zero-padding drops the padded channels too


def test_silenced_learned_scale_gradient_is_prod_lambda(batch, my_units):
    df = profile("learned_scale", batch, silence=True)
    assert np.allclose(df.grad_norm_rel, df.direct_term_rel, rtol=1e-9, atol=0)
    g = df.grad_norm_rel.values
    # x_{l+1} = λ x_l there, so ∂ℰ/∂x_l = λ ∂ℰ/∂x_{l+1}; unit 0 is not among them: its shortcut reads the
    # pre-activated input (preact_split="stage_start", chapter 2)
    shape_keeping = [1, 2, 4, 5, 7]
    assert np.allclose(g[shape_keeping] / g[[i + 1 for i in shape_keeping]], 0.5, rtol=1e-12)


def test_zero_init_preact_profiles_like_preact_with_silenced_branches(batch, my_units):
    "F ≡ 0 at initialisation: the measured gradient is the direct term, which is preact's identity path."
    df = profile("zero_init_preact", batch)
    assert np.allclose(df.grad_norm_rel, df.direct_term_rel, rtol=1e-9, atol=0)
    assert (df.shortcut_gain[df.stage.diff() == 0] == 1).all() and (df.forward_gain[df.stage.diff() == 0] == 1).all()


def test_an_after_addition_the_forward_skips_is_reported(batch):
    @register_unit("test_forgets_f")
    class ForgetsF(PreActUnit):
        after_add = "relu"                     # declared, but PreActUnit's forward applies nothing after the sum
    try:
        with pytest.raises(ValueError, match="'test_forgets_f' has an after_addition that its forward does not"):
            profile("test_forgets_f", batch)
    finally:
        del UNITS["test_forgets_f"]
