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

__all__ = ["IMAGE_SUFFIXES", "ImageIndex", "check_class_sizes", "read_list_file", "rgb_dataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_list_file(path: Path, expected: str) -> str:
    """``path``'s text; a file that is not UTF-8 is one :class:`DataError` naming it and ``expected``."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: byte {err.start} is not UTF-8; expected {expected}") from None


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

    def check_unique(self, what: str) -> None:
        """Raise :class:`DataError` naming both places where one image is listed twice.

        A repeated list line would put the same image twice in its class, so one episode could
        hold it in both its support and its query set.
        """
        seen: dict[Path, int] = {}
        for i, p in enumerate(self.paths):
            j = seen.setdefault(p, i)
            if j != i:
                raise DataError(
                    f"{what}: {self.origins[i]} lists {p} again (already listed at {self.origins[j]}); "
                    "expected every image once"
                )

    def check_files(self, what: str, hint: str | None = None) -> None:
        """Raise :class:`DataError` naming the first listed file that does not exist.

        Lists each folder once instead of calling ``stat`` per file (60,000 files on a network
        file system), then reports the first missing item in list order and how many are missing.
        ``hint``: what the caller's loader offers instead (e.g. CUB's ``check_files=false``),
        appended in parentheses; None for a loader that needs every file.
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
                "every listed image to be present" + (f" ({hint})" if hint else "")
            )


def check_class_sizes(index: ImageIndex, n_classes: int, per_class: int | None, what: str) -> None:
    """Raise :class:`DataError` unless ``index`` has ``n_classes`` classes of ``per_class`` images
    (None: any number). A mistyped label makes a stray class of a few images: the message names
    the smallest class and where it is first listed."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for c, origin in zip(index.classes, index.origins):
        counts[c] = counts.get(c, 0) + 1
        first.setdefault(c, origin)
    hint = "check_sizes=false accepts a different split: fewshot-train --data-options, fewshot-cache --option"
    if len(counts) != n_classes:
        c = min(counts, key=lambda k: (counts[k], k)) if counts else None
        smallest = f"; the smallest class, {c} (first listed at {first[c]}), has {counts[c]} image(s)" if c else ""
        raise DataError(f"{what}: found {len(counts)} classes, expected {n_classes}{smallest} ({hint})")
    wrong = [(c, n) for c, n in counts.items() if per_class is not None and n != per_class]
    if wrong:
        c, n = wrong[0]
        raise DataError(
            f"{what}: class {c} ({index.sources.get(c, first[c])}) has {n} images, expected {per_class}"
            f" ({len(wrong)} classes differ; {hint})"
        )


def rgb_dataset(
    index: ImageIndex, *, name: str, split: str, image_size: int, augment: bool, seed: int
) -> ImageFileDataset:
    """An RGB :class:`ImageFileDataset` over ``index``; classes sorted by name, labels 0..k-1."""
    if not index.paths:
        raise DataError(f"{name} {split}: the split lists no images")
    index.check_unique(f"{name} {split}")
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
