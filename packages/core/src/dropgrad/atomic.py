"""Atomic file writes: a file is either its old version or its complete new one, never half.

Everything a run directory holds (checkpoints, configs, summaries, results) goes through
:func:`atomic_write`: the bytes go to a temporary file in the same directory, which is flushed,
fsynced and then renamed over the target, and the directory entry is fsynced too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_json"]


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some platforms (Windows) cannot open directories, so skip there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[Any]], Any],
    *,
    binary: bool = True,
    check: Callable[[Path], Any] | None = None,
) -> Path:
    """Write ``path`` atomically through ``write(file)``; parent directories are created.

    Args:
        path: the target file.
        write: called with the open temporary file (binary, or UTF-8 text when ``binary=False``).
        check: optional ``check(tmp_path)`` run on the complete temporary file before it
            replaces ``path``; an exception there leaves the old ``path`` untouched.

    >>> import tempfile
    >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a" / "x.txt", lambda f: f.write("hi"), binary=False)
    >>> p.read_text()
    'hi'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so os.replace is a rename within one file system.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; run files are meant to be shared
        if check is not None:
            check(tmp)
        os.replace(tmp, target)
    except BaseException:
        # Any failure (including KeyboardInterrupt) leaves the old target as it was.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON (with a final newline), atomically."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"
    return atomic_write(path, lambda f: f.write(text), binary=False)
