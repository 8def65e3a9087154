"""VOT sequences as a meta-training source: frames + ``groundtruth.txt``, polygons turned into boxes.

Layouts read (both VOT generations)::

    <root>/<seq>/00000001.jpg ... and <root>/<seq>/groundtruth.txt     (VOT2013-2016)
    <root>/<seq>/color/00000001.jpg ... and <root>/<seq>/groundtruth.txt (VOT2017 and later)

``groundtruth.txt`` has one region per line: ``x,y,w,h`` or the 4 corners ``x1,y1,...,x4,y4``;
a corner polygon becomes its axis-aligned bounding box (as Meta-Tracker's data preparation does).
Meta-Tracker's list ``vot-otb.txt`` names sequences as ``vot2013/cup`` relative to a data root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .boxes import polygon_to_box, read_box_file
from .otb import OTBDataError
from .sequence import Sequence

__all__ = ["load_vot", "load_vot_sequence", "read_sequence_list"]

_IMAGE = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def read_sequence_list(path: str | os.PathLike[str]) -> list[str]:
    """Sequence paths from a list file (one per line, e.g. ``vot2013/cup``); blank lines skipped.

    Raises:
        OTBDataError: the file is missing, not UTF-8 text, empty, or names a sequence twice.
    """
    p = Path(path)
    if not p.is_file():
        raise OTBDataError(f"sequence list {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise OTBDataError(f"sequence list {p} is not a text file (byte {err.start} is not UTF-8)") from None
    items: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        if item in first:
            raise OTBDataError(f"sequence list {p}, line {number}: {item} is listed twice (first on line {first[item]})")
        first[item] = number
        items.append(item)
    if not items:
        raise OTBDataError(f"sequence list {p} is empty")
    return items


def load_vot_sequence(folder: str | os.PathLike[str], name: str | None = None) -> Sequence:
    """One VOT sequence folder as a :class:`Sequence` (boxes from regions, frames sorted by number).

    Raises:
        OTBDataError: no ``groundtruth.txt``, no frames, or frame and region counts differ.
        BoxFileError: a region line that is not 4 or 8 numbers (names file and line).
    """
    base = Path(folder)
    gt_file = base / "groundtruth.txt"
    if not gt_file.is_file():
        raise OTBDataError(f"{base}: no groundtruth.txt (expected a VOT sequence folder)")
    image_dir = base / "color" if (base / "color").is_dir() else base
    frames = sorted((p for p in image_dir.iterdir() if _IMAGE.match(p.name)), key=lambda p: int(_IMAGE.match(p.name).group(1)))
    boxes = polygon_to_box(read_box_file(gt_file, widths=(4, 8)))
    if len(frames) != len(boxes):
        raise OTBDataError(f"{base}: {len(frames)} frames in {image_dir} but {len(boxes)} regions in {gt_file}")
    return Sequence(name or base.name, frames, boxes, source=str(gt_file))


def load_vot(
    root: str | os.PathLike[str], names: Iterable[str] | None = None, list_file: str | os.PathLike[str] | None = None
) -> dict[str, Sequence]:
    """VOT sequences under ``root``: those in ``names``, in ``list_file`` (e.g. Meta-Tracker's
    ``vot-otb.txt``), or else every sub-folder holding a ``groundtruth.txt``.

    Returns ``{name: Sequence}`` where the name is the path given (``vot2013/cup``).
    """
    base = Path(root)
    if not base.is_dir():
        raise OTBDataError(f"VOT root {base} is not a directory")
    if list_file is not None:
        chosen = read_sequence_list(list_file)
    elif names is not None:
        chosen = list(names)
        twice = sorted({n for n in chosen if chosen.count(n) > 1})
        if twice:
            raise OTBDataError(f"--sequences names {', '.join(twice)} twice; expected each sequence once")
    else:
        chosen = sorted(p.parent.relative_to(base).as_posix() for p in base.rglob("groundtruth.txt"))
        if not chosen:
            raise OTBDataError(f"{base}: no VOT sequence folders (<seq>/groundtruth.txt) found")
    return {name: load_vot_sequence(base / name, name) for name in chosen}
