"""Run directories: start a new one with its resolved config, or reopen one to resume.

A run directory holds ``config.json`` (the resolved options), ``metrics.jsonl``, ``log.txt``,
``checkpoints/`` and the final results. A new run never writes into a directory that already
holds files; a resumed run keeps the options it was started with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config import APP_KEY, ConfigError, build_config, config_to_dict, load_config_file, save_config
from .training import CHECKPOINT_DIR, LAST_CHECKPOINT

T = TypeVar("T")

__all__ = ["check_new_run_dir", "folder_tag", "is_unstarted_run", "resume_run", "run_config", "start_run"]


def start_run(out: str | os.PathLike[str], config: Any, *, app: str | None = None) -> Path:
    """Create the run directory ``out`` and write ``config.json``.

    ``app``, the command writing the run (``fewshot-train``), is stored as the key ``"app"`` of
    ``config.json``: another app's command given this folder then names the app it belongs to
    (see :func:`dropgrad.config.check_app_marker`), rather than guessing from unknown keys.

    ``out`` must not exist, be an empty directory, or hold a run that never reached its first
    checkpoint (``config.json`` but no ``checkpoints/last.pt``: typically a start that stopped
    on bad input), whose log and metrics are then removed. A new run never mixes its files with
    a run that made progress (use ``--resume`` to continue that one).

    >>> import tempfile, dataclasses
    >>> @dataclasses.dataclass
    ... class Opt:
    ...     lr: float = 0.1
    >>> run = start_run(Path(tempfile.mkdtemp()) / "run", Opt())
    >>> (run / "config.json").read_text()
    '{\\n  "lr": 0.1\\n}\\n'
    >>> (start_run(Path(tempfile.mkdtemp()) / "run", Opt(), app="fewshot-train") / "config.json").read_text()
    '{\\n  "app": "fewshot-train",\\n  "lr": 0.1\\n}\\n'
    """
    if app is not None:
        values = dict(config) if isinstance(config, Mapping) else config_to_dict(config)
        if APP_KEY in values:
            raise TypeError(f"the config has an option {APP_KEY!r}: config.json has no room for the app marker")
        config = {APP_KEY: app, **values}
    path = Path(out)
    if check_new_run_dir(path):
        for name in ("log.txt", "metrics.jsonl"):
            (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    save_config(path / "config.json", config)
    return path


def is_unstarted_run(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run directory (it has ``config.json``) without a checkpoint yet."""
    path = Path(path)
    return (path / "config.json").is_file() and not (path / CHECKPOINT_DIR / LAST_CHECKPOINT).exists()


def check_new_run_dir(path: str | os.PathLike[str]) -> bool:
    """Refuse ``path`` for a new run unless it is absent, empty or an unstarted run (see
    :func:`start_run`); returns True in the last case.

    Without taking over an unstarted run, a corrected rerun after an error (a wrong data folder,
    say) would meet the failed attempt's config.json and be refused.
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    if is_unstarted_run(path):
        return True
    raise ValueError(
        f"run directory {path} already exists and is not empty; pass --resume to continue "
        f"that run, or choose another --out"
    )


def resume_run(
    out: str | os.PathLike[str],
    cls: type[T],
    cli_values: Mapping[str, Any] | None = None,
    *,
    mutable: Iterable[str] = ("device", "progress"),
    app: str | None = None,
) -> T:
    """Reload the config of the run in ``out`` for ``--resume``.

    Options given on the command line must agree with the saved ones, except the ``mutable``
    fields (where the run executes, whether a progress bar shows), which may change. ``app``
    names the command in errors (a folder of another app's run is one line naming the folder, and
    the app that wrote it when its ``config.json`` says so).
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume: {path} not found; {Path(out)} is not a run directory started by this tool")
    file_values = load_config_file(path)
    saved = build_config(cls, file_values, {}, app=app)
    # Compared as build_config stores them: coerced, folders made absolute.
    given = build_config(cls, file_values, cli_values or {}, app=app)
    allowed = set(mutable)
    for name in cli_values or {}:
        value = getattr(given, name)
        if name not in allowed and getattr(saved, name) != value:
            raise ConfigError(
                f"--resume: option {name}={value!r} differs from {name}={getattr(saved, name)!r} in {path}; "
                f"a resumed run keeps its options (only {', '.join(sorted(allowed))} may change)"
            )
    return dataclasses.replace(saved, **{k: getattr(given, k) for k in cli_values or {} if k in allowed})  # type: ignore[type-var]


def run_config(
    cls: type[T],
    out: str | os.PathLike[str],
    cli_values: Mapping[str, Any],
    *,
    resume: bool = False,
    config_file: str | os.PathLike[str] | None = None,
    mutable: Iterable[str] = ("device", "progress"),
    app: str | None = None,
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
        return resume_run(out, cls, cli_values, mutable=mutable, app=app)
    file_values = load_config_file(config_file) if config_file is not None else None
    return build_config(cls, file_values, cli_values, app=app)


def folder_tag(path: str | os.PathLike[str]) -> str:
    """8 hex digits of the SHA-256 of ``path``'s absolute, resolved form: a short, stable name part
    for results computed from another data folder than the run's, so they get their own file.

    >>> folder_tag("/data/a")
    '46d2cd93'
    """
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:8]
