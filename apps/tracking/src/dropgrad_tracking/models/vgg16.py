"""VGG-16 up to conv4_3 (+ReLU), the frozen backbone of MetaCREST, and its weight loader.

The layers are torchvision's ``vgg16().features[:23]`` with the same indices, so torchvision's
state-dict keys (``features.21.weight``) load as they are::

    conv1_1, conv1_2, pool  -> stride 2      (indices 0-4)
    conv2_1, conv2_2, pool  -> stride 4      (5-9)
    conv3_1..conv3_3, pool  -> stride 8      (10-16)
    conv4_1..conv4_3 + ReLU -> 512 channels  (17-22)

In torchvision's network conv4_3 sits after three max-pools, so its stride is 8. CREST (and so
MetaCREST) works on a stride-4 grid (CREST's ``cell_size = 4``: it resizes the conv4_3 map to
the search window divided by 4). We do the same and keep the pretrained layers exactly as they
were trained: the stride-8 map is interpolated to stride 4 by the tracker's head (see
:class:`dropgrad_tracking.trackers.metacrest.CorrelationHead`), after its 1x1 channel reduction
(the two commute: bilinear weights sum to one), so the interpolation costs 64, not 512, channels.
Skipping a pooling layer instead would feed conv4 inputs at a scale it was never trained on, and
upsampling the image 2x would cost four times the backbone's compute.

Inputs are RGB in ``[0, 1]`` normalised with torchvision's ImageNet mean and std
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), the normalisation its weights were trained with.

Weights come only from a local file (``--backbone-weights PATH``): a torchvision VGG-16 state
dict, either the whole network's (``features.N.weight``; the classifier is ignored) or its
``features`` module's (``N.weight``), loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "CONV_INDICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STRIDE",
    "BackboneWeightsError",
    "VGG16Conv4",
    "build_vgg16_conv4",
    "load_vgg16_weights",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 8
"""Stride of conv4_3 in input pixels."""

# torchvision's VGG-16 "D" configuration, up to conv4_3: channels, or "M" for a 2x2 max-pool.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)

CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)
"""Indices of the conv layers in ``features`` (torchvision's numbering)."""


class BackboneWeightsError(ValueError):
    """A ``--backbone-weights`` file that is missing, unsafe, or not a VGG-16 state dict."""


class VGG16Conv4(nn.Module):
    """torchvision VGG-16 ``features[:23]``: conv1_1 .. conv4_3 + ReLU, stride 8, 512 channels.

    ``forward(x)``: ``x`` of shape ``(N, 3, H, W)`` (ImageNet-normalised RGB) -> ``(N, 512, H//8, W//8)``.

    >>> net = VGG16Conv4()
    >>> net(torch.zeros(2, 3, 64, 48)).shape
    torch.Size([2, 512, 8, 6])
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        self.out_channels = in_ch
        for index in CONV_INDICES:
            conv = self.features[index]
            # torchvision's initialisation of VGG convs (used when no weight file is given).
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _expected_keys() -> list[str]:
    return [f"{i}.{kind}" for i in CONV_INDICES for kind in ("weight", "bias")]


def load_vgg16_weights(net: VGG16Conv4, path: str | os.PathLike[str]) -> None:
    """Load conv1_1 .. conv4_3 of a local torchvision VGG-16 state dict into ``net``.

    Accepts the whole network's state dict (keys ``features.N.weight``; other keys such as the
    classifier's are ignored) or the ``features`` module's (keys ``N.weight``).

    Raises:
        BackboneWeightsError: the file is missing or unreadable, holds anything but tensors
            (``weights_only`` refuses it), or lacks keys / has other shapes; the message names
            the file and the missing or mismatched keys.
    """
    path = Path(path)
    where = f"--backbone-weights {path}"
    if not path.is_file():
        raise BackboneWeightsError(f"{where}: no such file (expected a torchvision VGG-16 state dict, .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; the user needs the file and the gist
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneWeightsError(
            f"{where}: cannot be loaded safely with torch.load(weights_only=True) ({first[:160]}); "
            "expected a torchvision VGG-16 state dict of tensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{where}: holds a {type(state).__name__}, not a state dict (name -> tensor)")
    expected = _expected_keys()
    prefix = "features." if any(str(k).startswith("features.") for k in state) else ""
    missing = [prefix + k for k in expected if prefix + k not in state]
    if missing:
        raise BackboneWeightsError(
            f"{where}: not a VGG-16 state dict; missing keys {', '.join(missing[:6])}"
            + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            + " (expected torchvision's 'features.N.weight'/'features.N.bias' or 'N.weight'/'N.bias' "
            f"for N in {list(CONV_INDICES)})"
        )
    own = net.features.state_dict()
    picked: dict[str, Tensor] = {}
    for key in expected:
        value = state[prefix + key]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(own[key].shape):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise BackboneWeightsError(
                f"{where}: key {prefix + key} has shape {shape}, expected {tuple(own[key].shape)} (VGG-16)"
            )
        picked[key] = value.to(own[key].dtype)
    net.features.load_state_dict(picked)


def build_vgg16_conv4(weights: str | os.PathLike[str] | None) -> tuple[VGG16Conv4, str]:
    """The frozen backbone, from ``weights`` or randomly initialised.

    Returns ``(net, source)``: ``source`` is the weight file's name or ``"random-init"``. The
    parameters have ``requires_grad=False`` and the module is in eval mode.

    >>> net, source = build_vgg16_conv4(None)
    >>> source, any(p.requires_grad for p in net.parameters())
    ('random-init', False)
    """
    net = VGG16Conv4()
    source = "random-init"
    if weights is not None:
        load_vgg16_weights(net, weights)
        source = Path(weights).name
    net.requires_grad_(False)
    net.eval()
    return net, source
