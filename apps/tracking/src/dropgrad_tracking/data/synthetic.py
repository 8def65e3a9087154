"""Procedural tracking sequences written in the raw OTB layout, so the OTB loader reads them.

Each sequence is a pure function of ``(seed, index)``: a textured target moves smoothly over a
cluttered textured background, with (per sequence, drawn from the seed) scale change,
illumination change, a partial occluder sweeping across and look-alike distractors (the same
texture, tinted). Boxes are integers and the target is drawn exactly inside its box, which always
lies inside the frame. ``attrs.txt`` lists the OTB codes of the effects present (IV, SV, OCC, BC,
and FM when the target moves more than 20 px between two frames, as OTB defines it).

Layout written under ``root``::

    <root>/synthetic.json                       generator settings (reused only if they match)
    <root>/Synthetic-01/img/0001.jpg ...
    <root>/Synthetic-01/groundtruth_rect.txt    x,y,w,h per frame
    <root>/Synthetic-01/attrs.txt
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from dropgrad import atomic_write, write_json

from .otb import load_otb_folders
from .sequence import Sequence

__all__ = [
    "GENERATOR_VERSION", "SyntheticConfig", "ensure_synthetic", "is_synthetic_set", "render_sequence", "write_synthetic",
]

#: Bumped whenever the rendering changes, so a stale folder is refused rather than reused.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic set (all part of its identity: change one, get another set)."""

    n_sequences: int = 8
    n_frames: int = 60
    height: int = 240
    width: int = 320
    seed: int = 0

    def validate(self) -> None:
        if self.n_sequences < 1 or self.n_frames < 2:
            raise ValueError(f"synthetic set needs >= 1 sequence of >= 2 frames, got {self.n_sequences} x {self.n_frames}")
        if self.height < 64 or self.width < 64:
            raise ValueError(f"synthetic frames must be at least 64x64, got {self.height}x{self.width}")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Value noise: a coarse random grid upsampled smoothly, float32 in [0, 1], shape (h, w, c)."""
    coarse = rng.random((max(cells * h // max(h, w), 2), max(cells * w // max(h, w), 2), channels)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1).reshape(h, w, channels)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = 0.55 * _smooth_noise(rng, h, w, 6) + 0.25 * _smooth_noise(rng, h, w, 40)
    for _ in range(int(rng.integers(15, 30))):  # clutter: random blobs and bars
        color = rng.random(3).astype(np.float32)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            axes = (int(rng.integers(4, w // 8)), int(rng.integers(4, h // 8)))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, color.tolist(), -1)
        else:
            corner = (cx + int(rng.integers(3, w // 6)), cy + int(rng.integers(3, h // 6)))
            cv2.rectangle(img, (cx, cy), corner, color.tolist(), -1)
    return img.clip(0, 1)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A distinctive target texture: two colours in a random stripe/check pattern plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = rng.uniform(2, 5, size=2)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    pattern = (np.sin(2 * np.pi * freq[0] * u) * np.sin(2 * np.pi * freq[1] * v) > 0).astype(np.float32)
    c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    tex = pattern[..., None] * c1 + (1 - pattern[..., None]) * c2
    tex += 0.15 * (_smooth_noise(rng, size, size, 8) - 0.5)
    cv2.rectangle(tex, (0, 0), (size - 1, size - 1), (rng.random(3) * 0.3).tolist(), max(size // 20, 1))
    return tex.clip(0, 1)


def _trajectory(rng: np.random.Generator, n: int, span: float, amplitude: float) -> np.ndarray:
    """A smooth path in [0, span]: a sum of three random sinusoids around the middle, shape (n,)."""
    t = np.arange(n, dtype=np.float64)
    path = np.zeros(n)
    for _ in range(3):
        period = rng.uniform(0.6, 2.0) * n
        path += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    path = path / max(np.abs(path).max(), 1e-9)
    return span / 2 + amplitude * span / 2 * path


def render_sequence(config: SyntheticConfig, index: int) -> tuple[list[np.ndarray], np.ndarray, tuple[str, ...]]:
    """Render sequence ``index``: (RGB uint8 frames of shape (H, W, 3), int boxes (n, 4), attribute codes).

    >>> frames, boxes, attrs = render_sequence(SyntheticConfig(n_frames=3, height=64, width=96), 0)
    >>> len(frames), frames[0].shape, boxes.shape, "BC" in attrs
    (3, (64, 96, 3), (3, 4), True)
    """
    rng = np.random.default_rng([config.seed, index, GENERATOR_VERSION])
    h, w, n = config.height, config.width, config.n_frames
    background = _background(rng, h, w)
    base = float(rng.uniform(0.12, 0.2)) * min(h, w)
    aspect = float(rng.uniform(0.6, 1.6))
    use_scale, use_light, use_occ = (bool(rng.random() < p) for p in (0.7, 0.6, 0.6))
    n_distractors = int(rng.integers(1, 3))
    texture = _texture(rng, 128)

    t = np.arange(n)
    scale_amplitude = rng.uniform(0.25, 0.45) if use_scale else 0.05
    scale = 1 + scale_amplitude * np.sin(2 * np.pi * t / rng.uniform(0.8, 1.5) / n + rng.uniform(0, 6.3))
    bw = np.maximum(np.round(base * np.sqrt(aspect) * scale), 8).astype(int)
    bh = np.maximum(np.round(base / np.sqrt(aspect) * scale), 8).astype(int)
    cx = _trajectory(rng, n, w, 0.75)
    cy = _trajectory(rng, n, h, 0.7)
    x = np.clip(np.round(cx - bw / 2), 0, w - bw).astype(int)
    y = np.clip(np.round(cy - bh / 2), 0, h - bh).astype(int)
    boxes = np.stack([x, y, bw, bh], axis=1)

    gain = 1 + (0.35 * np.sin(2 * np.pi * t / n * rng.uniform(0.7, 1.5) + rng.uniform(0, 6.3)) if use_light else 0 * t)
    distractors = []
    for _ in range(n_distractors):
        tint = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
        dw, dh = int(bw[0]), int(bh[0])
        dx = np.clip(np.round(_trajectory(rng, n, w, 0.9) - dw / 2), 0, w - dw).astype(int)
        dy = np.clip(np.round(_trajectory(rng, n, h, 0.9) - dh / 2), 0, h - dh).astype(int)
        distractors.append((tint, dw, dh, dx, dy))
    occ_start = int(rng.integers(n // 4, max(n // 2, n // 4 + 1)))
    occ_len = max(n // 4, 2)
    occluder = _smooth_noise(rng, h, w, 10) * 0.5 + 0.25

    frames = []
    for i in range(n):
        img = background.copy()
        for tint, dw, dh, dx, dy in distractors:
            patch = cv2.resize(texture, (dw, dh), interpolation=cv2.INTER_AREA) * tint
            img[dy[i] : dy[i] + dh, dx[i] : dx[i] + dw] = patch.clip(0, 1)
        xi, yi, wi, hi = boxes[i]
        img[yi : yi + hi, xi : xi + wi] = cv2.resize(texture, (int(wi), int(hi)), interpolation=cv2.INTER_AREA)
        if use_occ and occ_start <= i < occ_start + occ_len:
            # A vertical bar sweeps over the target, hiding up to about half of it.
            progress = (i - occ_start) / max(occ_len - 1, 1)
            ox = int(xi - wi * 0.5 + progress * wi * 1.5)
            x0, x1 = max(ox, 0), min(ox + max(int(wi * 0.5), 2), w)
            img[:, x0:x1] = occluder[:, x0:x1]
        img *= np.float32(gain[i] * 255)
        img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(5.0)  # sensor noise
        frames.append(np.clip(img, 0, 255, out=img).round().astype(np.uint8))

    attrs = ["BC"]
    if use_light:
        attrs.append("IV")
    if use_scale and (bw.max() * bh.max()) / (bw.min() * bh.min()) > 1.5:
        attrs.append("SV")
    if use_occ:
        attrs.append("OCC")
    centers = boxes[:, :2] + boxes[:, 2:] / 2
    if np.hypot(*np.diff(centers, axis=0).T).max() > 20:
        attrs.append("FM")
    order = ["IV", "SV", "OCC", "DEF", "MB", "FM", "IPR", "OPR", "OV", "BC", "LR"]
    return frames, boxes, tuple(sorted(attrs, key=order.index))


def sequence_name(index: int) -> str:
    """``Synthetic-01``, ``Synthetic-02``, ..."""
    return f"Synthetic-{index + 1:02d}"


def write_synthetic(root: str | os.PathLike[str], config: SyntheticConfig) -> Path:
    """Render the set into ``root`` (OTB layout, see the module docstring); returns ``root``."""
    config.validate()
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for index in range(config.n_sequences):
        frames, boxes, attrs = render_sequence(config, index)
        folder = base / sequence_name(index)
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "img").mkdir(parents=True)
        for i, frame in enumerate(frames):
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise OSError(f"cannot encode frame {i + 1} of {folder.name}")
            (folder / "img" / f"{i + 1:04d}.jpg").write_bytes(data.tobytes())
        text = "".join(",".join(str(int(v)) for v in b) + "\n" for b in boxes)
        attr_line = ", ".join(attrs) + "\n"
        atomic_write(folder / "groundtruth_rect.txt", lambda f, t=text: f.write(t), binary=False)
        atomic_write(folder / "attrs.txt", lambda f, t=attr_line: f.write(t), binary=False)
    # The manifest goes last: a folder with a manifest is a complete set.
    write_json(base / "synthetic.json", _manifest(config), sort_keys=True)
    return base


def _manifest(config: SyntheticConfig) -> dict[str, object]:
    return {"generator_version": GENERATOR_VERSION, **asdict(config)}


def is_synthetic_set(root: str | os.PathLike[str], config: SyntheticConfig) -> bool:
    """Whether ``root`` holds the complete set of ``config`` (its manifest, written last, matches)."""
    manifest = Path(root) / "synthetic.json"
    try:
        return manifest.is_file() and json.loads(manifest.read_text()) == _manifest(config)
    except (OSError, ValueError):
        return False


def ensure_synthetic(root: str | os.PathLike[str], config: SyntheticConfig) -> dict[str, Sequence]:
    """Load the synthetic set in ``root``, generating it first if absent.

    Raises:
        ValueError: ``root`` holds a synthetic set made with other settings, or other files; the
            message names the folder (nothing is overwritten).
    """
    config.validate()
    base = Path(root)
    manifest = base / "synthetic.json"
    wanted = _manifest(config)
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != wanted:
            diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
            raise ValueError(
                f"{base} holds a synthetic set made with other settings "
                f"({', '.join(f'{k}: {a} there, {b} asked' for k, (a, b) in diff.items())}); "
                f"choose another --root or remove that folder"
            )
    elif base.exists() and any(base.iterdir()):
        raise ValueError(f"{base} exists and is not a synthetic set (no synthetic.json); choose an empty or new --root")
    else:
        write_synthetic(base, config)
    return load_otb_folders(base)
