"""Pixel conversion and training augmentation of whole uint8 batches, on whatever device they are.

The episode cache (:mod:`dropgrad_fewshot.data.cache`) stores each image as the uint8 pixels the
normal path has just before it turns them into floats. :class:`PixelFormat` is that last step,
batched: with augmentation off, ``PixelFormat.to_float`` gives *bit for bit* the tensor the
data set's own ``load`` returns, so cached and uncached runs see the same numbers (tested).
Each data set converts in its own way (glyphs multiply by float32(1/255), Omniglot divides by 255
and inverts, RGB sets divide and normalise), and the format records which, because a
multiplication by the rounded reciprocal and a division differ in the last bit.

Training augmentation, batched with per-image parameters (equivalents of CloserLook's
``TransformLoader`` and of the grayscale shift in :mod:`~dropgrad_fewshot.data.transforms`):

- RGB: a random resized crop (scale 0.08-1, aspect 3/4-4/3, torchvision's ten-tries rule) as
  two batched gathers (bilinear, the crop's edge clamped as in torchvision's crop-then-resize), brightness/contrast/saturation factors drawn
  from U[0.6, 1.4] in that order (torchvision's tensor formulas), and a horizontal flip with
  probability 1/2, then the ImageNet normalisation. The crop is taken from the cached
  ``size x size`` image (the evaluation centre crop), not from the full-resolution file; jitter
  works on floats instead of PIL's rounded uint8 steps. Both are the documented differences to
  the file path.
- Grayscale: a shift by up to ``max_shift`` pixels in each direction with zero fill, exactly
  :func:`~dropgrad_fewshot.data.transforms.shift` (tested).

Parameters are drawn on the CPU from a numpy ``Generator`` the caller seeds, so an augmented
batch is a pure function of that seed, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import IMAGENET_MEAN, IMAGENET_STD, JITTER  # noqa: F401  (the mean/std: doctests)

__all__ = [
    "CropJitterFlip",
    "PixelFormat",
    "Shifts",
    "apply_crop_jitter_flip",
    "apply_shifts",
    "augment_batch",
    "sample_crop_jitter_flip",
    "sample_shifts",
]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class PixelFormat:
    """How stored uint8 pixels become the float tensors a data set's ``load`` returns.

    Attributes:
        scale: "divide" (``u8 / 255``) or "reciprocal" (``u8 * float32(1/255)``).
        invert: ``1 - x`` after scaling (Omniglot: dark strokes become bright).
        mean, std: per-channel normalisation ``(x - mean) / std``, or None.

    >>> fmt = PixelFormat("divide", False, IMAGENET_MEAN, IMAGENET_STD)
    >>> x = fmt.to_float(torch.tensor([124, 116, 104], dtype=torch.uint8).expand(2, 4, 4, 3))  # ~ the mean colour
    >>> tuple(x.shape), bool(x.abs().max() < 0.02)
    ((2, 3, 4, 4), True)
    """

    scale: str
    invert: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _consts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scale not in ("divide", "reciprocal"):
            raise ValueError(f"PixelFormat.scale must be 'divide' or 'reciprocal', got {self.scale!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("PixelFormat: give both mean and std, or neither")

    def to_dict(self) -> dict:
        return {"scale": self.scale, "invert": self.invert,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> PixelFormat:
        mean, std = d.get("mean"), d.get("std")
        return cls(str(d["scale"]), bool(d.get("invert", False)),
                   None if mean is None else tuple(float(v) for v in mean),
                   None if std is None else tuple(float(v) for v in std))

    def __getstate__(self) -> dict:
        # The per-device caches stay behind (a worker process makes its own).
        return {k: v for k, v in self.__dict__.items() if k not in ("_tables", "_consts")}

    def __setstate__(self, state: dict) -> None:
        for k, v in {**state, "_tables": {}, "_consts": {}}.items():
            object.__setattr__(self, k, v)

    def _const(self, name: str, value: float | tuple[float, ...], device: torch.device) -> Tensor:
        # Made once per device: a copy from host memory to the GPU per batch would synchronise.
        key = (name, str(device))
        t = self._consts.get(key)
        if t is None:
            t = self._consts.setdefault(key, torch.tensor(value, dtype=torch.float32, device=device))
        return t

    def _unit_nhwc(self, u8: Tensor) -> Tensor:
        x = u8.to(torch.float32)
        if self.scale == "divide":
            # A 0-dim tensor on x's device, not a Python scalar: CUDA turns division by a CPU
            # scalar into a multiplication by its reciprocal, which is not bit-equal.
            x.div_(self._const("255", 255.0, x.device))
        else:
            x.mul_(self._const("1/255", float(np.float32(1 / 255)), x.device))
        if self.invert:
            x = torch.rsub(x, 1.0)
        return x

    def _normalize(self, x: Tensor, channel_dim: int) -> Tensor:
        if self.mean is None:
            return x
        # The same float32 constants and operation order as torchvision's normalize.
        shape = [-1] + [1] * (-1 - channel_dim)
        mean = self._const("mean", self.mean, x.device).view(shape)
        std = self._const("std", self.std, x.device).view(shape)
        return x.sub_(mean).div_(std)

    def unit(self, u8: Tensor) -> Tensor:
        """uint8 of shape (B, H, W, C) -> float32 in [0, 1] of shape (B, C, H, W), not normalised."""
        return self._unit_nhwc(u8).permute(0, 3, 1, 2).contiguous()

    def normalize(self, x: Tensor) -> Tensor:
        """(x - mean) / std over the channel dim of (B, C, H, W); identity without a mean."""
        return self._normalize(x.clone(), -3)

    def table(self, channels: int) -> np.ndarray:
        """The float of every uint8 value per channel, float32 of shape (channels, 256).

        Computed with the same torch ops as :meth:`to_float` on a GPU, element by element, so
        a lookup gives the same bits.
        """
        u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, 1, 256, channels).contiguous()
        return self._normalize(self._unit_nhwc(u8), -1)[0, 0].T.contiguous().numpy()

    def to_float(self, u8: Tensor) -> Tensor:
        """uint8 (B, H, W, C) -> float32 (B, C, H, W), equal to the data set's unaugmented loads."""
        if u8.device.type == "cpu":
            # One table lookup per pixel that also transposes: 3x faster on the CPU than the
            # element-wise ops below (the uint8 -> float cast and the transposing copy dominate).
            b, h, w, c = u8.shape
            lut = self._tables.get(c)
            if lut is None:
                lut = self._tables.setdefault(c, self.table(c))
            out = torch.empty((b, c, h, w), dtype=torch.float32)
            src, dst = u8.numpy(), out.numpy()
            for k in range(c):
                np.take(lut[k], src[..., k], out=dst[:, k], mode="clip")
            return out
        return self._normalize(self._unit_nhwc(u8), -1).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- RGB: crop, jitter, flip
@dataclass(frozen=True)
class CropJitterFlip:
    """Per-image parameters of the RGB augmentation, numpy arrays of shape (B,) each.

    ``top, left, height, width`` are the crop in pixels of the stored image; ``brightness``,
    ``contrast``, ``saturation`` the jitter factors; ``flip`` a bool.
    """

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    flip: np.ndarray


def sample_crop_jitter_flip(
    n: int,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> CropJitterFlip:
    """Draw the augmentation parameters of ``n`` square ``size``-pixel images at once.

    The crop follows torchvision's RandomResizedCrop rule (ten tries at a random area and
    log-uniform aspect, else the whole image, which is the fallback for a square input).

    >>> p = sample_crop_jitter_flip(64, 84, np.random.default_rng(0))
    >>> bool(((p.top + p.height <= 84) & (p.left + p.width <= 84) & (p.height > 0)).all())
    True
    """
    tries = 10
    area = size * size
    target = area * rng.uniform(scale[0], scale[1], size=(n, tries))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries)))
    w = np.round(np.sqrt(target * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    w = np.where(found, w[np.arange(n), first], size)
    h = np.where(found, h[np.arange(n), first], size)
    top = rng.integers(0, size - h + 1)
    left = rng.integers(0, size - w + 1)
    jitter = rng.uniform(1 - JITTER, 1 + JITTER, size=(n, 3))
    flip = rng.random(n) < 0.5
    return CropJitterFlip(top, left, h, w, jitter[:, 0], jitter[:, 1], jitter[:, 2], flip)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    # torchvision's ratio * a + (1 - ratio) * b in one pass (equal up to rounding), clamped in place.
    return torch.lerp(b, a, ratio).clamp_(0.0, 1.0)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _axis(start: Tensor, length: Tensor, size: int, flip: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (i0, i1) and weights of i1 along one axis for resizing crops to ``size``."""
    n = start.shape[0]
    j = torch.arange(size, device=start.device, dtype=torch.float64).expand(n, size)
    if flip is not None:
        j = torch.where(flip.view(n, 1) > 0, size - 1 - j, j)  # a flip after the crop reverses the output
    start, last = start.view(n, 1), (start + length - 1).view(n, 1)
    src = start + (j + 0.5) * (length.view(n, 1) / size) - 0.5
    src = torch.minimum(torch.maximum(src, start), last)
    i0 = src.floor()
    i1 = torch.minimum(i0 + 1, last)
    return i0.long(), i1.long(), (src - i0).to(torch.float32)


def _to_device(rows: list[np.ndarray], device: torch.device) -> Tensor:
    """Per-image parameters as one float64 tensor (len(rows), B) on ``device``, in one copy.

    One asynchronous copy from pinned memory: a plain copy per parameter would make the host
    wait for the GPU (a copy from pageable memory synchronises the stream).
    """
    host = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float64) for r in rows]))
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def apply_crop_jitter_flip(x: Tensor, p: CropJitterFlip) -> Tensor:
    """Augment a batch of unit-range RGB images of shape (B, 3, S, S); returns the same shape.

    >>> x = torch.rand(4, 3, 16, 16)
    >>> y = apply_crop_jitter_flip(x, sample_crop_jitter_flip(4, 16, np.random.default_rng(1)))
    >>> tuple(y.shape), bool(y.min() >= 0) and bool(y.max() <= 1)
    ((4, 3, 16, 16), True)
    """
    n, _, s_h, s_w = x.shape
    if s_h != s_w:
        raise ValueError(f"apply_crop_jitter_flip: square images expected, got {s_h}x{s_w}")
    top, left, h, w, bright, contrast, sat, flip = _to_device(
        [p.top, p.left, p.height, p.width, p.brightness, p.contrast, p.saturation, p.flip], x.device
    ).unbind(0)
    # Crop, then resize, as torchvision does: output pixel j samples the crop at
    # start + (j + 1/2) * length / S - 1/2, clamped to the crop (not to the image), bilinearly.
    # Written as two gathers (rows, then columns), one per axis, for the whole batch.
    y0, y1, wy = _axis(top, h, s_h, None)
    x0, x1, wx = _axis(left, w, s_w, flip)
    c = x.shape[1]

    def rows(i: Tensor) -> Tensor:
        return x.gather(2, i.view(n, 1, s_h, 1).expand(n, c, s_h, x.shape[3]))

    x = torch.lerp(rows(y0), rows(y1), wy.view(n, 1, s_h, 1))

    def cols(i: Tensor) -> Tensor:
        return x.gather(3, i.view(n, 1, 1, s_w).expand(n, c, s_h, s_w))

    x = torch.lerp(cols(x0), cols(x1), wx.view(n, 1, 1, s_w))
    view = (n, 1, 1, 1)
    x = x.mul_(bright.to(x.dtype).view(view)).clamp_(0.0, 1.0)
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = _blend(x, mean, contrast.to(x.dtype).view(view))
    x = _blend(x, _gray(x), sat.to(x.dtype).view(view))
    return x


# --------------------------------------------------------------------------- grayscale: shifts
@dataclass(frozen=True)
class Shifts:
    """Per-image shifts (dy, dx) in pixels, int64 numpy arrays of shape (B,)."""

    dy: np.ndarray
    dx: np.ndarray


def sample_shifts(n: int, max_shift: int, rng: np.random.Generator) -> Shifts:
    """Draw ``n`` shifts uniform in [-max_shift, max_shift] in each direction.

    >>> s = sample_shifts(100, 2, np.random.default_rng(0))
    >>> int(s.dy.min()), int(s.dy.max())
    (-2, 2)
    """
    d = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    return Shifts(d[:, 0], d[:, 1])


def apply_shifts(x: Tensor, s: Shifts) -> Tensor:
    """Translate each image of (B, C, H, W) by its (dy, dx), zero fill, in one gather.

    >>> apply_shifts(torch.arange(4.0).reshape(1, 1, 2, 2), Shifts(np.array([1]), np.array([0])))[0, 0].tolist()
    [[0.0, 0.0], [0.0, 1.0]]
    """
    n, _, h, w = x.shape
    m = int(max(np.abs(s.dy).max(initial=0), np.abs(s.dx).max(initial=0)))
    if m == 0:
        return x
    padded = F.pad(x, (m, m, m, m))
    dev = x.device
    dy, dx = _to_device([s.dy, s.dx], dev).long().view(2, n, 1).unbind(0)
    rows = torch.arange(h, device=dev).view(1, h) + m - dy  # out[y] = in[y - dy]
    cols = torch.arange(w, device=dev).view(1, w) + m - dx
    batch = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _rows_of(params: Any, rows: np.ndarray | None) -> Any:
    """The per-image parameter arrays of ``params`` (a dataclass of (B,) arrays) at ``rows``."""
    if rows is None:
        return params
    return type(params)(*(getattr(params, f.name)[rows] for f in fields(params)))


def augment_batch(
    x: Tensor, rng: np.random.Generator, max_shift: int = 2, draw: tuple[int, np.ndarray] | None = None
) -> Tensor:
    """The training augmentation of unit-range images (B, C, S, S): RGB crop/jitter/flip, grayscale shifts.

    ``draw=(n, rows)``: ``x`` holds rows ``rows`` of an ``n``-image batch; the parameters of all
    ``n`` are drawn and those rows used, so the images get what they get in the whole batch.

    >>> y = augment_batch(torch.rand(3, 1, 8, 8), np.random.default_rng(0))
    >>> tuple(y.shape)
    (3, 1, 8, 8)
    """
    n, c, h, w = x.shape
    n_draw, rows = (n, None) if draw is None else draw
    if c == 3:
        if h != w:
            raise ValueError(f"augment_batch: RGB images must be square, got {h}x{w}")
        return apply_crop_jitter_flip(x, _rows_of(sample_crop_jitter_flip(n_draw, h, rng), rows))
    return apply_shifts(x, _rows_of(sample_shifts(n_draw, max_shift, rng), rows))
