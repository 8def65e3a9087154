"""Several splits of one data set as one split of all their classes.

CloserLook's cross-domain protocol meta-trains on every mini-ImageNet class (its ``all.json``:
base, val and novel together) and validates and tests on CUB; :class:`ClassUnion` is that
training set, built from the three splits the loaders already read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .base import FewShotDataset
from .errors import DataError

__all__ = ["ClassUnion"]


class ClassUnion(FewShotDataset):
    """The items of ``parts`` (splits of one data set) with their classes numbered one after another.

    Augmentation keys are this data set's: an item's stream is ``[seed, *key]`` as in any split.

    >>> from dropgrad_fewshot.data import build_dataset
    >>> parts = [build_dataset("glyphs", s, n_classes=3, images_per_class=2) for s in ("train", "val")]
    >>> union = ClassUnion(parts)
    >>> union.describe(), union.labels.tolist()
    ('glyphs all: 6 classes, 12 images, 1x28x28', [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    """

    def __init__(self, parts: Sequence[FewShotDataset], split: str = "all") -> None:
        if not parts:
            raise DataError("a union of splits needs at least one split")
        first = parts[0]
        for p in parts[1:]:
            if (p.name, p.channels, p.image_size, p.augment, p.seed) != (first.name, first.channels, first.image_size, first.augment, first.seed):
                raise DataError(f"cannot join {p.describe()} to {first.describe()}: not splits of one data set built alike")
        offsets = np.cumsum([0] + [p.n_classes for p in parts])
        super().__init__(
            name=first.name, split=split,
            labels=np.concatenate([p.labels + o for p, o in zip(parts, offsets)]),
            class_names=[f"{p.split}/{c}" for p in parts for c in p.class_names],
            channels=first.channels, image_size=first.image_size, augment=first.augment, seed=first.seed,
        )
        if any(p.class_groups is not None for p in parts):
            # Each part's groups after the ones before; a part without groups: one group per class.
            own = [np.arange(p.n_classes, dtype=np.int64) if p.class_groups is None else p.class_groups for p in parts]
            starts = np.cumsum([0] + [int(g.max()) + 1 if len(g) else 0 for g in own])
            self.class_groups = np.concatenate([g + s for g, s in zip(own, starts)])
        self.parts = list(parts)
        self._part_classes = offsets
        self._starts = np.cumsum([0] + [len(p) for p in parts])

    def _locate(self, index: int) -> tuple[FewShotDataset, int]:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.parts[k], index - int(self._starts[k])

    def _load(self, index: int, rng: np.random.Generator | None) -> Tensor:
        part, local = self._locate(index)
        return part._load(local, rng)

    def class_source(self, c: int) -> str | None:
        k = int(np.searchsorted(self._part_classes, c, side="right")) - 1
        return self.parts[k].class_source(c - int(self._part_classes[k]))

    def preload(self, threads: int | None = None) -> int:
        """Each part's :meth:`preload` where it has one; returns how many images were decoded."""
        return sum(p.preload(threads) for p in self.parts if hasattr(p, "preload"))
