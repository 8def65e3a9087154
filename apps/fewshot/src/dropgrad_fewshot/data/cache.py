"""The episode cache: one split of a data set as decoded, resized uint8 pixels in a memory-mapped file.

Decoding JPEGs and resizing them costs milliseconds per image; a 5-way 5-shot 16-query task
has 105 images, so at hundreds of tasks per second the file path cannot keep up with a GPU.
:func:`build_cache` decodes a split once, through :func:`~dropgrad_fewshot.data.build_dataset`
(so every supported layout works), and writes::

    <out>/<dataset>-<split>-<size>.u8     raw uint8, N x H x W x C, row i = item i of the split
    <out>/<dataset>-<split>-<size>.json   the sidecar: format version, shape, labels, class names,
                                          source, image size, resize method, pixel format, checksums
                                          (labels and shape; the pixels' SHA-256, see verify_cache)

Each row holds exactly the pixels the data set's deterministic (non-augmented) transform has
just before it converts to floats: the resize and centre crop of RGB sets, the Lanczos resize of
Omniglot (before the inversion), the rendered glyphs; rotated classes are stored rotated. The
sidecar's pixel format (:class:`~dropgrad_fewshot.data.device_augment.PixelFormat`) finishes the
job, so :class:`CachedDataset` returns bit for bit the tensors of the normal path (tested on
glyphs and on the real Omniglot and CUB samples).

Both files are written under temporary names and renamed when complete: an old sidecar is
removed first, then the data and the sidecar come in, so a cache with a sidecar is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from .base import FewShotDataset, ImageFileDataset, open_image, rotation_groups
from .build import DATASETS, DEFAULT_IMAGE_SIZE, build_dataset, dataset_options, format_data_option
from .device_augment import PixelFormat, augment_batch
from .errors import DataError
from .transforms import IMAGENET_MEAN, IMAGENET_STD, GrayscaleTransform, RGBTransform

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CachedDataset",
    "build_cache",
    "cache_path",
    "content_options",
    "open_cache",
    "verify_cache",
    "write_cache",
]

CACHE_FORMAT = "dropgrad-episode-cache"
CACHE_VERSION = 1
# The console script every install has (tools/build_episode_cache.py is the same, in a checkout).
BUILD_COMMAND = "fewshot-cache"
# Options that say where or how strictly files are found, not which images a split holds.
_LOCATION_OPTIONS = {"layout", "csv_dir", "filelist_dir", "class_maps", "check_sizes", "check_files"}


def cache_path(cache_dir: str | os.PathLike[str], dataset: str, split: str, image_size: int) -> Path:
    """The data file of one cached split: ``<cache_dir>/<dataset>-<split>-<size>.u8``.

    >>> cache_path("c", "cub", "train", 84).as_posix()
    'c/cub-train-84.u8'
    """
    return Path(cache_dir) / f"{dataset}-{split}-{int(image_size)}.u8"


def content_options(dataset: str, split: str, options: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The options that decide which images a split holds, defaults filled in (compared on open).

    >>> content_options("omniglot", "train", {"protocol": "background"})["rotations"]
    False
    >>> content_options("glyphs", "val", seed=3)
    {'images_per_class': 20, 'n_classes': 400, 'rotations': False, 'seed': 3}
    """
    filled = {**dataset_options(dataset), **(options or {})}
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in filled.items() if k not in _LOCATION_OPTIONS}
    if dataset == "omniglot" and out.get("rotations") is None:
        out["rotations"] = out.get("protocol") == "maml"
    if dataset == "glyphs":
        from .glyphs import GLYPH_DEFAULT_CLASSES

        if out.get("n_classes") is None:
            out["n_classes"] = GLYPH_DEFAULT_CLASSES[split]
        out["seed"] = seed  # the glyph universe; file data sets do not depend on it
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- reading a data set's pixels
class _PixelSource:
    """Item ``i`` of a non-augmented data set as the uint8 (H, W, C) its transform floats."""

    def __init__(self, ds: FewShotDataset) -> None:
        from .glyphs import GlyphDataset

        if ds.augment:
            raise DataError(f"{ds.describe()}: an episode cache is built from the non-augmented data set")
        self.ds = ds
        self.group: Callable[[int], Any]
        if isinstance(ds, GlyphDataset):
            self.format = PixelFormat("reciprocal")
            self.resize = "procedural: rendered at the image size"
            self.group = lambda i: i
            self.decode = self._glyph
        elif isinstance(ds, ImageFileDataset) and isinstance(ds.transform, GrayscaleTransform):
            t = ds.transform
            self.format = PixelFormat("divide", invert=t.invert)
            self.resize = f"PIL Lanczos to {t.size}x{t.size}" + (", inverted on read" if t.invert else "")
            self.group = lambda i: ds.paths[i]
            self.decode = self._gray
        elif isinstance(ds, ImageFileDataset) and isinstance(ds.transform, RGBTransform):
            t = ds.transform
            self.format = PixelFormat("divide", False, IMAGENET_MEAN, IMAGENET_STD)
            self.resize = (
                f"torchvision resize to a {t.resize}x{t.resize} square (antialiased bilinear), "
                f"centre crop {t.size}; ImageNet normalisation on read"
            )
            self.group = lambda i: ds.paths[i]
            self.decode = self._rgb
        else:
            raise DataError(f"{ds.describe()}: no episode cache support for {type(ds).__name__}")

    def _glyph(self, i: int) -> np.ndarray:
        ds = self.ds
        label, drawing = divmod(i, ds.images_per_class)  # type: ignore[attr-defined]
        char, rot = divmod(label, 4) if ds.rotations else (label, 0)  # type: ignore[attr-defined]
        return np.rot90(ds.character(char)[drawing], rot)[..., None]  # type: ignore[attr-defined]

    def _gray(self, path: Path) -> np.ndarray:
        t = self.ds.transform  # type: ignore[attr-defined]
        image = open_image(path, self.ds.mode)  # type: ignore[attr-defined]
        if image.size != (t.size, t.size):
            image = image.resize((t.size, t.size), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)[..., None]

    def _rgb(self, path: Path) -> np.ndarray:
        t = self.ds.transform  # type: ignore[attr-defined]
        image = TF.resize(open_image(path, "RGB"), [t.resize, t.resize], antialias=True)
        image = TF.center_crop(image, [t.size, t.size])
        return np.asarray(image, dtype=np.uint8)

    def rotation(self, i: int) -> int:
        rots = getattr(self.ds, "rotations", None)
        return int(rots[i]) if isinstance(rots, np.ndarray) else 0


def _labels_checksum(labels: np.ndarray, shape: Sequence[int]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    h.update(json.dumps([int(s) for s in shape]).encode())
    return h.hexdigest()


def _file_sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_cache(
    ds: FewShotDataset,
    path: str | os.PathLike[str],
    *,
    source: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = False,
    chunk: int = 512,
) -> Path:
    """Write the uint8 pixels of every item of ``ds`` (not augmented) to ``path`` and its sidecar.

    Args:
        ds: the split, built with ``augment=False``.
        path: the ``.u8`` data file; the sidecar is ``path`` with suffix ``.json``.
        source: recorded in the sidecar (data root, options); :func:`build_cache` fills it.
        threads: decoding threads (PIL releases the GIL); default min(8, cpus).

    Returns the data file's path. Unreadable images raise :class:`DataError` naming the file,
    and nothing is left behind.

    >>> import tempfile
    >>> from dropgrad_fewshot.data.glyphs import GlyphDataset
    >>> p = write_cache(GlyphDataset("val", n_classes=3, images_per_class=2), Path(tempfile.mkdtemp()) / "g.u8")
    >>> CachedDataset(p).describe()
    'glyphs val: 3 classes, 6 images, 1x28x28 (cached)'
    """
    from tqdm.auto import tqdm

    path = Path(path)
    src = _PixelSource(ds)
    n, s, c = len(ds), ds.image_size, ds.channels
    shape = (n, s, s, c)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    side = path.with_suffix(".json")
    side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    workers = threads or min(8, os.cpu_count() or 1)
    try:
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape) if n else None
        with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
            total=n, desc=f"cache {ds.name} {ds.split}", unit="img", disable=not progress, leave=False
        ) as bar:
            for lo in range(0, n, chunk):
                items = range(lo, min(n, lo + chunk))
                keys = list(dict.fromkeys(src.group(i) for i in items))
                decoded = dict(zip(keys, pool.map(src.decode, keys)))
                for i in items:
                    img = decoded[src.group(i)]
                    rot = src.rotation(i)
                    if rot:
                        img = np.rot90(img, rot, axes=(0, 1))  # as torch.rot90 over (H, W)
                    if img.shape != shape[1:]:
                        raise DataError(f"{ds.describe()}: item {i} decoded to shape {img.shape}, expected {shape[1:]}")
                    out[i] = img  # type: ignore[index]
                bar.update(len(items))
        if out is not None:
            out.flush()
            del out
        else:
            tmp.write_bytes(b"")
        labels = np.asarray(ds.labels, dtype=np.int64)
        # Read back once (from the page cache; under a second per GB), so --verify can find a
        # file changed or damaged after the build, which the size and label checks cannot.
        pixels_sha256 = _file_sha256(tmp)
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "file": path.name,
            "shape": list(shape),
            "dtype": "uint8",
            "layout": "NHWC",
            "dataset": ds.name,
            "split": ds.split,
            "image_size": s,
            "channels": c,
            "resize": src.resize,
            "pixels": src.format.to_dict(),
            "source": source or {},
            "checksum": _labels_checksum(labels, shape),
            "pixels_sha256": pixels_sha256,
            "class_names": list(ds.class_names),
            "class_sources": [ds.class_source(k) for k in range(ds.n_classes)],
            "labels": labels.tolist(),
        }
        side_tmp.write_text(json.dumps(meta) + "\n", encoding="utf-8")
        for done in (tmp, side_tmp):
            with open(done, "rb+") as f:
                os.fsync(f.fileno())
        # The sidecar marks a whole cache: the old one goes before the pixels change, the new
        # one comes after, so a rebuild stopped in between leaves no sidecar, not a wrong one.
        side.unlink(missing_ok=True)
        os.replace(tmp, path)
        os.replace(side_tmp, side)
    except BaseException:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)
        raise
    return path


def build_cache(
    dataset: str,
    split: str,
    data_root: str | os.PathLike[str] | None,
    image_size: int | None,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Build the cache of one split, from any layout :func:`build_dataset` reads.

    Args:
        dataset, split, data_root, **options: as for :func:`build_dataset`.
        image_size: side in pixels (None: the data set's default, 28 or 84).
        out: the cache folder; writes ``<out>/<dataset>-<split>-<size>.u8`` and ``.json``.
        seed: glyphs only: the glyph universe (the run's ``--seed``).

    >>> import tempfile
    >>> p = build_cache("glyphs", "test", None, 28, tempfile.mkdtemp(), n_classes=2, images_per_class=3)
    >>> p.name, CachedDataset(p).labels.tolist()
    ('glyphs-test-28.u8', [0, 0, 0, 1, 1, 1])
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r} (--dataset); expected one of {', '.join(DATASETS)}")
    size = DEFAULT_IMAGE_SIZE[dataset] if image_size is None else image_size
    ds = build_dataset(dataset, split, data_root=data_root, image_size=size, augment=False, seed=seed, **options)  # type: ignore[arg-type]
    source = {
        "data_root": None if data_root is None else str(Path(data_root).expanduser().resolve()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(options.items())},
        "content": content_options(dataset, split, options, seed),
    }
    layout = _resolved_layout(dataset, data_root, options)
    if layout is not None:
        source["layout"] = layout
    return write_cache(ds, cache_path(out, dataset, split, size), source=source, threads=threads, progress=progress)


def _resolved_layout(dataset: str, data_root: str | os.PathLike[str] | None, options: dict[str, Any]) -> str | None:
    """mini-ImageNet's layout the split was read in ("auto" resolved); None for other data sets.

    The layouts read different files: Ravi's CSV image folders are usually resized to 84 px
    already, MAML++'s and CloserLook's (ILSVRC) images are full size, so a cache's pixels
    depend on it (compared on open when the run names a layout).
    """
    if dataset != "miniimagenet" or data_root is None:
        return None
    layout = options.get("layout", "auto")
    if layout != "auto":
        return str(layout)
    from .miniimagenet import detect_layout

    def folder(key: str) -> Path | None:
        return None if options.get(key) is None else Path(options[key])

    return detect_layout(Path(data_root).expanduser(), folder("csv_dir"), folder("filelist_dir"))


# --------------------------------------------------------------------------- reading a cache
class CachedDataset(FewShotDataset):
    """One cached split, read through ``np.memmap``; the data-set interface of every split.

    ``load(i)`` returns the same float32 tensor (C, S, S) as the source data set's non-augmented
    ``load(i)``; with ``augment=True`` it applies the batched device augmentation to the one
    image, keyed like every other data set (``PCG64([seed, *key])``).
    :class:`~dropgrad_fewshot.data.cached_episodes.CachedEpisodeBatches` reads whole meta-batches.

    Args:
        path: the ``.u8`` file (or its ``.json`` sidecar).
        image_size: when given, the size the run expects; a different cache raises.
        augment, seed: training augmentation and its key seed.

    Raises:
        DataError naming the file: missing data file or sidecar, unknown format or version,
        a data file whose size is not the sidecar's shape (truncated), a corrupt sidecar, or
        an image size other than ``image_size``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_size: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        path = Path(path)
        if path.suffix == ".json":
            path = path.with_suffix(".u8")
        meta = read_sidecar(path)
        shape = tuple(meta["shape"])
        if image_size is not None and meta["image_size"] != image_size:
            raise DataError(
                f"episode cache {path} holds {meta['image_size']}-pixel images, but the run uses "
                f"{image_size} (--image-size / backbone); build one with {BUILD_COMMAND} --image-size {image_size}"
            )
        super().__init__(
            name=meta["dataset"], split=meta["split"], labels=np.asarray(meta["labels"], dtype=np.int64),
            class_names=meta["class_names"], channels=int(shape[3]), image_size=int(shape[1]),
            augment=augment, seed=seed,
        )
        self.path = path
        self.meta = meta
        self.shape = shape
        self.pixels = PixelFormat.from_dict(meta["pixels"])
        self._class_sources = meta.get("class_sources") or [None] * self.n_classes
        if ((meta.get("source") or {}).get("content") or {}).get("rotations"):
            self.class_groups = rotation_groups(self.n_classes)  # as the source's (Omniglot, glyphs)
        self._mm: np.memmap | None = None

    @property
    def images(self) -> np.ndarray:
        """The memory-mapped pixels, uint8 of shape (N, S, S, C) (opened on first use, per process)."""
        if self._mm is None:
            if self.shape[0] == 0:
                self._mm = np.zeros(self.shape, dtype=np.uint8)  # type: ignore[assignment]
            else:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._mm  # type: ignore[return-value]

    def _load(self, index: int, rng: np.random.Generator | None) -> Tensor:
        x = torch.from_numpy(np.array(self.images[index : index + 1]))
        if rng is None:
            return self.pixels.to_float(x)[0]
        y = augment_batch(self.pixels.unit(x), rng)
        return self.pixels.normalize(y)[0]

    def class_source(self, c: int) -> str | None:
        src = self._class_sources[c]
        return f"{src}, cached in {self.path}" if src else str(self.path)

    def describe(self) -> str:
        return super().describe() + " (cached)"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None  # each worker maps the file itself
        return state


def verify_cache(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the pixels of cache ``path`` (``.u8`` or ``.json``) against the SHA-256 its build
    recorded; returns the sidecar.

    Opening a cache checks its sidecar and the data file's size, not every byte: reading a
    whole training split at each start would cost seconds. This reads it all.

    Raises:
        DataError naming the file: what :class:`CachedDataset` refuses, a sidecar written
        before pixel checksums were recorded, or pixels that differ from the build's.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".u8")
    meta = read_sidecar(path)
    recorded = meta.get("pixels_sha256")
    if not isinstance(recorded, str):
        raise DataError(
            f"episode cache {path.with_suffix('.json')} records no pixel checksum (built by an earlier "
            f"version); rebuild it with {BUILD_COMMAND} to verify it"
        )
    if _file_sha256(path) != recorded:
        raise DataError(
            f"episode cache {path}: its pixels differ from the ones its build recorded (changed or damaged "
            f"since); rebuild it with {BUILD_COMMAND}"
        )
    return meta


def read_sidecar(path: Path) -> dict[str, Any]:
    """The checked sidecar of data file ``path``; :class:`DataError` naming the file otherwise."""
    side = path.with_suffix(".json")
    if not path.is_file():
        raise DataError(f"episode cache file not found: {path}; build it with {BUILD_COMMAND}")
    if not side.is_file():
        raise DataError(
            f"episode cache {path} has no sidecar {side.name} (an interrupted or foreign file); "
            f"rebuild it with {BUILD_COMMAND}"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"episode cache sidecar {side} is not readable JSON: {exc}; rebuild it with {BUILD_COMMAND}") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise DataError(f"{side} is not an episode cache sidecar (format {CACHE_FORMAT!r} expected)")
    if meta.get("version") != CACHE_VERSION:
        raise DataError(
            f"episode cache {side} has format version {meta.get('version')!r}, this code reads version "
            f"{CACHE_VERSION}; rebuild it with {BUILD_COMMAND}"
        )
    needed = ("shape", "labels", "class_names", "dataset", "split", "image_size", "pixels", "checksum")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise DataError(f"episode cache sidecar {side} lacks {', '.join(missing)}; rebuild it with {BUILD_COMMAND}")
    shape = meta["shape"]
    if (
        not isinstance(shape, list) or len(shape) != 4 or not all(isinstance(v, int) and v >= 0 for v in shape)
        or shape[1] != shape[2] or shape[3] not in (1, 3) or meta.get("dtype", "uint8") != "uint8"
    ):
        raise DataError(f"episode cache sidecar {side}: shape {shape!r} is not N x S x S x C uint8 with C 1 or 3")
    if shape[1] != meta["image_size"]:
        raise DataError(f"episode cache sidecar {side}: shape {shape} does not match image_size {meta['image_size']}")
    names, sources = meta["class_names"], meta.get("class_sources")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"episode cache sidecar {side}: class_names must be a list of names; rebuild it with {BUILD_COMMAND}")
    try:
        labels = np.asarray(meta["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"episode cache sidecar {side}: labels must be a list of class indices; rebuild it with {BUILD_COMMAND}") from None
    if labels.ndim != 1 or len(labels) != shape[0] or _labels_checksum(labels, shape) != meta["checksum"]:
        raise DataError(f"episode cache sidecar {side}: labels or shape do not match its checksum (edited or corrupt); rebuild it")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(meta["class_names"])):
        raise DataError(f"episode cache sidecar {side}: labels outside 0..{len(meta['class_names']) - 1}")
    if sources is not None and (not isinstance(sources, list) or len(sources) != len(names)):
        raise DataError(f"episode cache sidecar {side}: class_sources must list one entry per class name; rebuild it with {BUILD_COMMAND}")
    if not isinstance(meta.get("source", {}), dict):
        raise DataError(f"episode cache sidecar {side}: source must be an object; rebuild it with {BUILD_COMMAND}")
    try:
        pixels = PixelFormat.from_dict(meta["pixels"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"episode cache sidecar {side}: pixels {meta['pixels']!r} is not a pixel format ({exc}); rebuild it with {BUILD_COMMAND}") from None
    for key in ("mean", "std"):
        value = getattr(pixels, key)
        if value is not None and len(value) != shape[3]:
            raise DataError(f"episode cache sidecar {side}: pixels.{key} has {len(value)} values for {shape[3]} channel(s); rebuild it with {BUILD_COMMAND}")
    expected = int(np.prod(shape, dtype=np.int64))
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(
            f"episode cache {path} has {actual} bytes, but its sidecar says {' x '.join(map(str, shape))} = "
            f"{expected} bytes ({'truncated' if actual < expected else 'too long'}); rebuild it with {BUILD_COMMAND}"
        )
    return meta


def open_cache(
    cache_dir: str | os.PathLike[str],
    dataset: str,
    split: str,
    image_size: int,
    *,
    options: dict[str, Any] | None = None,
    augment: bool = False,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
) -> CachedDataset:
    """Open the cache of a run's split, checking it was built for the same data set, split and size.

    Args:
        cache_dir: the folder given to ``--cache``.
        dataset, split, image_size: what the run uses.
        options: the run's data-set options (compared with the cache's, see :func:`content_options`;
            a mini-ImageNet ``layout`` other than "auto" must be the one the cache was read in).
        augment, seed: as for :class:`CachedDataset`; ``seed`` is also the glyph universe.
        data_root: the run's data folder, if it names one: not read, only put in the build
            commands that errors suggest (else the folder a cache in ``cache_dir`` was built from).

    Raises:
        DataError naming the file and the mismatch, with the command that builds the right cache.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); _ = build_cache("glyphs", "val", None, 28, d, n_classes=2, images_per_class=2)
    >>> open_cache(d, "glyphs", "val", 28, options={"n_classes": 2, "images_per_class": 2}).n_classes
    2
    >>> open_cache(d, "glyphs", "val", 32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dropgrad_fewshot.data.errors.DataError: no episode cache for glyphs val at 32 px in ... (found glyphs-val-28.u8: built for another image size); build it with fewshot-cache --dataset glyphs --splits val --image-size 32 --seed 0 --out ...
    """
    folder = Path(cache_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"--cache {folder}: not a folder (expected the --out folder of {BUILD_COMMAND})")
    path = cache_path(folder, dataset, split, image_size)
    if not path.exists():
        others = sorted(p.name for p in folder.glob(f"{dataset}-{split}-*.u8") if re.fullmatch(rf"{re.escape(dataset)}-{split}-\d+\.u8", p.name))
        found = f" (found {', '.join(others)}: built for another image size)" if others else ""
        # This split's caches of other sizes first, then the data set's other splits.
        like = [folder / name for name in others] + sorted(folder.glob(f"{dataset}-*-*.u8"))
        raise DataError(
            f"no episode cache for {dataset} {split} at {image_size} px in {folder}{found}; build it with "
            + _build_command(dataset, split, image_size, folder, options, seed, _built_source(like), data_root)
        )
    ds = CachedDataset(path, image_size=image_size, augment=augment, seed=seed)
    if ds.name != dataset or ds.split != split:
        raise DataError(f"episode cache {path} holds {ds.name} {ds.split}, expected {dataset} {split}")
    source = ds.meta.get("source") or {}
    built = source.get("content")
    wanted = content_options(dataset, split, options, seed)
    if built is not None and built != wanted:
        diff = ", ".join(f"{k}: cache {built.get(k)!r}, run {wanted.get(k)!r}" for k in sorted(set(built) | set(wanted)) if built.get(k) != wanted.get(k))
        raise DataError(
            f"episode cache {path} was built with other data-set options than this run's ({diff}); build this "
            f"run's with {_build_command(dataset, split, image_size, folder, options, seed, source, data_root)} "
            "(one cache per data set, split and size fits in a folder: give another --out to keep this one)"
        )
    want_layout = (options or {}).get("layout", "auto")
    built_layout = source.get("layout") or (source.get("options") or {}).get("layout")
    if want_layout != "auto" and built_layout not in (None, "auto") and built_layout != want_layout:
        # The layouts read different image files (Ravi's folders are usually resized to 84 px already).
        # The hint must not borrow this cache's folder or layout: they are the other layout's.
        other_layout = {k: v for k, v in source.items() if k not in ("data_root", "layout")}
        command = _build_command(dataset, split, image_size, folder, options, seed, other_layout, data_root)
        raise DataError(
            f"episode cache {path} was read from the {built_layout} layout, but this run asks for layout={want_layout} "
            f"(--data-options), whose image files can hold other pixels; build this run's with {command} into another "
            f"folder, or drop layout={want_layout} to use this cache"
        )
    if (options or {}).get("check_sizes", True):
        _check_split_sizes(ds)
    return ds


def _check_split_sizes(ds: CachedDataset) -> None:
    """The file path's ``check_sizes``, on a cache: check_sizes only decides how strictly a copy is
    checked, so a cache built from a partial copy (``check_sizes=false``) must not pass for the
    whole data set in a run that did not opt out too."""
    from .cub import CUB_SPLIT_CLASSES
    from .miniimagenet import MINI_PER_CLASS, MINI_SPLIT_CLASSES

    n_classes, per_class = {
        "cub": (CUB_SPLIT_CLASSES.get(ds.split), None),
        "miniimagenet": (MINI_SPLIT_CLASSES.get(ds.split), MINI_PER_CLASS),
    }.get(ds.name, (None, None))
    if n_classes is None:
        return
    counts = ds.class_counts()
    if ds.n_classes != n_classes or (per_class is not None and bool((counts != per_class).any())):
        raise DataError(
            f"episode cache {ds.path} holds {ds.n_classes} classes of {counts.min()}-{counts.max()} images, but "
            f"{ds.name} {ds.split} has {n_classes} classes" + (f" of {per_class}" if per_class else "")
            + " (it was built from a partial copy with check_sizes=false); pass check_sizes=false "
            "(fewshot-train --data-options) to use it anyway, or rebuild it from the whole data set"
        )


def _built_source(paths: Sequence[Path]) -> dict[str, Any] | None:
    """The ``source`` recorded by the first readable sidecar of the data files ``paths`` (None: none)."""
    for path in paths:
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT and isinstance(meta.get("source"), dict):
            return meta["source"]
    return None


def _build_command(
    dataset: str,
    split: str,
    image_size: int,
    folder: Path,
    options: dict[str, Any] | None,
    seed: int,
    built: dict[str, Any] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> str:
    """The ``fewshot-cache`` command line that builds the run's split, as complete as what is known.

    The data folder is the run's ``data_root``, else the one ``built`` (the ``source`` of a cache of
    the same data set) was read from; the options are the run's over ``built``'s, so how that copy
    is read (``layout``, list folders, and ``check_sizes=false`` for a partial copy, without which
    the build fails) comes along with what the run asks for.
    """
    built = built or {}
    root = data_root if data_root is not None else built.get("data_root")
    # How that folder is read (layout, list folders, check_sizes=false) under what the run gives;
    # what the split holds is the run's (its content options, defaults filled in).
    merged = {**(built.get("options") or {}), **(options or {})} if root == built.get("data_root") else dict(options or {})
    if root == built.get("data_root") and built.get("layout") and merged.get("layout", "auto") == "auto":
        merged["layout"] = built["layout"]  # what "auto" found in that folder
    wanted = content_options(dataset, split, options, seed)
    merged.update(wanted)
    defaults = {**dataset_options(dataset), **content_options(dataset, split, None, seed)}
    parts = [BUILD_COMMAND, "--dataset", dataset, "--splits", split, "--image-size", str(int(image_size))]
    if root is not None:
        parts += ["--data-root", str(Path(root).expanduser().resolve())]
    elif dataset != "glyphs":
        parts += ["--data-root", "DATA_ROOT"]  # no folder known: the user's copy of the data set
    if dataset == "glyphs":
        parts += ["--seed", str(seed)]
    for key in sorted(merged):
        value = merged[key]
        if key != "seed" and key in defaults and value is not None and value != defaults[key]:
            parts += ["--option", format_data_option(key, value)]
    return shlex.join(parts + ["--out", str(folder)])
