"""The tracker interface: got10k's ``Tracker`` (``init(image, box)``, ``update(image) -> box``).

Subclassing got10k's class means any got10k experiment can run our trackers, and our runner can
run any got10k tracker. got10k hands trackers PIL images; our runner hands them RGB numpy arrays
read with OpenCV. :func:`as_array` accepts both, so a tracker never has to care which.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from got10k.trackers import Tracker as _Got10kTracker

__all__ = ["Tracker", "as_array", "as_box", "first_box"]


class Tracker(_Got10kTracker):
    """Base class of every tracker here.

    Subclasses implement ``init(image, box)`` and ``update(image) -> box`` (``x, y, w, h`` in
    pixels, the numbers of the OTB/got10k files, whose x and y count from 1; the crops take them
    as 0-based array positions, a one-pixel shift, as MDNet, pysot and got10k do). ``metadata``
    is copied into every results folder and report (e.g. ``{"backbone": "random-init"}``), so
    unusual set-ups are never hidden.
    """

    def __init__(self, name: str, is_deterministic: bool = True, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(name=name, is_deterministic=is_deterministic)
        self.metadata: dict[str, Any] = dict(metadata or {})

    def init(self, image: Any, box: np.ndarray) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def update(self, image: Any) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def as_array(image: Any) -> np.ndarray:
    """An RGB uint8 array of shape (H, W, 3) from a PIL image or an (H, W[, C]) array.

    >>> as_array(np.zeros((2, 3), dtype=np.uint8)).shape
    (2, 3, 3)
    """
    array = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def as_box(box: Any, where: str) -> np.ndarray:
    """A float64 box of shape (4,) from whatever a tracker returned; ``where`` names it in errors."""
    out = np.asarray(box, dtype=np.float64).reshape(-1)
    if out.shape != (4,):
        raise ValueError(f"{where}: a tracker must return 4 numbers (x, y, w, h), got {box!r}")
    return out


def first_box(box: Any, where: str) -> np.ndarray:
    """:func:`as_box` of the box a tracker starts from, which must be finite with a positive size."""
    out = as_box(box, where)
    if not (np.isfinite(out).all() and out[2] > 0 and out[3] > 0):
        raise ValueError(f"{where}: the first box must be finite with a positive width and height, got {out.tolist()}")
    return out
