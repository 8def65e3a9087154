"""``track-train``: meta-train MetaSDNet or MetaCREST (Meta-Tracker style) with DropGrad.

User errors (bad options, missing or malformed data, an unusable run directory or weight file)
end with one ``track-train: error: ...`` line and exit status 2, before any training starts.

Examples::

    track-train --tracker metasdnet --out runs/metasdnet-dropgrad                  # synthetic sequences
    track-train --tracker metasdnet --dropgrad none --out runs/metasdnet-baseline
    track-train --tracker metasdnet --source vot --root /data/vot --list-file vot-otb.txt \\
                --backbone-weights imagenet-vgg-m.mat --out runs/vot
    track-train --out runs/metasdnet-dropgrad --resume                              # continue a run
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from dropgrad import (
    CheckpointError,
    ConfigError,
    add_dataclass_arguments,
    namespace_values,
    run_config,
)

from . import trackers as _trackers  # noqa: F401  (registers the meta-learned trackers)
from .data.boxes import BoxFileError
from .data.otb import OTBDataError
from .data.sequence import ImageReadError
from .meta import available_meta_trackers
from .training.config import TrackTrainConfig

__all__ = ["build_parser", "main"]

USER_ERRORS = (ValueError, ConfigError, CheckpointError, OTBDataError, BoxFileError, ImageReadError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    known = ", ".join(available_meta_trackers()) or "(none registered)"
    parser = argparse.ArgumentParser(
        prog="track-train",
        description=(
            "Meta-train a tracker's initial parameters and per-parameter step sizes (Meta-Tracker: one inner step "
            "on the first frame's samples, query on the next frames) with DropGrad on the inner gradient. "
            f"Registered trackers: {known}. With no data options it trains on procedural synthetic sequences."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("--out", type=Path, default=Path("runs/track-train"), help="run directory (default: runs/track-train)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of options (e.g. a run's config.json); command-line options override it")
    add_dataclass_arguments(parser, TrackTrainConfig, exclude=("backbone_source",))
    # The registry, not a fixed list: a tracker registered by the user's module is listed too.
    for action in parser._actions:
        if "--tracker" in action.option_strings:
            action.help = f"meta-learned tracker to train: {known} (default: {TrackTrainConfig.tracker})"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``track-train``; prints the run's ``results.json`` as one JSON line."""
    from .training.loop import train

    parser = build_parser()
    args = parser.parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        # As they happen (a random backbone is announced before training, not after it).
        print(f"{parser.prog}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            cfg = run_config(
                TrackTrainConfig, args.out, namespace_values(args, TrackTrainConfig),
                resume=args.resume, config_file=args.config, app="track-train",
            )
            results = train(cfg, args.out, resume=args.resume)
        except USER_ERRORS as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 2
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
