"""Feature extractors shared by all categories: each maps ``(N, 3, S, S)`` crops to a spatial map.

* ``resnet18``: the paper's trunk, torchvision's ResNet-18 (randomly initialised: nothing is
  downloaded) up to ``layer3``: stride 16, 256 channels (224 px crops -> 14 x 14 maps).
* ``small``: four 3x3 conv-BN-ReLU layers, stride 4, 64 channels (64 px crops -> 16 x 16), the
  last two dilated (receptive field 55 px). It is the CPU default for the embedded synthetic
  set: about 93 k parameters against ResNet-18's 2.8 M up to layer3, so meta-training fits in
  minutes on one core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import nn

__all__ = ["TRUNKS", "Trunk", "build_trunk"]

#: The ``--trunk`` choices, listed once (``ViewpointConfig.trunk`` is typed with it). A new trunk
#: is a name here and its class in ``_BUILDERS`` below; the class sets ``out_channels``.
Trunk = Literal["small", "resnet18"]
TRUNKS: tuple[str, ...] = get_args(Trunk)


class _Small(nn.Sequential):
    def __init__(self, width: int = 64) -> None:
        def block(cin: int, cout: int, stride: int, dilation: int = 1) -> list[nn.Module]:
            conv = nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False)
            return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        # The last two layers are dilated (2, 4): the receptive field grows from 23 to 55 px of
        # a 64 px crop at the same cost. Telling one corner or leg foot from its look-alikes
        # takes the sides around it into view; with 23 px the heatmaps of novel categories
        # generalised much worse (see the README's measurements).
        super().__init__(*block(3, 32, 2), *block(32, width, 2), *block(width, width, 1, 2), *block(width, width, 1, 4))
        self.out_channels = width


class _ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        self.out_channels = 256

    def forward(self, x):
        return self.body(x)


def build_trunk(name: str) -> nn.Module:
    """A trunk by name (see the module docstring); it has an ``out_channels`` attribute.

    >>> import torch
    >>> build_trunk("small")(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 64, 16, 16])
    """
    if name not in _BUILDERS:
        raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}, got {name!r}")
    return _BUILDERS[name]()


_BUILDERS: dict[str, Callable[[], nn.Module]] = {"small": _Small, "resnet18": _ResNet18}
if set(_BUILDERS) != set(TRUNKS):  # a name in one list only: the option or the network would be missing
    raise ImportError(f"models/trunk.py: Trunk lists {sorted(TRUNKS)} but _BUILDERS has {sorted(_BUILDERS)}")
