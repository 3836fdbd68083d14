"Every residual unit of the paper, in every block form: builds, trains a step, behaves as its diagram says."
import pytest
import torch
import torch.nn.functional as F

from identity_study.models import resnet
from identity_study.units import (BLOCKS, UNITS, ConstantScalingUnit, DropoutShortcutUnit, ExclusiveGatingUnit,
                                  OriginalUnit, PreActUnit, ShortcutDropout, ShortcutGatingUnit)

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
    assert DropoutShortcutUnit(16, 16).dropout.inverted is False
    assert DropoutShortcutUnit(16, 16, dropout_inverted=True).dropout.inverted is True


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
    from identity_study.units import register_unit

    @register_unit("test_scaled_preact")
    class ScaledPreAct(PreActUnit):
        options = {"residual_scale": 0.1}

        def forward(self, x):
            x_preact = self.preact(x)
            return self.shortcut(x_preact if self.split_preact else x) + self.residual_scale * self.branch(x_preact)
    try:
        net = resnet("test_scaled_preact", 20, residual_scale=0.2)
        assert all(u.residual_scale == 0.2 for u in net.residual_units())
        F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.zeros(4, dtype=torch.long)).backward()
    finally:
        del UNITS["test_scaled_preact"]
