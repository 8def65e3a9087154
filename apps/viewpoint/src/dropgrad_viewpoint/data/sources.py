"""Per-category object sources for tasks: crops made once (preloaded) or on demand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .objectnet3d import CategoryData, ObjectItem, ObjectNet3D

__all__ = ["CategorySource"]


class CategorySource:
    """The usable objects of one category, served as tensor batches.

    Args:
        dataset: the data set the items come from.
        cls: the category.
        items: its usable objects (N).
        size: crop side in pixels.
        preload: crop everything now (small sets); otherwise crop the requested objects on
            every call (real data sets, where all crops would not fit in memory).
    """

    def __init__(self, dataset: ObjectNet3D, cls: str, items: Sequence[ObjectItem], size: int, preload: bool) -> None:
        self.dataset = dataset
        self.cls = cls
        self.items = list(items)
        self.size = size
        self.names = dataset.keypoint_names(cls)
        self._data = CategoryData.build(dataset, cls, self.items, size) if preload else None

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, index: Sequence[int] | np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors of the objects at ``index`` on ``device`` (see :class:`CategoryData`)."""
        index = np.asarray(index, dtype=np.int64)
        if self._data is not None:
            out = self._data.subset(index)
        else:
            data = CategoryData.build(self.dataset, self.cls, [self.items[i] for i in index], self.size)
            out = data.subset(np.arange(len(index)))
        return {k: v.to(device) for k, v in out.items()}

    def crops(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """The uint8 BGR crops ``(n, S, S, 3)`` of the objects at ``index`` (for figures)."""
        index = np.asarray(index, dtype=np.int64)
        if self._data is not None:
            return self._data.raw_crops[index]
        return CategoryData.build(self.dataset, self.cls, [self.items[i] for i in index], self.size).raw_crops
