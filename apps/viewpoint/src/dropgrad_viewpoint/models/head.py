"""The keypoint-agnostic viewpoint module that MetaView replicates once per keypoint.

One copy maps the trunk's feature map to 5 maps for ITS keypoint: a heatmap (logits over
positions), the keypoint's depth, and its 3D canonical coordinates (x, y, z), the latter read at
the keypoint's location.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["OUT_CHANNELS", "KeypointHead"]

OUT_CHANNELS = 5  # heatmap logit, depth, canonical x, y, z


class KeypointHead(nn.Module):
    """Two small branches on the trunk's features: ``heat_*`` -> the heatmap logit, and
    ``geo_*`` -> depth and canonical x, y, z (:data:`OUT_CHANNELS` maps in all).

    Each branch is conv(k x k) -> ReLU -> conv1x1 -> ReLU -> conv1x1. The branches are separate
    so the inner loop can give them different step sizes: the regression gradients are far
    larger than the heatmap's, and a shared trunk of the module would force the heatmap to
    the regression's small step. ``kernel=1`` (the CPU default) makes every copy a per-position
    MLP, the trunk doing the spatial reasoning. No normalisation layer: the copies run under
    ``torch.func.vmap`` over their parameters.

    >>> KeypointHead(64, 32)(torch.zeros(2, 64, 16, 16)).shape
    torch.Size([2, 5, 16, 16])
    """

    def __init__(self, in_channels: int, hidden: int = 32, kernel: int = 1) -> None:
        super().__init__()
        if kernel not in (1, 3):
            raise ValueError(f"KeypointHead: kernel must be 1 or 3, got {kernel}")

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1),
            )

        self.heat = branch(1)
        self.geo = branch(OUT_CHANNELS - 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` of shape ``(N, C, H, W)`` -> maps of shape ``(N, 5, H, W)``."""
        return torch.cat([self.heat(x), self.geo(x)], dim=1)
