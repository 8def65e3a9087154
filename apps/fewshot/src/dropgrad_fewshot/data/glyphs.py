"""The embedded default data set: procedural stroke-drawn glyph classes (no files needed).

Each class is a *character*: a skeleton of 1-4 pen strokes, each a cubic Bezier curve, where a
later stroke often starts on an earlier one (as in handwritten alphabets). Each image of a
class is one *drawing* of that character: the control points move a little (the drawer's
hand), a smooth elastic field bends the strokes, a random affine map (rotation, anisotropic
scale, shear, shift) places the character, and the pen width varies per drawing and per
stroke. Strokes are rendered as anti-aliased distance fields directly at the target size:
bright strokes on a black background, values in [0, 1], like the Omniglot pipeline.

Everything is a pure function of ``(seed, split, class, drawing)``: class ``c`` of split ``s``
draws its skeleton from ``PCG64([seed, TAG, s, c])`` and drawing ``i`` from
``PCG64([seed, TAG, s, c, i + 1])``. The three splits use different ``s``, so their classes
are disjoint whatever their sizes. Images are rendered a class at a time (vectorised over the
class's drawings, with torch) on first use and kept in memory as uint8 (a 4000-class split of
20 drawings is 63 MB at 28 px).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import FewShotDataset, rotation_groups
from .transforms import shift

__all__ = ["GLYPH_DEFAULT_CLASSES", "GlyphDataset", "render_glyph_class"]

GLYPH_DEFAULT_CLASSES = {"train": 4000, "val": 400, "test": 1000}
_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
_TAG = 0x676C7970  # "glyp": keeps these streams apart from other uses of the same seed
_SAMPLES_PER_STROKE = 10  # points along each Bezier curve (9 segments)


def _skeleton(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A class's strokes: control points (n, 4, 2) in the unit square, and half widths (n,)."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.35, 0.35, 0.2]))
    strokes = np.empty((n, 4, 2))
    for s in range(n):
        if s > 0 and rng.random() < 0.6:
            # Start on a point of an earlier stroke, as connected pen strokes do.
            prev = strokes[rng.integers(0, s)]
            t = rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)])
            start = _bezier(prev[None], np.array([t]))[0, 0]
        else:
            start = rng.uniform(0.15, 0.85, size=2)
        for _ in range(20):
            length = rng.uniform(0.3, 0.7)
            angle = rng.uniform(0, 2 * math.pi)
            end = start + length * np.array([math.cos(angle), math.sin(angle)])
            if np.all((end > 0.1) & (end < 0.9)):
                break
        end = np.clip(end, 0.1, 0.9)
        direction = end - start
        normal = np.array([-direction[1], direction[0]])
        # Curvature: near-straight strokes, arcs and S-curves, by the two inner control points.
        bend = rng.choice([0.0, 1.0, 1.0], p=[0.35, 0.4, 0.25]) * rng.normal(0, 0.5, size=2)
        if rng.random() < 0.5:
            bend[1] = bend[0]  # same side: an arc rather than an S
        p1 = start + direction / 3 + bend[0] * normal
        p2 = start + 2 * direction / 3 + bend[1] * normal
        strokes[s] = np.stack([start, p1, p2, end])
    half_width = np.full(n, rng.uniform(0.032, 0.046))
    return strokes, half_width


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points of cubic Bezier curves: ctrl (..., 4, 2), t (T,) -> (..., T, 2)."""
    t = t[:, None]
    u = 1 - t
    c = ctrl[..., None, :, :]
    return (
        u**3 * c[..., 0, :]
        + 3 * u**2 * t * c[..., 1, :]
        + 3 * u * t**2 * c[..., 2, :]
        + t**3 * c[..., 3, :]
    )


def _drawings(strokes: np.ndarray, half_width: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distorted drawings, vectorised over drawings.

    Args:
        strokes: control points of shape (n, 4, 2); half_width: of shape (n,).
        z: standard normal draws of shape (B, 8 * n + 16), one row per drawing.

    Returns:
        polyline points of shape (B, n, T, 2) and per-stroke half widths of shape (B, n).
    """
    B, n = len(z), len(strokes)
    jitter, z = z[:, : 8 * n].reshape(B, n, 4, 2), z[:, 8 * n :]
    ctrl = strokes[None] + 0.045 * jitter  # the drawer's hand
    pts = _bezier(ctrl, np.linspace(0, 1, _SAMPLES_PER_STROKE))  # (B, n, T, 2)
    # Smooth elastic bend: two random low-frequency sinusoidal displacement fields.
    for k in range(2):
        freq, phase, amp = 3.0 * z[:, 5 * k : 5 * k + 2], math.pi * z[:, 5 * k + 2], 0.035 * z[:, 5 * k + 3 : 5 * k + 5]
        arg = np.einsum("bntd,bd->bnt", pts, freq) + phase[:, None, None]
        pts = pts + amp[:, None, None, :] * np.sin(arg)[..., None]
    # Affine placement about the centre: rotation, anisotropic scale, shear, shift.
    theta, sx, sy, sh = 0.18 * z[:, 10], np.exp(0.1 * z[:, 11]), np.exp(0.1 * z[:, 12]), 0.1 * z[:, 13]
    cos, sin = np.cos(theta), np.sin(theta)
    # a = rot @ shear @ scale, written out per drawing
    a = np.empty((B, 2, 2))
    a[:, 0, 0] = cos * sx
    a[:, 0, 1] = (cos * sh - sin) * sy
    a[:, 1, 0] = sin * sx
    a[:, 1, 1] = (sin * sh + cos) * sy
    offset = 0.06 * z[:, 14:16]
    pts = np.einsum("bntd,bed->bnte", pts - 0.5, a) + 0.5 + offset[:, None, None, :]
    widths = half_width[None] * np.exp(0.15 * z[:, 16:17] + 0.1 * z[:, 17 : 17 + n])
    return pts, widths


def render_glyph_class(seed: int, split: str, c: int, n_images: int, size: int = 28) -> np.ndarray:
    """Render drawings ``0 .. n_images - 1`` of glyph class ``c`` of ``split``.

    Returns:
        uint8 array of shape (n_images, size, size): bright strokes (255) on black (0).

    >>> a = render_glyph_class(0, "train", 3, 4)
    >>> a.shape, a.dtype, bool((a == render_glyph_class(0, "train", 3, 4)).all())
    ((4, 28, 28), dtype('uint8'), True)
    >>> bool((a[:2] == render_glyph_class(0, "train", 3, 2)).all())  # drawing i is independent of n
    True
    >>> bool(0.03 < (a > 127).mean() < 0.4)  # some ink, mostly background
    True
    """
    s = _SPLIT_INDEX[split]
    strokes, half_width = _skeleton(np.random.Generator(np.random.PCG64([seed, _TAG, s, c])))
    n = len(strokes)
    z = np.stack([
        np.random.Generator(np.random.PCG64([seed, _TAG, s, c, i + 1])).standard_normal(8 * n + 17 + n)
        for i in range(n_images)
    ])
    pts, widths = _drawings(strokes, half_width, z)
    return _render(pts, widths, size)


def _render(pts: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased polylines: pts (B, n, T, 2) as (x, y), widths (B, n) -> uint8 (B, size, size).

    Each stroke's distance field is computed only inside the pixel box its drawings can reach.
    Plain float32 numpy on purpose: these arrays are small, and torch's intra-op threads only
    contend with the training step for the same cores (10x slower on a busy 2-core machine).
    """
    B, n = pts.shape[:2]
    p = pts.astype(np.float32) * size  # pixel units; pixel (i, j) has its centre at (j+.5, i+.5)
    w = widths.astype(np.float32) * size
    img = np.zeros((B, size, size), dtype=np.float32)
    for s in range(n):
        reach = float(w[:, s].max()) + 1.0
        lo = np.floor(p[:, s].min(axis=(0, 1)) - reach).astype(int).clip(0, size)
        hi = np.ceil(p[:, s].max(axis=(0, 1)) + reach).astype(int).clip(0, size)
        if hi[0] <= lo[0] or hi[1] <= lo[1]:
            continue  # the stroke lies entirely off the canvas
        xs = np.arange(lo[0], hi[0], dtype=np.float32) + 0.5
        ys = np.arange(lo[1], hi[1], dtype=np.float32) + 0.5
        px = np.tile(xs, len(ys))  # row-major pixels of the box
        py = np.repeat(ys, len(xs))
        a, b = p[:, s, :-1, None, :], p[:, s, 1:, None, :]  # (B, T-1, 1, 2)
        ax, ay = a[..., 0], a[..., 1]
        abx, aby = b[..., 0] - ax, b[..., 1] - ay
        apx, apy = px - ax, py - ay  # (B, T-1, P)
        t = (apx * abx + apy * aby) / np.maximum(abx * abx + aby * aby, np.float32(1e-12))
        np.clip(t, 0, 1, out=t)
        dx = apx - t * abx
        dy = apy - t * aby
        dist = np.sqrt((dx * dx + dy * dy).min(axis=1))  # (B, P)
        # Coverage ramps over one pixel around the stroke edge.
        ink = np.clip(w[:, s, None] - dist + 0.5, 0, 1).reshape(B, len(ys), len(xs))
        box = img[:, lo[1] : hi[1], lo[0] : hi[0]]
        np.maximum(box, ink, out=box)
    return (img * 255 + 0.5).astype(np.uint8)


class GlyphDataset(FewShotDataset):
    """One split of the procedural glyph classes (see the module docstring).

    Args:
        split: "train", "val" or "test" (disjoint classes).
        n_classes: characters in this split (default 4000 / 400 / 1000).
        images_per_class: drawings per character (default 20, as Omniglot).
        image_size: side in pixels (default 28).
        rotations: add the 90/180/270-degree rotations of every character as new classes.
        augment: shift each load by up to 2 pixels (keyed randomness, see ``base``).
        seed: the glyph universe; the same seed gives the same characters and drawings.

    >>> ds = GlyphDataset("val", n_classes=5, images_per_class=3, seed=1)
    >>> len(ds), ds.n_classes, ds[4][0].shape, ds[4][1]
    (15, 5, torch.Size([1, 28, 28]), 1)
    """

    def __init__(
        self,
        split: str,
        *,
        n_classes: int | None = None,
        images_per_class: int = 20,
        image_size: int = 28,
        rotations: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        n_chars = GLYPH_DEFAULT_CLASSES[split] if n_classes is None else n_classes
        n_rot = 4 if rotations else 1
        labels = np.repeat(np.arange(n_chars * n_rot), images_per_class)
        names = [
            f"glyph-{split}-{c:05d}" + (f"-rot{r * 90}" if rotations else "")
            for c in range(n_chars)
            for r in range(n_rot)
        ]
        super().__init__(
            name="glyphs",
            split=split,
            labels=labels,
            class_names=names,
            channels=1,
            image_size=image_size,
            augment=augment,
            seed=seed,
        )
        self.n_characters = n_chars
        self.images_per_class = images_per_class
        self.rotations = rotations
        if rotations:
            self.class_groups = rotation_groups(self.n_classes)
        self._classes: dict[int, np.ndarray] = {}

    def character(self, c: int) -> np.ndarray:
        """All drawings of character ``c`` (unrotated), uint8 of shape (images_per_class, S, S)."""
        imgs = self._classes.get(c)
        if imgs is None:
            imgs = render_glyph_class(self.seed, self.split, c, self.images_per_class, self.image_size)
            self._classes[c] = imgs
        return imgs

    def generate_all(self) -> None:
        """Render every class now (otherwise each is rendered on first use)."""
        for c in range(self.n_characters):
            self.character(c)

    def _load(self, index: int, rng: np.random.Generator | None) -> Tensor:
        # numpy until the end: per-image torch calls pay for thread-pool hand-offs.
        label, drawing = divmod(index, self.images_per_class)
        char, rot = divmod(label, 4) if self.rotations else (label, 0)
        x = self.character(char)[drawing].astype(np.float32) * np.float32(1 / 255)
        if rot:
            x = np.rot90(x, rot)
        if rng is not None:
            x = shift(x, *(int(v) for v in rng.integers(-2, 3, size=2)))
        return torch.from_numpy(np.ascontiguousarray(x)[None])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_classes"] = {}  # workers render what they need
        return state
