"""ResNet-10 / ResNet-18 in the CloserLook variant (Chen et al. 2019, "A Closer Look at Few-shot
Classification"): torchvision's layout with BasicBlocks, batch-statistics BatchNorm by default.

Stem: 7x7 conv stride 2 (no bias) -> BN -> ReLU -> 3x3 max-pool stride 2; then ``layer1..4`` of
BasicBlocks ([1,1,1,1] for ResNet-10, [2,2,2,2] for ResNet-18) of widths 64/128/256/512, the
first block of layers 2-4 with stride 2 and a 1x1 conv + BN shortcut; global average pool;
``fc``. Parameter names follow torchvision (``conv1.*``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ``fc.*``), which :data:`dropgrad.RESNET_GROUPS` selects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .net import FewShotNet, Regularizer, make_batchnorm, make_regularizer

__all__ = ["BasicBlock", "ResNet"]

WIDTHS = (64, 128, 256, 512)
DEPTHS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, -> ReLU -> regulariser."""

    def __init__(
        self, cin: int, cout: int, stride: int, bn_running_stats: bool, reg: nn.Module
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_batchnorm(cout, bn_running_stats)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_batchnorm(cout, bn_running_stats)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                make_batchnorm(cout, bn_running_stats),
            )
        self.drop = reg

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.drop(self.relu(out + short))


class ResNet(FewShotNet):
    """CloserLook ResNet-10/18 with a linear head on the globally average-pooled last map.

    Args:
        depth: ``"resnet10"`` or ``"resnet18"``.
        n_way, in_channels, image_size, regularizer, dropout_p, bn_running_stats, generator:
            see :func:`dropgrad_fewshot.models.build_model`. Any ``image_size`` >= 1 works
            (the head sees 512 features); 224 is CloserLook's, 84 runs faster.

    >>> net = ResNet("resnet10", 5, image_size=84)
    >>> net(torch.zeros(2, 3, 84, 84)).shape, net.features(torch.zeros(2, 3, 84, 84)).shape
    (torch.Size([2, 5]), torch.Size([2, 512, 3, 3]))
    """

    def __init__(
        self,
        depth: str,
        n_way: int,
        *,
        in_channels: int = 3,
        image_size: int = 224,
        regularizer: Regularizer = "none",
        dropout_p: float = 0.3,
        bn_running_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(
                f"ResNet depth must be one of {', '.join(DEPTHS)}, got {depth!r}"
            )
        self.backbone = depth
        self.in_channels, self.image_size, self.n_way = in_channels, image_size, n_way
        self.conv1 = nn.Conv2d(
            in_channels, WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = make_batchnorm(WIDTHS[0], bn_running_stats)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = WIDTHS[0]
        for i, (width, n_blocks) in enumerate(zip(WIDTHS, DEPTHS[depth])):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                reg = make_regularizer(regularizer, dropout_p, generator)
                blocks.append(BasicBlock(cin, width, stride, bn_running_stats, reg))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = WIDTHS[-1]
        self.fc = nn.Linear(self.feature_dim, n_way)
        self._init_weights()

    def _init_weights(self) -> None:
        # CloserLook's init: conv N(0, 2 / (k*k*out_channels)) (He, fan-out), BN weight 1 bias 0;
        # the head keeps nn.Linear's default weight and a zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    @property
    def last_block(self) -> nn.Module:
        return self.layer4

    def features(self, x: Tensor) -> Tensor:
        """Output of ``layer4``, of shape (B, 512, h, w) (h = w = 7 at 224 px, 3 at 84 px)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, feature_map: Tensor) -> Tensor:
        """Global average pool (B, 512, h, w) -> (B, 512)."""
        return feature_map.mean(dim=(2, 3))
