"""The dataset interface every few-shot data set satisfies, and the image-file dataset.

Every data set is a map-style ``torch.utils.data.Dataset`` of ``(image, label)`` pairs where the
label is a class index ``0 .. n_classes - 1`` *within the split*, plus the metadata that the
episode sampler and the error messages need (class names, where each class lives on disk).

Augmentation randomness is keyed, never drawn from a global RNG: :meth:`FewShotDataset.load`
takes a ``key`` (a tuple of non-negative ints) and the random stream of that load is
``numpy PCG64([dataset seed, *key])``. ``dataset[i]`` uses the key ``(epoch_seed, i)``, with
``epoch_seed`` set by :meth:`FewShotDataset.set_epoch_seed` (0 until called), so a plain
``DataLoader`` pass is reproducible epoch by epoch; :class:`~dropgrad_fewshot.data.episodes.
EpisodeBatches` passes ``(episode seed, episode id, slot)`` so an episode's images are a pure
function of its seed and index, in any process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError

__all__ = ["FewShotDataset", "ImageFileDataset", "open_image"]

# Bounds the per-process decoded-image cache of small grayscale sets (bytes of uint8 pixels).
_CACHE_LIMIT_BYTES = 512 * 2**20


def open_image(path: str | os.PathLike[str], mode: str) -> Image.Image:
    """Read an image file fully and convert it to PIL ``mode`` ("L" or "RGB").

    Grayscale files become 3-channel (R = G = B) under ``mode="RGB"``, which is how the two
    grayscale JPEGs of CUB-200-2011 enter an RGB pipeline.

    Raises:
        DataError: the file is missing or cannot be decoded; the message names the path.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "g.png")
    >>> Image.new("L", (4, 3), 7).save(path)
    >>> im = open_image(path, "RGB"); im.mode, im.size, im.getpixel((0, 0))
    ('RGB', (4, 3), (7, 7, 7))
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "I" or im.mode.startswith("I;16"):
                # 16-bit grayscale (PNG): convert() would clip every value above 255 to white.
                wide = np.asarray(im, dtype=np.float64)
                return Image.fromarray(np.round(wide / 257).clip(0, 255).astype(np.uint8)).convert(mode)
            return im.convert(mode)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable image {path}: {exc}; expected a JPEG/PNG image file") from None


def rotation_groups(n_classes: int) -> np.ndarray:
    """Groups of rotated-copy classes: class ``4k + r`` (character k, r quarter turns) is in group k."""
    return np.arange(n_classes, dtype=np.int64) // 4


class FewShotDataset(Dataset):
    """Base class of every few-shot data set (one split of it).

    Attributes:
        name: data set name ("glyphs", "omniglot", "miniimagenet", "cub").
        split: "train", "val" or "test".
        labels: class index of every item, int64 of shape (N,), values 0..n_classes-1.
        class_names: name of every class, ``len == n_classes``.
        channels: 1 for glyphs/omniglot, 3 for RGB sets.
        image_size: side of the square images ``load`` returns.
        augment: whether loads apply the (keyed) training augmentation.
        seed: the data set's seed (glyph classes; augmentation streams).
        class_groups: None, or the group of every class, int64 of shape (n_classes,): an
            episode never holds two classes of one group. Rotated copies of a character
            (Omniglot, glyphs with ``rotations``) are one group, as in Finn et al.'s MAML code.

    Subclasses implement :meth:`_load` and may override :meth:`class_source`.
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        labels: np.ndarray | Sequence[int],
        class_names: Sequence[str],
        channels: int,
        image_size: int,
        augment: bool,
        seed: int,
    ) -> None:
        self.name = name
        self.split = split
        self.labels = np.asarray(labels, dtype=np.int64)
        self.labels.setflags(write=False)
        self.class_names = list(class_names)
        self.channels = channels
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.class_groups: np.ndarray | None = None
        self._epoch_seed = 0

    # ------------------------------------------------------------------ interface
    @property
    def n_classes(self) -> int:
        """Number of classes of this split."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Item ``index``: (image of shape (channels, image_size, image_size) float32, label)."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {index} out of range 0..{len(self) - 1}")
        return self.load(index, (self._epoch_seed, index)), int(self.labels[index])

    def set_epoch_seed(self, seed: int) -> None:
        """Key the augmentation of ``dataset[i]`` on ``(seed, i)`` from now on."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"epoch seed must be a non-negative integer, got {seed!r}")
        self._epoch_seed = seed

    def load(self, index: int, key: Sequence[int] = (0,)) -> Tensor:
        """Image ``index`` of shape (channels, image_size, image_size), float32.

        Args:
            index: item index, 0 <= index < len(self).
            key: non-negative ints that, with the data set's seed, fix the augmentation stream
                of this load (ignored when ``augment`` is False).
        """
        rng = np.random.Generator(np.random.PCG64([self.seed, *key])) if self.augment else None
        return self._load(int(index), rng)

    def _load(self, index: int, rng: np.random.Generator | None) -> Tensor:
        raise NotImplementedError

    def item_groups(self) -> np.ndarray | None:
        """The group of every item (see ``class_groups``), int64 of shape (N,); None without groups."""
        return None if self.class_groups is None else self.class_groups[self.labels]

    def class_counts(self) -> np.ndarray:
        """Images per class, int64 of shape (n_classes,)."""
        return np.bincount(self.labels, minlength=self.n_classes)

    def class_source(self, c: int) -> str | None:
        """Where class ``c`` comes from (a folder or list file), for error messages."""
        return None

    def describe(self) -> str:
        """One line: name, split, classes, images (and the image format)."""
        return (
            f"{self.name} {self.split}: {self.n_classes} classes, {len(self)} images, "
            f"{self.channels}x{self.image_size}x{self.image_size}"
            f"{', augmented' if self.augment else ''}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class ImageFileDataset(FewShotDataset):
    """A split whose items are image files (Omniglot, mini-ImageNet, CUB).

    Args:
        paths: one file per item.
        labels: class index per item, int64 of shape (N,).
        class_names: one name per class.
        class_sources: one folder/file per class, named in error messages.
        transform: ``transform(pil_image, rng) -> Tensor (channels, size, size)``; ``rng`` is
            None without augmentation.
        mode: PIL mode the files are converted to ("L" or "RGB").
        rotations: optional int array of shape (N,): item ``i`` is rotated by
            ``90 * rotations[i]`` degrees counter-clockwise after the transform (Omniglot's
            rotated copies as new classes).
        cache: keep decoded, transformed images in memory (only without augmentation; for
            small grayscale sets such as Omniglot). Bounded to 512 MiB per process.
        **meta: ``name``, ``split``, ``channels``, ``image_size``, ``augment``, ``seed``.

    Raises (at load time, naming the path): :class:`DataError` for a missing or unreadable file.
    """

    def __init__(
        self,
        *,
        paths: Sequence[Path],
        labels: np.ndarray | Sequence[int],
        class_names: Sequence[str],
        class_sources: Sequence[str],
        transform: Callable[[Image.Image, np.random.Generator | None], Tensor],
        mode: str,
        rotations: np.ndarray | None = None,
        cache: bool = False,
        **meta,
    ) -> None:
        super().__init__(labels=labels, class_names=class_names, **meta)
        self.paths = [Path(p) for p in paths]
        self.class_sources = list(class_sources)
        self.transform = transform
        self.mode = mode
        self.rotations = None if rotations is None else np.asarray(rotations, dtype=np.int64)
        self.cache = cache and not self.augment
        self._cache: dict[Path, Tensor] = {}
        self._cache_bytes = 0

    def class_source(self, c: int) -> str | None:
        return self.class_sources[c]

    def _load(self, index: int, rng: np.random.Generator | None) -> Tensor:
        path = self.paths[index]
        x = self._cache.get(path) if self.cache else None
        if x is None:
            x = self.transform(open_image(path, self.mode), rng)
            if self.cache and self._cache_bytes < _CACHE_LIMIT_BYTES:
                self._cache[path] = x
                self._cache_bytes += x.numel() * x.element_size()
        if self.rotations is not None and self.rotations[index]:
            x = torch.rot90(x, int(self.rotations[index]), dims=(-2, -1))
        return x.contiguous()

    def preload(self, threads: int | None = None) -> int:
        """Decode every image into the cache now (a no-op without ``cache``); returns how many.

        Lazy decoding on first use made the first epoch of a GPU run decode-bound (Omniglot
        20-way: about 1.4 s of PNG decoding per meta-batch of 16 tasks); decoding the split once,
        up front, on several threads (PIL releases the GIL while decoding and resizing) moves
        that cost before training. Unreadable files raise :class:`DataError` naming the path.
        """
        if not self.cache:
            return 0
        from concurrent.futures import ThreadPoolExecutor

        todo = sorted({p for p in self.paths if p not in self._cache}, key=str)
        workers = threads or min(8, os.cpu_count() or 1)

        def decode(path: Path) -> tuple[Path, Tensor]:
            return path, self.transform(open_image(path, self.mode), None)

        done = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, x in pool.map(decode, todo):
                if self._cache_bytes >= _CACHE_LIMIT_BYTES:
                    break
                self._cache[path] = x
                self._cache_bytes += x.numel() * x.element_size()
                done += 1
        return done

    def __getstate__(self) -> dict:
        # Worker processes rebuild their own cache rather than receive a pickled copy.
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_cache_bytes"] = 0
        return state
