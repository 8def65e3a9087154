"""mini-ImageNet (64/16/20 classes x 600 images) from any of its three common on-disk forms.

Layouts (option ``layout``; "auto" picks the first that matches, in this order):

``mamlpp``  MAML++'s "full size" folder: ``data_root/{train,val,test}/<wnid>/<image>``. The class
            maps MAML++ writes (``label_name_to_map_mini_imagenet_full_size.json``, keys
            ``"<split>/<wnid>"``) are checked against the folders when found in ``data_root`` or
            given with ``class_maps`` (the JSON file or its folder).
``csv``     Ravi & Larochelle: ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label`` rows)
            in ``data_root`` or ``csv_dir``; images in ``data_root/images/`` or ``data_root``.
``closerlook``  CloserLook's ``base.json``, ``val.json``, ``novel.json`` (``label_names``,
            ``image_names``, ``image_labels``) in ``data_root`` or ``filelist_dir``; ``image_names``
            are absolute paths on the machine that wrote them. ``data_root`` is the user's ILSVRC
            folder. The common folder of all listed paths (e.g. ``/data/x/ILSVRC2015/Data/CLS-LOC/
            train``) is stripped, leaving ``<wnid>/<file>``, and the first of ``data_root/<tail>``
            for every tail of that foreign folder (``ILSVRC2015/Data/CLS-LOC/train``, ...,
            ``train``, nothing) that holds the first listed file becomes the image folder; so
            ``data_root`` may be the ILSVRC root, ``Data/CLS-LOC/train`` itself, or anything between.

Splits: train/val/test are CloserLook's base/val/novel (the same classes in every layout).
Class labels are 0..k-1 over the split's wnids in sorted order. With ``check_sizes`` (default)
each split must have 64/16/20 classes of 600 images. Every listed file must exist (checked up
front); undecodable files raise :class:`DataError` with their path when loaded.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePosixPath

from .base import ImageFileDataset
from .errors import DataError
from .listing import IMAGE_SUFFIXES, ImageIndex, check_class_sizes, read_list_file, rgb_dataset

__all__ = ["MINI_SPLIT_CLASSES", "build_miniimagenet", "closerlook_image_root", "detect_layout"]

MINI_SPLIT_CLASSES = {"train": 64, "val": 16, "test": 20}
MINI_PER_CLASS = 600
CSV_NAMES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
FILELIST_NAMES = {"train": "base.json", "val": "val.json", "test": "novel.json"}
MAMLPP_MAP_NAMES = (
    "label_name_to_map_mini_imagenet_full_size.json",
    "map_to_label_name_mini_imagenet_full_size.json",
)
LAYOUTS = ("auto", "csv", "closerlook", "mamlpp")

_EXPECTED = (
    "expected one of: an image folder with Ravi's train.csv/val.csv/test.csv (layout csv); "
    "MAML++'s folder with train/, val/, test/ of <wnid>/ image folders (layout mamlpp); "
    "your ILSVRC folder plus CloserLook's base.json/val.json/novel.json in it or in filelist_dir=DIR "
    "(layout closerlook; fewshot-train --data-options, fewshot-cache --option)"
)


def _has_mamlpp_folders(root: Path) -> bool:
    return all((root / s).is_dir() for s in ("train", "val", "test"))


def detect_layout(root: Path, csv_dir: Path | None, filelist_dir: Path | None) -> str:
    """The layout of ``root`` ("csv", "closerlook" or "mamlpp"), or a DataError saying what was expected."""
    if filelist_dir is not None:
        return "closerlook"
    if csv_dir is not None:
        return "csv"
    if _has_mamlpp_folders(root):
        return "mamlpp"
    if all((root / n).is_file() for n in CSV_NAMES.values()):
        return "csv"
    if all((root / n).is_file() for n in FILELIST_NAMES.values()):
        return "closerlook"
    raise DataError(f"miniimagenet: cannot tell the layout of --data-root {root}; {_EXPECTED}")


# ----------------------------------------------------------------------------- csv
def _csv_index(root: Path, csv_dir: Path, split: str) -> ImageIndex:
    csv_path = csv_dir / CSV_NAMES[split]
    if not csv_path.is_file():
        raise DataError(f"miniimagenet (csv layout): {csv_path} not found; expected Ravi's {CSV_NAMES[split]} there")
    image_dir = root / "images" if (root / "images").is_dir() else root
    index = ImageIndex()
    text = read_list_file(csv_path, "a UTF-8 text file of 'filename,label' rows")
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or [h.strip() for h in header] != ["filename", "label"]:
        raise DataError(f"{csv_path} line 1: expected the header 'filename,label', got {header!r}")
    for line, row in enumerate(rows, start=2):
        if not row:
            continue  # a trailing blank line
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{csv_path} line {line}: expected 'filename,label', got {','.join(row)!r}")
        name, label = row[0].strip(), row[1].strip()
        index.add(image_dir / name, label, f"{csv_path} line {line}")
        index.sources.setdefault(label, f"{csv_path}, label {label}")
    index.check_files(f"miniimagenet (csv layout, images in {image_dir})")
    return index


# ----------------------------------------------------------------------------- closerlook
def _load_filelist(path: Path) -> tuple[list[str], list[str], list[int]]:
    if not path.is_file():
        raise DataError(
            f"miniimagenet (closerlook layout): {path} not found; expected CloserLook's "
            f"{', '.join(FILELIST_NAMES.values())} in filelist_dir=DIR (fewshot-train --data-options, fewshot-cache --option) or --data-root"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    keys = ("label_names", "image_names", "image_labels")
    if not isinstance(meta, dict) or any(k not in meta for k in keys):
        raise DataError(f"{path}: expected a JSON object with keys {', '.join(keys)}")
    names, labels, label_names = meta["image_names"], meta["image_labels"], meta["label_names"]
    for key, value in (("label_names", label_names), ("image_names", names), ("image_labels", labels)):
        if not isinstance(value, list):
            raise DataError(f"{path}: {key} must be a JSON list, got {type(value).__name__}")
    if not all(isinstance(n, str) for n in names + label_names):
        raise DataError(f"{path}: label_names and image_names must hold strings")
    if len(set(label_names)) != len(label_names):
        dup = next(n for i, n in enumerate(label_names) if n in label_names[:i])
        raise DataError(f"{path}: label_names lists {dup!r} twice (at {label_names.index(dup)} and later); expected one entry per class")
    if len(names) != len(labels):
        raise DataError(f"{path}: image_names has {len(names)} entries but image_labels has {len(labels)}")
    for i, lab in enumerate(labels):
        if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < len(label_names):
            raise DataError(
                f"{path}: image_labels[{i}] = {lab!r} is not an index into label_names "
                f"(0..{len(label_names) - 1})"
            )
    return label_names, [str(n).replace("\\", "/") for n in names], labels


def closerlook_image_root(root: Path, image_names: list[str], filelist: Path) -> tuple[Path, list[str]]:
    """Map foreign absolute ``image_names`` onto ``root``: (image folder, paths relative to it).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "Data/CLS-LOC/train/n01").mkdir(parents=True)
    >>> (root / "Data/CLS-LOC/train/n01/n01_1.JPEG").touch()
    >>> names = ["/data/a/ILSVRC2015/Data/CLS-LOC/train/n01/n01_1.JPEG",
    ...          "/data/a/ILSVRC2015/Data/CLS-LOC/train/n02/n02_9.JPEG"]
    >>> base, rel = closerlook_image_root(root, names, Path("base.json"))
    >>> base.relative_to(root).as_posix(), rel
    ('Data/CLS-LOC/train', ['n01/n01_1.JPEG', 'n02/n02_9.JPEG'])
    """
    if not image_names:
        raise DataError(f"{filelist}: image_names is empty")
    # Parent folders only: the common path of a single file would be the file itself.
    prefix = PurePosixPath(os.path.commonpath([str(PurePosixPath(n).parent) for n in image_names]))
    rel = [PurePosixPath(n).relative_to(prefix).as_posix() for n in image_names]
    parts = [p for p in prefix.parts if p not in ("/", "")]
    tried = []
    for k in range(len(parts) + 1):
        base = root.joinpath(*parts[k:])
        tried.append(base)
        if (base / rel[0]).is_file():
            return base, rel
    listed = "; ".join(str(t) for t in tried[-4:][::-1])
    raise DataError(
        f"{filelist}: its images live under the foreign folder {prefix}; looked for its first "
        f"image {rel[0]} under --data-root {root} with each tail of that folder ({listed}; ...) "
        "and found it nowhere. Expected --data-root to be your ILSVRC folder (the one holding "
        "Data/CLS-LOC/train/<wnid>/*.JPEG) or its train folder"
    )


def _closerlook_index(root: Path, filelist_dir: Path, split: str) -> ImageIndex:
    path = filelist_dir / FILELIST_NAMES[split]
    label_names, names, labels = _load_filelist(path)
    base, rel = closerlook_image_root(root, names, path)
    index = ImageIndex()
    for i, (r, lab) in enumerate(zip(rel, labels)):
        wnid = str(label_names[lab])
        index.add(base / r, wnid, f"{path} image_names[{i}]")
        index.sources.setdefault(wnid, f"{path}, label {lab} ({wnid})")
    index.check_files(f"miniimagenet (closerlook layout, images under {base})")
    return index


# ----------------------------------------------------------------------------- mamlpp
def _find_class_map(root: Path, class_maps: Path | None) -> Path | None:
    candidates = []
    if class_maps is not None:
        if class_maps.is_file():
            return class_maps
        if not class_maps.is_dir():
            raise DataError(f"miniimagenet: class_maps {class_maps} is neither a JSON file nor a folder")
        candidates.append(class_maps)
    else:
        candidates.extend([root, root.parent])
    for folder in candidates:
        for name in MAMLPP_MAP_NAMES:
            if (folder / name).is_file():
                return folder / name
    if class_maps is not None:
        raise DataError(f"miniimagenet: class_maps folder {class_maps} holds none of {', '.join(MAMLPP_MAP_NAMES)}")
    return None


def _class_map_classes(path: Path, split: str) -> set[str]:
    """The wnids a MAML++ class map lists for ``split`` (keys or values ``"<split>/<wnid>"``)."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object mapping '<split>/<wnid>' to class indices")
    entries = [k for k in meta if "/" in str(k)] or [str(v) for v in meta.values() if "/" in str(v)]
    if not entries:
        raise DataError(f"{path}: no '<split>/<wnid>' class names found")
    return {e.split("/", 1)[1] for e in entries if e.split("/", 1)[0] == split}


def _mamlpp_index(root: Path, split: str, class_maps: Path | None) -> ImageIndex:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"miniimagenet (mamlpp layout): {folder} not found; expected {root}/{{train,val,test}}/<wnid>/")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    map_path = _find_class_map(root, class_maps)
    if map_path is not None:
        expected = _class_map_classes(map_path, split)
        found = {p.name for p in class_dirs}
        if expected != found:
            missing, extra = sorted(expected - found), sorted(found - expected)
            raise DataError(
                f"miniimagenet (mamlpp layout): {folder} does not match the class map {map_path}: "
                + (f"missing class folders {missing[:5]}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected class folders {extra[:5]}" if extra else "")
            )
    index = ImageIndex()
    for cdir in class_dirs:
        files = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"miniimagenet (mamlpp layout): class folder {cdir} holds no .jpg/.png images")
        index.sources[cdir.name] = str(cdir)
        for p in files:
            index.add(p, cdir.name, str(cdir))
    return index


def build_miniimagenet(
    root: str | Path,
    split: str,
    *,
    image_size: int = 84,
    augment: bool = False,
    seed: int = 0,
    layout: str = "auto",
    csv_dir: str | Path | None = None,
    filelist_dir: str | Path | None = None,
    class_maps: str | Path | None = None,
    check_sizes: bool = True,
) -> ImageFileDataset:
    """One split of mini-ImageNet (see the module docstring for the layouts).

    Args:
        root: ``--data-root``: the image folder (csv), the MAML++ folder (mamlpp) or the ILSVRC
            folder (closerlook).
        split: "train", "val", "test" (CloserLook's base / val / novel).
        layout: "auto", "csv", "closerlook" or "mamlpp".
        csv_dir: folder of Ravi's CSVs (default: ``root``).
        filelist_dir: folder of CloserLook's JSON filelists (default: ``root``).
        class_maps: MAML++ class-map JSON file or folder (default: looked for in ``root`` and
            its parent; the check is skipped when there is none).
        check_sizes: require 64/16/20 classes of 600 images.

    Returns:
        an RGB :class:`ImageFileDataset`, images of shape (3, image_size, image_size).
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"miniimagenet: layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"miniimagenet: --data-root {root} is not a folder; {_EXPECTED}")
    csv_dir = None if csv_dir is None else Path(csv_dir)
    filelist_dir = None if filelist_dir is None else Path(filelist_dir)
    if layout == "auto":
        layout = detect_layout(root, csv_dir, filelist_dir)
    if layout == "csv":
        index = _csv_index(root, csv_dir or root, split)
    elif layout == "closerlook":
        index = _closerlook_index(root, filelist_dir or root, split)
    else:
        index = _mamlpp_index(root, split, None if class_maps is None else Path(class_maps))
    if check_sizes:
        check_class_sizes(index, MINI_SPLIT_CLASSES[split], MINI_PER_CLASS, f"miniimagenet {split} ({layout} layout, --data-root {root})")
    return rgb_dataset(index, name="miniimagenet", split=split, image_size=image_size, augment=augment, seed=seed)
