"""The trivial baseline: the first frame's box, held still for the whole sequence."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Tracker, as_box

__all__ = ["StaticTracker"]


class StaticTracker(Tracker):
    """Reports the initial box in every frame: the floor any real tracker must clear.

    >>> t = StaticTracker()
    >>> t.init(np.zeros((8, 8, 3), np.uint8), [1, 2, 3, 4])
    >>> t.update(np.zeros((8, 8, 3), np.uint8)).tolist()
    [1.0, 2.0, 3.0, 4.0]
    """

    def __init__(self) -> None:
        super().__init__(name="static", is_deterministic=True)
        self._box = np.zeros(4)

    def init(self, image: Any, box: Any) -> None:
        self._box = as_box(box, "StaticTracker.init").copy()

    def update(self, image: Any) -> np.ndarray:
        return self._box.copy()
