"""Reading a tracker's results folder, in any of the layouts trackers publish.

- OTB text: ``<dir>/<Seq>.txt``, one ``x,y,w,h`` per frame (commas, tabs or spaces), any spelling
  of the sequence name (``Jogging-1``, ``jogging.1``, ``Jogging_1``);
- got10k: the same files plus ``<dir>/times/<Seq>_time.txt`` (seconds per frame);
- the OTB toolkit's JSON results: ``<dir>/<Seq>.json`` = ``[{"res": [[x,y,w,h], ...], "fps": ..., "resType": "rect"}]``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.boxes import BoxFileError, read_box_file
from ..data.names import ALIASES, NameMap

__all__ = ["METADATA_FILE", "ResultsError", "TrackerResult", "parse_results_arg", "read_metadata", "read_results"]

#: Written by the runner next to the results: tracker name, data set, seed and the tracker's
#: ``metadata`` (e.g. ``{"backbone": "random-init"}``); copied into every report of that folder.
METADATA_FILE = "tracker.json"


class ResultsError(ValueError):
    """A results folder or file that cannot be used; the message names it."""


@dataclass
class TrackerResult:
    """One sequence's results: boxes of shape (n, 4), optional per-frame seconds (n,) or fps."""

    boxes: np.ndarray
    source: str
    times: np.ndarray | None = None
    fps: float | None = None
    metadata: dict = field(default_factory=dict)


def parse_results_arg(value: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (the tracker is then named after the folder).

    >>> parse_results_arg("ours=runs/x/results"), parse_results_arg("res/STRUCK")
    (('ours', PosixPath('runs/x/results')), ('STRUCK', PosixPath('res/STRUCK')))
    """
    if "=" in value and not Path(value).exists():
        name, _, folder = value.partition("=")
        if not name.strip() or not folder.strip():
            raise ResultsError(f"--results {value!r}: expected DIR or NAME=DIR")
        return name.strip(), Path(folder)
    path = Path(value)
    return path.resolve().name if path.name in ("", ".", "..") else path.name, path


def _read_toolkit_json(path: Path) -> TrackerResult:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from None
    entry = data[0] if isinstance(data, list) and data else data
    if not isinstance(entry, dict) or "res" not in entry:
        raise ResultsError(f"{path}: expected the OTB toolkit's result JSON ([{{'res': [[x, y, w, h], ...], ...}}])")
    kind = entry.get("resType", entry.get("type", "rect"))
    if kind != "rect":
        raise ResultsError(f"{path}: result type {kind!r} is not supported; only 'rect' (x, y, w, h) results are")
    boxes = np.asarray(entry["res"], dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ResultsError(f"{path}: 'res' must be a list of [x, y, w, h], got shape {boxes.shape}")
    fps = entry.get("fps")
    return TrackerResult(boxes, str(path), fps=float(fps) if isinstance(fps, (int, float)) and fps > 0 else None)


def _times_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / "times" / f"{stem}_time.txt", folder / f"{stem}_time.txt"):
        if candidate.is_file():
            return candidate
    return None


def read_results(
    folder: str | os.PathLike[str], names: Iterable[str]
) -> tuple[dict[str, TrackerResult], list[str]]:
    """Read the results for the sequences ``names`` (canonical) from ``folder``.

    Returns:
        ``({canonical name: TrackerResult}, ignored)`` where ``ignored`` lists result files for
        sequences outside ``names`` (reported, never scored).

    Raises:
        ResultsError: the folder is missing, holds no results, two files name one sequence, or
            a sequence of ``names`` has no file.
        BoxFileError: a malformed line (names the file and the line).
    """
    base = Path(folder)
    if not base.is_dir():
        raise ResultsError(f"--results {base}: not a directory")
    wanted = list(names)
    lookup = NameMap(wanted, ALIASES)  # got10k calls Human4-2 plain Human4
    found: dict[str, Path] = {}
    ignored: list[str] = []
    for path in sorted(base.iterdir()):
        if not path.is_file() or path.suffix not in (".txt", ".json") or path.stem.endswith("_time"):
            continue
        if path.name == METADATA_FILE:
            continue
        name = lookup(path.stem)
        if name is None:
            ignored.append(path.name)
            continue
        if name in found:
            raise ResultsError(f"{base}: both {found[name].name} and {path.name} are results for {name}")
        found[name] = path
    missing = [n for n in wanted if n not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ResultsError(
            f"--results {base}: no results for {shown} (expected <Seq>.txt with one x,y,w,h per line, or the "
            f"OTB toolkit's <Seq>.json); {len(found)} of {len(wanted)} sequences found"
        )
    results: dict[str, TrackerResult] = {}
    for name in wanted:
        path = found[name]
        if path.suffix == ".json":
            results[name] = _read_toolkit_json(path)
            continue
        boxes = read_box_file(path)
        result = TrackerResult(boxes, str(path))
        times_path = _times_file(base, path.stem)
        if times_path is not None:
            try:
                times = read_box_file(times_path, widths=(1,))[:, 0]
            except BoxFileError as err:
                raise ResultsError(f"{err} (per-frame seconds expected)") from None
            if len(times) != len(boxes):
                warnings.warn(f"{times_path}: {len(times)} times for {len(boxes)} boxes; no speed for {name}", stacklevel=2)
            else:
                result.times = times
        results[name] = result
    return results, ignored


def read_metadata(folder: str | os.PathLike[str]) -> dict:
    """The ``tracker.json`` of a results folder written by our runner, or ``{}`` for other folders."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return data
