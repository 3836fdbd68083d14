"Every residual unit of the paper, in every block form: builds, trains a step, behaves as its diagram says."
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import identity_study.units as units_module
from identity_study.models import resnet
from identity_study.units import (BLOCKS, UNITS, ConstantScalingUnit, ConvShortcutUnit, DropoutShortcutUnit,
                                  ExclusiveGatingUnit, OriginalUnit, PreActUnit, ShortcutDropout, ShortcutGatingUnit,
                                  register_unit)

CANONICAL = ["original", "constant_scaling", "exclusive_gating", "shortcut_gating", "conv_shortcut",
             "dropout_shortcut", "bn_after_add", "relu_before_add", "relu_preact", "preact"]
SMALL = {"basic": 20, "bottleneck": 29, "one_layer": 11}


def test_the_ten_canonical_names_are_registered():
    assert sorted(UNITS) == sorted(CANONICAL)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("unit", CANONICAL)
def test_every_unit_in_every_block_takes_a_training_step(unit, block):
    torch.manual_seed(0)
    net = resnet(unit, SMALL[block], block=block)
    assert net.weighted_layers() == SMALL[block]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    changed = [k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("stages.0.0.branch.0.weight" in k for k in changed)   # the first unit's first conv learned


def test_units_read_like_their_diagrams():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    assert (OriginalUnit(16, 16)(x) >= 0).all()                    # ReLU after the addition
    assert (PreActUnit(16, 16)(x) < 0).any()                       # nothing after the addition
    plain = ConstantScalingUnit(16, 16, shortcut_scale=0.0, residual_scale=1.0)
    assert torch.equal(plain(x), F.relu(plain.branch(x)))          # (0, 1) is a plain net
    half = ConstantScalingUnit(16, 16, shortcut_scale=0.5, residual_scale=0.5)
    assert torch.allclose(half(x), F.relu(0.5 * x + 0.5 * half.branch(x)))


@pytest.mark.parametrize("cls", [ExclusiveGatingUnit, ShortcutGatingUnit])
def test_gate_bias_sets_the_initial_gate(cls):
    net_unit = cls(16, 16, gate_bias=-6.0)
    g = net_unit.gate(torch.zeros(2, 16, 4, 4))
    assert torch.allclose(g, torch.sigmoid(torch.tensor(-6.0)).expand_as(g))   # W_g x = 0 gives sigmoid(b_g)
    for unit in resnet(cls.name, 20, gate_bias=-7.0).residual_units():
        assert unit.gate.conv.bias.eq(-7.0).all()          # the net's He initialisation keeps the gate bias


def test_dropout_shortcut_is_classic_by_default_and_inverted_on_request():
    ones = torch.ones(100_000)
    classic, inverted = ShortcutDropout(0.5), ShortcutDropout(0.5, inverted=True)
    assert abs(classic.train()(ones).mean().item() - 0.5) < 0.01
    assert torch.equal(classic.eval()(ones), 0.5 * ones)
    assert abs(inverted.train()(ones).mean().item() - 1.0) < 0.02
    assert torch.equal(inverted.eval()(ones), ones)
    assert DropoutShortcutUnit(16, 16).shortcut[1].inverted is False
    assert DropoutShortcutUnit(16, 16, dropout_inverted=True).shortcut[1].inverted is True


@pytest.mark.parametrize("inverted,train_mean,eval_factor", [(False, 0.5, 0.5), (True, 1.0, 1.0)])
def test_the_dropout_units_shortcut_drops_as_before(inverted, train_mean, eval_factor):
    "The dropout is the shortcut's last layer now: the unit's h is dropout(h), classic or inverted as before."
    unit = DropoutShortcutUnit(16, 16, dropout_p=0.5, dropout_inverted=inverted)
    ones = torch.ones(64, 16, 10, 10)
    assert abs(unit.train().shortcut(ones).mean().item() - train_mean) < 0.01
    assert torch.equal(unit.eval().shortcut(ones), eval_factor * ones)
    silenced(unit)
    x = torch.randn(4, 16, 8, 8)
    assert torch.equal(unit(x), F.relu(eval_factor * x))                # ReLU(dropout(h(x)) + F(x)), F = 0
    torch.manual_seed(1)
    kept = unit.train()(x.abs()) > 0                                    # classic: one mask, entries kept or zeroed
    assert 0.4 < kept.float().mean().item() < 0.6
    wide = DropoutShortcutUnit(16, 32, 2, shortcut="zero_pad")
    assert isinstance(wide.shortcut[0], units_module.ZeroPadShortcut) and isinstance(wide.shortcut[1], ShortcutDropout)


@pytest.mark.parametrize("unit,options,message", [
    ("preact", dict(gate_bias=-6.0), "option 'gate_bias' does not apply to unit 'preact'; its options are: none"),
    ("original", dict(shortcut_scale=0.5), "does not apply to unit 'original'"),
    ("constant_scaling", dict(shortcut_scale="half"), "shortcut_scale='half' must be a finite number"),
    ("dropout_shortcut", dict(dropout_p=1.0), "dropout_p=1.0 must be in [0, 1)"),
    ("exclusive_gating", dict(dropout_p=0.5), "its options are: gate_bias"),
    ("conv_shortcut", dict(shortcut_bn="yes"), "shortcut_bn='yes' must be True or False"),
])
def test_bad_unit_options_are_rejected_with_the_valid_choices(unit, options, message):
    with pytest.raises(ValueError) as e:
        UNITS[unit].check_options(**options)
    assert message in str(e.value)


def test_a_new_unit_is_one_registration_away():
    @register_unit("test_scaled_preact")
    class ScaledPreAct(PreActUnit):
        options = {"residual_scale": 0.1}

        def forward(self, x):
            x_preact = self.preact(x)
            return self.shortcut(self.shortcut_input(x, x_preact)) + self.residual_scale * self.branch(x_preact)
    try:
        net = resnet("test_scaled_preact", 20, residual_scale=0.2)
        assert all(u.residual_scale == 0.2 for u in net.residual_units())
        F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.zeros(4, dtype=torch.long)).backward()
    finally:
        del UNITS["test_scaled_preact"]


# ---- the hooks a unit declares: reset_parameters, shortcut_factor, after_addition, make_shortcut, shortcut_input

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "my_units.py"




@torch.no_grad()
def silenced(unit):
    "The unit with F ≡ 0: the last conv (or BN's γ and β) of its residual branch zeroed."
    last = [m for m in unit.branch if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))][-1]
    for p in last.parameters():
        p.zero_()
    return unit


@pytest.mark.parametrize("cout,stride,shortcut", [(16, 1, "identity"), (32, 2, "projection"), (32, 2, "zero_pad")])
@pytest.mark.parametrize("unit", CANONICAL)
def test_the_forward_is_what_the_hooks_say(unit, cout, stride, shortcut):
    "With F ≡ 0 every unit computes f(λ h(shortcut_input)) from its hooks: what chapter 0's analysis relies on."
    cls = UNITS[unit]
    # λ far from 1, and not the default
    options = {k: v for k, v in dict(gate_bias=0.0, shortcut_scale=0.3).items() if k in cls.options}
    torch.manual_seed(0)
    u = silenced(cls(16, cout, stride, shortcut=shortcut, split_preact=True, **options)).eval()
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        x_preact = u.preact(x)
        expected = u.after_addition(u.shortcut_factor(x) * u.shortcut(u.shortcut_input(x, x_preact)))
        assert torch.equal(u(x), expected)


def test_hooks_declare_each_units_merge():
    x = torch.randn(2, 16, 4, 4)
    assert ConstantScalingUnit(16, 16, shortcut_scale=0.25).shortcut_factor(x) == 0.25
    gated = ShortcutGatingUnit(16, 16, gate_bias=0.0)
    assert torch.equal(gated.shortcut_factor(x), 1 - gated.gate(x))
    assert OriginalUnit(16, 16).shortcut_factor(x) == 1.0 and PreActUnit(16, 16).shortcut_factor(x) == 1.0
    assert isinstance(OriginalUnit(16, 16).after_addition, nn.ReLU)
    assert isinstance(ConstantScalingUnit(16, 16).after_addition, nn.ReLU)
    bn_relu = UNITS["bn_after_add"](16, 16).after_addition
    assert [type(m) for m in bn_relu] == [nn.BatchNorm2d, nn.ReLU]
    for name in ("relu_before_add", "relu_preact", "preact"):
        assert isinstance(UNITS[name](16, 16).after_addition, nn.Identity), name
    x_preact = torch.randn(2, 16, 4, 4)
    assert PreActUnit(16, 16).shortcut_input(x, x_preact) is x
    assert PreActUnit(16, 16, split_preact=True).shortcut_input(x, x_preact) is x_preact


@pytest.mark.parametrize("shortcut_bn", [True, False])
@pytest.mark.parametrize("cin,cout,stride,shortcut", [(16, 16, 1, "identity"), (16, 32, 2, "zero_pad"),
                                                      (16, 32, 2, "projection")])
def test_conv_shortcut_always_has_one_projection(shortcut_bn, cin, cout, stride, shortcut, monkeypatch):
    built = []
    projection = units_module.projection
    monkeypatch.setattr(units_module, "projection", lambda *a, **k: built.append(a) or projection(*a, **k))
    unit = ConvShortcutUnit(cin, cout, stride, shortcut=shortcut, shortcut_bn=shortcut_bn)
    assert built == [(cin, cout, stride)]                                  # built once, not once more and replaced
    assert [type(m) for m in unit.shortcut] == [nn.Conv2d] + [nn.BatchNorm2d] * shortcut_bn
    conv = unit.shortcut[0]
    assert conv.kernel_size == (1, 1) and conv.stride == (stride, stride) and conv.out_channels == cout


def test_conv_shortcut_net_counts_one_projection_per_unit():
    original, conv = resnet("original", 20), resnet("conv_shortcut", 20, shortcut_bn=False)
    extra = sum(u.cin * u.cout for u in conv.residual_units())           # a 1×1 convolution per unit, no BN
    assert sum(p.numel() for p in conv.parameters()) - sum(p.numel() for p in original.parameters()) == extra
    assert all(len(u.shortcut) == 1 for u in conv.residual_units())


def test_user_reset_parameters_survives_the_net_builder(my_units):
    torch.manual_seed(0)
    net = resnet("zero_init_preact", 20)
    units = net.residual_units()
    assert all(not u.branch[-1].weight.any() for u in units)              # the unit's own zero last layer
    first = units[0].branch[0]
    expected = (2.0 / (9 * first.out_channels)) ** 0.5                  # ...and He initialisation everywhere else
    assert abs(first.weight.std().item() - expected) / expected < 0.1
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(units[1](x), x)                                   # each shape-keeping unit is the identity
    scaled = resnet("learned_scale", 20, init_scale=0.3)
    assert all(u.scale.item() == pytest.approx(0.3) for u in scaled.residual_units())


def test_gate_bias_survives_the_builder_through_reset_parameters():
    torch.manual_seed(0)
    net = resnet("exclusive_gating", 20, gate_bias=-3.0)
    for unit in net.residual_units():
        assert unit.gate.conv.bias.eq(-3.0).all() and unit.gate.conv.weight.std() > 0.1
        unit.gate.conv.bias.data.zero_()
        unit.reset_parameters()
        assert unit.gate.conv.bias.eq(-3.0).all()


@pytest.mark.parametrize("option", ["branch", "shortcut", "after_addition", "preact", "gate", "cin", "stride",
                                    "split_preact", "name", "figure", "options", "forward", "shortcut_factor",
                                    "training"])
def test_an_option_named_like_a_part_of_the_unit_is_rejected_at_registration(option):
    with pytest.raises(ValueError) as e:
        @register_unit("test_clash")
        class Clash(PreActUnit):
            options = {option: 0.5}
    assert f"unit 'test_clash': option {option!r}" in str(e.value) and "rename the option" in str(e.value)
    assert "test_clash" not in UNITS


def test_a_layer_assigned_over_an_option_is_an_error_when_built():
    class Overwrites(PreActUnit):
        options = {"alpha": 0.5}

        def __init__(self, cin, cout, stride=1, **kw):
            super().__init__(cin, cout, stride, **kw)
            self.alpha = nn.Parameter(torch.zeros(()))
    Overwrites.name = "test_overwrites"
    with pytest.raises(ValueError, match="option 'alpha' has the name of a layer or parameter"):
        Overwrites(16, 16)
