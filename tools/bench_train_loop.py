#!/usr/bin/env python
"""fewshot-train's whole meta-training loop against its meta-step alone (issue 7).

``tools/bench_maml.py`` times one meta-step on a fixed batch, synced after every step. Training
adds building the episodes, Adam's step and the trainer's bookkeeping. This script runs, in one
process and for one ``bench_maml`` row (``--impl``):

* ``step``: that row's meta-step alone, as ``bench_maml`` times it (random images, DropGrad on);
* ``train``: ``fewshot-train`` end to end with the row's options, on episodes from the episode
  cache (augmented on the device), for ``--steps`` meta-steps;
* ``train, per-step reads``: the same run with every step's metrics read at once, as the
  trainer did before it kept them as tensors (each read waits for the GPU to finish the step);
* ``train, batches in the step stream``: the same run without ``CachedEpisodeBatches.stage``, so
  each batch's copy to the device and augmentation run in the step's stream just before it, as
  before the thirteenth session (staged, they run on a side stream during the previous step).

A training run's rate is its steady state: meta-steps between its second and its last train
record (``metrics.jsonl``, one per 10 steps), times the tasks per step, over the time between
them. The first 10 steps hold compiling and graph capture. No data set is needed: the script
writes random JPEGs in the mini-ImageNet (MAML++) layout and builds their cache, as
``tools/bench_episode_cache.py`` does.

    python tools/bench_train_loop.py --impl fold+bf16+cl+compile+combo+graph     # on a GPU
    python tools/bench_train_loop.py --quick                                      # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_episode_cache as episode_bench  # tools/ is not a package; it puts the checkout on sys.path
import bench_maml

from dropgrad import training
from dropgrad.training import read_metrics
from dropgrad.inner import FOLDED_FORMS_OFF
from dropgrad_fewshot import cli
from dropgrad_fewshot.config import COMPILE_FORMS
from dropgrad_fewshot.data import CachedEpisodeBatches, build_cache

# The bench_maml settings a training run copies: 84 px, 5-way 5-shot 16-query, 4 tasks, 5 steps.
FULL = {"px": 84, "way": 5, "shot": 5, "query": 16, "tasks": 4, "steps": 5, "classes": (20, 5, 5), "per_class": 30}
QUICK = {"px": 32, "way": 3, "shot": 1, "query": 2, "tasks": 2, "steps": 2, "classes": (6, 3, 3), "per_class": 6}
LOG_EVERY = 10  # the trainer's default train-record interval


def train_options(impl: bench_maml.Impl) -> list[str]:
    """``fewshot-train`` options for a bench_maml row (first order, DropGrad on as fewshot-train's default)."""
    if impl.naive or impl.stock_pool:
        raise ValueError("this row has no fewshot-train options (naive, or torch's stock inductor)")
    if impl.checkpoint or impl.task_chunk or impl.compile_second_order or impl.loop_norms != "native":
        raise ValueError("this row is a second-order or memory lever; the training loop runs first order")
    if impl.compile_mode is not None or impl.tune_blocks or impl.combo_same_size:
        raise ValueError("fewshot-train has no option for torch.compile's mode, inductor's coordinate_descent_tuning "
                         "or combo_kernel_allow_mixed_sizes")
    batched = {"fold": "fold", "vmap": "on"}[impl.batch_with] if impl.batched else "off"
    opts = ["--first-order", "--batched", batched, "--cuda-graph", "on" if impl.graph else "off"]
    flags = {"--bf16": impl.bf16, "--channels-last": impl.channels_last, "--compile": impl.compile,
             "--compile-combo": impl.combo}
    opts += [flag for flag, on in flags.items() if on]
    if impl.task_streams:
        opts += ["--task-streams", str(impl.task_streams)]
    return opts + compile_forms_options(impl)


def compile_forms_options(impl: bench_maml.Impl) -> list[str]:
    """``--compile-forms`` for the row's compiled forms (``[]``: none); ValueError if no names give them."""
    forms = {k: v for k, v in (impl.folded_forms() or {}).items() if v != FOLDED_FORMS_OFF[k]}
    names = [name for name, settings in COMPILE_FORMS.items() if settings.items() <= forms.items()]
    if {k: v for name in names for k, v in COMPILE_FORMS[name].items()} != forms:
        raise ValueError(f"fewshot-train's --compile-forms names ({', '.join(COMPILE_FORMS)}) do not give {forms}")
    return ["--compile-forms", ",".join(names)] if names else []


def make_cache(root: Path, shape: dict[str, Any]) -> Path:
    """Random JPEGs in the MAML++ layout, cached at the run's size; returns the cache folder."""
    images = root / "images"
    first = 0
    for split, n_classes in zip(("train", "val", "test"), shape["classes"]):
        episode_bench.write_fake_images(images, n_classes, shape["per_class"], (100, 80), split=split, first_class=first)
        first += n_classes
    cache = root / "cache"
    for split in ("train", "val", "test"):
        build_cache("miniimagenet", split, images, shape["px"], cache, check_sizes=False)
    return cache


def steady_rate(run: Path, tasks: int) -> float:
    """Tasks/s between the second and the last train record of a run."""
    records = read_metrics(run / "metrics.jsonl", "train")
    if len(records) < 3:
        raise ValueError(f"{run}: {len(records)} train records; --steps must give at least 3 (one per {LOG_EVERY} steps)")
    first, last = records[1], records[-1]
    return (last["step"] - first["step"]) * tasks / (last["time"] - first["time"])


def train_rate(out: Path, cache: Path, shape: dict[str, Any], steps: int, options: list[str], device: str,
               per_step_reads: bool, staged: bool = True) -> float:
    args = [
        "--out", str(out), "--dataset", "miniimagenet", "--cache", str(cache), "--image-size", str(shape["px"]),
        "--way", str(shape["way"]), "--shot", str(shape["shot"]), "--query", str(shape["query"]),
        "--test-query", str(shape["query"]), "--meta-batch", str(shape["tasks"]),
        "--inner-steps", str(shape["steps"]), "--epochs", "1", "--episodes-per-epoch", str(steps * shape["tasks"]),
        "--val-episodes", str(shape["tasks"]), "--test-episodes", str(shape["tasks"]), "--no-progress",
        "--device", device, "--data-options", "check_sizes=false", *options,  # make_cache's classes are few
    ]
    torch._dynamo.reset()  # the earlier runs' graphs would count toward Dynamo's recompile limit
    original, stage = training._as_floats, CachedEpisodeBatches.stage
    if per_step_reads:  # the trainer as it was: every step's metrics read (which syncs) at once
        training._as_floats = lambda values, source, lazy=False: original(values, source)
    if not staged:  # batch(i) then builds batch i in the step's stream
        CachedEpisodeBatches.stage = lambda self, index: None
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # its log is in out/log.txt
            status = cli.train_main(args)
        if status != 0:
            raise RuntimeError(f"fewshot-train {' '.join(args)} failed:\n{printed.getvalue()[-2000:]}")
    finally:
        training._as_floats, CachedEpisodeBatches.stage = original, stage
    return steady_rate(out, shape["tasks"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = QUICK if args.quick else FULL
    options = train_options(bench_maml.IMPLS[args.impl])
    device = str(bench_maml.dropgrad.select_device("cpu" if args.quick else args.device))
    row = bench_maml.RowConfig(
        "conv4-fo", "conv4", "first", args.impl, shape["px"], shape["tasks"], shape["way"], shape["shot"],
        shape["query"], shape["steps"], warmup=1 if args.quick else 2, iters=2 if args.quick else 4, device=device,
        check=False, min_time_s=0.0 if args.quick else 1.0, timeout_s=args.timeout_s,
    )
    step = bench_maml.run_row(row)
    if step.get("status") != "ok":
        raise RuntimeError(f"the meta-step row failed: {step}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = make_cache(root, shape)
        rates = {
            name: train_rate(root / name, cache, shape, args.steps, options, device, reads, staged)
            for name, reads, staged in (("train", False, True), ("train_unstaged", False, False),
                                        ("train_per_step_reads", True, True))
        }
    return {"impl": args.impl, "options": options, "device": row.device, "torch": torch.__version__,
            "shape": {k: v for k, v in shape.items() if k not in ("classes", "per_class")}, "steps": args.steps,
            "step_tasks_per_s": step["tasks_per_s_on"], **{f"{k}_tasks_per_s": v for k, v in rates.items()}}


def format_report(r: dict[str, Any]) -> str:
    s = r["shape"]
    lines = [
        (f"conv4 {s['px']} px first order, {s['tasks']} tasks of {s['way']}-way {s['shot']}-shot {s['query']}-query, "
         f"{s['steps']} inner steps, DropGrad on; row {r['impl']} = fewshot-train {' '.join(r['options'])}"),
        (f"device {r['device']}, torch {r['torch']}; training: {r['steps']} meta-steps, the rate between the second "
         "and the last of its train records"),
        "",
        f"{'what':<38} {'tasks/s':>8} {'vs step':>8}",
    ]
    for key, name in (("step", "meta-step alone (bench_maml)"), ("train", "fewshot-train"),
                      ("train_unstaged", "fewshot-train, batches in step stream"),
                      ("train_per_step_reads", "fewshot-train, per-step reads")):
        rate = r[f"{key}_tasks_per_s"]
        lines.append(f"{name:<38} {rate:>8.4g} {rate / r['step_tasks_per_s']:>7.2f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="fold+bf16+cl+compile+combo+graph", choices=sorted(bench_maml.IMPLS),
                        metavar="ROW", help="a bench_maml row with fewshot-train options (default %(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="meta-steps per training run (default 200; >= 30)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU shapes and 30 steps: a smoke run")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="time cap of the meta-step row (default 600)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the numbers to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 30 if args.steps == 200 else args.steps
        args.impl = "loop" if args.impl == "fold+bf16+cl+compile+combo+graph" else args.impl
    if args.steps < 3 * LOG_EVERY:
        parser.error(f"--steps must be >= {3 * LOG_EVERY} (three train records), got {args.steps}")
    try:
        train_options(bench_maml.IMPLS[args.impl])
    except ValueError as exc:
        parser.error(f"--impl {args.impl}: {exc}")
    report = run(args)
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
