"The nets: depth accounting, parameter counts, heads, the pre-activation split, ImageNet shapes."
import pytest
import torch
from torch import nn

from identity_study.models import count_parameters, net_spec, resnet


@pytest.mark.parametrize("unit,depth,params", [
    ("preact", 110, 1_727_962),       # basic, option A (Table 4: 1.7M)
    ("preact", 164, 1_703_258),       # bottleneck
    ("preact", 1001, 10_327_706),
])
def test_parameter_counts_with_bn(unit, depth, params):
    net = resnet(unit, depth)
    assert count_parameters(net) == params
    assert net.weighted_layers() == depth


def test_parameter_counts_without_bn_match_the_papers_rounding():
    assert count_parameters(resnet("preact", 164), include_bn=False) == 1_679_034
    assert count_parameters(resnet("preact", 1001), include_bn=False) == 10_178_490   # the paper's "10.2M"


@pytest.mark.parametrize("depth,block,units", [(20, "basic", 9), (56, "basic", 27), (110, "basic", 54),
                                               (164, "bottleneck", 54), (1001, "bottleneck", 333),
                                               (1202, "basic", 600)])
def test_depth_names_follow_the_paper(depth, block, units):
    spec = net_spec("original", depth)
    assert spec.block == block and sum(spec.units_per_stage) == units


def test_110_and_164_are_not_mislabelled():
    assert net_spec("preact", 110).block == "basic"          # not the 164-layer bottleneck net
    assert net_spec("preact", 164).block == "bottleneck"
    explicit = resnet("preact", 110, block="bottleneck")     # only when asked for
    assert explicit.weighted_layers() == 110 and len(explicit.residual_units()) == 36


def test_one_layer_resnet_110_has_108_units():
    net = resnet("original", 110, block="one_layer")
    assert len(net.residual_units()) == 108 and net.weighted_layers() == 110


@pytest.mark.parametrize("kwargs,message", [
    (dict(unit="preact", depth=100), "depth 100 fits no CIFAR depth formula; nearby valid depths: basic 6n+2: 98, 104"),
    (dict(unit="preact", depth=38), "fits both basic (6n+2, n=6) and bottleneck (9n+2, n=4)"),
    (dict(unit="preact", depth=165, block="bottleneck"), "nearby valid depths: 164, 173"),
    (dict(unit="preact", depth=56, block="wide"), "unknown block 'wide'; valid choices: basic, bottleneck, one_layer"),
    (dict(unit="preactivation"), "unknown unit 'preactivation'; valid choices: original"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'; valid choices: cifar10, cifar100"),
    (dict(unit="original", preact_split="stage_start"), "preact_split does not apply to unit 'original'"),
    (dict(unit="preact", preact_split="always"), "unknown preact_split 'always'; valid choices: dimension_change"),
    (dict(dataset="imagenet", depth=164),
     "ImageNet depth 164 is not defined; valid choices: 18, 34, 50, 101, 152, 200"),
    (dict(unit="preact", depth=56, gate_bias=-6.0), "option 'gate_bias' does not apply to unit 'preact'"),
])
def test_bad_net_arguments_name_the_value_and_the_choices(kwargs, message, monkeypatch):
    built = []
    monkeypatch.setattr(nn.Module, "__init__", lambda self, *a, **k: built.append(self) or None)
    with pytest.raises(ValueError) as e:
        resnet(**kwargs)
    assert message in str(e.value)
    assert not built          # raised before any module was constructed


def test_cifar100_head():
    assert resnet("preact", 164, dataset="cifar100").head[-1].out_features == 100
    assert count_parameters(resnet("preact", 164, dataset="cifar100")) - count_parameters(resnet("preact", 164)) \
        == 90 * 256 + 90


def test_preact_split_positions():
    def splits(depth, rule):
        return [i for i, u in enumerate(resnet("preact", depth, preact_split=rule).residual_units()) if u.split_preact]
    assert splits(20, "dimension_change") == [3, 6]       # basic: the two downsampling units
    assert splits(20, "stage_start") == [0, 3, 6]          # fb.resnet.torch both_preact
    assert splits(20, "first_unit") == [0]                 # the paper's appendix
    assert splits(20, "never") == []
    assert splits(29, "dimension_change") == [0, 3, 6]    # bottleneck: 16->64 is a dimension change too


def test_official_bottleneck_layout():
    net = resnet("preact", 164)
    first = net.residual_units()[0]
    assert isinstance(net.stem[1], nn.Identity)                          # conv1 alone
    assert first.split_preact and first.shortcut[0].out_channels == 64   # shared BN-ReLU, 16->64 projection
    assert len(first.shortcut) == 1                                      # no BN on a pre-act projection
    assert net.residual_units()[18].branch[0].stride == (2, 2)          # stride on the first 1x1
    assert isinstance(net.head[0][0], nn.BatchNorm2d)                    # the extra BN-ReLU after the last unit
    post = resnet("original", 164).residual_units()[0]
    assert isinstance(post.shortcut[1], nn.BatchNorm2d)                  # post-act projections carry BN


def test_he_initialisation_fan_out():
    net = resnet("preact", 20)
    conv = net.residual_units()[0].branch[0]
    expected = (2.0 / (9 * conv.out_channels)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.1
    assert net.head[-1].bias.abs().sum() == 0


def test_imagenet_preact_resnet_200_shapes():
    net = resnet("preact", 200, dataset="imagenet").eval()
    assert [len(s) for s in net.stages] == [3, 24, 36, 3] and net.weighted_layers() == 200
    shapes = []
    for s in net.stages:
        s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        assert net(torch.randn(2, 3, 224, 224)).shape == (2, 1000)
    assert shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert net.residual_units()[0].preact.__class__ is nn.Identity   # the stem already ends in BN-ReLU
    assert net.residual_units()[3].branch[3].stride == (2, 2)         # stride on the 3x3 (fb.resnet.torch)


def test_init_weights_lets_each_unit_initialise_itself(monkeypatch):
    from identity_study.models import init_weights
    from identity_study.units import PreActUnit
    calls = []
    reset = PreActUnit.reset_parameters
    monkeypatch.setattr(PreActUnit, "reset_parameters", lambda self: calls.append(self) or reset(self))
    net = resnet("preact", 20)
    assert calls == net.residual_units()                          # once per unit, in forward order
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.123)
    init_weights(net)
    stem = net.stem[0].weight
    assert abs(stem.std().item() - (2.0 / (9 * 16)) ** 0.5) < 0.03      # outside the units: He, as before
    assert net.head[-1].bias.eq(0).all() and net.head[0][0].weight.eq(1).all()
    assert net.head[-1].weight.eq(0.123).all()                    # the classifier keeps its (default) weight
    assert all(u.preact[0].weight.eq(1).all() and u.branch[0].weight.std() > 0.05 for u in net.residual_units())


def test_a_seed_gives_the_same_initial_weights():
    for unit in ("original", "exclusive_gating", "conv_shortcut", "dropout_shortcut", "preact"):
        torch.manual_seed(0)
        a = resnet(unit, 20).state_dict()
        torch.manual_seed(0)
        b = resnet(unit, 20).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), unit
