"""Command-line tools: ``viewpoint-train`` and ``viewpoint-eval``.

User errors (bad options, missing or malformed data) print one ``error: ...`` line and exit 2,
before any training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dropgrad import (
    CheckpointError,
    add_dataclass_arguments,
    build_config,
    is_unstarted_run,
    load_config_file,
    namespace_values,
    run_config,
    select_device,
    start_run,
)

from .config import DEFAULT_SYNTHETIC_ROOT, ViewpointConfig
from .data.mat import MatError

__all__ = ["main_eval", "main_train"]

_USER_ERRORS = (ValueError, FileNotFoundError, MatError, CheckpointError)


def main_train(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``viewpoint-train``: with no options, the embedded synthetic default end to end."""
    parser = argparse.ArgumentParser(
        prog="viewpoint-train",
        description="Meta-train MetaView with DropGrad for few-shot viewpoint estimation, then evaluate it "
        "on the novel categories (Acc30 / MedErr).",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/viewpoint"), help="run directory (default: runs/viewpoint)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of options; command-line options override it")
    add_dataclass_arguments(parser, ViewpointConfig)
    args = parser.parse_args(argv)
    given = namespace_values(args, ViewpointConfig)
    from .pipeline import load_data, run

    try:
        cfg = run_config(ViewpointConfig, args.out, given, resume=args.resume, config_file=args.config, app="viewpoint-train")
        if args.resume:
            data = load_data(cfg, log=lambda line: print(line, file=sys.stderr))
            if is_unstarted_run(args.out):  # stopped before its first checkpoint: start it again, log and all
                start_run(args.out, cfg, app="viewpoint-train")
        else:
            if cfg.dataset == "synthetic" and cfg.data_root is None:
                # The default folder, made absolute now and stored so in config.json: viewpoint-eval,
                # --resume and --config from another working directory read this set, not a new one.
                cfg = dataclasses.replace(cfg, data_root=os.path.abspath(DEFAULT_SYNTHETIC_ROOT))
            cfg.check()
            select_device(cfg.device)
            # Read and check all data before the run directory exists: bad data leaves nothing behind.
            data = load_data(cfg, log=lambda line: print(line, file=sys.stderr))
            start_run(args.out, cfg, app="viewpoint-train")
        results = run(cfg, args.out, resume=args.resume, data=data)
    except _USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps({"pooled": results["pooled"], "unadapted_pooled": results["unadapted_pooled"]}, sort_keys=True))
    return 0


def main_eval(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``viewpoint-eval RUN_DIR``: few-shot evaluation of a trained run."""
    parser = argparse.ArgumentParser(
        prog="viewpoint-eval",
        description="For each test category, adapt the run's model on K-shot support draws and score the other "
        "objects; writes RUN_DIR/eval_<checkpoint>_<K>shot_<N>step_<D>draw.json (per-category and pooled "
        "Acc30/MedErr, mean ± std over draws) and the same name with _examples.png; with --data-root other than "
        "the run's, the name ends in _data-<8 hex digits of the folder's path hash>; the training run's "
        "results.json is left as it is.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by viewpoint-train")
    parser.add_argument("--draws", type=int, default=10, help="random K-shot support draws per category (default: 10)")
    parser.add_argument("--shots", type=int, help="support images per category (default: the run's --shots)")
    parser.add_argument("--steps", type=int, help="inner-loop steps (default: the run's --eval-steps)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    parser.add_argument("--data-root", help="data folder (default: the run's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the run's)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: the run's --threads)")
    args = parser.parse_args(argv)
    from .pipeline import apply_threads, build_model, evaluation_name, load_data, run_evaluation

    try:
        if args.steps is not None and args.steps < 1:
            # Checked here: the run's config would name its own option, --eval-steps.
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        changes = {k: v for k, v in (("shots", args.shots), ("eval_steps", args.steps), ("data_root", args.data_root),
                                     ("device", args.device), ("threads", args.threads)) if v is not None}
        path = args.run_dir / "config.json"
        if not path.is_file():
            raise ValueError(f"{path} not found: {args.run_dir} is not a viewpoint-train run directory")
        saved = load_config_file(path)
        cfg = build_config(ViewpointConfig, saved, changes, app="viewpoint-train")
        cfg.check()
        if args.draws < 1:
            raise ValueError(f"--draws must be >= 1, got {args.draws}")
        device = select_device(cfg.device)
        apply_threads(cfg.threads)
        data = load_data(cfg, log=lambda line: print(line, file=sys.stderr))
        model = build_model(cfg).to(device)
        other_data = args.data_root is not None and (
            saved.get("data_root") is None or Path(args.data_root).resolve() != Path(saved["data_root"]).resolve()
        )
        name = evaluation_name(cfg, args.draws, args.checkpoint, other_data)
        results = run_evaluation(model, cfg, args.run_dir, data, device, args.draws, args.checkpoint,
                                 log=lambda line: print(line, file=sys.stderr), name=name)
        print(f"wrote {args.run_dir / (name + '.json')}", file=sys.stderr)
    except _USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(results["pooled"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main_train())
