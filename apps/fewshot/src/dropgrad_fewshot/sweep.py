"""``fewshot-sweep CONFIG``: a grid of runs and the paper's result tables.

The sweep file (YAML or JSON) has three keys::

    out: runs/sweep-glyphs            # folder of the sweep (one run directory per grid point)
    base: {dataset: glyphs, epochs: 5} # fewshot-train options shared by every run
    grid:                              # options to vary; every combination is one run
      method: [maml, metasgd]
      regularizer: [none, dropout, spatialdropout, binary, gaussian]
      p: [0.1, 0.2, 0.3]
      shot: [1, 5]
      dropgrad_layers: [all, "block4,fc"]

``regularizer`` is the tables' column axis and names DropGrad kinds too: ``none`` (no
regularisation), ``dropout``/``spatialdropout`` (activation dropout, DropGrad off), ``binary``/
``gaussian`` (DropGrad of that kind). ``p`` and ``dropgrad_layers`` only vary DropGrad runs, so
grid points that resolve to the same run are run once. Any other ``FewShotConfig`` option may
be varied too. A finished run (``results.json`` present) is reused and an interrupted one resumed,
so re-running the same command continues the sweep; a run directory whose options differ from the
sweep's (its base changed since) is an error, not reused.

Written to ``out``: ``results.jsonl`` (one line per run: its varied options and results),
``tables.md`` (Tables 1-4 layout: rows method x shot [x layers], columns regulariser; and the
Fig. 2 layout: binary vs Gaussian over p) and ``p_sweep.png`` when p varies.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dropgrad import (
    ConfigError,
    atomic_write,
    build_config,
    is_unstarted_run,
    load_config_file,
    resume_run,
    start_run,
)

from .cli import USER_ERRORS
from .config import FewShotConfig, resolve_defaults

__all__ = ["expand_grid", "format_tables", "main", "run_sweep"]

REGULARIZERS = ("none", "dropout", "spatialdropout", "binary", "gaussian")
_MUTABLE = ("device", "progress", "num_workers")  # as fewshot-train --resume: where it runs, not what
_DROPGRAD_ONLY = ("p", "dropgrad_layers", "dropgrad_schedule")


def _regularizer_options(label: str) -> dict[str, Any]:
    if label not in REGULARIZERS:
        raise ConfigError(f"sweep grid: regularizer {label!r} is not one of {', '.join(REGULARIZERS)}")
    if label in ("binary", "gaussian"):
        return {"dropgrad": label, "regularizer": "none"}
    return {"dropgrad": "none", "regularizer": label}


def expand_grid(
    base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], source: str = "sweep file"
) -> list[tuple[dict[str, Any], FewShotConfig]]:
    """Every distinct run of the grid: (the varied values that name it, its resolved config).

    An option name or value that ``--config`` would refuse is a ``ConfigError`` naming ``source``.

    >>> runs = expand_grid({"epochs": 1}, {"regularizer": ["none", "gaussian"], "p": [0.1, 0.2]})
    >>> [label for label, _ in runs]
    [{'regularizer': 'none'}, {'regularizer': 'gaussian', 'p': 0.1}, {'regularizer': 'gaussian', 'p': 0.2}]
    >>> runs[2][1].dropgrad, runs[2][1].p
    ('gaussian', 0.2)
    """
    for name, part in (("base", base), ("grid", grid)):
        if not isinstance(part, Mapping):
            raise ConfigError(f"{source}: {name} must be a mapping of option names to values, got {part!r}")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"{source}: grid {key} must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    seen: set[str] = set()
    runs: list[tuple[dict[str, Any], FewShotConfig]] = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        varied = dict(zip(keys, combo))
        options = dict(base)
        label: dict[str, Any] = {}
        reg = varied.pop("regularizer", None)
        if reg is not None:
            options.update(_regularizer_options(reg))
            label["regularizer"] = reg
        # A "dropgrad" of the grid is applied below, over the regulariser's: it decides too.
        uses_dropgrad = varied.get("dropgrad", options.get("dropgrad", "gaussian")) != "none"
        for k, v in varied.items():
            if k in _DROPGRAD_ONLY and not uses_dropgrad:
                continue  # the same run for every p / layer choice: keep one
            options[k] = v
            label[k] = v
        # As a config file's values: unknown keys get a did-you-mean, wrong types name the key.
        cfg = resolve_defaults(build_config(FewShotConfig, options, {}, source=f"{source} (base and grid)"))
        key = json.dumps(label, sort_keys=True)
        if key not in seen:
            seen.add(key)
            runs.append((label, cfg))
    return runs


def _slug(label: Mapping[str, Any]) -> str:
    parts = [f"{k}-{v}" for k, v in label.items()] or ["base"]
    return "_".join(parts).replace("/", "-").replace(",", "+").replace(" ", "")


def run_sweep(spec: Mapping[str, Any], source: str = "sweep file", progress: bool = True) -> list[dict[str, Any]]:
    """Run (or reuse) every grid point; returns one record per run."""
    from .run import train

    unknown = set(spec) - {"out", "base", "grid"}
    if unknown or "out" not in spec or "grid" not in spec:
        raise ConfigError(f"{source}: expected keys out, base (optional) and grid; got {sorted(spec)}")
    out = Path(spec["out"])
    base = spec.get("base") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"{source}: base must be a mapping of option names to values, got {base!r}")
    base = {"progress": progress, **base}
    runs = expand_grid(base, spec["grid"], source)
    # Checked before the first run: two grid points in one folder would fail only when the second
    # is reached (after the first has trained), as a run "with other options than this sweep's".
    folders: dict[str, dict[str, Any]] = {}
    for label, _ in runs:
        other = folders.setdefault(_slug(label), label)
        if other is not label:
            raise ConfigError(
                f"{source}: grid points {other} and {label} would share the run directory "
                f"{out / _slug(label)} (values that differ only in spaces, '/' or ','); give values that differ otherwise"
            )
    records = []
    for i, (label, cfg) in enumerate(runs):
        run_dir = out / _slug(label)
        results_path = run_dir / "results.json"
        print(f"[{i + 1}/{len(runs)}] {run_dir}", flush=True)
        saved = None
        # A cell that never reached its first checkpoint starts afresh with the sweep's options.
        if (run_dir / "config.json").is_file() and not is_unstarted_run(run_dir):
            try:
                saved = resume_run(run_dir, FewShotConfig, dataclasses.asdict(cfg), mutable=_MUTABLE, app="fewshot-train")
            except ConfigError as err:
                raise ConfigError(
                    f"{source}: {run_dir} holds a run with other options than this sweep's ({err}); "
                    "move it away or give the sweep another out"
                ) from None
        if results_path.is_file():
            results = json.loads(results_path.read_text())
        elif saved is not None:
            results = train(saved, run_dir, resume=True)
        else:
            start_run(run_dir, cfg, app="fewshot-train")
            results = train(cfg, run_dir)
        records.append({"run": str(run_dir), **label, **results})
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(out / "results.jsonl", lambda f: f.write(lines), binary=False)
    tables = format_tables(records, rows=[k for label, _ in runs for k in label])
    atomic_write(out / "tables.md", lambda f: f.write(tables), binary=False)
    if len({r.get("p") for r in records if r.get("dropgrad") != "none"}) > 1:
        plot_p_sweep(records, out / "p_sweep.png", rows=[k for label, _ in runs for k in label])
    return records


def _activation(r: Mapping[str, Any]) -> str:
    """``"dropout + "`` for a run with activation dropout as well as DropGrad (its table label's prefix)."""
    reg = r.get("regularizer", "none")
    return f"{reg} + " if reg in ("dropout", "spatialdropout") and r.get("dropgrad", "none") != "none" else ""


def _cell(r: Mapping[str, Any]) -> str:
    return f"{r['test_acc_mean']:.2f} ± {r['test_acc_ci95']:.2f}"


def format_tables(records: Sequence[Mapping[str, Any]], rows: Sequence[str] = ()) -> str:
    """Markdown tables: accuracy (%) ± 95% CI by method x shot [x layers] and regulariser [x p].

    ``rows``: further options that tell runs apart (a sweep's varied ones); each gets a row
    column, so no two runs share a cell.

    >>> recs = [{"method": "maml", "shot": 1, "regularizer": r, "p": 0.1, "dropgrad": d,
    ...          "test_acc_mean": a, "test_acc_ci95": 0.5}
    ...         for r, d, a in [("none", "none", 40.0), ("gaussian", "gaussian", 42.5)]]
    >>> print(format_tables(recs).splitlines()[2:5])
    ['| method | shot | none | gaussian (p=0.1) |', '|---|---|---|---|', '| maml | 1 | 40.00 ± 0.50 | 42.50 ± 0.50 |']
    """
    def reg_of(r: Mapping[str, Any]) -> str:
        if r.get("dropgrad", "none") != "none":
            # DropGrad on top of activation dropout is a column of its own, not DropGrad's.
            return _activation(r) + f"{r['dropgrad']} (p={r['p']})"
        return str(r.get("regularizer", "none"))

    columns_of = ("regularizer", "dropgrad", "p")  # what reg_of makes the columns of
    named = ("method", "backbone", "dataset", "test_dataset", "shot", "dropgrad_layers", *rows)
    row_keys = [k for k in dict.fromkeys(named) if k not in columns_of and any(k in r for r in records)]
    columns: list[str] = []
    table: dict[tuple, dict[str, str]] = {}
    for r in records:
        col = reg_of(r)
        if col not in columns:
            columns.append(col)
        table.setdefault(tuple(r.get(k, "") for k in row_keys), {})[col] = _cell(r)
    lines = [
        "## Test accuracy (%) ± 95% CI",
        "",
        "| " + " | ".join(row_keys + columns) + " |",
        "|" + "---|" * (len(row_keys) + len(columns)),
    ]
    for key, cells in table.items():
        lines.append("| " + " | ".join([str(k) for k in key] + [cells.get(c, "") for c in columns]) + " |")
    ps = sorted({r["p"] for r in records if r.get("dropgrad") in ("binary", "gaussian")})
    mixed = any(_activation(r) for r in records if r.get("dropgrad") in ("binary", "gaussian"))
    if len(ps) > 1:
        lines += ["", "## Binary vs Gaussian DropGrad over p (the paper's Fig. 2)", ""]
        groups: dict[tuple, dict[tuple, str]] = {}
        for r in records:
            if r.get("dropgrad") in ("binary", "gaussian"):
                k = tuple(r.get(x, "") for x in row_keys) + ((_activation(r).removesuffix(" + ") or "none",) if mixed else ())
                groups.setdefault(k, {})[(r["p"], r["dropgrad"])] = _cell(r)
        head = list(row_keys) + (["activation dropout"] if mixed else [])
        lines += ["| " + " | ".join(head + ["p", "binary", "gaussian"]) + " |", "|" + "---|" * (len(head) + 3)]
        for k, cells in groups.items():
            for p in ps:
                lines.append("| " + " | ".join([str(x) for x in k] + [str(p), cells.get((p, "binary"), ""), cells.get((p, "gaussian"), "")]) + " |")
    return "\n".join(lines) + "\n"


def plot_p_sweep(records: Sequence[Mapping[str, Any]], path: Path, rows: Sequence[str] = ()) -> Path:
    """Accuracy over p for binary and Gaussian DropGrad with 95% CI bars (Fig. 2): one line per
    kind and per setting of the other options that vary (method, shot, ``rows``, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    runs = [r for r in records if r.get("dropgrad") in ("binary", "gaussian")]
    named = ("method", "backbone", "dataset", "test_dataset", "shot", "dropgrad_layers", *rows)
    keys = [k for k in dict.fromkeys(named) if k not in ("regularizer", "dropgrad", "p")
            and len({json.dumps(r.get(k), sort_keys=True) for r in runs}) > 1]
    lines: dict[str, list[tuple]] = {}
    for r in runs:
        label = ", ".join([_activation(r) + r["dropgrad"], *(f"{k}={r.get(k)}" for k in keys)])
        lines.setdefault(label, []).append((r["p"], r["test_acc_mean"], r["test_acc_ci95"]))
    for label, pts in lines.items():
        p, m, c = zip(*sorted(pts))
        ax.errorbar(p, m, yerr=c, marker="o", capsize=3, label=label)
    ax.set_xlabel("p")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fewshot-sweep``."""
    parser = argparse.ArgumentParser(prog="fewshot-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="sweep file (YAML or JSON) with out, base and grid")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    try:
        spec = load_config_file(args.config)
        run_sweep(spec, str(args.config), progress=not args.no_progress)
    except USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print((Path(spec["out"]) / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
