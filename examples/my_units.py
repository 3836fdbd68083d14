"""Two residual units of your own, registered from outside the package (chapter 1, "Adding your own unit").

Import this module, or name it as a plugin from this folder (`train(..., plugins=["my_units"])`,
`--plugin my_units`), and `resnet("learned_scale", ...)` and `resnet("zero_init_preact", ...)` build, train and
are profiled like the paper's units. Each unit says what differs through the hooks of `ResidualUnit`."""
import torch
from torch import nn

from identity_study.units import PreActUnit, register_unit


@register_unit("learned_scale")
class LearnedScaleUnit(PreActUnit):
    "Full pre-activation with a learnable shortcut scale: x_{l+1} = λ h(x) + F(x_preact), λ starting at init_scale."
    options = {"init_scale": 0.5}

    def __init__(self, cin, cout, stride=1, **kw):
        super().__init__(cin, cout, stride, **kw)
        self.scale = nn.Parameter(torch.tensor(float(self.init_scale)))

    def shortcut_factor(self, x):
        return self.scale                       # λ of Eq. 7–8, read by the propagation profile (chapter 0)

    def reset_parameters(self):
        super().reset_parameters()
        nn.init.constant_(self.scale, self.init_scale)

    def forward(self, x):
        x_preact = self.preact(x)
        return self.shortcut_factor(x) * self.shortcut(self.shortcut_input(x, x_preact)) + self.branch(x_preact)


@register_unit("zero_init_preact")
class ZeroInitPreActUnit(PreActUnit):
    "Full pre-activation whose residual branch starts switched off: x_{l+1} = h(x) at initialisation."

    def reset_parameters(self):
        super().reset_parameters()              # He initialisation of every layer, as in the paper's units
        nn.init.zeros_(self.branch[-1].weight)  # then F ≡ 0: the branch's last weight layer starts at zero
