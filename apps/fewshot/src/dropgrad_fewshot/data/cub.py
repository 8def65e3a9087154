"""CUB-200-2011 from its official folder, with CloserLook's base/val/novel class split.

Layout (``data_root`` is ``CUB_200_2011/`` or the folder holding it)::

    CUB_200_2011/classes.txt              "<class id> <NNN.Name>", 200 lines
    CUB_200_2011/images.txt               "<image id> <NNN.Name>/<file>.jpg", 11,788 lines
    CUB_200_2011/image_class_labels.txt   "<image id> <class id>"
    CUB_200_2011/images/<NNN.Name>/<file>.jpg

Split (CloserLook's ``write_CUB_filelist.py`` rule): the class folders sorted by name get
indices i = 0..199; base (train) is i % 2 == 0 (100 classes), val is i % 4 == 1 (50), novel
(test) is i % 4 == 3 (50). The images of a class are those ``images.txt`` lists, in its order.
A few CUB images are grayscale; they are read as RGB (3 equal channels).

With ``check_files`` (default) every listed image must exist, checked up front; with
``check_files=False`` (e.g. a partial copy) a missing file raises :class:`DataError` when it is
loaded. With ``check_sizes`` the split must have 100/50/50 classes.
"""

from __future__ import annotations

from pathlib import Path

from .base import ImageFileDataset
from .errors import DataError
from .listing import ImageIndex, check_class_sizes, read_list_file, rgb_dataset

__all__ = ["CUB_SPLIT_CLASSES", "build_cub", "cub_split", "cub_split_of_class"]

CUB_SPLIT_CLASSES = {"train": 100, "val": 50, "test": 50}
CUB_FILES = ("classes.txt", "images.txt", "image_class_labels.txt")


def cub_split_of_class(i: int) -> str:
    """CloserLook's split of the class with sorted index ``i``.

    >>> [cub_split_of_class(i) for i in range(5)]
    ['train', 'val', 'train', 'test', 'train']
    """
    return "train" if i % 2 == 0 else ("val" if i % 4 == 1 else "test")


def _cub_root(root: Path) -> Path:
    if (root / "CUB_200_2011" / "classes.txt").is_file():
        return root / "CUB_200_2011"
    missing = [n for n in CUB_FILES if not (root / n).is_file()]
    if missing or not root.is_dir():
        raise DataError(
            f"cub: --data-root {root} is not the official CUB_200_2011 folder (missing "
            f"{', '.join(missing) if root.is_dir() else 'the folder itself'}); expected "
            "CUB_200_2011/ holding classes.txt, images.txt, image_class_labels.txt and images/"
        )
    return root


def _read_pairs(path: Path) -> list[tuple[int, str, str]]:
    """Lines "<int id> <value>" of a CUB metadata file as (line number, id, value)."""
    out = []
    text = read_list_file(path, "UTF-8 lines '<id> <value>'")
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path} line {line_no}: expected '<id> <value>', got {line!r}")
        first = seen.setdefault(parts[0], line_no)
        if first != line_no:
            raise DataError(f"{path} line {line_no}: id {parts[0]} again (already on line {first}); expected each id once")
        out.append((line_no, parts[0], parts[1]))
    return out


def cub_split(root: str | Path) -> dict[str, list[tuple[str, str, str]]]:
    """CloserLook's split of CUB from the metadata alone (no image is opened or checked).

    Returns:
        ``{"train"|"val"|"test": [(class folder, "images/<class>/<file>", origin), ...]}`` with
        origin ``"images.txt line N"``, classes in sorted order, images in ``images.txt`` order.

    Raises:
        DataError: a metadata file is missing or malformed, or an image's folder disagrees
            with its class in ``image_class_labels.txt``.
    """
    root = _cub_root(Path(root))
    classes = {cid: name for _, cid, name in _read_pairs(root / "classes.txt")}
    images = _read_pairs(root / "images.txt")
    labels = {iid: (ln, cid) for ln, iid, cid in _read_pairs(root / "image_class_labels.txt")}
    by_class: dict[str, list[tuple[str, str]]] = {name: [] for name in classes.values()}
    for line_no, iid, rel in images:
        if iid not in labels:
            raise DataError(f"{root / 'images.txt'} line {line_no}: image id {iid} has no line in image_class_labels.txt")
        ln, cid = labels[iid]
        if cid not in classes:
            raise DataError(f"{root / 'image_class_labels.txt'} line {ln}: class id {cid} is not in classes.txt")
        folder = rel.split("/", 1)[0]
        if folder != classes[cid]:
            raise DataError(
                f"{root / 'images.txt'} line {line_no}: {rel} is in folder {folder}, but "
                f"image_class_labels.txt line {ln} gives class {cid} ({classes[cid]})"
            )
        by_class[folder].append((f"images/{rel}", f"{root / 'images.txt'} line {line_no}"))
    split: dict[str, list[tuple[str, str, str]]] = {"train": [], "val": [], "test": []}
    for i, name in enumerate(sorted(by_class)):
        split[cub_split_of_class(i)].extend((name, rel, origin) for rel, origin in by_class[name])
    return split


def build_cub(
    root: str | Path,
    split: str,
    *,
    image_size: int = 84,
    augment: bool = False,
    seed: int = 0,
    check_files: bool = True,
    check_sizes: bool = True,
) -> ImageFileDataset:
    """One split of CUB-200-2011 (see the module docstring).

    Returns:
        an RGB :class:`ImageFileDataset`, images of shape (3, image_size, image_size).
    """
    root = _cub_root(Path(root))
    index = ImageIndex()
    for cls, rel, origin in cub_split(root)[split]:
        index.add(root / rel, cls, origin)
        index.sources.setdefault(cls, str(root / "images" / cls))
    if check_files:
        index.check_files(
            f"cub ({root})",
            hint="for a partial copy set check_files=false: fewshot-train --data-options, fewshot-cache --option",
        )
    if check_sizes:
        check_class_sizes(index, CUB_SPLIT_CLASSES[split], None, f"cub {split} ({root})")
    return rgb_dataset(index, name="cub", split=split, image_size=image_size, augment=augment, seed=seed)
