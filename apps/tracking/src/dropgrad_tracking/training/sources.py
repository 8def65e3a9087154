"""Training and held-out validation sequences for ``track-train``, from part 1's loaders.

Sources (``--source``):

- ``synthetic``: the procedural OTB-layout set (:mod:`dropgrad_tracking.data.synthetic`),
  generated into ``--root`` (default ``<run>/synthetic-data``) or reused from there;
- ``otb``: raw OTB sequence folders under ``--root``, or a pysot JSON ``--annotations``;
- ``vot``: VOT sequence folders under ``--root``, all of them or those in ``--list-file``
  (Meta-Tracker's ``vot-otb.txt``: the 58 VOT sequences that do not overlap OTB);
- ``vid``: ImageNet-VID snippets of Meta-Tracker's ``ilsvrc_train.json`` (``--list-file``)
  with frames under ``--root`` (``Data/VID/train``).

The last ``--val-sequences`` sequences (in name order) are held out for validation. Every
problem (missing folder, unreadable list, frames not found, too few usable sequences) is one
error naming the option or file, raised before any training starts.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.names import OTB100_NAMES
from ..data.otb import OTBDataError, check_frames, load_otb, select_sequences
from ..data.sequence import Sequence
from ..data.synthetic import SyntheticConfig, ensure_synthetic, is_synthetic_set
from ..data.vid import vid_sequences
from ..data.vot import load_vot
from .config import TrackTrainConfig

__all__ = [
    "SequenceSplit",
    "discard_stale_synthetic",
    "load_sources",
    "split_sequences",
    "support_frames",
    "synthetic_root",
    "video_key",
]


def synthetic_root(cfg: TrackTrainConfig, out: str | os.PathLike[str]) -> Path:
    """Where the synthetic training set lives: ``--root``, or ``<out>/synthetic-data``."""
    return Path(cfg.root) if cfg.root is not None else Path(out) / "synthetic-data"


def _names(cfg: TrackTrainConfig) -> list[str] | None:
    if cfg.sequences is None:
        return None
    names = [n.strip() for n in cfg.sequences.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--sequences {cfg.sequences!r}: expected comma-separated sequence names")
    return names


def _synthetic_config(cfg: TrackTrainConfig) -> SyntheticConfig:
    return SyntheticConfig(
        cfg.synthetic_sequences, cfg.synthetic_frames, cfg.synthetic_height, cfg.synthetic_width, cfg.synthetic_seed
    )


def discard_stale_synthetic(cfg: TrackTrainConfig, out: str | os.PathLike[str]) -> bool:
    """Remove ``<out>/synthetic-data`` unless it is the complete set ``cfg`` asks for; True if removed.

    Only for a run directory being taken over (a start that stopped before its first
    checkpoint): that attempt may have made its default set with other ``--synthetic-*``
    options, or been stopped while writing it, and the set is the run's own, regenerated from
    its seed. A set given with ``--root`` is the user's and is never touched.
    """
    root = Path(out) / "synthetic-data"
    if cfg.source != "synthetic" or cfg.root is not None or not root.exists():
        return False
    if is_synthetic_set(root, _synthetic_config(cfg)):
        return False
    shutil.rmtree(root)
    return True


def load_sources(cfg: TrackTrainConfig, out: str | os.PathLike[str]) -> dict[str, Sequence]:
    """All sequences of the configured source, ``{name: Sequence}`` sorted by name.

    Frame files are checked (first and last of each sequence) so a wrong ``--root`` fails here.

    >>> import tempfile
    >>> cfg = TrackTrainConfig(synthetic_sequences=2, synthetic_frames=3, synthetic_height=64, synthetic_width=96)
    >>> sorted(load_sources(cfg, tempfile.mkdtemp()))
    ['Synthetic-01', 'Synthetic-02']
    """
    names = _names(cfg)
    if cfg.source == "synthetic":
        root = synthetic_root(cfg, out)
        found = ensure_synthetic(root, _synthetic_config(cfg))
        found = select_sequences(found, names, f"--root {root}")
    elif cfg.source == "otb":
        found = load_otb(cfg.root, cfg.annotations, names)
    elif cfg.source == "vot":
        if cfg.list_file is not None and names is not None:
            raise ValueError("--sequences and --list-file both choose VOT sequences; give one of them")
        found = load_vot(cfg.root, names=names, list_file=cfg.list_file)  # type: ignore[arg-type]
    elif cfg.source == "vid":
        list_path = Path(cfg.list_file)  # type: ignore[arg-type]
        root = Path(cfg.root)  # type: ignore[arg-type]
        if not root.is_dir():
            raise OTBDataError(f"--root {root}: not a directory (expected ImageNet-VID's Data/VID/train)")
        found = vid_sequences(list_path, root)
        if names is not None:
            found = select_sequences(found, names, str(list_path))
    else:
        # A name in config.Source without a branch here: a programming error, not a user's
        # (a ValueError would print as a one-line "not one of" that --help contradicts).
        raise NotImplementedError(
            f"--source {cfg.source!r} is a choice of TrackTrainConfig.source but load_sources "
            "(dropgrad_tracking/training/sources.py) has no branch that loads it"
        )
    check_frames(found)
    return dict(sorted(found.items()))


def support_frames(sequence: Sequence, horizon: int) -> np.ndarray:
    """Frames ``t`` that can start a task: a visible target at ``t`` and at one of ``t+1 .. t+horizon``.

    >>> seq = Sequence("s", [], np.array([[0, 0, 5, 5], [0, 0, 0, 0], [1, 1, 5, 5], [1, 1, 5, 5.]]))
    >>> support_frames(seq, 1).tolist(), support_frames(seq, 2).tolist()
    ([2], [0, 2])
    """
    boxes = sequence.boxes
    visible = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    n = len(boxes)
    later = np.zeros(n, dtype=bool)
    for k in range(1, min(horizon, n - 1) + 1):
        later[: n - k] |= visible[k:]
    return np.flatnonzero(visible & later)


def video_key(name: str) -> str:
    """The video a sequence comes from. Sequences of one video share it: VID snippets
    (``<index>:<video>``), VOT years of one sequence (``vot2014/tunnel``, ``vot2016/tunnel``) and
    OTB's targets of one video (``Jogging-1``, ``Jogging-2``).

    >>> [video_key(n) for n in ("0697:ILSVRC2015_train_01105001", "vot2016/Tunnel", "Jogging-2", "Synthetic-01")]
    ['ilsvrc2015_train_01105001', 'tunnel', 'jogging', 'synthetic-01']
    """
    name = name.split(":", 1)[1] if ":" in name else name
    name = name.rstrip("/").rsplit("/", 1)[-1]
    target = re.fullmatch(r"(.+)-\d", name)
    if target and name in OTB100_NAMES:
        name = target.group(1)
    return name.lower()


@dataclass
class SequenceSplit:
    """Training and held-out validation sequences, each ``{name: Sequence}``."""

    train: dict[str, Sequence]
    val: dict[str, Sequence]


def split_sequences(sequences: Mapping[str, Sequence], n_val: int, horizon: int) -> SequenceSplit:
    """Hold out the last ``n_val`` usable sequences (name order) for validation, and keep every
    other sequence of their videos (:func:`video_key`) out of training, with a warning: a video
    trained on would make the validation loss optimistic.

    Sequences without any usable support frame (see :func:`support_frames`) cannot give a task;
    they are left out with a warning that names them.

    Raises:
        ValueError: fewer than ``n_val + 1`` usable sequences, or none left to train on.
    """
    usable = {n: s for n, s in sorted(sequences.items()) if len(support_frames(s, horizon))}
    dropped = sorted(set(sequences) - set(usable))
    if dropped:
        shown = ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        warnings.warn(
            f"{len(dropped)} sequence(s) have no frame with a visible target followed by one within "
            f"--horizon {horizon} frames and give no task: {shown}",
            stacklevel=2,
        )
    if len(usable) < n_val + 1:
        raise ValueError(
            f"{len(usable)} usable sequence(s), but --val-sequences {n_val} held out needs at least {n_val + 1}; "
            "add sequences or lower --val-sequences"
        )
    names = list(usable)
    val = {n: usable[n] for n in names[-n_val:]}
    held = {video_key(n) for n in val}
    train = {n: usable[n] for n in names[:-n_val] if video_key(n) not in held}
    shared = sorted(set(names[:-n_val]) - set(train))
    if shared:
        shown = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
        warnings.warn(
            f"{len(shared)} sequence(s) come from a video held out for validation and are not trained on: {shown}",
            stacklevel=2,
        )
    if not train:
        raise ValueError(f"no sequence left to train on: every usable one shares a video with the {n_val} held out")
    return SequenceSplit(train, val)
