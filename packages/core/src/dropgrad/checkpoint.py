"""Atomic, safely loadable checkpoints.

Writing: the payload goes to a temporary file in the target's directory, is flushed and
fsync'ed, checked to load with ``weights_only=True``, then ``os.replace``-d onto the target and
the directory is fsync'ed. A crash or kill at any moment therefore leaves either the old
complete file or the new complete file at ``path``, never a half-written one.

Reading: only ``torch.load(..., weights_only=True)``, which refuses to unpickle arbitrary
classes, and every failure becomes one :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]

#: Value of the ``"format"`` key of every checkpoint this package writes.
CHECKPOINT_FORMAT = "dropgrad-checkpoint"
#: Layout version; bumped when the payload layout changes incompatibly.
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, incomplete, corrupt, unsafe or of another format."""


def _short(exc: BaseException, limit: int = 100) -> str:
    """One line describing ``exc``: its type and the informative part of its message."""
    text = str(exc)
    # torch wraps the real unpickler error in paragraphs about weights_only defaults.
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if match:
        text = match.group(1)
    lines = text.strip().splitlines()
    text = lines[0].strip() if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _refusal(exc: BaseException) -> str | None:
    """The class/function a weights_only load refused (e.g. ``"__main__.Foo"``), if that is the error."""
    match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    return f"it refers to {match.group(1)}" if match else None


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any], *, verify: bool = True) -> Path:
    """Atomically write ``payload`` to ``path`` with :func:`torch.save`.

    ``"format"`` and ``"version"`` keys are added (on a copy) when absent, so the file is
    recognised by :func:`load_checkpoint`. The parent directory is created if needed.

    Args:
        path: target file, e.g. ``run_dir / "checkpoints" / "last.pt"``.
        payload: tensors, numbers, strings, ``None`` and lists/tuples/dicts of them (what
            ``torch.load(weights_only=True)`` accepts; state dicts of modules and optimisers are).
        verify: load the temporary file back (memory-mapped, so cheap) before it replaces
            ``path``, so an unloadable payload fails here, at save time, not at resume time.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: the payload holds objects a ``weights_only`` load would refuse; the
            old file at ``path`` (if any) is left untouched.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> p = save_checkpoint(d / "ckpt.pt", {"step": 3, "w": torch.zeros(2)})
    >>> load_checkpoint(p)["step"]
    3
    """
    path = Path(path)
    if not isinstance(payload, dict):
        raise TypeError(f"save_checkpoint({path}): payload must be a dict, got {type(payload).__name__}")
    data = dict(payload)
    data.setdefault("format", CHECKPOINT_FORMAT)
    data.setdefault("version", CHECKPOINT_VERSION)

    def verify_loadable(tmp: Path) -> None:
        try:
            # mmap: storages are mapped, not read, so verifying a large file is cheap.
            probe = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
            del probe
        except Exception as exc:
            raise CheckpointError(
                f"cannot write checkpoint {path}: the payload would not load with "
                f"torch.load(weights_only=True) ({_refusal(exc) or _short(exc)}); store only "
                "tensors, numbers, strings, None and lists/tuples/dicts of them"
            ) from exc

    return atomic_write(path, lambda f: torch.save(data, f), check=verify_loadable if verify else None)


def _hint(path: Path) -> str:
    """What the user can do about a broken checkpoint at ``path``."""
    best = path.with_name("best.pt")
    if path.name != "best.pt" and best.exists():
        # best.pt holds weights only, so nothing resumes from it, and a run started again replaces it.
        return (f"delete it to start the run again from the beginning, which replaces {best.name} (copy that "
                "aside first to keep the best weights so far)")
    return "delete it and start the run again"


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True`` only.

    Args:
        path: the checkpoint file.
        map_location: passed to :func:`torch.load` (default ``"cpu"``).

    Returns:
        The payload dict, including its ``"format"`` and ``"version"`` keys.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects that a safe
            load refuses, or is not a dropgrad checkpoint of a supported version. The message
            names the file and what was wrong.

    >>> import tempfile, pathlib
    >>> load_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "last.pt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dropgrad.checkpoint.CheckpointError: .../last.pt does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is not a complete checkpoint (the file is empty); {_hint(path)}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        # from None: the user needs the file and the reason, not torch's unpickler traceback.
        refused = _refusal(exc)
        if refused is not None:
            # A complete file that holds classes/functions: refusing those is the point.
            raise CheckpointError(
                f"{path} holds objects that a safe (weights_only) load refuses ({refused}); "
                "only checkpoints written by dropgrad.save_checkpoint are accepted"
            ) from None
        raise CheckpointError(
            f"{path} is not a complete checkpoint (truncated or corrupt: {_short(exc)}); {_hint(path)}"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} is not a dropgrad checkpoint (it holds a {type(payload).__name__}, not a dict)"
        )
    fmt = payload.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a dropgrad checkpoint (format {fmt!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this dropgrad reads versions 1..{CHECKPOINT_VERSION}"
        )
    return payload


def load_weights(model: torch.nn.Module, state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``model.load_state_dict(state)``, with a mismatch reported as one :class:`CheckpointError`
    naming ``path`` and how the weights differ (torch's own message lists every tensor).

    >>> load_weights(torch.nn.Linear(3, 1), torch.nn.Linear(2, 1).state_dict(), "run/checkpoints/best.pt")
    Traceback (most recent call last):
    ...
    dropgrad.checkpoint.CheckpointError: run/checkpoints/best.pt holds the weights of another model (other shapes: weight (1, 2), here (1, 3)); was it written with other model options (backbone, method, tracker)?
    """
    try:
        model.load_state_dict(state)
    except RuntimeError:
        own = model.state_dict()
        parts = []
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [
            f"{k} {tuple(state[k].shape)}, here {tuple(own[k].shape)}" for k in own
            if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)):
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                parts.append(f"{label}: {', '.join(names[:3])}{more}")
        raise CheckpointError(
            f"{path} holds the weights of another model ({'; '.join(parts) or 'see torch.nn.Module.load_state_dict'}); "
            "was it written with other model options (backbone, method, tracker)?"
        ) from None
