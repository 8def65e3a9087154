"""Command-line entry points: ``fewshot-train`` and ``fewshot-test``.

User errors (bad options, missing or malformed data, an unusable run directory) end with one
``error: ...`` line and exit status 2, before any training starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dropgrad import (
    CheckpointError,
    ConfigError,
    DistributedContext,
    DistributedError,
    add_dataclass_arguments,
    is_unstarted_run,
    namespace_values,
    run_config,
    start_run,
)

from .config import FewShotConfig, resolve_defaults
from .data import DATASETS, DataError

__all__ = ["test_main", "train_main"]

USER_ERRORS = (ValueError, DataError, ConfigError, CheckpointError, FileNotFoundError)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-train",
        description=(
            "Meta-train a few-shot classifier (MAML, MetaSGD, MetaSGD*, MAML++) with DropGrad, keep the best "
            "model on validation accuracy and test it. With no options: MAML + Gaussian DropGrad on the "
            "embedded procedural glyphs (no files needed)."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fewshot"), help="run directory (default: runs/fewshot)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of options (e.g. a run's config.json); command-line options override it")
    add_dataclass_arguments(parser, FewShotConfig)
    return parser


def load_train_config(args: argparse.Namespace) -> FewShotConfig:
    """The run's config from ``--resume``, or from defaults < ``--config`` < options."""
    cfg = run_config(
        FewShotConfig, args.out, namespace_values(args, FewShotConfig), resume=args.resume,
        config_file=args.config, mutable=("device", "progress", "num_workers"), app="fewshot-train",
    )
    return cfg if args.resume else resolve_defaults(cfg)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fewshot-train``."""
    from .methods import check_learner
    from .run import train

    parser = train_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # torchrun ... -m dropgrad_fewshot.cli -- --p 0.2: torchrun's own parser rejects the
        # abbreviation --p (ambiguous with its --print-completion) unless "--" shields it.
        argv = argv[1:]
    args = parser.parse_args(argv)
    # Under torchrun every process runs this; rank 0 alone writes the run directory and prints.
    dist = DistributedContext()
    try:
        dist = DistributedContext.from_env()
        cfg = load_train_config(args)
        check_learner(cfg)
        dist.init(cfg.device)
        # A --resume of a run stopped before its first checkpoint starts it again: its stale log
        # and metrics go, as for a new run there (the trainer then starts from the beginning).
        if (not args.resume or is_unstarted_run(args.out)) and dist.is_main:
            start_run(args.out, cfg, app="fewshot-train")
        results = train(cfg, args.out, resume=args.resume, dist=dist)
    except (*USER_ERRORS, DistributedError) as err:
        agreed = dist.fail(err)  # ranks still in setup stop too; rank 0 prints the first error
        if dist.is_main:
            sys.stderr.write(f"{parser.prog}: error: {err}\n")
            sys.stderr.flush()
        elif not agreed and dist.initialized:
            # This rank's own error during training: nobody else knows it.
            sys.stderr.write(f"{parser.prog}: error (process {dist.rank} of {dist.world_size}): {err}\n")
            sys.stderr.flush()
        if agreed:
            dist.barrier()  # the others exit only after rank 0 has printed (torchrun then stops it)
        dist.destroy()
        parser.exit(2)
    if dist.is_main:
        print(json.dumps(results, sort_keys=True))
    dist.destroy()
    return 0


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-test",
        description=(
            "Test a trained run's best model on few-shot episodes of its own test split or of another data set "
            "(--test-dataset cub for the cross-domain protocol): mean accuracy and 95% confidence interval."
        ),
    )
    parser.add_argument("run_dir", type=Path, help="run directory written by fewshot-train")
    parser.add_argument("--test-dataset", choices=DATASETS, help="data set to test on (default: the run's test data set)")
    parser.add_argument("--data-root", help="folder of --test-dataset (default: the run's)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="split of the test data set (default: test)")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes (default: 600)")
    parser.add_argument("--shot", type=int, help="support images per class (default: the run's)")
    parser.add_argument("--query", type=int, help="query images per class (default: the run's --test-query)")
    parser.add_argument("--seed", type=int, help="seed of the test episodes (default: the run's test stream)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    parser.add_argument("--cam", nargs="?", const="cam.png", default=None, metavar="PNG",
                        help="also write class activation maps of adapted query images (default name cam.png, in the run directory)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def test_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fewshot-test``."""
    from .testing import test_run

    parser = test_parser()
    args = parser.parse_args(argv)
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
        results = test_run(
            args.run_dir,
            test_dataset=args.test_dataset,
            data_root=args.data_root,
            split=args.split,
            episodes=args.episodes,
            shot=args.shot,
            query=args.query,
            seed=args.seed,
            device=args.device,
            cam=args.cam,
            progress=not args.no_progress,
        )
    except USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
