#!/usr/bin/env python
"""Memory traffic of one MAML meta-step: bytes its aten operators read and write, by operator and dtype.

A second-order ResNet-18 meta-step replayed from a CUDA graph is bound by the GPU time of tens of
thousands of kernels, most of them element-wise passes over activations (docs/performance.md). The
time of such a kernel follows the bytes it moves, and those bytes do not depend on the device, so
this CPU count is a prediction of where a GPU step's element-wise time goes, and of how much a
lever that changes the operators (``MAML(loop_norms="decomposed")``, ``batch_with="fold"``) can
save. Convolutions are listed too, but their time follows arithmetic, not bytes. The count of
calls is an upper bound on the kernels an uncompiled step launches.

Counted: every aten call except views and metadata, as the summed size of its tensor inputs and
outputs (a kernel reads its inputs once and writes its outputs once; caches and fusion aside).
Tensors of at most ``--min-numel`` elements (per-channel vectors, scalars) are left out.

    python tools/meta_step_traffic.py --model resnet18 --size 64 --order second --bf16
    python tools/meta_step_traffic.py --model conv4 --size 84 --order first --bf16 --tasks 4 --variants loop,vmap,fold
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inner_loop as bench  # tools/ is not a package

dropgrad = bench.dropgrad

# Operators that move no data (views, metadata) and are not counted.
_NO_DATA = frozenset({
    "alias", "as_strided", "detach", "expand", "flatten", "permute", "reshape", "select", "slice", "split",
    "split_with_sizes", "squeeze", "t", "transpose", "unflatten", "unsqueeze", "view", "_unsafe_view", "empty",
    "empty_strided", "lift_fresh",
})


class Traffic(TorchDispatchMode):
    """Counts calls and bytes per ``(operator, output dtype)`` of the aten calls made inside it."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel = min_numel
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name not in _NO_DATA:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            moved = sum(t.numel() * t.element_size() for t in tensors if t.numel() > self.min_numel)
            if moved:
                outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
                key = f"{name} ({str(outputs[0].dtype).removeprefix('torch.')})" if outputs else name
                self.bytes[key] += moved
                self.calls[key] += 1
        return out


# --variants: name -> (MAML options, batched)
VARIANTS: dict[str, tuple[dict[str, str], bool]] = {
    "native": ({}, False),  # the per-task loop with torch's norms (also called "loop")
    "loop": ({}, False),
    "decomposed": ({"loop_norms": "decomposed"}, False),
    "vmap": ({"batch_with": "vmap"}, True),
    "fold": ({"batch_with": "fold"}, True),
}


def measure(model: str, size: int, order: str, variant: str, bf16: bool, tasks: int, min_numel: int) -> Traffic:
    """The traffic of one ``meta_backward`` (DropGrad on, 5-way 5-shot 16-query, 5 inner steps)."""
    options, batched = VARIANTS[variant]
    torch.manual_seed(0)
    net = bench.build_model(model, size, 5, batch_stats=True)
    learner = dropgrad.MAML(net, inner_lr=0.01, steps=5, first_order=order == "first",
                            dropgrad=dropgrad.DropGrad(0.1), **options)
    batch = bench.make_tasks(tasks, 5, 5, 16, size, torch.device("cpu"), torch.float32)
    traffic = Traffic(min_numel)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), traffic:
        learner.meta_backward(batch, batched=batched)
    return traffic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("conv4", "resnet18"), default="resnet18")
    parser.add_argument("--size", type=bench._positive, default=64, help="image size (default 64)")
    parser.add_argument("--order", choices=("first", "second"), default="second")
    parser.add_argument("--tasks", type=bench._positive, default=1, help="tasks per meta-batch (default 1)")
    parser.add_argument("--bf16", action="store_true", help="under bfloat16 autocast (CPU autocast's operator lists)")
    parser.add_argument("--top", type=bench._positive, default=15, help="rows per table (default 15)")
    parser.add_argument("--min-numel", type=bench._non_negative, default=4096,
                        help="leave out tensors of at most this many elements (default 4096)")
    parser.add_argument("--variants", default="native,decomposed",
                        help=f"comma-separated, the first is the reference: {', '.join(VARIANTS)} "
                             "(native = loop: the per-task loop; decomposed: loop_norms='decomposed'; "
                             "vmap, fold: batched=True with that batch_with)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or len(variants) < 1:
        parser.error(f"--variants: expected names among {', '.join(VARIANTS)}, got {args.variants!r}")
    print(f"{args.model} {args.size} px, {args.order} order, {args.tasks} task(s), 5 inner steps, DropGrad on, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}; torch {torch.__version__}")
    totals = {}
    for variant in variants:
        t = measure(args.model, args.size, args.order, variant, args.bf16, args.tasks, args.min_numel)
        totals[variant] = (sum(t.bytes.values()), sum(t.calls.values()))
        print(f"\n{variant}: {totals[variant][0] / 1e9:.3f} GB moved in {totals[variant][1]} counted calls")
        print(f"{'GB':>8}  {'calls':>6}  operator (output dtype)")
        for key, moved in t.bytes.most_common(args.top):
            print(f"{moved / 1e9:8.3f}  {t.calls[key]:6d}  {key}")
    ref = variants[0]
    for variant in variants[1:]:
        print(f"\n{variant} / {ref}: bytes {totals[variant][0] / totals[ref][0]:.3f}, "
              f"calls {totals[variant][1] / totals[ref][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
