#!/usr/bin/env python
"""Count the aten operator calls of one MAML meta-step (the dispatch work a GPU step pays per call).

On a GPU a meta-step of small kernels is bound by how many operators it dispatches and launches,
not by arithmetic; this prints that count for the per-task loop and the batched (vmap) step,
DropGrad off and on, with the issue-7 setting (4 tasks, 5-way 5-shot 16-query, 5 inner steps,
first order). The count does not depend on the image size, so a small one keeps it quick on a CPU.

    python tools/count_meta_step_ops.py --models conv4,resnet18
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inner_loop as bench  # noqa: E402  (tools/ is not a package)

dropgrad = bench.dropgrad


def count_ops(model: str, batched: bool, noise: bool, size: int, order: str) -> int:
    """aten calls (nested ones included) of one meta_backward after a warm-up step."""
    torch.manual_seed(0)
    net = bench.build_model(model, size, 5, batch_stats=True)
    learner = dropgrad.MAML(net, inner_lr=0.01, steps=5, first_order=order == "first",
                            dropgrad=dropgrad.DropGrad(0.1) if noise else None)
    tasks = bench.make_tasks(4, 5, 5, 16, size, torch.device("cpu"), torch.float32)
    learner.meta_backward(tasks, batched=batched)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.meta_backward(tasks, batched=batched)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="conv4,resnet18", help="comma-separated: conv4, resnet18")
    parser.add_argument("--size", type=int, default=32, help="image size (the count does not depend on it)")
    parser.add_argument("--order", choices=("first", "second"), default="first")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in ("conv4", "resnet18")]
    if unknown or args.size < 16:
        parser.error(f"--models takes conv4 and resnet18 (got {', '.join(unknown)})" if unknown else "--size must be >= 16 (four 2x2 poolings)")
    torch.set_num_threads(1)
    print(f"aten calls per meta-step ({args.order} order, 4 tasks, 5 inner steps), torch {torch.__version__}")
    print(f"{'model':10} {'impl':6} {'DropGrad off':>12} {'DropGrad on':>12}")
    for model in args.models.split(","):
        for batched in (False, True):
            off, on = (count_ops(model, batched, noise, args.size, args.order) for noise in (False, True))
            print(f"{model:10} {'vmap' if batched else 'loop':6} {off:12d} {on:12d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
