#!/usr/bin/env python
"""Episode data-path benchmark: the file path against the episode cache (+ augmentation on the device).

Measures how many 5-way 5-shot 16-query tasks per second (105 images each) the data path alone
delivers, as finished tensors on the device, for the issue's two shapes:

* ``conv4``:  84 px, target 400 tasks/s (the Conv4 first-order training target);
* ``resnet``: 224 px, target 50 tasks/s (the ResNet-18 first-order training target).

Paths, each on the CPU and, when present, on CUDA:

* ``file``: ``EpisodeBatches`` over a mini-ImageNet folder (MAML++ layout): JPEG decode, resize
  and centre crop per image with PIL, as ``fewshot-train`` without ``--cache`` does;
* ``file+aug``: the same with the PIL training augmentation (``--augment``);
* ``cache``: ``CachedEpisodeBatches``: one ``np.take`` gather from the memory-mapped cache into
  pinned memory, one copy, conversion and normalisation on the device;
* ``cache+aug``: the same with the batched crop/jitter/flip on the device.

No data set is needed: the script writes smooth random JPEGs (500x375, ImageNet's typical size)
into a temporary MAML++-layout folder and builds its cache with ``build_cache``. Each row runs for
``--seconds`` (at least two meta-batches after one warm-up); a row that fails (out of memory, ...)
prints its error and the script goes on. It also checks, on every device, that the cached
tensors without augmentation equal the file path's bit for bit.

Examples::

    python tools/bench_episode_cache.py --quick                  # seconds, CPU; what the smoke test runs
    python tools/bench_episode_cache.py --seconds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import dropgrad_fewshot  # noqa: F401
except ImportError:  # not pip-installed: use the checkout this script lives in
    _root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_root / "packages" / "core" / "src"), str(_root / "apps" / "fewshot" / "src")]

from dropgrad_fewshot.data import (
    CachedEpisodeBatches,
    EpisodeBatches,
    build_cache,
    build_dataset,
    open_cache,
)

SHAPES = {"conv4": (84, 400.0), "resnet": (224, 50.0)}
WAY, SHOT, QUERY = 5, 5, 16


def write_fake_images(
    root: Path, n_classes: int, per_class: int, size: tuple[int, int], seed: int = 0, split: str = "train",
    first_class: int = 0,
) -> None:
    """Smooth random RGB JPEGs in ``root/{train,val,test}/<class>/``: ``split`` is filled, with classes
    ``n<first_class>``, ``n<first_class + 1>``, ..."""
    from PIL import Image

    rng = np.random.default_rng([seed, first_class])
    for name in ("train", "val", "test"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for c in range(first_class, first_class + n_classes):
        folder = root / split / f"n{c:08d}"
        folder.mkdir()
        for i in range(per_class):
            # Low-frequency colour blobs plus mild noise: JPEG sizes and decode times like photos.
            small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
            noisy = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, size=(size[1], size[0], 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:04d}.jpg", quality=90)


class Source:
    """``source(i)``: meta-batch ``i`` as finished tensors on ``device``, from files or from the cache.

    The batches object is built on the first call, so that building it is not timed.
    """

    def __init__(self, kind: str, folder: Path, size: int, augment: bool, device: torch.device, kw: dict) -> None:
        self.kind, self.folder, self.size, self.augment, self.device, self.kw = kind, folder, size, augment, device, kw
        self.batches: Any = None

    def __call__(self, i: int):
        opts = dict(check_sizes=False)
        if self.batches is None:
            if self.kind == "file":
                ds = build_dataset("miniimagenet", "train", data_root=self.folder, image_size=self.size, augment=self.augment, **opts)
                self.batches = EpisodeBatches(ds, **self.kw)
            else:
                ds = open_cache(self.folder, "miniimagenet", "train", self.size, options=opts)
                self.batches = CachedEpisodeBatches(ds, device=self.device, augment=self.augment, **self.kw)
        task = self.batches.batch(i)
        return task.to(self.device) if self.kind == "file" else task

    def close(self) -> None:
        if hasattr(self.batches, "close"):
            self.batches.close()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(make, device: torch.device, seconds: float, min_batches: int = 2) -> tuple[float, int]:
    """Meta-batches per second of ``make(i)`` (tensors finished on ``device``), after one warm-up."""
    make(0)
    sync(device)
    start = time.perf_counter()
    n = 0
    while n < min_batches or time.perf_counter() - start < seconds:
        task = make(n + 1)
        sync(device)
        n += 1
        del task
    return n / (time.perf_counter() - start), n


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    devices = [torch.device("cpu")]
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and len(devices) == 1:
        print("note: --device cuda but no CUDA GPU is available; CPU rows only")
    if args.device == "cpu":
        devices = devices[:1]
    name = torch.cuda.get_device_name(0) if any(d.type == "cuda" for d in devices) else platform.processor() or "cpu"
    tasks = args.tasks_per_batch
    images_per_task = WAY * (SHOT + QUERY)
    print(
        f"episode data path: {WAY}-way {SHOT}-shot {QUERY}-query ({images_per_task} images/task), "
        f"{tasks} tasks per meta-batch | torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{os.cpu_count()} cpus | device: {name}"
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_episode_cache_") as tmp:
        root = Path(tmp) / "mini"
        t0 = time.perf_counter()
        write_fake_images(root, args.classes, args.per_class, tuple(args.source_size))
        print(f"wrote {args.classes * args.per_class} random {args.source_size[0]}x{args.source_size[1]} JPEGs in "
              f"{time.perf_counter() - t0:.1f} s")
        header = f"{'shape':<12} {'path':<10} {'device':<6} {'tasks/s':>9} {'images/s':>10} {'target':>7} {'x target':>9}  note"
        for shape in args.shapes:
            size, target = SHAPES[shape]
            opts = dict(check_sizes=False)
            t0 = time.perf_counter()
            build_cache("miniimagenet", "train", root, size, Path(tmp) / "cache", threads=args.threads, **opts)
            print(f"\n{shape} {size} px: built the cache of {args.classes * args.per_class} images in "
                  f"{time.perf_counter() - t0:.1f} s")
            print(header)
            kw = dict(n_way=WAY, n_shot=SHOT, n_query=QUERY, tasks_per_batch=tasks, seed=0)
            for device in devices:
                configs = []
                if device.type == "cpu" or args.file_on_cuda:
                    for aug in (False, True):
                        configs.append(("file+aug" if aug else "file", Source("file", root, size, aug, device, kw),
                                        "PIL decode+resize" + (" +augment" if aug else "") + " per image"))
                for aug in (False, True):
                    configs.append(("cache+aug" if aug else "cache", Source("cache", Path(tmp) / "cache", size, aug, device, kw),
                                    "gather+copy+convert" + ("+augment" if aug else "")))
                for label, make, note in configs:
                    row = {"shape": shape, "size": size, "path": label, "device": str(device), "target_tasks_s": target}
                    try:
                        per_s, n = time_batches(make, device, args.seconds, args.min_batches)
                        tps = per_s * tasks
                        row.update(tasks_s=tps, images_s=tps * images_per_task, batches=n)
                        print(f"{shape + f' {size}px':<12} {label:<10} {device.type:<6} {tps:>9.1f} "
                              f"{tps * images_per_task:>10.0f} {target:>7.0f} {tps / target:>8.2f}x  {note}", flush=True)
                    except Exception as exc:  # a failing row (OOM, ...) must not stop the table
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                        print(f"{shape + f' {size}px':<12} {label:<10} {device.type:<6} FAILED {row['error']}", flush=True)
                    finally:
                        make.close()
                    rows.append(row)
                # Exactness: cached tensors on this device equal the file path's (CPU) bit for bit.
                try:
                    ds_file = build_dataset("miniimagenet", "train", data_root=root, image_size=size, **opts)
                    ds_cache = open_cache(Path(tmp) / "cache", "miniimagenet", "train", size, options=opts)
                    fast = CachedEpisodeBatches(ds_cache, device=device, **kw)
                    a, b = fast.batch(3), EpisodeBatches(ds_file, **kw).batch(3)
                    fast.close()
                    diff = max(float((x.cpu().float() - y.float()).abs().max()) for x, y in zip(a, b))
                    print(f"{'':<12} check: cache on {device.type} == file path (no augmentation): max |diff| = {diff:g}")
                    rows.append({"shape": shape, "device": str(device), "check_max_abs_diff": diff})
                except Exception as exc:
                    print(f"{'':<12} check on {device.type} FAILED: {type(exc).__name__}: {exc}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny source images and short rows: seconds on a CPU")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="CPU rows always; CUDA rows too with auto (when present) or cuda")
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument("--seconds", type=float, default=3.0, help="time per row (default 3)")
    parser.add_argument("--tasks-per-batch", type=int, default=4, help="tasks per meta-batch (default 4)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the fake data set (default 20)")
    parser.add_argument("--per-class", type=int, default=30, help="images per class (default 30; >= 21)")
    parser.add_argument("--source-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=None, help="cache-building threads")
    parser.add_argument("--file-on-cuda", action="store_true", help="also time the file path with a copy to CUDA")
    parser.add_argument("--min-batches", type=int, default=2, help="timed meta-batches per row at least (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 0.3)
        args.classes, args.per_class, args.source_size = 5, 21, [100, 75]
        args.tasks_per_batch, args.min_batches = 1, 1
    if args.per_class < SHOT + QUERY or args.classes < WAY:
        parser.error(f"--classes must be >= {WAY} and --per-class >= {SHOT + QUERY}")
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                         "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
