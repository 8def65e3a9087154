"""ImageNet-VID snippets from Meta-Tracker's ``ilsvrc_train.json`` list (a meta-training source).

The list is ``[{seq_name, start_frame, end_frame, gt: [[x, y, w, h], ...], im_width, im_height}]``:
``start_frame``/``end_frame`` are 1-based and inclusive, one box per frame; frame ``k`` of the
snippet (0-based) is the file ``<seq_name>/%06d.JPEG`` numbered ``start_frame - 1 + k`` (VID
numbers its files from 000000). The snippet folder is looked up directly under the VID ``train``
root or one level down (the official ``ILSVRC2015_VID_train_000N/`` split folders).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .otb import OTBDataError
from .sequence import Sequence

__all__ = ["VidSnippet", "read_vid_list", "vid_sequences"]

_FIELDS = "seq_name, start_frame, end_frame, gt, im_width, im_height"


@dataclass(frozen=True)
class VidSnippet:
    """One entry of the list: ``boxes`` of shape (end_frame - start_frame + 1, 4)."""

    seq_name: str
    start_frame: int
    end_frame: int
    boxes: np.ndarray
    image_size: tuple[int, int]  # (width, height)

    def frame_files(self, train_root: Path) -> list[Path]:
        folder = train_root / self.seq_name
        if not folder.is_dir():
            matches = sorted(train_root.glob(f"*/{self.seq_name}"))
            if not matches:
                raise OTBDataError(
                    f"{self.seq_name}: no folder {folder} nor {train_root}/*/{self.seq_name} (ImageNet-VID Data/VID/train)"
                )
            folder = matches[0]
        return [folder / f"{self.start_frame - 1 + k:06d}.JPEG" for k in range(len(self.boxes))]


def read_vid_list(path: str | os.PathLike[str]) -> list[VidSnippet]:
    """Read and validate Meta-Tracker's ``ilsvrc_train.json``.

    Raises:
        OTBDataError: not a list of snippet objects, a missing key, or a box count that does not
            match the frame range; the message names the entry.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OTBDataError(f"{p} not found") from None
    except UnicodeDecodeError as err:
        raise OTBDataError(f"{p}: not a text file (byte {err.start} is not UTF-8); expected Meta-Tracker's ilsvrc_train.json") from None
    except OSError as err:
        raise OTBDataError(f"{p}: cannot be read ({err.strerror}); expected Meta-Tracker's ilsvrc_train.json") from None
    except json.JSONDecodeError as err:
        raise OTBDataError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(data, list) or not data:
        raise OTBDataError(f"{p}: expected a non-empty JSON list of {{{_FIELDS}}}")
    snippets = []
    for i, entry in enumerate(data):
        where = f"{p}, entry {i}"
        try:
            name, start, end = str(entry["seq_name"]), int(entry["start_frame"]), int(entry["end_frame"])
            boxes = np.asarray(entry["gt"], dtype=np.float64)
            size = (int(entry["im_width"]), int(entry["im_height"]))
        except (KeyError, TypeError, ValueError) as err:
            raise OTBDataError(f"{where}: missing or malformed field ({err}); expected {_FIELDS}") from None
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise OTBDataError(f"{where} ({name}): gt must be a list of [x, y, w, h], got shape {boxes.shape}")
        if len(boxes) != end - start + 1 or start < 1:
            raise OTBDataError(f"{where} ({name}): {len(boxes)} boxes for frames {start}-{end}")
        snippets.append(VidSnippet(name, start, end, boxes, size))
    return snippets


def vid_sequences(list_path: str | os.PathLike[str], train_root: str | os.PathLike[str] | None = None) -> dict[str, Sequence]:
    """The snippets as :class:`Sequence` objects, keyed ``<index>:<seq_name>`` in list order (one
    video can give several snippets, even over the same frames for different objects). Without
    ``train_root`` the frames are left empty (boxes only)."""
    out: dict[str, Sequence] = {}
    root = Path(train_root) if train_root is not None else None
    for index, snippet in enumerate(read_vid_list(list_path)):
        frames = snippet.frame_files(root) if root is not None else []
        key = f"{index:04d}:{snippet.seq_name}"
        out[key] = Sequence(key, frames, snippet.boxes, first_frame=snippet.start_frame, source=str(list_path))
    return out
