"""``fewshot-cache`` (also ``python tools/build_episode_cache.py``): build episode caches of data-set splits.

Each split becomes ``<out>/<dataset>-<split>-<size>.u8`` plus its ``.json`` sidecar (see
:mod:`dropgrad_fewshot.data.cache`); ``fewshot-train --cache <out>`` then reads them.
``fewshot-cache --verify <out>`` checks built caches byte for byte. User errors end with one
``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .data import DATASETS, DataError, build_cache, verify_cache
from .data.build import parse_data_option as parse_option

__all__ = ["cache_parser", "main", "parse_option"]


def cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-cache",
        description=(
            "Decode and resize the images of data-set splits once into memory-mapped uint8 files "
            "(<out>/<dataset>-<split>-<size>.u8 + .json sidecar) for fewshot-train --cache <out>."
        ),
    )
    parser.add_argument("--dataset", choices=DATASETS, help="data set (any layout build_dataset reads); required unless --verify")
    parser.add_argument("--data-root", help="folder of the data set (not for glyphs)")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"], choices=("train", "val", "test"), help="splits to cache (default: all three)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None, help="side(s) in pixels, e.g. 84 224 (default: 28 for glyphs/omniglot, 84 for RGB sets)")
    parser.add_argument("--out", type=Path, help="cache folder (fewshot-train --cache); required unless --verify")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="data-set option, repeatable (e.g. protocol=background, layout=csv, check_files=false)")
    parser.add_argument("--seed", type=int, default=0, help="glyphs: the glyph universe (the run's --seed); ignored otherwise")
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: min(8, cpus))")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--verify", nargs="+", type=Path, metavar="PATH",
        help="instead of building: check built caches (a cache folder, or .u8/.json files) byte for byte against "
        "the SHA-256 of their pixels recorded at build time, e.g. after copying them to another machine",
    )
    return parser


def _verify(paths: Sequence[Path]) -> None:
    """Verify every cache named by ``paths``; prints one line per file; DataError at the first bad one."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.u8"))
            if not found:
                raise DataError(f"--verify {p}: no episode cache (*.u8) in that folder")
            files += found
        elif p.suffix in (".u8", ".json"):
            files.append(p)
        else:
            raise DataError(f"--verify {p}: expected a cache folder or a .u8/.json file of one")
    for f in files:
        start = time.perf_counter()
        meta = verify_cache(f)
        shape = " x ".join(map(str, meta["shape"]))
        print(f"{f.with_suffix('.u8')}: ok ({shape}, {time.perf_counter() - start:.1f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fewshot-cache``; prints one line per written split."""
    parser = cache_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        building = [o for o, v in (("--dataset", args.dataset), ("--out", args.out), ("--data-root", args.data_root)) if v]
        if building:
            parser.error(f"--verify checks built caches; it takes no {', '.join(building)}")
    elif args.dataset is None or args.out is None:
        parser.error("the following arguments are required: --dataset, --out (or --verify PATH to check built caches)")
    try:
        if args.verify is not None:
            _verify(args.verify)
            return 0
        options = dict(parse_option(args.dataset, o) for o in args.option)
        sizes = args.image_size or [None]
        for size in sizes:
            if size is not None and size < 4:
                raise DataError(f"--image-size must be >= 4, got {size}")
        if args.threads is not None and args.threads < 1:
            raise DataError(f"--threads must be >= 1, got {args.threads}")
        for size in sizes:
            for split in args.splits:
                start = time.perf_counter()
                path = build_cache(
                    args.dataset, split, args.data_root, size, args.out, seed=args.seed,
                    threads=args.threads, progress=not args.no_progress, **options,
                )
                n_bytes = path.stat().st_size
                print(f"{path}: {n_bytes / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s", flush=True)
    except (DataError, ValueError, OSError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
