"""A tracking sequence: frame files, one ground-truth box per frame, attributes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

__all__ = ["ImageReadError", "Sequence", "read_image"]


class ImageReadError(OSError):
    """A frame that OpenCV cannot decode (missing, truncated or not an image)."""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a frame with OpenCV as an RGB uint8 array of shape (H, W, 3).

    Grayscale frames (several OTB sequences) come back with the gray plane in all three channels,
    so every tracker sees 3-channel input.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"cannot read image {path} (missing, truncated or not an image OpenCV can decode)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Sequence:
    """One tracking target in one video.

    Attributes:
        name: canonical name (e.g. ``Jogging-1``).
        frames: frame files in order, one per box (may be empty for annotation-only sources).
        boxes: ground truth ``x,y,w,h`` (1-based OTB pixel convention), float64 of shape (n, 4);
            an empty box (w or h not positive, or NaN) marks a frame without a visible target.
        attributes: OTB attribute codes (``IV``, ``SV``, ``OCC``, ...).
        first_frame: the number of the first frame in the video (David starts at 300).
    """

    name: str
    frames: list[Path]
    boxes: np.ndarray
    attributes: tuple[str, ...] = ()
    first_frame: int = 1
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"{self.name}: boxes must have shape (n, 4), got {self.boxes.shape}")
        if self.frames and len(self.frames) != len(self.boxes):
            raise ValueError(f"{self.name}: {len(self.frames)} frames but {len(self.boxes)} boxes")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def init_box(self) -> np.ndarray:
        """The first frame's ground truth, shape (4,): what a tracker is started from."""
        return self.boxes[0].copy()

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as an RGB uint8 array of shape (H, W, 3)."""
        if not self.frames:
            raise ImageReadError(f"{self.name}: no frame files are known (annotations were read without an image root)")
        return read_image(self.frames[index])
