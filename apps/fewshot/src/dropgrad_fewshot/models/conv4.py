"""Conv4: the four-block convolutional backbone of MAML (Finn et al. 2017) and CloserLook.

Each block is 3x3 conv (padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool, so a side of ``s``
pixels becomes ``s // 2`` per block: 28 px Omniglot -> 1x1 (feature_dim 64), 84 px RGB -> 5x5
(feature_dim 1600). The head reads the flattened last map, as in MAML's mini-ImageNet model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .net import FewShotNet, Regularizer, make_batchnorm, make_regularizer

__all__ = ["Conv4", "conv4_output_size"]


def conv4_output_size(image_size: int) -> int:
    """Side of Conv4's last feature map for square inputs of side ``image_size``.

    >>> conv4_output_size(28), conv4_output_size(84)
    (1, 5)
    """
    s = int(image_size)
    for _ in range(4):
        s //= 2
    return s


class ConvBlock(nn.Module):
    """conv 3x3 -> BN -> ReLU -> max-pool 2x2 -> regulariser. Parameters ``conv.*``, ``bn.*``."""

    def __init__(
        self, cin: int, cout: int, bn_running_stats: bool, reg: nn.Module
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.bn = make_batchnorm(cout, bn_running_stats)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.MaxPool2d(2)
        self.drop = reg

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.pool(self.relu(self.bn(self.conv(x)))))


class Conv4(FewShotNet):
    """Four conv blocks of ``width`` filters and a linear head on the flattened last map.

    Parameter names: ``block1.conv.weight`` ... ``block4.bn.bias``, ``fc.weight``, ``fc.bias``.

    Args:
        n_way: output classes.
        in_channels: 1 (Omniglot, glyphs) or 3 (RGB).
        image_size: input side; at least 16 (four halvings must leave a 1x1 map).
        width: filters per conv (64; 48 for MAML++'s mini-ImageNet model).
        regularizer / dropout_p / generator: see :func:`dropgrad_fewshot.models.build_model`.
        bn_running_stats: keep BatchNorm running statistics (MAML++); default batch statistics.

    >>> net = Conv4(5, in_channels=1, image_size=28)
    >>> net(torch.zeros(2, 1, 28, 28)).shape, net.feature_dim
    (torch.Size([2, 5]), 64)
    """

    fixed_input_size = True  # the head reads the flattened map

    def __init__(
        self,
        n_way: int,
        *,
        in_channels: int = 3,
        image_size: int = 84,
        width: int = 64,
        regularizer: Regularizer = "none",
        dropout_p: float = 0.3,
        bn_running_stats: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        side = conv4_output_size(image_size)
        if side < 1:
            raise ValueError(
                f"conv4: image_size must be at least 16 (four 2x2 poolings), got image_size={image_size}"
            )
        self.backbone = "conv4" if width == 64 else f"conv4-{width}"
        self.in_channels, self.image_size, self.n_way = in_channels, image_size, n_way
        self.width = width
        chans = [in_channels] + [width] * 4
        for i in range(4):
            reg = make_regularizer(regularizer, dropout_p, generator)
            self.add_module(
                f"block{i + 1}",
                ConvBlock(chans[i], chans[i + 1], bn_running_stats, reg),
            )
        self.feature_dim = width * side * side
        self.fc = nn.Linear(self.feature_dim, n_way)
        nn.init.zeros_(self.fc.bias)

    @property
    def last_block(self) -> nn.Module:
        return self.block4

    def features(self, x: Tensor) -> Tensor:
        """Last block's output, of shape (B, width, image_size // 16, image_size // 16)."""
        for i in range(1, 5):
            x = getattr(self, f"block{i}")(x)
        return x

    def pool(self, feature_map: Tensor) -> Tensor:
        """Flatten (B, C, h, w) -> (B, C*h*w) in (C, h, w) order."""
        if feature_map.shape[1:].numel() != self.feature_dim:
            raise ValueError(
                f"{self.backbone}: built for {self.image_size} px inputs (feature_dim {self.feature_dim}), "
                f"got a last feature map of shape {tuple(feature_map.shape[1:])}; "
                "build the model with the image_size of the data"
            )
        return torch.flatten(feature_map, 1)
