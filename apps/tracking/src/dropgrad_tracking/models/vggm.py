"""MDNet's network: VGG-M conv1-3 on 107x107 crops (512x3x3 features) and fc4-fc6 (2 scores).

Layout (Nam & Han, CVPR 2016; kept by Meta-Tracker's MetaSDNet)::

    conv1 96x7x7 stride 2, ReLU, LRN, max-pool 3 stride 2     107 -> 51 -> 25
    conv2 256x5x5 stride 2, ReLU, LRN, max-pool 3 stride 2     25 -> 11 -> 5
    conv3 512x3x3 stride 1, ReLU                                 5 -> 3
    fc4 4608 -> 512, ReLU; fc5 dropout 0.5, 512 -> 512, ReLU; fc6 dropout 0.5, 512 -> 2

No padding anywhere (VGG-M's own conv2/conv3 padding is dropped, as in MDNet, so a 107x107 crop
gives exactly 3x3 conv3 features). LRN is MatConvNet's: ``x / (2 + 1e-4 * sum_5 x^2) ** 0.75``
over 5 neighbouring channels (torch's ``LocalResponseNorm`` divides alpha by the size: it would
need alpha 5e-4; :class:`MatConvNetLRN` computes the same faster).

Inputs are mean-subtracted pixels ``(RGB in 0..255) - 128`` as MDNet feeds them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CROP_SIZE", "VGGM", "MatConvNetLRN", "build_vggm"]

CROP_SIZE = 107
"""Side of the square crops the network reads (conv3 is 3x3 at this size)."""

FULL_CHANNELS = (96, 256, 512)
FULL_FC = 512


class MatConvNetLRN(nn.Module):
    """Cross-channel LRN ``x / (k + alpha * sum_{|c'-c| <= size//2} x_c'^2) ** beta`` (MatConvNet's form).

    Same numbers as ``nn.LocalResponseNorm(size, alpha * size, beta, k)``, but the channel window
    sum is ``size`` shifted adds instead of a 3-D average pool (several times faster on CPU).
    Input and output of shape (N, C, H, W).

    >>> import torch
    >>> x = torch.randn(2, 7, 4, 4)
    >>> torch.allclose(MatConvNetLRN()(x), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(x), atol=1e-6)
    True
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        half = self.size // 2
        sq = F.pad(x * x, (0, 0, 0, 0, half, self.size - 1 - half))
        total = sq[:, 0:c]
        for i in range(1, self.size):
            total = total + sq[:, i:i + c]
        return x / (self.k + self.alpha * total).pow(self.beta)


class VGGM(nn.Module):
    """MDNet's VGG-M conv1-3 + fc4-fc6, optionally narrowed for fast CPU tests.

    Args:
        channels: conv1, conv2, conv3 output channels (VGG-M: 96, 256, 512).
        fc_width: fc4/fc5 width (MDNet: 512).
        dropout: dropout before fc5 and fc6 (MDNet: 0.5); active only in train mode.

    :meth:`features` runs the convolutions, :meth:`head` the fully connected layers, so a
    tracker can cache conv features and train the head alone. :meth:`forward` accepts either:

    - images of shape ``(N, 3, 107, 107)`` (mean-subtracted pixels): ``head(features(x))``;
    - cached features of shape ``(N, feature_dim)`` (from :meth:`features`): ``head(x)``.

    Both return scores of shape ``(N, 2)`` (column 1: target, column 0: background).

    >>> import torch
    >>> net = build_vggm(tiny=True)
    >>> x = torch.zeros(2, 3, CROP_SIZE, CROP_SIZE)
    >>> net.features(x).shape, net(x).shape, net(net.features(x)).shape
    (torch.Size([2, 288]), torch.Size([2, 2]), torch.Size([2, 2]))
    """

    def __init__(self, channels: tuple[int, int, int] = FULL_CHANNELS, fc_width: int = FULL_FC, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3 = channels
        self.channels = (c1, c2, c3)
        self.feature_dim = c3 * 3 * 3
        self.conv = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, c1, kernel_size=7, stride=2)),
            ("relu1", nn.ReLU()),
            ("lrn1", MatConvNetLRN()),
            ("pool1", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv2", nn.Conv2d(c1, c2, kernel_size=5, stride=2)),
            ("relu2", nn.ReLU()),
            ("lrn2", MatConvNetLRN()),
            ("pool2", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("conv3", nn.Conv2d(c2, c3, kernel_size=3, stride=1)),
            ("relu3", nn.ReLU()),
        ]))
        self.fc = nn.Sequential(OrderedDict([
            ("fc4", nn.Linear(self.feature_dim, fc_width)),
            ("relu4", nn.ReLU()),
            ("drop5", nn.Dropout(dropout)),
            ("fc5", nn.Linear(fc_width, fc_width)),
            ("relu5", nn.ReLU()),
            ("drop6", nn.Dropout(dropout)),
            ("fc6", nn.Linear(fc_width, 2)),
        ]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation, deterministic from torch's global seed.

        Conv layers: He-normal weights (a VGG-M file normally replaces them; random features
        then keep a usable scale), bias 0.1. fc4/fc5: N(0, 0.01), bias 0.1 (MDNet's fc
        initialisation); fc6: N(0, 0.001), bias 0, so an untrained head starts near score 0.
        """
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                # He-scaled normal: with random conv layers (no VGG-M file) features keep a usable scale.
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.constant_(m.bias, 0.1)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.001 if name.endswith("fc6") else 0.01)
                nn.init.constant_(m.bias, 0.0 if name.endswith("fc6") else 0.1)

    def features(self, x: Tensor) -> Tensor:
        """Flattened conv3 features of shape ``(N, feature_dim)`` from crops ``(N, 3, 107, 107)``."""
        if x.dim() != 4 or x.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"VGGM.features: expected crops of shape (N, 3, {CROP_SIZE}, {CROP_SIZE}), got {tuple(x.shape)}")
        return self.conv(x).flatten(1)

    def head(self, features: Tensor) -> Tensor:
        """Scores of shape ``(N, 2)`` from features ``(N, feature_dim)``."""
        return self.fc(features)

    def head_without_dropout(self, features: Tensor) -> Tensor:
        """:meth:`head` with dropout skipped whatever the module's mode (cheaper than toggling
        ``eval()``/``train()`` around a forward inside a training loop)."""
        x = features
        for layer in self.fc:
            if not isinstance(layer, nn.Dropout):
                x = layer(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.head(x)
        return self.head(self.features(x))


def build_vggm(tiny: bool = False, dropout: float = 0.5) -> VGGM:
    """VGG-M at full size (loadable from ``imagenet-vgg-m.mat``) or ``tiny``.

    ``tiny=True`` (channels 8, 16, 32; fc 64; about 35x fewer multiply-adds per 107x107 crop and
    140x fewer parameters) is for fast CPU tests and CPU meta-training smoke runs; it cannot load
    VGG-M weights.

    >>> sum(p.numel() for p in build_vggm(tiny=True).parameters()) < 50_000
    True
    """
    if tiny:
        return VGGM(channels=(8, 16, 32), fc_width=64, dropout=dropout)
    return VGGM(dropout=dropout)


def conv_layers(model: VGGM) -> dict[str, nn.Conv2d]:
    """The three conv layers by MatConvNet name (``conv1``, ``conv2``, ``conv3``)."""
    return {name: getattr(model.conv, name) for name in ("conv1", "conv2", "conv3")}

