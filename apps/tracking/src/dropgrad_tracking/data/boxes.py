"""Reading and writing box text files: one box per line, numbers split by commas, tabs or spaces.

OTB ground truth mixes separators between sequences (``Couple`` uses tabs, ``Football1``
commas, some files spaces or a mix), and published results do the same. Every malformed line is
an error naming the file and the line: a silently skipped line would shift every later frame.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from dropgrad import atomic_write

__all__ = ["BoxFileError", "parse_box_lines", "polygon_to_box", "read_box_file", "write_box_file"]

_SPLIT = re.compile(r"[,\s]+")


class BoxFileError(ValueError):
    """A box file that cannot be read; the message names the file, the line and what was expected."""


def parse_box_lines(text: str, source: str, widths: Sequence[int] = (4,)) -> np.ndarray:
    """Parse box lines into a float64 array of shape (n_lines, width).

    Trailing blank lines are ignored; a blank line before the last box is an error (it would
    shift the frames after it). ``nan`` is accepted (a tracker may report a lost target).

    Args:
        text: the file contents.
        source: the file name used in error messages.
        widths: the accepted numbers per line (4 for ``x,y,w,h``; 8 for VOT polygons).

    Raises:
        BoxFileError: an empty file, a blank line inside, a non-number, or a line whose count
            of numbers is not in ``widths`` or differs from the first line's.

    >>> parse_box_lines("1,2,3,4\\n5\\t6\\t7\\t8\\n9 10,11  12\\n\\n", "demo.txt")
    array([[ 1.,  2.,  3.,  4.],
           [ 5.,  6.,  7.,  8.],
           [ 9., 10., 11., 12.]])
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    expected = " or ".join(str(w) for w in widths)
    if not lines:
        raise BoxFileError(f"{source} is empty; expected one box per line ({expected} numbers)")
    rows: list[list[float]] = []
    width: int | None = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip().strip(",")
        if not stripped:
            raise BoxFileError(f"{source}, line {number}: blank line before the last box; expected {expected} numbers per line")
        fields = _SPLIT.split(stripped)
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise BoxFileError(
                f"{source}, line {number}: {line.strip()!r} is not {expected} numbers separated by commas, tabs or spaces"
            ) from None
        if len(values) not in widths or (width is not None and len(values) != width):
            want = width if width is not None else expected
            what = "x, y, w, h" + (", or 8 polygon coordinates" if 8 in widths else "")
            raise BoxFileError(
                f"{source}, line {number}: expected {want} numbers ({what}), "
                f"got {len(values)} in {line.strip()!r}"
            )
        width = len(values)
        rows.append(values)
    return np.asarray(rows, dtype=np.float64)


def read_box_file(path: str | os.PathLike[str], widths: Sequence[int] = (4,)) -> np.ndarray:
    """Read a box file (see :func:`parse_box_lines`) into an array of shape (n_lines, width)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise BoxFileError(f"{p} not found") from None
    except UnicodeDecodeError as err:
        raise BoxFileError(f"{p} is not a text file (byte {err.start} is not UTF-8)") from None
    return parse_box_lines(text, str(p), widths)


def write_box_file(path: str | os.PathLike[str], boxes: np.ndarray, fmt: str = "%.3f") -> Path:
    """Write boxes of shape (n, 4) as ``x,y,w,h`` lines (the OTB and got10k result format), atomically."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4), got {boxes.shape}")
    text = "".join(",".join(fmt % v for v in row) + "\n" for row in boxes)
    return atomic_write(path, lambda f: f.write(text), binary=False)


def polygon_to_box(polygons: np.ndarray) -> np.ndarray:
    """Axis-aligned ``x,y,w,h`` boxes around polygons of shape (n, 8) (x1,y1,...,x4,y4).

    Boxes of shape (n, 4) pass through unchanged.

    >>> polygon_to_box(np.array([[1., 2, 5, 2, 5, 7, 1, 7]]))
    array([[1., 2., 4., 5.]])
    """
    polygons = np.asarray(polygons, dtype=np.float64)
    if polygons.shape[-1] == 4:
        return polygons
    xs, ys = polygons[:, 0::2], polygons[:, 1::2]
    x0, y0 = xs.min(axis=1), ys.min(axis=1)
    return np.stack([x0, y0, xs.max(axis=1) - x0, ys.max(axis=1) - y0], axis=1)
