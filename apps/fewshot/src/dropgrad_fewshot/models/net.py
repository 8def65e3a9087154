"""The few-shot network interface shared by every backbone: a conv trunk and a linear head ``fc``."""

from __future__ import annotations

from typing import Literal

import torch
from dropgrad import ConsistentDropout
from torch import Tensor, nn

__all__ = ["FewShotNet", "Regularizer", "make_batchnorm", "make_regularizer"]

Regularizer = Literal["none", "dropout", "spatialdropout"]
REGULARIZERS: tuple[str, ...] = ("none", "dropout", "spatialdropout")


def make_batchnorm(channels: int, running_stats: bool) -> nn.BatchNorm2d:
    """BatchNorm2d with or without running statistics.

    Without them (the MAML / CloserLook convention) the layer normalises with the statistics of
    the batch it sees, in train and eval mode alike, and holds no buffers: a task's forward is a
    pure function of (parameters, batch), which is what ``torch.func.vmap`` over tasks needs.
    """
    return nn.BatchNorm2d(channels, track_running_stats=running_stats)


def make_regularizer(
    regularizer: Regularizer, p: float, generator: torch.Generator | None
) -> nn.Module:
    """The activation regulariser placed after each block: identity, Dropout or SpatialDropout.

    Both dropouts are :class:`dropgrad.ConsistentDropout` (one mask per task, shared by the
    support forwards of the inner loop and the query forward of the adapted network).
    """
    if regularizer == "none":
        return nn.Identity()
    if regularizer == "dropout":
        return ConsistentDropout(p, spatial=False, generator=generator)
    if regularizer == "spatialdropout":
        return ConsistentDropout(p, spatial=True, generator=generator)
    raise ValueError(
        f"--regularizer must be one of {', '.join(REGULARIZERS)}, got {regularizer!r}"
    )


class FewShotNet(nn.Module):
    """A convolutional trunk followed by a linear classifier ``fc``.

    Subclasses implement :meth:`features` (the last conv map) and :meth:`pool` (how that map
    becomes the ``feature_dim`` vector the head reads: flatten for Conv4, global average pool
    for the ResNets).

    Attributes:
        backbone: the backbone name it was built as (e.g. ``"conv4"``).
        in_channels: input channels (1 for Omniglot / glyphs, 3 for RGB).
        image_size: the input side length it was built for (Conv4's head depends on it).
        n_way: number of output classes.
        feature_dim: length of the pooled feature vector, ``fc.in_features``.
        fc: the final ``nn.Linear(feature_dim, n_way)`` (``classifier`` is an alias).
        fixed_input_size: True where the head's size depends on ``image_size`` (Conv4's
            flattened map), so only images of that side fit; False for global pooling.
    """

    fixed_input_size: bool = False
    backbone: str
    in_channels: int
    image_size: int
    n_way: int
    feature_dim: int
    fc: nn.Linear

    @property
    def classifier(self) -> nn.Linear:
        """The final linear layer (parameters ``fc.weight`` of shape (n_way, feature_dim), ``fc.bias``)."""
        return self.fc

    @property
    def last_block(self) -> nn.Module:
        """The module whose output is :meth:`features`' map (``block4`` / ``layer4``); a forward
        hook on it captures the map from any forward, e.g. a learner's functional one."""
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        """Last conv feature map, of shape (B, C, h, w), for images of shape (B, in_channels, H, W)."""
        raise NotImplementedError

    def pool(self, feature_map: Tensor) -> Tensor:
        """Feature map (B, C, h, w) -> vector (B, feature_dim) that ``fc`` reads."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Class logits.

        Args:
            x: images of shape (B, in_channels, H, W).
            return_features: also return the last conv map (for class activation maps, so
                that one ``functional_call`` with adapted parameters gives both).

        Returns:
            logits of shape (B, n_way); with ``return_features`` the pair
            (logits, feature map of shape (B, C, h, w)).
        """
        fmap = self.features(x)
        logits = self.fc(self.pool(fmap))
        return (logits, fmap) if return_features else logits

    def reset_classifier(
        self, n_way: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Re-initialise ``fc`` (optionally with a new number of classes): weights as
        ``nn.Linear``'s default (uniform +-1/sqrt(feature_dim)), bias zero."""
        n = self.n_way if n_way is None else int(n_way)
        device, dtype = self.fc.weight.device, self.fc.weight.dtype
        self.fc = nn.Linear(self.feature_dim, n, device=device, dtype=dtype)
        bound = 1.0 / self.feature_dim**0.5
        with torch.no_grad():
            self.fc.weight.uniform_(-bound, bound, generator=generator)
            self.fc.bias.zero_()
        self.n_way = n
