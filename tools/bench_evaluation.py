#!/usr/bin/env python
"""Evaluation benchmark: adapting and scoring few-shot tasks, eagerly against CUDA-graph replay.

fewshot-train validates every epoch, adapting as many tasks as an epoch trains on with the
usual settings (100 and 100), and tests 600 tasks at the end. Evaluation is first order with
no meta-gradient, so a replayed training step says little about it; this times
``MAML.meta_loss`` in eval mode on chunks of tasks, as ``fewshot-train``'s evaluation runs them.

Rows: ``loop`` (one task after another, eager; the reference), ``vmap`` (the chunk's tasks
batched), ``+graph`` (replayed from a CUDA graph: ``dropgrad.CapturedEvaluation``; on a CPU the
same calls run eagerly). Each row's per-task losses on the same tasks are compared with
``loop``'s (column |d|). ``--bf16`` and ``--channels-last`` apply to every row.

    python tools/bench_evaluation.py --quick --device cpu                    # seconds
    python tools/bench_evaluation.py --bf16 --channels-last --json eval.json  # one GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inner_loop as common
import dropgrad
from dropgrad.fast import channels_last_tasks

ROWS = {"loop": (False, False), "vmap": (True, False), "loop+graph": (False, True), "vmap+graph": (True, True)}
# fewshot-train's evaluation: chunks of 8 tasks, 5-way 5-shot, 15 queries per class.
FULL = {"chunk": 8, "ways": 5, "shots": 5, "queries": 15, "steps": 5, "chunks": 10, "warmup": 3}
QUICK = {"chunk": 2, "ways": 3, "shots": 2, "queries": 2, "steps": 2, "chunks": 2, "warmup": 1}
QUICK_SIZE = {"conv4": 32, "resnet18": 32}


def time_row(
    model_name: str, row: str, settings: dict[str, int], size: int, device: torch.device, bf16: bool,
    channels_last: bool,
) -> dict[str, Any]:
    """Tasks/s of one row over ``chunks`` chunks (after ``warmup`` untimed ones) and its per-task losses."""
    batched, graphed = ROWS[row]
    torch.manual_seed(0)
    model = common.build_model(model_name, size, settings["ways"], batch_stats=True).to(device)
    learner = dropgrad.MAML(model, inner_lr=common.INNER_LR, steps=settings["steps"], first_order=True).eval()
    chunks = [common.make_tasks(settings["chunk"], settings["ways"], settings["shots"], settings["queries"], size,
                                device, torch.float32) for _ in range(2)]
    if channels_last:
        model.to(memory_format=torch.channels_last)
        chunks = [dropgrad.Task(channels_last_tasks(t.support_x), t.support_y, channels_last_tasks(t.query_x), t.query_y)
                  for t in chunks]
    run = dropgrad.CapturedEvaluation(learner, batched=batched) if graphed else partial(learner.meta_loss, batched=batched)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with dropgrad.autocast(device, bf16):
        for i in range(settings["warmup"]):
            run(chunks[i % 2])
        sync()
        t0 = time.perf_counter()
        for i in range(settings["chunks"]):
            run(chunks[i % 2])
        sync()
        seconds = time.perf_counter() - t0
        losses = run(chunks[0]).task_losses.detach().float().cpu()
    return {"tasks_per_s": settings["chunk"] * settings["chunks"] / seconds, "losses": losses,
            "ran_eagerly": graphed and not cuda}


def format_table(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [
        (f"Evaluation benchmark: chunks of {s['chunk']} tasks, {s['ways']}-way {s['shots']}-shot {s['queries']}-query, "
         f"{s['steps']} inner steps (first order, eval mode), {s['warmup']} warm-up + {s['chunks']} timed chunks per row"),
        f"device: {data['device']}   torch {data['torch']}   bf16 {data['bf16']}   channels_last {data['channels_last']}",
        "vs loop = tasks/s / eager loop's; |d| = max |per-task loss difference| against the eager loop, same tasks",
        "",
        f"{'model':<9} {'px':>3}  {'row':<11} {'tasks/s':>9} {'vs loop':>8} {'|d|':>8}  note",
    ]
    for r in data["rows"]:
        lines.append(f"{r['model']:<9} {r['px']:>3}  {r['row']:<11} {r['tasks_per_s']:>9.1f} {r['vs_loop']:>7.2f}x "
                     f"{r['max_abs_diff']:>8.1e}  {'ran eagerly: CUDA graphs need a GPU' if r['ran_eagerly'] else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=common._choices(common.MODELS), default=list(common.MODELS),
                        help="comma-separated: conv4 (84 px), resnet18 (224 px)")
    parser.add_argument("--rows", type=common._choices(tuple(ROWS)), default=list(ROWS),
                        help=f"comma-separated rows, of {','.join(ROWS)}")
    parser.add_argument("--chunks", type=common._positive, default=None, help=f"timed chunks per row (default {FULL['chunks']})")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (as fewshot-train --bf16)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (32 px, 2 tasks, 2 steps): a CPU smoke run")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every number to OUT (JSON)")
    args = parser.parse_args(argv)
    try:
        device = dropgrad.select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    settings = dict(QUICK if args.quick else FULL)
    if args.chunks is not None:
        settings["chunks"] = args.chunks
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data: dict[str, Any] = {"device": common.device_name(device), "torch": torch.__version__, "bf16": args.bf16,
                            "channels_last": args.channels_last, "settings": settings, "rows": []}
    for model_name in args.models:
        size = QUICK_SIZE[model_name] if args.quick else common.DEFAULT_SIZE[model_name]
        reference = time_row(model_name, "loop", settings, size, device, args.bf16, args.channels_last)
        for row in args.rows:
            res = reference if row == "loop" else time_row(model_name, row, settings, size, device, args.bf16,
                                                           args.channels_last)
            data["rows"].append({
                "model": model_name, "px": size, "row": row, "tasks_per_s": res["tasks_per_s"],
                "vs_loop": res["tasks_per_s"] / reference["tasks_per_s"],
                "max_abs_diff": float((res["losses"] - reference["losses"]).abs().max()),
                "ran_eagerly": res["ran_eagerly"],
            })
            print(f"{model_name} {row}: {res['tasks_per_s']:.1f} tasks/s", file=sys.stderr, flush=True)
    print(format_table(data), flush=True)
    if args.json:
        common.write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
