"""Image transforms: CloserLook's for RGB sets, a plain resize for the grayscale sets.

RGB (mini-ImageNet, CUB), as CloserLook's ``TransformLoader``:

- eval: resize to a square of ``int(1.15 * size)`` pixels (CloserLook resizes both sides, so
  the aspect ratio is not kept), centre crop ``size``, ImageNet mean/std normalisation;
- train augmentation (``augment=True``): random resized crop to ``size`` (scale 0.08-1, aspect
  3/4-4/3, torchvision's defaults), colour jitter of brightness, contrast and saturation by a
  factor drawn uniformly from [0.6, 1.4] each (CloserLook's ``ImageJitter`` with 0.4, applied
  in that fixed order), horizontal flip with probability 1/2, normalisation.

Grayscale (Omniglot, glyphs): resize to ``size`` with a Lanczos filter, strokes bright on a
dark background (Omniglot's black-on-white PNGs are inverted, as in Finn et al.'s MAML code),
values in [0, 1], no normalisation and no flip (a mirrored character can be another
character). Augmentation shifts the character by up to 2 pixels (zero fill).

Randomness comes from the ``rng`` argument (a numpy Generator) and never from a global RNG, so
an augmented load is a pure function of its key (see :mod:`dropgrad_fewshot.data.base`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GrayscaleTransform",
    "RGBTransform",
    "random_resized_crop_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JITTER = 0.4
RESIZE_FACTOR = 1.15


def random_resized_crop_params(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, torchvision's RandomResizedCrop rule.

    Ten tries at a crop of random area fraction in ``scale`` and log-uniform aspect ratio in
    ``ratio`` that fits; otherwise the largest centred crop with the ratio clamped to ``ratio``.

    >>> t, l, h, w = random_resized_crop_params(100, 80, np.random.default_rng(0))
    >>> 0 <= t and t + h <= 80 and 0 <= l and l + w <= 100
    True
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RGBTransform:
    """CloserLook's RGB transform: ``transform(pil_rgb, rng) -> Tensor (3, size, size)``.

    Args:
        size: output side in pixels (84 for Conv4, 224 for ResNets).
        augment: apply the training augmentation; then ``rng`` must be a numpy Generator.

    >>> t = RGBTransform(8)
    >>> x = t(Image.new("RGB", (20, 10), (124, 116, 104)), None)
    >>> x.shape, bool(x.abs().max() < 0.02)  # the ImageNet mean colour normalises to ~0
    (torch.Size([3, 8, 8]), True)
    """

    def __init__(self, size: int, augment: bool = False) -> None:
        self.size = size
        self.augment = augment
        self.resize = int(RESIZE_FACTOR * size)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> Tensor:
        if self.augment:
            if rng is None:
                raise ValueError("RGBTransform(augment=True) needs an rng")
            top, left, h, w = random_resized_crop_params(image.width, image.height, rng)
            image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
            brightness, contrast, saturation = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
            image = TF.adjust_brightness(image, float(brightness))
            image = TF.adjust_contrast(image, float(contrast))
            image = TF.adjust_saturation(image, float(saturation))
            if rng.random() < 0.5:
                image = TF.hflip(image)
        else:
            image = TF.resize(image, [self.resize, self.resize], antialias=True)
            image = TF.center_crop(image, [self.size, self.size])
        x = TF.to_tensor(image)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


class GrayscaleTransform:
    """Grayscale character transform: ``transform(pil_l, rng) -> Tensor (1, size, size)``.

    Args:
        size: output side in pixels (28 for the MAML Omniglot protocol).
        invert: map dark strokes on white (Omniglot's PNGs) to bright strokes on black.
        augment: shift by up to ``max_shift`` pixels in each direction (zero fill).

    >>> im = Image.new("L", (105, 105), 255); im.putpixel((50, 50), 0)
    >>> x = GrayscaleTransform(28, invert=True)(im, None)
    >>> x.shape, float(x.min()) >= 0.0, float(x.max()) <= 1.0, bool(x[0, 13, 13] > 0)
    (torch.Size([1, 28, 28]), True, True, True)
    """

    def __init__(self, size: int, *, invert: bool, augment: bool = False, max_shift: int = 2) -> None:
        self.size = size
        self.invert = invert
        self.augment = augment
        self.max_shift = max_shift

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> Tensor:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        if self.invert:
            x = 1.0 - x
        x = x.unsqueeze(0)
        if self.augment:
            if rng is None:
                raise ValueError("GrayscaleTransform(augment=True) needs an rng")
            x = shift(x, *(int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2)))
        return x


def shift(x: Tensor | np.ndarray, dy: int, dx: int) -> Tensor | np.ndarray:
    """Translate an image of shape (..., H, W) by (dy, dx) pixels, filling with zeros.

    Works on a tensor or a numpy array and returns the same kind.

    >>> shift(torch.arange(4.0).reshape(1, 2, 2), 1, 0)[0].tolist()
    [[0.0, 0.0], [0.0, 1.0]]
    >>> shift(np.arange(4.0).reshape(2, 2), 0, -1).tolist()
    [[1.0, 0.0], [3.0, 0.0]]
    """
    out = np.zeros_like(x) if isinstance(x, np.ndarray) else torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out
