"""``build_model``: backbone name -> :class:`FewShotNet`, and the DropGrad layer groups per backbone."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from dropgrad import RESNET_GROUPS

from .conv4 import Conv4
from .net import REGULARIZERS, FewShotNet, Regularizer
from .resnet import ResNet

__all__ = [
    "BACKBONES",
    "BACKBONE_SPECS",
    "CONV4_GROUPS",
    "BackboneSpec",
    "build_model",
    "count_parameters",
    "dropgrad_groups",
]

Backbone = Literal["conv4", "conv4-48", "resnet10", "resnet18"]

#: Conv4's layer groups for ``--dropgrad-layers``: one per conv block, and the head.
CONV4_GROUPS: dict[str, tuple[str, ...]] = {
    "conv1": ("block1.*",),
    "conv2": ("block2.*",),
    "conv3": ("block3.*",),
    "conv4": ("block4.*",),
    "fc": ("fc.*",),
}


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the app needs to know about one backbone name (one entry per name, so a new
    backbone is one :data:`BACKBONE_SPECS` entry and its name in ``FewShotConfig.backbone``).

    Attributes:
        build: ``build(n_way, *, in_channels, image_size, regularizer, dropout_p,
            bn_running_stats, generator)`` -> the network.
        groups: its ``--dropgrad-layers`` groups (name -> parameter-name patterns).
        rgb_image_size: the input side on RGB data sets when ``--image-size`` is not given.
    """

    build: Callable[..., FewShotNet]
    groups: Mapping[str, tuple[str, ...]]
    rgb_image_size: int


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "conv4": BackboneSpec(functools.partial(Conv4, width=64), CONV4_GROUPS, 84),
    "conv4-48": BackboneSpec(functools.partial(Conv4, width=48), CONV4_GROUPS, 84),
    "resnet10": BackboneSpec(functools.partial(ResNet, "resnet10"), RESNET_GROUPS, 224),
    "resnet18": BackboneSpec(functools.partial(ResNet, "resnet18"), RESNET_GROUPS, 224),
}
BACKBONES: tuple[str, ...] = tuple(BACKBONE_SPECS)


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(
            f"--backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}"
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {name}={value!r}"
        )
    return value


def build_model(
    backbone: Backbone,
    n_way: int,
    *,
    in_channels: int = 3,
    image_size: int = 84,
    regularizer: Regularizer = "none",
    dropout_p: float = 0.3,
    bn_running_stats: bool = False,
    generator: torch.Generator | None = None,
) -> FewShotNet:
    """Build a few-shot backbone with an ``n_way`` linear head.

    Args:
        backbone: ``"conv4"`` (64 filters), ``"conv4-48"`` (48 filters, MAML++'s
            mini-ImageNet model), ``"resnet10"``, ``"resnet18"`` (CloserLook variants).
        n_way: classes of the head (``fc``).
        in_channels: 1 (Omniglot, glyphs) or 3 (RGB).
        image_size: input side in pixels (Conv4's head size depends on it; ResNets accept any).
        regularizer: ``"none"``, ``"dropout"`` (activation dropout) or ``"spatialdropout"``
            (whole channels), both :class:`dropgrad.ConsistentDropout` (one mask per task),
            placed after every block's final activation.
        dropout_p: drop probability of the regulariser (default 0.3), 0 <= p < 1.
        bn_running_stats: keep BatchNorm running statistics (MAML++ with core
            ``MAMLPlusPlus``'s per-step BatchNorm). Default False: batch statistics in train and
            eval (MAML / CloserLook), no buffers, so the core's vmap path accepts the model.
        generator: draws the dropout masks (reproducible per-task masks); weights are
            initialised from torch's global RNG (seed it with ``dropgrad.seed_everything``).

    Returns:
        The network; ``net(x)`` maps images of shape (B, in_channels, image_size, image_size)
        to logits of shape (B, n_way).

    >>> net = build_model("conv4", 5, in_channels=1, image_size=28)
    >>> net(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 5])
    >>> build_model("resnet18", 5).feature_dim
    512
    """
    _check_backbone(backbone)
    _check_int("n_way", n_way, 1)
    _check_int("in_channels", in_channels, 1)
    _check_int("image_size", image_size, 1)
    if regularizer not in REGULARIZERS:
        raise ValueError(
            f"--regularizer must be one of {', '.join(REGULARIZERS)}, got {regularizer!r}"
        )
    if (
        isinstance(dropout_p, bool)
        or not isinstance(dropout_p, (int, float))
        or not 0.0 <= dropout_p < 1.0
    ):
        raise ValueError(
            f"dropout p must be a number with 0 <= p < 1, got {dropout_p!r}"
        )
    common = {
        "in_channels": in_channels,
        "image_size": image_size,
        "regularizer": regularizer,
        "dropout_p": float(dropout_p),
        "bn_running_stats": bool(bn_running_stats),
        "generator": generator,
    }
    return BACKBONE_SPECS[backbone].build(n_way, **common)


def dropgrad_groups(backbone: Backbone) -> dict[str, tuple[str, ...]]:
    """Named parameter groups for ``--dropgrad-layers`` (``dropgrad.DropGrad(groups=...)``).

    ResNets: the paper's ablation groups ``conv`` (stem), ``block1``..``block4``, ``fc``
    (:data:`dropgrad.RESNET_GROUPS`). Conv4: ``conv1``..``conv4`` (one per block) and ``fc``.
    Each parameter of the backbone belongs to exactly one group.

    >>> dropgrad_groups("conv4")["conv2"]
    ('block2.*',)
    >>> dropgrad_groups("resnet18")["block4"]
    ('layer4.*',)
    """
    _check_backbone(backbone)
    return dict(BACKBONE_SPECS[backbone].groups)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameter elements.

    >>> count_parameters(build_model("conv4", 5, in_channels=1, image_size=28))
    112261
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
