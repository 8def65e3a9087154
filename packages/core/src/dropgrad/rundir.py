"""Run directories: start a new one with its resolved config, or reopen one to resume.

A run directory holds ``config.json`` (the resolved options), ``metrics.jsonl``, ``log.txt``,
``checkpoints/`` and the final results. A new run never writes into a directory that already
holds files; a resumed run keeps the options it was started with.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config import ConfigError, build_config, load_config_file, save_config

T = TypeVar("T")

__all__ = ["resume_run", "run_config", "start_run"]


def start_run(out: str | os.PathLike[str], config: Any) -> Path:
    """Create the run directory ``out`` and write ``config.json``.

    ``out`` must not exist or be an empty directory: a new run never mixes its files with
    another run's (use ``--resume`` to continue that one).

    >>> import tempfile, dataclasses
    >>> @dataclasses.dataclass
    ... class Opt:
    ...     lr: float = 0.1
    >>> run = start_run(Path(tempfile.mkdtemp()) / "run", Opt())
    >>> (run / "config.json").read_text()
    '{\\n  "lr": 0.1\\n}\\n'
    """
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(
            f"run directory {path} already exists and is not empty; pass --resume to continue "
            f"that run, or choose another --out"
        )
    path.mkdir(parents=True, exist_ok=True)
    save_config(path / "config.json", config)
    return path


def resume_run(
    out: str | os.PathLike[str],
    cls: type[T],
    cli_values: Mapping[str, Any] | None = None,
    *,
    mutable: Iterable[str] = ("device", "progress"),
) -> T:
    """Reload the config of the run in ``out`` for ``--resume``.

    Options given on the command line must agree with the saved ones, except the ``mutable``
    fields (where the run executes, whether a progress bar shows), which may change.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume: {path} not found; {Path(out)} is not a run directory started by this tool")
    saved = build_config(cls, load_config_file(path), {})
    changes = dict(cli_values or {})
    allowed = set(mutable)
    for name, value in changes.items():
        if name not in allowed and getattr(saved, name) != value:
            raise ConfigError(
                f"--resume: option {name}={value!r} differs from {name}={getattr(saved, name)!r} in {path}; "
                f"a resumed run keeps its options (only {', '.join(sorted(allowed))} may change)"
            )
    return dataclasses.replace(saved, **{k: v for k, v in changes.items() if k in allowed})  # type: ignore[type-var]


def run_config(
    cls: type[T],
    out: str | os.PathLike[str],
    cli_values: Mapping[str, Any],
    *,
    resume: bool = False,
    config_file: str | os.PathLike[str] | None = None,
    mutable: Iterable[str] = ("device", "progress"),
) -> T:
    """The options of a run as every CLI takes them: ``--resume``, or defaults < ``--config`` < options.

    With ``resume`` the run in ``out`` keeps its saved options (see :func:`resume_run`); a
    config file cannot be combined with it.

    >>> import tempfile, dataclasses
    >>> @dataclasses.dataclass
    ... class Opt:
    ...     lr: float = 0.1
    ...     device: str = "auto"
    >>> run = start_run(Path(tempfile.mkdtemp()) / "run", run_config(Opt, "unused", {"lr": 0.5}))
    >>> run_config(Opt, run, {"device": "cpu"}, resume=True)
    Opt(lr=0.5, device='cpu')
    """
    if resume:
        if config_file is not None:
            raise ConfigError("--config cannot be combined with --resume: a resumed run keeps the options in its config.json")
        return resume_run(out, cls, cli_values, mutable=mutable)
    file_values = load_config_file(config_file) if config_file is not None else None
    return build_config(cls, file_values, cli_values)
