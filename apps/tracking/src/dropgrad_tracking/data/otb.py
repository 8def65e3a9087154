"""OTB2015 ground truth: the raw sequence folders, or a pysot-format ``OTB100.json``.

Raw layout (the OTB website's zips, one folder per video)::

    <root>/<Video>/img/0001.jpg ...          (Board: 00001.jpg, five digits)
    <root>/<Video>/groundtruth_rect.txt      one x,y,w,h per frame; commas, tabs or spaces
    <root>/<Video>/groundtruth_rect.N.txt    two-target videos: Jogging, Skating2 (N = 1, 2);
                                             Human4 has an empty .1 file and the scored .2
    <root>/<Video>/attrs.txt                 optional: "SV, DEF, FM" attribute codes

Quirks handled here (facts of the OTB toolkit's sequence configuration):

- targets of one video share its ``img/``: ``Jogging-1``/``Jogging-2``, ``Skating2-1``/
  ``Skating2-2``, ``Human4-2``;
- frame ranges that do not start at 1 or stop before the last image: David 300-770, Tiger1
  6-354 (its file has 354 boxes and the first 5 are dropped), BlurCar1 247-988, BlurCar3 3-359,
  BlurCar4 18-397, Football1 1-74, Freeman3 1-460, Freeman4 1-283, Diving 1-215;
- frame numbers of any width (Board's five digits) and grayscale frames (read as 3 channels).

pysot format (``OTB100.json``): ``{seq: {video_dir, init_rect, img_names, gt_rect, attr}}`` with
image names relative to the data root and attributes as full names ("Scale Variation").
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .boxes import read_box_file
from .names import NameMap, canonical_name, name_key
from .sequence import Sequence

__all__ = [
    "ATTRIBUTES",
    "FRAME_RANGES",
    "OTBDataError",
    "attribute_code",
    "check_frames",
    "load_otb",
    "load_otb_folders",
    "load_otb_json",
    "parse_attributes",
    "read_attr_list",
    "select_sequences",
]

#: OTB attribute codes and their names (the toolkit's ``attr_desc.txt``).
ATTRIBUTES: dict[str, str] = {
    "IV": "Illumination Variation",
    "SV": "Scale Variation",
    "OCC": "Occlusion",
    "DEF": "Deformation",
    "MB": "Motion Blur",
    "FM": "Fast Motion",
    "IPR": "In-Plane Rotation",
    "OPR": "Out-of-Plane Rotation",
    "OV": "Out-of-View",
    "BC": "Background Clutters",
    "LR": "Low Resolution",
}

#: (first, last) frame numbers of the OTB2015 targets that are not "every image from 1".
FRAME_RANGES: dict[str, tuple[int, int]] = {
    "David": (300, 770),
    "Tiger1": (6, 354),
    "BlurCar1": (247, 988),
    "BlurCar3": (3, 359),
    "BlurCar4": (18, 397),
    "Football1": (1, 74),
    "Freeman3": (1, 460),
    "Freeman4": (1, 283),
    "Diving": (1, 215),
}

# Both console scripts read OTB through here; each names its own option for the synthetic set.
NO_DATA_HINT = "the synthetic set needs no data (track-eval --dataset synthetic, track-train --source synthetic)"
_FULL_NAMES = {re.sub(r"[^a-z]", "", v.lower()): k for k, v in ATTRIBUTES.items()}
_FRAME_FILE = re.compile(r"^(\d+)\.(jpe?g|png|bmp)$", re.IGNORECASE)
_GT_FILE = re.compile(r"^groundtruth_rect(?:\.(\d+))?\.txt$")


class OTBDataError(ValueError):
    """OTB data that cannot be used; the message names the file or folder and what was expected."""


def attribute_code(name: str, source: str = "attributes") -> str:
    """The OTB code of an attribute given as a code (``sv``) or a full name (``Scale Variation``).

    >>> attribute_code("Out-of-Plane Rotation"), attribute_code("iv")
    ('OPR', 'IV')
    """
    text = name.strip()
    if text.upper() in ATTRIBUTES:
        return text.upper()
    code = _FULL_NAMES.get(re.sub(r"[^a-z]", "", text.lower()))
    if code is None:
        raise OTBDataError(f"{source}: unknown attribute {name!r}; expected one of {', '.join(ATTRIBUTES)} or their names")
    return code


def parse_attributes(text: str, source: str) -> tuple[str, ...]:
    """Attribute codes from an ``attrs.txt`` line such as ``"IV ,SV, OCC,"`` (odd spacing and
    trailing commas occur in the toolkit's files).

    >>> parse_attributes("IV ,SV, OCC,", "attrs.txt")
    ('IV', 'SV', 'OCC')
    """
    items = [t for t in re.split(r"[,\t\n]+", text) if t.strip()]
    return tuple(attribute_code(t, source) for t in items)


def read_attr_list(path: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """The toolkit's ``attr_list.txt`` (``<Seq>\\t<codes>`` per line) as ``{canonical name: codes}``."""
    p = Path(path)
    out: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
        if len(parts) != 2:
            raise OTBDataError(f"{p}, line {number}: expected '<sequence>\\t<attribute codes>', got {line!r}")
        out[canonical_name(parts[0])] = parse_attributes(parts[1], f"{p}, line {number}")
    return out


def select_sequences(
    found: Mapping[str, Sequence], names: Iterable[str] | None, source: str, total: int | None = None,
) -> dict[str, Sequence]:
    """The sequences of ``found`` named in ``names`` (any spelling), in that order; all when None.

    ``total``: how many sequences the source has, where ``found`` holds only some (for errors).
    """
    if names is None:
        return dict(found)
    lookup = NameMap(found)
    selected: dict[str, Sequence] = {}
    missing = []
    for name in names:
        key = lookup(name) or lookup(canonical_name(name))
        if key is None:
            missing.append(name)
        elif key in selected:
            raise OTBDataError(f"{source}: sequence {key} is named twice in the selection (as {name!r}); expected each once")
        else:
            selected[key] = found[key]
    if missing:
        count = len(found) if total is None else total
        hint = ""
        if total is None and found:  # found is the whole source: show how its names are spelled
            lower = {k.lower(): k for k in found}
            close = difflib.get_close_matches(missing[0].lower(), list(lower), n=1, cutoff=0.6)
            hint = f" (did you mean {lower[close[0]]!r}?)" if close else f", e.g. {', '.join(list(found)[:3])}"
        raise OTBDataError(f"{source}: no sequence named {', '.join(map(repr, missing))}; it has {count} sequences{hint}")
    return selected


def _number_of(name: str) -> int | None:
    match = _FRAME_FILE.match(Path(name).name)
    return int(match.group(1)) if match else None


def load_otb_json(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, names: Iterable[str] | None = None
) -> dict[str, Sequence]:
    """Read a pysot-format OTB JSON; frame files are ``root / img_name`` (root: the JSON's folder).

    Returns ``{canonical name: Sequence}`` in the file's order.

    Raises:
        OTBDataError: unreadable JSON, a missing key, boxes that are not 4 numbers, or
            ``img_names`` and ``gt_rect`` of different lengths; the message names the sequence.
    """
    p = Path(path)
    base = Path(root) if root is not None else p.parent
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OTBDataError(f"--annotations {p}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OTBDataError(f"--annotations {p}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not data:
        raise OTBDataError(f"{p}: expected a JSON object {{sequence: {{video_dir, img_names, gt_rect, attr}}}}")
    sequences: dict[str, Sequence] = {}
    for key, entry in data.items():
        where = f"{p}: sequence {key!r}"
        if not isinstance(entry, dict) or not {"img_names", "gt_rect"} <= set(entry):
            raise OTBDataError(f"{where}: expected an object with 'img_names' and 'gt_rect' (pysot format)")
        img_names, gt = entry["img_names"], entry["gt_rect"]
        try:
            boxes = np.asarray(gt, dtype=np.float64)
        except (TypeError, ValueError):
            raise OTBDataError(f"{where}: 'gt_rect' is not a list of [x, y, w, h] numbers") from None
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
            raise OTBDataError(f"{where}: 'gt_rect' must be a non-empty list of [x, y, w, h], got shape {boxes.shape}")
        if not isinstance(img_names, list) or len(img_names) != len(boxes):
            n = len(img_names) if isinstance(img_names, list) else "no"
            raise OTBDataError(f"{where}: {n} img_names for {len(boxes)} gt_rect boxes")
        bad = next((i for i, n in enumerate(img_names) if not isinstance(n, str) or not n), None)
        if bad is not None:
            raise OTBDataError(f"{where}: img_names[{bad}] is {img_names[bad]!r}; expected an image path relative to --root")
        attrs = tuple(attribute_code(a, where) for a in entry.get("attr", []))
        first = _number_of(img_names[0]) or 1
        name = canonical_name(key)
        sequences[name] = Sequence(
            name, [base / n for n in img_names], boxes, attrs, first_frame=first, source=str(p)
        )
    return select_sequences(sequences, names, str(p))


def _index_frames(img_dir: Path) -> dict[int, Path]:
    index: dict[int, Path] = {}
    with os.scandir(img_dir) as entries:
        for entry in entries:
            match = _FRAME_FILE.match(entry.name)
            if match:
                index.setdefault(int(match.group(1)), Path(entry.path))
    return index


def _folder_targets(folder: Path) -> list[tuple[str, Path]]:
    targets = []
    for f in sorted(folder.iterdir()):
        match = _GT_FILE.match(f.name)
        if not match:
            continue
        if match.group(1) is not None:
            if f.stat().st_size == 0 or not f.read_text().strip():
                # Human4's groundtruth_rect.1.txt is empty in the OTB release: only target 2 exists.
                if folder.name.lower() != "human4":
                    warnings.warn(f"{f} is empty; no target {folder.name}-{match.group(1)} is read", stacklevel=3)
                continue
            targets.append((f"{folder.name}-{match.group(1)}", f))
        else:
            targets.append((folder.name, f))
    return targets


def _frame_range(name: str, boxes: np.ndarray, gt_file: Path) -> tuple[int, np.ndarray]:
    n = len(boxes)
    if name not in FRAME_RANGES:
        return 1, boxes
    start, end = FRAME_RANGES[name]
    length = end - start + 1
    if n == length:
        return start, boxes
    if n == end and start > 1:
        # Tiger1 ships one box per image from frame 1; OTB2015 scores frames start..end only.
        return start, boxes[start - 1 :]
    raise OTBDataError(
        f"{gt_file}: {n} boxes, but OTB2015's {name} spans frames {start}-{end} ({length} boxes expected)"
    )


def load_otb_folders(root: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, Sequence]:
    """Read raw OTB sequence folders under ``root`` (see the module docstring for the layout).

    Folders without any ``groundtruth_rect*.txt`` are not sequences and are passed over.

    Returns ``{canonical name: Sequence}`` sorted by name.

    Raises:
        OTBDataError: no sequence folder at all, a sequence without ``img/``, a box count that
            does not fit the sequence's frame range, or a missing frame file.
        BoxFileError: a malformed ground-truth line (names the file and line).
    """
    base = Path(root)
    if not base.is_dir():
        raise OTBDataError(f"--root {base}: not a directory")
    names = None if names is None else list(names)
    # Keys, as select_sequences matches them: any spelling of any name, OTB's or not.
    wanted = None if names is None else {name_key(canonical_name(n)) for n in names}
    sequences: dict[str, Sequence] = {}
    total = 0
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        targets = _folder_targets(folder)
        if not targets:
            continue
        total += len(targets)
        img_dir = folder / "img"
        if not img_dir.is_dir():
            raise OTBDataError(f"{folder}: has ground truth but no img/ folder of frames")
        index: dict[int, Path] | None = None
        attrs_file = folder / "attrs.txt"
        attrs = parse_attributes(attrs_file.read_text(), str(attrs_file)) if attrs_file.is_file() else ()
        for target, gt_file in targets:
            name = canonical_name(target)
            if wanted is not None and name_key(name) not in wanted:
                continue
            boxes = read_box_file(gt_file)
            start, boxes = _frame_range(name, boxes, gt_file)
            if index is None:
                index = _index_frames(img_dir)
            numbers = range(start, start + len(boxes))
            missing = [k for k in numbers if k not in index]
            if missing:
                raise OTBDataError(
                    f"{img_dir}: frame {missing[0]} of {name} is missing ({len(missing)} of frames "
                    f"{start}-{numbers[-1]} missing; the folder has {len(index)} numbered images)"
                )
            if name not in FRAME_RANGES and len(index) != len(boxes):
                # One box per image from frame 1: a lost line would shift every later box by a frame.
                raise OTBDataError(
                    f"{gt_file}: {len(boxes)} boxes, but {img_dir} holds {len(index)} numbered frames "
                    f"({min(index)}-{max(index)}); {name} needs one box per frame"
                )
            sequences[name] = Sequence(
                name, [index[k] for k in numbers], boxes, attrs, first_frame=start, source=str(gt_file)
            )
    if not total:
        raise OTBDataError(
            f"--root {base}: no OTB sequence folders found (expected <root>/<Video>/img/0001.jpg and "
            f"<root>/<Video>/groundtruth_rect.txt, or give --annotations OTB100.json); {NO_DATA_HINT}"
        )
    return select_sequences(dict(sorted(sequences.items())), names, str(base), total)


def check_frames(sequences: Mapping[str, Sequence]) -> None:
    """Raise :class:`OTBDataError` naming the first sequence whose frame files are missing.

    Running a tracker needs the images; scoring results does not, so loaders do not check this.
    Every frame is checked (one directory listing per folder), so a missing frame in the middle
    of the last sequence stops the run before the first one starts; so does a first box a
    tracker cannot start from.
    """
    listings: dict[Path, set[str] | None] = {}
    for name, seq in sequences.items():
        if not seq.frames:
            raise OTBDataError(f"{name}: no frame files known; give --root, the folder the image names are relative to")
        box = seq.boxes[0]
        if not (np.isfinite(box).all() and box[2] > 0 and box[3] > 0):
            raise OTBDataError(
                f"{seq.source or name}: the first box of {name} (frame {seq.first_frame}) is {box.tolist()}; "
                "expected finite x, y and a positive width and height to start a tracker from"
            )
        for frame in seq.frames:
            folder = frame.parent
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except OSError:
                    listings[folder] = None
            names = listings[folder]
            if names is None or frame.name not in names:
                raise OTBDataError(f"{name}: frame file {frame} not found; is --root the folder holding the sequence folders?")


def load_otb(
    root: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, Sequence]:
    """OTB2015 from ``annotations`` (pysot JSON, frames under ``root``) or from raw folders in ``root``.

    Raises:
        OTBDataError: neither source is usable; the message says where OTB2015 was looked for,
            the layout expected, and how to run on the synthetic set, which needs no data.
    """
    if annotations is not None:
        return load_otb_json(annotations, root, names)
    if root is not None and Path(root).is_dir():
        return load_otb_folders(root, names)
    where = f"--root {root} (not a directory)" if root is not None else "no --root and no --annotations were given"
    raise OTBDataError(
        f"OTB2015 not found: {where}. Expected --root DIR holding the raw OTB folders "
        f"(DIR/<Video>/img/0001.jpg and DIR/<Video>/groundtruth_rect.txt), or --annotations OTB100.json "
        f"(pysot format; images under --root). {NO_DATA_HINT}."
    )

