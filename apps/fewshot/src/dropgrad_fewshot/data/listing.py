"""Shared pieces of the file-list loaders (mini-ImageNet, CUB): the index, existence checks.

A loader turns its on-disk format into an :class:`ImageIndex` (one path and one class name per
item, plus where each item was listed, for error messages); :func:`rgb_dataset` turns that into
a :class:`~dropgrad_fewshot.data.base.ImageFileDataset` with CloserLook's transforms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ImageFileDataset
from .errors import DataError
from .transforms import RGBTransform

__all__ = ["IMAGE_SUFFIXES", "ImageIndex", "check_class_sizes", "rgb_dataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageIndex:
    """Items of one split: ``paths[i]`` of class ``classes[i]``, listed at ``origins[i]``.

    ``origins`` say where an item came from ("train.csv line 12", "base.json image_names[7]"),
    so a missing file is reported where the user can fix it. ``sources`` maps a class to its
    folder or list file.
    """

    paths: list[Path] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def add(self, path: Path, cls: str, origin: str) -> None:
        self.paths.append(path)
        self.classes.append(cls)
        self.origins.append(origin)

    def check_files(self, what: str) -> None:
        """Raise :class:`DataError` naming the first listed file that does not exist.

        Lists each folder once instead of calling ``stat`` per file (60,000 files on a network
        file system), then reports the first missing item in list order and how many are missing.
        """
        listings: dict[Path, set[str] | None] = {}
        missing = []
        for i, p in enumerate(self.paths):
            folder = p.parent
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except (FileNotFoundError, NotADirectoryError):
                    listings[folder] = None
            names = listings[folder]
            if names is None or p.name not in names:
                missing.append(i)
        if missing:
            i = missing[0]
            raise DataError(
                f"{what}: {self.origins[i]} names {self.paths[i]}, which does not exist"
                f" ({len(missing)} of {len(self.paths)} listed images are missing); expected "
                "every listed image to be present"
            )


def check_class_sizes(
    counts: dict[str, int], n_classes: int, per_class: int, what: str, sources: dict[str, str]
) -> None:
    """Raise :class:`DataError` unless there are ``n_classes`` classes of ``per_class`` images."""
    if len(counts) != n_classes:
        raise DataError(
            f"{what}: found {len(counts)} classes, expected {n_classes} (pass check_sizes=False "
            "to accept a different split)"
        )
    wrong = [(c, n) for c, n in counts.items() if n != per_class]
    if wrong:
        c, n = wrong[0]
        raise DataError(
            f"{what}: class {c} ({sources.get(c, '?')}) has {n} images, expected {per_class}"
            f" ({len(wrong)} classes differ; pass check_sizes=False to accept them)"
        )


def rgb_dataset(
    index: ImageIndex, *, name: str, split: str, image_size: int, augment: bool, seed: int
) -> ImageFileDataset:
    """An RGB :class:`ImageFileDataset` over ``index``; classes sorted by name, labels 0..k-1."""
    if not index.paths:
        raise DataError(f"{name} {split}: the split lists no images")
    names = sorted(set(index.classes))
    lookup = {c: k for k, c in enumerate(names)}
    return ImageFileDataset(
        paths=index.paths,
        labels=np.array([lookup[c] for c in index.classes], dtype=np.int64),
        class_names=names,
        class_sources=[index.sources.get(c, "") for c in names],
        transform=RGBTransform(image_size, augment),
        mode="RGB",
        name=name,
        split=split,
        channels=3,
        image_size=image_size,
        augment=augment,
        seed=seed,
    )
