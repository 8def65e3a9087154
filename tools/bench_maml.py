#!/usr/bin/env python
"""Meta-step benchmark of issue 7: the fast-path levers of ``dropgrad.MAML`` against the naive loop.

Configurations (the issue's): ResNet-18 224 px first order, ResNet-18 224 px second order,
Conv4 84 px first order; 5-way 5-shot, 16 queries per class, 4 tasks per meta-batch, 5 inner
steps at lr 0.01, random images; one meta-step = adapt every task, back-propagate the mean query
loss into the meta-parameters (no optimiser step). Both models use batch-statistics BatchNorm
(no running statistics), as batched adaptation needs; every row of a configuration computes the
same function.

Rows ("impl") per configuration, each with DropGrad off and on (gaussian p=0.1):

* ``naive``: research-code MAML (per task, per step, per tensor noise; tools/bench_inner_loop.py),
* ``loop``: ``dropgrad.MAML.meta_backward(batched=False)``, the reference (one task at a time),
* ``vmap``: the tasks of the meta-batch adapted together (``batched=True``),
* ``+bf16``: under bfloat16 autocast; ``+cl``: channels_last model and images;
  ``+ckpt``: activation checkpointing of second-order inner steps; ``+chunkN``: batched
  backward N tasks at a time; ``+graph``: the whole meta-step recorded once in a CUDA graph
  and replayed (``dropgrad.CapturedMetaStep``; on a CPU the same step runs eagerly);
  ``+compile``: the model's forward through ``torch.compile`` (inductor) in first-order steps
  (``MAML(compile_forward=True)``; compiled during the warm-up, which gets extra time), with
  ``dropgrad.compiling``'s backend; ``+stockpool``: ``+compile`` with torch's inductor as it
  comes (max-pooling's backward through ``scatter_add``), the baseline of that backend;
  ``+streamsN``: the loop's tasks on N concurrent CUDA streams (``MAML(task_streams=N)``; with
  ``+graph`` the recorded graph has N branches the GPU runs side by side; on a CPU: the loop);
  ``+autotune``: ``+compile`` with inductor's ``max-autotune-no-cudagraphs`` mode (Triton
  templates timed against cuDNN for each convolution; minutes of compiling); ``+combo``:
  ``+compile`` with inductor's ``combo_kernels`` (independent small kernels launched as one);
  ``+cdt``: ``+compile`` with inductor's ``coordinate_descent_tuning`` (each Triton kernel's block
  sizes timed on the GPU while compiling; no effect on a CPU); ``+combosame``: combo kernels of
  kernels of the same size only (``combo_kernel_allow_mixed_sizes=0``: no masks for the smaller
  ones; both settings are Triton's, so a CPU row runs as plain ``+compile``);
  ``+dn``: BatchNorm written as reductions and pointwise ops in the per-task loop too
  (``MAML(loop_norms="decomposed")``; its double backward is a few pointwise kernels);
  ``fold``: the tasks folded into the batch dimension (``MAML(batch_with="fold")``): layers
  without parameters and norms run once for all tasks, convolutions with per-task weights as
  one plain (not grouped) convolution per task; ``+pad8``, ``+pwpool``, ``+unfold``, ``+grouped``,
  ``+idxpool``, ``+tpool``: compiled folded tasks with 3-channel convolutions padded to 8 channels on a GPU,
  max pooling as pointwise operators, convolutions of depth <= 27 (3 channels x 3x3) as one
  batched matmul over their unfolded input, the other per-task convolutions as one grouped
  convolution over the tasks' channels side by side, max pooling's backward as a pointwise
  select at its saved indices, (``+tpool``) max pooling as two hand-written Triton kernels on a
  GPU (``MAML(folded_forms=...)``); ``+compile-so``: ``+compile`` and second-order
  steps compiled whole (``MAML(compile_second_order=True)``: forward, ``torch.func.grad`` and
  update in one compiled function, whose backward is the compiled double backward).

Each row runs in a fresh subprocess with a time cap; a failure (NotImplementedError, OOM, a
timeout) becomes a row saying so. Before timing, each row's structural options (batching,
norms, checkpointing, chunks; not bf16) are checked against ``loop`` in float64 on tiny shapes
with the noise off: column "fp64 |d|". DropGrad off and on are timed interleaved in the same
process, so the overhead column compares like with like. Each step is timed between two
syncs; on CUDA, column "on, queued" also times the DropGrad-on steps queued back to back with
one sync at the end, as a training loop that does not wait for the GPU runs them (the targets
are judged on the synced rate). Under the table, the compiled rows' warm-up time (compiling
included: what a user waits for when a compiled run starts); every row's is in the JSON as
``warmup_s``.

Examples::

    python tools/bench_maml.py --quick --device cpu            # seconds; the CPU smoke test
    python tools/bench_maml.py --suite gpu --json bench.json   # the issue-7 table on one GPU (about 5 min on an H200)
    python tools/bench_maml.py --configs conv4-fo --impls loop,vmap --iters 5
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inner_loop as common
import dropgrad
from dropgrad.fast import channels_last_tasks
from dropgrad.inner import FOLDED_FORMS_OFF

INNER_LR = common.INNER_LR
P = common.P


@dataclass(frozen=True)
class Impl:
    """One row: how the meta-step runs."""

    naive: bool = False
    batched: bool = False
    bf16: bool = False
    channels_last: bool = False
    checkpoint: bool = False
    task_chunk: int | None = None
    graph: bool = False
    compile: bool = False
    task_streams: int | None = None
    compile_mode: str | None = None  # torch.compile's mode (with compile)
    combo: bool = False  # inductor's combo_kernels (with compile)
    tune_blocks: bool = False  # inductor's coordinate_descent_tuning (with compile)
    combo_same_size: bool = False  # with combo: combo_kernel_allow_mixed_sizes=0
    loop_norms: str = "native"
    batch_with: str = "vmap"  # with batched: torch.func.vmap or folded tasks
    compile_second_order: bool = False  # with compile: whole second-order inner steps compiled
    stock_pool: bool = False  # with compile: torch's stock inductor (scatter-based max-pool backward)
    pad_channels: int = 1  # with fold+compile: MAML(folded_forms={"channel_multiple": ...})
    pointwise_pool: bool = False  # with fold+compile: MAML(folded_forms={"pointwise_max_pool": True})
    unfold_depth: int = 0  # with fold+compile: MAML(folded_forms={"unfold_depth": ...})
    grouped_tasks: bool = False  # with fold+compile: MAML(folded_forms={"grouped_tasks": True})
    indexed_pool: bool = False  # with fold+compile: MAML(folded_forms={"indexed_pool_backward": True})
    triton_pool: bool = False  # with fold+compile: MAML(folded_forms={"triton_pool": True})

    def compile_forward(self) -> bool | dict[str, Any]:
        """``MAML(compile_forward=...)`` for this row."""
        if self.compile and self.stock_pool:
            return {"backend": stock_inductor}
        if not self.compile or (self.compile_mode is None and not self.combo and not self.tune_blocks):
            return self.compile
        kwargs: dict[str, Any] = {} if self.compile_mode is None else {"mode": self.compile_mode}
        options = {"combo_kernels": self.combo, "coordinate_descent_tuning": self.tune_blocks}
        if any(options.values()):
            kwargs["options"] = {key: True for key, on in options.items() if on}
        if self.combo_same_size:
            kwargs["options"]["combo_kernel_allow_mixed_sizes"] = 0
        return kwargs

    def folded_forms(self) -> dict[str, Any] | None:
        """``MAML(folded_forms=...)`` for this row (``+pad8``, ``+pwpool``, ``+unfold``, ``+grouped``,
        ``+idxpool``, ``+tpool``), or ``None``."""
        forms = {"pointwise_max_pool": self.pointwise_pool, "channel_multiple": self.pad_channels,
                 "unfold_depth": self.unfold_depth, "grouped_tasks": self.grouped_tasks,
                 "indexed_pool_backward": self.indexed_pool, "triton_pool": self.triton_pool}
        return forms if forms != FOLDED_FORMS_OFF else None


def stock_inductor(graph: torch.fx.GraphModule, example_inputs: Any) -> Any:
    """torch's inductor as it comes: the baseline of ``dropgrad.compiling.inductor_backend`` (``+stockpool``)."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph, example_inputs)


IMPLS: dict[str, Impl] = {
    "naive": Impl(naive=True),
    "loop": Impl(),
    "loop+bf16": Impl(bf16=True),
    "loop+bf16+cl": Impl(bf16=True, channels_last=True),
    "vmap": Impl(batched=True),
    "vmap+bf16": Impl(batched=True, bf16=True),
    "vmap+bf16+cl": Impl(batched=True, bf16=True, channels_last=True),
    "loop+bf16+ckpt": Impl(bf16=True, checkpoint=True),
    "vmap+bf16+ckpt": Impl(batched=True, bf16=True, checkpoint=True),
    "vmap+bf16+chunk2": Impl(batched=True, bf16=True, task_chunk=2),
    "vmap+bf16+chunk2+ckpt": Impl(batched=True, bf16=True, task_chunk=2, checkpoint=True),
    "loop+graph": Impl(graph=True),
    "loop+bf16+graph": Impl(bf16=True, graph=True),
    "vmap+graph": Impl(batched=True, graph=True),
    "vmap+bf16+graph": Impl(batched=True, bf16=True, graph=True),
    "vmap+bf16+cl+graph": Impl(batched=True, bf16=True, channels_last=True, graph=True),
    "loop+bf16+cl+graph": Impl(bf16=True, channels_last=True, graph=True),
    "loop+compile": Impl(compile=True),
    "loop+compile+graph": Impl(compile=True, graph=True),
    "vmap+compile": Impl(batched=True, compile=True),
    "loop+bf16+cl+compile": Impl(bf16=True, channels_last=True, compile=True),
    "loop+bf16+cl+compile+graph": Impl(bf16=True, channels_last=True, compile=True, graph=True),
    "vmap+bf16+cl+compile+graph": Impl(batched=True, bf16=True, channels_last=True, compile=True, graph=True),
    "loop+bf16+cl+graph+streams4": Impl(bf16=True, channels_last=True, graph=True, task_streams=4),
    "loop+bf16+cl+compile+graph+streams4": Impl(bf16=True, channels_last=True, compile=True, graph=True,
                                                task_streams=4),
    "loop+bf16+graph+streams2": Impl(bf16=True, graph=True, task_streams=2),
    "loop+bf16+cl+autotune+graph": Impl(bf16=True, channels_last=True, compile=True, graph=True,
                                        compile_mode="max-autotune-no-cudagraphs"),
    "loop+bf16+cl+compile+combo+graph": Impl(bf16=True, channels_last=True, compile=True, graph=True, combo=True),
    "loop+bf16+cl+autotune+graph+streams4": Impl(bf16=True, channels_last=True, compile=True, graph=True,
                                                 task_streams=4, compile_mode="max-autotune-no-cudagraphs"),
    "loop+bf16+dn+graph": Impl(bf16=True, graph=True, loop_norms="decomposed"),
    "loop+bf16+cl+dn+graph": Impl(bf16=True, channels_last=True, graph=True, loop_norms="decomposed"),
    "loop+dn": Impl(loop_norms="decomposed"),
    "loop+bf16+dn": Impl(bf16=True, loop_norms="decomposed"),
    "fold": Impl(batched=True, batch_with="fold"),
    "fold+graph": Impl(batched=True, batch_with="fold", graph=True),
    "fold+bf16+cl+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True, graph=True),
    "fold+bf16+graph": Impl(batched=True, batch_with="fold", bf16=True, graph=True),
    "fold+bf16+cl+compile": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True),
    "fold+bf16+cl+compile+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True,
                                       graph=True),
    "fold+bf16+cl+autotune+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True,
                                        graph=True, compile_mode="max-autotune-no-cudagraphs"),
    "fold+bf16+cl+compile+stockpool+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                 compile=True, graph=True, stock_pool=True),
    "loop+bf16+cl+compile+stockpool+graph": Impl(bf16=True, channels_last=True, compile=True, graph=True,
                                                 stock_pool=True),
    "fold+bf16+cl+compile+combo+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                             compile=True, graph=True, combo=True),
    "fold+bf16+cl+compile+combo+pad8+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                  compile=True, graph=True, combo=True, pad_channels=8),
    "fold+bf16+cl+compile+combo+pwpool+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                    compile=True, graph=True, combo=True, pointwise_pool=True),
    "fold+bf16+cl+compile+combo+pad8+pwpool+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                         channels_last=True, compile=True, graph=True, combo=True,
                                                         pad_channels=8, pointwise_pool=True),
    "fold+bf16+cl+compile+combo+unfold+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                    compile=True, graph=True, combo=True, unfold_depth=27),
    "fold+bf16+cl+compile+combo+unfold+pwpool+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                           channels_last=True, compile=True, graph=True, combo=True,
                                                           unfold_depth=27, pointwise_pool=True),
    "fold+bf16+cl+compile+combo+unfold+grouped+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                            channels_last=True, compile=True, graph=True, combo=True,
                                                            unfold_depth=27, grouped_tasks=True),
    "fold+bf16+cl+compile+combo+cdt+unfold+grouped+graph": Impl(
        batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True, graph=True, combo=True,
        tune_blocks=True, unfold_depth=27, grouped_tasks=True),
    "fold+bf16+cl+compile+combosame+unfold+grouped+graph": Impl(
        batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True, graph=True, combo=True,
        combo_same_size=True, unfold_depth=27, grouped_tasks=True),
    "fold+bf16+cl+compile+combo+unfold+idxpool+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                            channels_last=True, compile=True, graph=True, combo=True,
                                                            unfold_depth=27, indexed_pool=True),
    "fold+bf16+cl+compile+combo+unfold+grouped+idxpool+graph": Impl(
        batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True, graph=True, combo=True,
        unfold_depth=27, grouped_tasks=True, indexed_pool=True),
    "fold+bf16+cl+compile+unfold+grouped+idxpool": Impl(batched=True, batch_with="fold", bf16=True,
                                                        channels_last=True, compile=True, unfold_depth=27,
                                                        grouped_tasks=True, indexed_pool=True),
    "fold+bf16+cl+compile+combo+unfold+tpool+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                          channels_last=True, compile=True, graph=True, combo=True,
                                                          unfold_depth=27, triton_pool=True),
    "fold+bf16+cl+compile+unfold+grouped+tpool+graph": Impl(batched=True, batch_with="fold", bf16=True,
                                                            channels_last=True, compile=True, graph=True,
                                                            unfold_depth=27, grouped_tasks=True, triton_pool=True),
    "fold+bf16+cl+compile+combo+unfold+grouped+tpool+graph": Impl(
        batched=True, batch_with="fold", bf16=True, channels_last=True, compile=True, graph=True, combo=True,
        unfold_depth=27, grouped_tasks=True, triton_pool=True),
    "fold+bf16+cl+compile+combo+grouped+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                     compile=True, graph=True, combo=True, grouped_tasks=True),
    "fold+bf16+cl+compile+unfold+grouped+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                      compile=True, graph=True, unfold_depth=27, grouped_tasks=True),
    "fold+bf16+cl+compile+unfold+grouped": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                                compile=True, unfold_depth=27, grouped_tasks=True),
    "fold+bf16+cl+compile+unfold+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                              compile=True, graph=True, unfold_depth=27),
    "fold+bf16+cl+compile+unfold+pwpool": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                               compile=True, unfold_depth=27, pointwise_pool=True),
    "fold+bf16+cl+compile+pwpool+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                              compile=True, graph=True, pointwise_pool=True),
    "fold+bf16+cl+compile+pad8+pwpool": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                             compile=True, pad_channels=8, pointwise_pool=True),
    "loop+compile-so": Impl(compile=True, compile_second_order=True),
    "loop+bf16+compile-so+graph": Impl(bf16=True, compile=True, compile_second_order=True, graph=True),
    "loop+bf16+cl+compile-so+graph": Impl(bf16=True, channels_last=True, compile=True, compile_second_order=True,
                                          graph=True),
    "fold+bf16+cl+compile-so+graph": Impl(batched=True, batch_with="fold", bf16=True, channels_last=True,
                                          compile=True, compile_second_order=True, graph=True),
}
# Extra seconds a +compile row may take (inductor compiles forward and backward per shape and
# dtype: support, query, and the float64 check's), on top of the per-row cap.
COMPILE_EXTRA_S = 240.0
AUTOTUNE_EXTRA_S = 480.0  # max-autotune also times candidate kernels for every convolution
# A compiled second-order step is a forward+backward graph and its double backward, compiled for
# the first step (theta), the later steps and the float64 check.
SECOND_ORDER_COMPILE_EXTRA_S = 420.0


def extra_seconds(impl: Impl) -> float:
    """Time a row may take beyond the per-row cap, for compiling."""
    if not impl.compile:
        return 0.0
    if impl.compile_mode == "max-autotune-no-cudagraphs" or impl.tune_blocks:
        return AUTOTUNE_EXTRA_S
    return SECOND_ORDER_COMPILE_EXTRA_S if impl.compile_second_order else COMPILE_EXTRA_S


# configuration -> (model, order, rows); the issue's three configurations.
# Rows in priority order (the reference rows, then the best measured on an H200, with Conv4's
# experimental +pad8/+pwpool/+unfold rows right after the row they modify), since a time budget skips a
# configuration's last rows.
CONFIGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "resnet18-fo": ("resnet18", "first", (
        "naive", "loop", "loop+bf16+cl+graph", "loop+bf16+cl+graph+streams4", "loop+bf16+cl+compile+graph",
        "loop+bf16+cl+compile+graph+streams4", "fold+bf16+cl+compile+graph", "vmap+bf16+cl+compile+graph",
        "fold+bf16+cl+graph", "loop+bf16+graph", "vmap+bf16+cl+graph", "vmap+bf16+graph", "loop+graph", "vmap+bf16")),
    "resnet18-so": ("resnet18", "second", (
        "naive", "loop", "loop+bf16+cl+compile-so+graph", "loop+bf16+compile-so+graph", "loop+bf16+graph",
        "loop+bf16+dn+graph", "fold+bf16+cl+compile-so+graph", "loop+bf16+graph+streams2", "loop+bf16+cl+graph",
        "loop+bf16+cl+dn+graph", "fold+bf16+graph", "loop+graph",
        "vmap+bf16+graph", "vmap+bf16+chunk2")),
    "conv4-fo": ("conv4", "first", (
        "naive", "loop", "fold+bf16+cl+compile+combo+graph", "fold+bf16+cl+compile+combo+unfold+graph",
        "fold+bf16+cl+compile+combo+unfold+idxpool+graph", "fold+bf16+cl+compile+combo+unfold+grouped+graph",
        "fold+bf16+cl+compile+unfold+grouped+graph", "fold+bf16+cl+compile+combosame+unfold+grouped+graph",
        "fold+bf16+cl+compile+combo+cdt+unfold+grouped+graph", "fold+bf16+cl+compile+combo+unfold+tpool+graph",
        "fold+bf16+cl+compile+unfold+grouped+tpool+graph", "fold+bf16+cl+compile+combo+unfold+grouped+tpool+graph",
        "fold+bf16+cl+compile+combo+unfold+grouped+idxpool+graph", "fold+bf16+cl+compile+combo+grouped+graph",
        "fold+bf16+cl+compile+combo+pad8+graph", "fold+bf16+cl+compile+combo+pwpool+graph",
        "fold+bf16+cl+compile+combo+unfold+pwpool+graph", "fold+bf16+cl+compile+graph",
        "loop+bf16+cl+compile+graph+streams4", "loop+bf16+cl+compile+graph", "loop+bf16+cl+graph",
        "loop+bf16+cl+graph+streams4", "loop+bf16+cl+compile+combo+graph", "loop+bf16+cl+autotune+graph",
        "fold+bf16+cl+autotune+graph", "vmap+bf16+cl+compile+graph", "fold+bf16+cl+graph", "loop+compile+graph",
        "loop+graph", "vmap+graph", "vmap+bf16+cl+graph", "vmap+bf16")),
}
# --quick: every configuration, every lever at least once, in seconds on a CPU.
QUICK_ROWS: dict[str, tuple[str, ...]] = {
    "resnet18-fo": ("naive", "loop", "vmap+bf16+cl"),
    "resnet18-so": ("naive", "loop", "vmap+bf16+chunk2+ckpt"),
    "conv4-fo": ("naive", "loop", "loop+bf16+ckpt", "vmap", "vmap+bf16", "vmap+bf16+cl", "vmap+bf16+chunk2+ckpt",
                 "vmap+graph", "loop+compile", "loop+bf16+cl+graph+streams4", "loop+dn", "fold+bf16+cl+graph"),
}
# The issue's targets on one H100/H200 (tasks/s with DropGrad on; peak GiB).
TARGETS = {"resnet18-fo": (50.0, None), "resnet18-so": (12.0, 14.0), "conv4-fo": (400.0, None)}
OVERHEAD_TARGET_PCT = 2.0

SIZES = {"full": {"conv4": 84, "resnet18": 224}, "quick": {"conv4": 32, "resnet18": 32}}
SETTINGS = {
    "full": {"tasks": 4, "ways": 5, "shots": 5, "queries": 16, "steps": 5, "warmup": 1, "iters": 3, "min_time_s": 0.0},
    "quick": {"tasks": 2, "ways": 3, "shots": 2, "queries": 2, "steps": 2, "warmup": 0, "iters": 1, "min_time_s": 0.0},
}
# --suite gpu: the full set on one GPU, sized to finish in about 5 minutes on an H200.
GPU_SUITE = {"warmup": 2, "iters": 4, "min_time_s": 1.0, "timeout_s": 60.0, "budget_s": 300.0}
GPU_SUITE_SECOND_ORDER = {"warmup": 1, "iters": 3}  # the slowest configuration


@dataclass(frozen=True)
class RowConfig:
    config: str
    model: str
    order: str
    impl: str
    px: int
    tasks: int
    ways: int
    shots: int
    queries: int
    steps: int
    warmup: int
    iters: int
    device: str
    check: bool = True
    min_time_s: float = 0.0  # time more than `iters` steps until each setting's timed steps take this long
    timeout_s: float = 600.0  # per-row cap, enforced in the child (SIGALRM)
    deadline: float | None = None  # wall-clock time.time() after which the row is skipped


# ---------------------------------------------------------------------------- meta-steps
def make_step(
    impl: Impl, model: nn.Module, tasks: dropgrad.Task, *, steps: int, first_order: bool, noise_on: bool,
    device: torch.device,
) -> Callable[[], Tensor]:
    """A closure doing one meta-step of row ``impl`` (grads zeroed, then accumulated into ``model``)."""
    if impl.naive:
        naive = common.make_meta_step("naive", model, tasks, steps=steps, first_order=first_order, noise_on=noise_on)
        return naive
    learner = dropgrad.MAML(
        model, inner_lr=INNER_LR, steps=steps, first_order=first_order,
        dropgrad=dropgrad.DropGrad(P, "gaussian") if noise_on else None,
        checkpoint=impl.checkpoint, task_chunk=impl.task_chunk, compile_forward=impl.compile_forward(),
        compile_second_order=impl.compile_second_order, folded_forms=impl.folded_forms(),
        task_streams=impl.task_streams, loop_norms=impl.loop_norms, batch_with=impl.batch_with,
    )

    run = dropgrad.CapturedMetaStep(learner, batched=impl.batched) if impl.graph else partial(
        learner.meta_backward, batched=impl.batched)

    def step() -> Tensor:
        model.zero_grad(set_to_none=True)
        with dropgrad.autocast(device, impl.bf16):
            return run(tasks).loss

    return step


def row_steps(row: RowConfig, device: torch.device, noise: tuple[bool, ...] = (False, True)) -> dict[bool, Callable[[], Tensor]]:
    """The meta-step closures of ``row`` (DropGrad off/on -> step), on one model and task stack."""
    impl = IMPLS[row.impl]
    torch.manual_seed(0)
    model = common.build_model(row.model, row.px, row.ways, batch_stats=True).to(device)
    tasks = common.make_tasks(row.tasks, row.ways, row.shots, row.queries, row.px, device, torch.float32)
    tasks = prepare(impl, model, tasks)
    return {on: make_step(impl, model, tasks, steps=row.steps, first_order=row.order == "first", noise_on=on,
                          device=device) for on in noise}


def prepare(impl: Impl, model: nn.Module, tasks: dropgrad.Task) -> dropgrad.Task:
    """Apply the row's memory format to the model (in place) and the task stack."""
    if not impl.channels_last:
        return tasks
    model.to(memory_format=torch.channels_last)
    return dropgrad.Task(channels_last_tasks(tasks.support_x), tasks.support_y,
                         channels_last_tasks(tasks.query_x), tasks.query_y)


def check_row(row: RowConfig, impl: Impl, device: torch.device) -> float:
    """Max |difference| of loss and meta-gradients against ``loop``: float64, tiny shapes, noise off, no bf16."""
    size = common.MIN_SIZE[row.model]
    torch.manual_seed(0)
    base = common.build_model(row.model, size, 3, batch_stats=True).to(device=device, dtype=torch.float64)
    tasks = common.make_tasks(2 if impl.task_chunk is None else 2 * impl.task_chunk, 3, 2, 2, size, device, torch.float64)
    results = []
    for which in (Impl(), Impl(**{**asdict(impl), "bf16": False})):
        model = copy.deepcopy(base)
        batch = prepare(which, model, tasks)
        loss = make_step(which, model, batch, steps=2, first_order=row.order == "first", noise_on=False, device=device)()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*results))


class RowTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise RowTimeout


def run_row(row: RowConfig) -> dict[str, Any]:
    """Time one row (DropGrad off and on, interleaved) in this process, within its time cap."""
    if row.deadline is not None and time.time() > row.deadline:
        return {"status": "skipped", "message": "time budget spent"}
    extra = extra_seconds(IMPLS[row.impl])
    cap = row.timeout_s + extra
    if row.deadline is not None:  # a row may overrun its group's budget share by at most 15 s (+ compiling)
        cap = min(cap, max(row.deadline - time.time(), 0.0) + 15.0 + extra)
    use_alarm = hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, cap)
    try:
        return _run_row(row)
    except RowTimeout:
        return {"status": "timeout", "message": f"over its {cap:.0f} s cap (row cap or time budget)"}
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if row.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _run_row(row: RowConfig) -> dict[str, Any]:
    device = torch.device(row.device)
    cuda = device.type == "cuda"
    impl = IMPLS[row.impl]
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels once
    result: dict[str, Any] = {"status": "ok"}
    if impl.graph and not cuda:
        result["message"] = "ran eagerly: CUDA graphs need a GPU"
    if impl.compile:
        # Rows in one process (--isolate config, --single) would otherwise add to one Dynamo
        # cache: past its recompile limit a later row runs eagerly under its compiled name.
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    try:
        if row.check:
            result["check_max_abs_diff"] = check_row(row, impl, device)
        steps = row_steps(row, device)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        # A compiled row compiles in its first step: that one is never timed.
        t0 = time.perf_counter()
        for _ in range(max(row.warmup, 1) if impl.compile else row.warmup):
            for on in (False, True):
                steps[on]()
        if cuda:
            torch.cuda.synchronize(device)
        result["warmup_s"] = time.perf_counter() - t0
        if impl.compile and not torch._dynamo.utils.counters["stats"]["unique_graphs"]:
            raise RuntimeError("torch.compile compiled no graph: the row would time the eager step")
        seconds = {False: 0.0, True: 0.0}
        iters = 0
        # A few fast steps time poorly (about 50 ms for Conv4 on an H200): --min-time-s adds steps.
        while iters < row.iters or min(seconds.values()) < row.min_time_s:
            iters += 1
            for on in (False, True):
                if cuda:
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                loss = steps[on]()
                if cuda:
                    torch.cuda.synchronize(device)
                seconds[on] += time.perf_counter() - t0
        if cuda:
            # DropGrad on, the same steps queued back to back with one sync at the end: the host
            # prepares step k + 1 while the GPU runs step k, as fewshot-train's trainer lets it.
            # The host's time per call then is its work to queue one step (Python, launches): with
            # per-step syncs the GPU idles for about that long before each step.
            torch.cuda.synchronize(device)
            host = 0.0
            t0 = time.perf_counter()
            for _ in range(iters):
                h0 = time.perf_counter()
                loss = steps[True]()
                host += time.perf_counter() - h0
            torch.cuda.synchronize(device)
            result["tasks_per_s_on_queued"] = row.tasks * iters / (time.perf_counter() - t0)
            result["host_s_per_step_on"] = host / iters
        final_loss = float(loss)
    except RowTimeout:
        raise
    except Exception as exc:  # noqa: BLE001  (every failure becomes a row, never a crash of the table)
        kind = "oom" if common._is_oom(exc) else ("nyi" if isinstance(exc, NotImplementedError) else "error")
        result.update(status=kind, message=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
        return result
    result["iters"] = iters
    for on, key in ((False, "off"), (True, "on")):
        result[f"step_s_{key}"] = seconds[on] / iters
        result[f"tasks_per_s_{key}"] = row.tasks * iters / seconds[on]
    result.update(
        overhead_pct=100.0 * (seconds[True] - seconds[False]) / seconds[False],
        final_loss=final_loss,
        peak_mem_bytes=torch.cuda.max_memory_allocated(device) if cuda else common.peak_rss_bytes(),
        peak_mem_kind="cuda_max_memory_allocated" if cuda else "process_peak_rss",
    )
    return result


def crash_reason(stderr: str) -> str:
    """The line of a crashed row's stderr that says why: a C++ exception's ``what()``, else the last
    ``...Error:`` line, else the last line (an abort's last lines are stack frames)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("what():"):
            return line
    errors = [line for line in lines if "Error:" in line or line.startswith(("CUDA error", "RuntimeError"))]
    return errors[-1] if errors else (lines[-1] if lines else "(no stderr)")


def run_in_subprocess(rows: list[RowConfig], timeout_s: float) -> list[dict[str, Any]]:
    """Run ``rows`` one after another in one fresh process; returns at least one result.

    The child prints one JSON line per finished row, so rows done before a hard timeout or a
    crash keep their numbers; the row that was running gets the reason, and the caller starts
    a fresh process for the rows after it.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", json.dumps([asdict(r) for r in rows])]
    failure: dict[str, Any] | None = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        stdout, code, stderr = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        stdout, code, stderr = out.decode() if isinstance(out, bytes) else out, None, ""
        failure = {"status": "timeout", "message": f"over the {timeout_s:.0f} s cap"}
    results = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if failure is None and len(results) < len(rows):
        if code == -9:
            failure = {"status": "oom", "message": "subprocess killed (SIGKILL), most likely by the OOM killer"}
        else:
            failure = {"status": "error", "message": f"exit {code}: {crash_reason(stderr)[:200]}",
                       "stderr_tail": stderr.strip().splitlines()[-40:]}
    return results[: len(rows)] + ([failure] if failure is not None and len(results) < len(rows) else [])


# ---------------------------------------------------------------------------- the table
def _fmt_rate(run: dict[str, Any], key: str) -> str:
    return f"{run[key]:.3g}" if run.get("status") == "ok" else "-"


def format_table(data: dict[str, Any]) -> str:
    s = data["settings"]
    header = [
        (f"MAML meta-step benchmark (issue 7): {s['tasks']} tasks/meta-batch, {s['ways']}-way {s['shots']}-shot "
         f"{s['queries']}-query, {s['steps']} inner steps, lr {INNER_LR}, random images; DropGrad gaussian p={P} when on"),
        (f"device: {data['device']}   torch {data['torch']}   timing: {s['warmup']} warm-up + {s['iters']} timed "
         + (f"meta-steps per row, or more until each setting has {s['min_time_s']:g} s of them"
            if s.get("min_time_s") else "meta-steps per row")
         + ", DropGrad off/on interleaved; tasks/s = tasks * timed steps / seconds"),
        "peak: " + ("torch.cuda.max_memory_allocated over warm-up + timed steps (GiB)" if data["device_type"] == "cuda"
                    else "whole-process peak RSS (GiB; torch runtime included)")
        + "; overhead = step time on / off - 1; vs naive = tasks/s (DropGrad on) / naive's; "
          "fp64 |d| = max |loss, meta-grad difference| against 'loop' (float64, tiny shapes, noise off)",
    ]
    odd = sorted({(r["config"], r["warmup"], r["iters"]) for r in data["rows"]
                  if "warmup" in r and (r["warmup"], r["iters"]) != (s["warmup"], s["iters"])})
    if odd:
        header[1] += " (" + "; ".join(f"{c}: {w} + {n}" for c, w, n in odd) + ")"
    states = data.get("gpu_state") or {}
    if any(states.values()):  # nvidia-smi's readings before the first row and after the last
        header.append("GPU state (nvidia-smi): " + "; ".join(
            f"{when}: {common.format_gpu_state(state) or 'not read'}" for when, state in states.items()))
    queued = any("tasks_per_s_on_queued" in r["result"] for r in data["rows"])
    if queued:
        header.append("on, queued = DropGrad on, the timed steps queued back to back with one sync at the end "
                      "(the host prepares the next step while the GPU runs one; targets are judged on 'tasks/s on')")
    cols = ["config", "px", "impl", "tasks/s off", "tasks/s on", *(["on, queued"] if queued else []), "DG overhead",
            "peak GiB", "vs naive", "fp64 |d|", "status"]
    body = []
    for r in data["rows"]:
        run = r["result"]
        ok = run.get("status") == "ok"
        body.append([
            r["config"], str(r["px"]), r["impl"] + (" *" if r.get("best") else ""),
            _fmt_rate(run, "tasks_per_s_off"), _fmt_rate(run, "tasks_per_s_on"),
            *([_fmt_rate(run, "tasks_per_s_on_queued") if "tasks_per_s_on_queued" in run else "-"] if queued else []),
            f"{run['overhead_pct']:+.1f}%" if ok else "-",
            f"{run['peak_mem_bytes'] / 2**30:.2f}" if ok else "-",
            "" if r.get("vs_naive") is None else f"{r['vs_naive']:.2f}x",
            f"{run['check_max_abs_diff']:.1e}" if "check_max_abs_diff" in run else "-",
            (f"ok ({run['message']})" if run.get("message") else "ok") if ok
            else f"{run.get('status', '?').upper()}: {run.get('message', '')}"[:90],
        ])
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    left = {cols.index(name) for name in ("config", "impl", "status")}
    line = lambda cells: "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = header + ["", line(cols), line(["-" * w for w in widths])] + [line(b) for b in body]
    out += ["", "* = fastest of ours with DropGrad on. Against the issue's targets (one H100/H200):"]
    out += [f"  {t}" for t in data["summary"]]
    warmups = [f"{r['config']} {r['impl']} {r['result']['warmup_s']:.1f} s" for r in data["rows"]
               if r["impl"] in IMPLS and IMPLS[r["impl"]].compile and "warmup_s" in r["result"]]
    if warmups:  # what a user waits for when a compiled run starts
        out += ["", "warm-up of the compiled rows (compiling included): " + "; ".join(warmups)]
    return "\n".join(out)


def verdict(ok: bool) -> str:
    """A target's verdict, judged on unrounded numbers (11.97 tasks/s prints as 12 at 3 digits)."""
    return "met" if ok else "NOT met"


def summarise(data: dict[str, Any]) -> None:
    """Fill ``vs_naive``, ``best`` and the per-configuration summary lines in place."""
    summary = []
    for config in dict.fromkeys(r["config"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["config"] == config]
        naive = next((r["result"] for r in rows if r["impl"] == "naive"), None)
        ours = [r for r in rows if r["impl"] != "naive" and r["result"].get("status") == "ok"]
        for r in rows:
            if naive and naive.get("status") == "ok" and r["result"].get("status") == "ok" and r["impl"] != "naive":
                r["vs_naive"] = r["result"]["tasks_per_s_on"] / naive["tasks_per_s_on"]
        if not ours:
            summary.append(f"{config}: no row of ours ran")
            continue
        target_rate, target_mem = TARGETS[config]
        fits = [r for r in ours if target_mem is None or r["result"]["peak_mem_bytes"] <= target_mem * 2**30]
        best = max(fits or ours, key=lambda r: r["result"]["tasks_per_s_on"])
        best["best"] = True
        res = best["result"]
        peak = res["peak_mem_bytes"] / 2**30
        mem = f", peak {peak:.2f} GiB (target <= {target_mem:g}: {verdict(peak <= target_mem)})" if target_mem else ""
        if target_mem and not fits:
            mem += " [no row fits]"
        rate, overhead = res["tasks_per_s_on"], res["overhead_pct"]
        queued = f" ({res['tasks_per_s_on_queued']:.4g} queued)" if "tasks_per_s_on_queued" in res else ""
        summary.append(
            f"{config}: {best['impl']} {rate:.4g} tasks/s with DropGrad{queued} (target >= {target_rate:g}: "
            f"{verdict(rate >= target_rate)}){mem}; "
            f"DropGrad overhead {overhead:+.1f}% (target <= {OVERHEAD_TARGET_PCT:g}%: {verdict(overhead <= OVERHEAD_TARGET_PCT)})"
        )
    data["summary"] = summary


# ------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time one MAML meta-step for the issue-7 configurations (ResNet-18 224 px first and second "
            "order, Conv4 84 px first order) with every fast-path lever of dropgrad.MAML as a row, against "
            "the naive per-task loop in the same run, DropGrad (gaussian p=0.1) off and on. Prints one table: "
            "tasks/s, DropGrad overhead, peak GiB, speed-up over naive, a float64 equivalence check per row."
        ),
        epilog="Rows: " + "; ".join(f"{c}: {','.join(rows)}" for c, (_, _, rows) in CONFIGS.items()),
    )
    parser.add_argument("--configs", type=common._choices(tuple(CONFIGS)), default=list(CONFIGS),
                        help=f"comma-separated configurations (default all: {','.join(CONFIGS)})")
    parser.add_argument("--impls", type=common._choices(tuple(IMPLS)), default=None,
                        help="comma-separated rows to run in every configuration (default: each configuration's own "
                             f"list, see below); any of {','.join(IMPLS)}")
    parser.add_argument("--suite", choices=("gpu",), default=None,
                        help=f"gpu: the full issue-7 set on one GPU, {GPU_SUITE['warmup']} warm-up + {GPU_SUITE['iters']} "
                             f"timed steps (more until each setting has {GPU_SUITE['min_time_s']:g} s of them), "
                             f"{GPU_SUITE['timeout_s']:g} s cap per row, {GPU_SUITE['budget_s']:g} s budget "
                             "(rows past it are reported as skipped)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny CPU smoke-test shapes (2 tasks 3-way 2-shot 2-query, 2 inner steps, 32 px, 1 timed "
                             "step, no warm-up); options given explicitly still win")
    for key in ("tasks", "ways", "shots", "queries", "steps", "iters"):
        parser.add_argument(f"--{key}", type=common._positive, default=None,
                            help=f"override the {key} setting (default {SETTINGS['full'][key]})")
    parser.add_argument("--warmup", type=common._non_negative, default=None,
                        help=f"untimed meta-steps (each with DropGrad off and on) before timing (default {SETTINGS['full']['warmup']})")
    parser.add_argument("--min-time-s", type=float, default=None,
                        help="time more steps than --iters until each of DropGrad off and on has this many seconds of "
                             f"timed steps (default 0; gpu suite {GPU_SUITE['min_time_s']:g})")
    parser.add_argument("--timeout-s", type=float, default=None, help="time cap per row in seconds (default 600; gpu suite "
                        f"{GPU_SUITE['timeout_s']:g})")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting rows after this many seconds; the rest are reported as skipped (default none)")
    parser.add_argument("--no-check", action="store_true", help="skip the float64 equivalence check of each row")
    parser.add_argument("--isolate", choices=("row", "config"), default=None,
                        help="a fresh process per row (its own peak memory; the default) or per configuration "
                             "(less start-up; the default with --quick and --suite gpu; a row that crashes the process "
                             "gets the reason and the rows after it go on in a fresh one; on CUDA the peak is still "
                             "per row, on CPU the process's peak RSS accumulates over its rows)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every number to OUT (JSON)")
    parser.add_argument("--single", default=None, metavar="ROW_JSON", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.single is not None:
        for spec in json.loads(args.single):
            print(json.dumps(run_row(RowConfig(**spec))), flush=True)
        return 0
    mode = "quick" if args.quick else "full"
    args.isolate = args.isolate or ("config" if args.quick or args.suite == "gpu" else "row")
    settings = dict(SETTINGS[mode])
    timeout_s, budget_s = 600.0, None
    if args.suite == "gpu":
        settings.update(warmup=GPU_SUITE["warmup"], iters=GPU_SUITE["iters"], min_time_s=GPU_SUITE["min_time_s"])
        timeout_s, budget_s = GPU_SUITE["timeout_s"], GPU_SUITE["budget_s"]
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    timeout_s = args.timeout_s if args.timeout_s is not None else timeout_s
    budget_s = args.budget_s if args.budget_s is not None else budget_s
    if settings["min_time_s"] < 0:
        parser.error(f"--min-time-s must be >= 0, got {settings['min_time_s']:g}")
    if settings["ways"] * settings["shots"] < 2:
        parser.error("--ways * --shots must be at least 2 (BatchNorm needs more than one support image)")
    try:
        device = dropgrad.select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.suite == "gpu" and device.type != "cuda":
        print(f"note: --suite gpu on {device.type}: the GPU suite's full shapes on this device; rows take "
              f"minutes each here (--quick: small CPU shapes)", file=sys.stderr, flush=True)

    sizes = SIZES[mode]
    rows = []
    for config in args.configs:
        model, order, impls = CONFIGS[config]
        for impl in args.impls or (QUICK_ROWS[config] if args.quick else impls):
            # The float64 check of an 11 M-parameter ResNet costs minutes on a CPU: --quick checks Conv4 only.
            check = not args.no_check and not (args.quick and model == "resnet18")
            row_settings = dict(settings)
            if args.suite == "gpu" and order == "second":
                row_settings.update({k: v for k, v in GPU_SUITE_SECOND_ORDER.items() if getattr(args, k) is None})
            rows.append(RowConfig(config, model, order, impl, sizes[model], device=str(device), check=check,
                                  **row_settings))
    data: dict[str, Any] = {
        "device": common.device_name(device), "device_type": device.type, "torch": torch.__version__,
        "settings": {**settings, "inner_lr": INNER_LR, "dropgrad": f"gaussian p={P}", "sizes": sizes,
                     "timeout_s": timeout_s, "budget_s": budget_s},
        "rows": [],
    }
    if device.type == "cuda":
        data["gpu_state"] = {"start": common.gpu_state()}
    start = time.perf_counter()
    # One process per row (its own peak memory), or per configuration (--isolate config: less start-up).
    groups = [[r] for r in rows] if args.isolate == "row" else [
        [r for r in rows if r.config == c] for c in dict.fromkeys(r.config for r in rows)]
    done = 0
    for g, group in enumerate(groups):
        # Each group gets an equal share of what is left of the budget; its rows past it are skipped.
        deadline = None
        if budget_s is not None:
            left = budget_s - (time.perf_counter() - start)
            deadline = time.time() + left / (len(groups) - g)
        group = [replace(r, timeout_s=timeout_s, deadline=deadline) for r in group]
        results: list[dict[str, Any]] = []
        while len(results) < len(group):
            pending = group[len(results):]
            if deadline is not None and time.time() > deadline:
                results += [{"status": "skipped", "message": f"budget of {budget_s:g} s spent"}] * len(pending)
                break
            # start-up and the float64 check come on top of the per-row cap
            extra = sum(extra_seconds(IMPLS[r.impl]) for r in pending)
            results += run_in_subprocess(pending, (timeout_s + 60.0) * len(pending) + extra)
        for row, result in zip(group, results):
            done += 1
            data["rows"].append({"config": row.config, "model": row.model, "order": row.order, "px": row.px,
                                 "impl": row.impl, "warmup": row.warmup, "iters": row.iters, "result": result})
            state = common.gpu_state() if device.type == "cuda" else None
            if state:
                data["rows"][-1]["gpu_state_after"] = state
            what = f"[{done}/{len(rows)} {time.perf_counter() - start:.0f}s] {row.config} {row.impl}"
            if result["status"] == "ok":
                host = f", host {result['host_s_per_step_on'] * 1e3:.2f} ms/step queued" if "host_s_per_step_on" in result else ""
                print(f"{what}: {result['tasks_per_s_off']:.3g} / {result['tasks_per_s_on']:.3g} tasks/s off/on, "
                      f"peak {result['peak_mem_bytes'] / 2**30:.2f} GiB{host}"
                      + (f"; GPU after it: {common.format_gpu_state(state)}" if state else ""), file=sys.stderr, flush=True)
            else:
                print(f"{what}: {result['status']}: {result.get('message', '')}", file=sys.stderr, flush=True)
    data["total_s"] = time.perf_counter() - start
    if "gpu_state" in data:
        data["gpu_state"]["end"] = common.gpu_state()
    summarise(data)
    print(format_table(data), flush=True)
    if args.json:
        common.write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
