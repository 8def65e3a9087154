#!/usr/bin/env python
"""Where one meta-step's time goes: the kernels (GPU) or operators (CPU) of one bench_maml row.

A row is a configuration and an impl of tools/bench_maml.py (same model, tasks and levers). After
warm-up steps it times ``--steps`` steps without the profiler, then profiles as many with
``torch.profiler``. It prints the step time, the number of GPU kernels per step, their summed
time (how busy the GPU was), and the top kernels by time; on a CPU, the top operators by self
time. This is the check issue 7's next speed levers start from (docs/performance.md).

    python tools/profile_meta_step.py --config conv4-fo --impl loop+bf16+cl --steps 3
    python tools/profile_meta_step.py --quick --device cpu --config conv4-fo --impl loop   # seconds
    python tools/profile_meta_step.py --config resnet18-so --impl loop+bf16 --by-op   # GPU time per aten op and shape

Kernels replayed from a CUDA graph may not be reported by the profiler (it depends on the torch
and CUPTI versions); the script says so when it sees none, and the same impl without ``+graph``
runs the same kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_maml  # noqa: E402  (tools/ is not a package)

common = bench_maml.common
dropgrad = bench_maml.dropgrad


def build_row(config: str, impl: str, quick: bool, device: torch.device) -> bench_maml.RowConfig:
    """The bench_maml row of ``config`` and ``impl`` at the full (or ``--quick``) shapes."""
    model, order, _ = bench_maml.CONFIGS[config]
    mode = "quick" if quick else "full"
    s = bench_maml.SETTINGS[mode]
    return bench_maml.RowConfig(config, model, order, impl, bench_maml.SIZES[mode][model], s["tasks"], s["ways"],
                                s["shots"], s["queries"], s["steps"], s["warmup"], s["iters"], str(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_table(prof: profile, steps: int, top: int) -> tuple[list[str], int]:
    """Lines of the top GPU kernels per step, and how many kernels were seen."""
    per_name: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            per_name[e.name].append(e.time_range.elapsed_us())
    total_us = sum(sum(v) for v in per_name.values())
    count = sum(len(v) for v in per_name.values())
    lines = [
        f"GPU kernels per step: {count / steps:.0f}, summed kernel time {total_us / steps / 1e3:.2f} ms per step",
        f"{'share':>6}  {'ms/step':>8}  {'calls/step':>10}  {'mean us':>8}  kernel",
    ]
    ranked = sorted(per_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    for name, times in ranked:
        t = sum(times)
        lines.append(f"{100 * t / max(total_us, 1e-9):5.1f}%  {t / steps / 1e3:8.3f}  {len(times) / steps:10.1f}  "
                     f"{t / len(times):8.1f}  {name[:110]}")
    return lines, count


# Leaf operators that only allocate or make views: no computing kernel of their own.
_NO_KERNEL = frozenset(f"aten::{op}" for op in (
    "empty", "empty_strided", "empty_like", "as_strided", "as_strided_", "view", "_unsafe_view", "reshape",
    "_reshape_alias", "resize_", "to", "result_type", "resolve_conj", "resolve_neg", "detach", "alias", "t",
    "transpose", "permute", "expand", "slice", "select", "unsqueeze", "squeeze", "unbind", "split", "lift_fresh",
    "set_"))


def cpu_compute_calls(prof: profile, steps: int) -> str:
    """The line counting a CPU step's computing calls: leaf aten operators, and inductor's kernels.

    The count a GPU would launch as kernels, roughly: eager, one per computing operator; compiled,
    one per generated kernel (fused) plus the operators left to ATen (convolutions). Inductor's
    CPU kernels are seen by name only with ``torch._inductor.config.cpp.enable_kernel_profile``.
    """
    calls = 0
    for e in prof.events():
        if e.cpu_children:
            continue
        if e.name.startswith("aten::"):
            calls += e.name not in _NO_KERNEL
        else:
            calls += "cpp_fused" in e.name
    return (f"computing calls per step: {calls / steps:.0f} (leaf aten operators other than views and "
            f"allocations, and inductor's generated kernels)")


def op_table(prof: profile, steps: int, top: int, *, device_time: bool = False, shapes: bool = False) -> list[str]:
    """Lines of the top aten operators per step, by self CPU time or by the GPU time of their own kernels.

    ``shapes``: one row per operator and input shapes. Kernel names say little about which part
    of a step launched them (BatchNorm's double backward is many ``mul`` and ``sum`` kernels); the
    operator and its shapes do.
    """
    def cost(e: Any) -> float:
        if not device_time:
            return float(e.self_cpu_time_total)
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))

    averages = [e for e in prof.key_averages(group_by_input_shape=shapes) if e.key.startswith("aten::")]
    total = sum(cost(e) for e in averages)
    title = (f"{'GPU' if device_time else 'self CPU'} time by aten operator{' and input shapes' if shapes else ''}, "
             f"{total / steps / 1e3:.2f} ms per step")
    lines = [title,
             f"{'share':>6}  {'ms/step':>8}  {'calls/step':>10}  operator{'  [input shapes]' if shapes else ''}"]
    for e in sorted(averages, key=lambda e: -cost(e))[:top]:
        shape = f"  {str(e.input_shapes)[:150]}" if shapes else ""
        share = 100 * cost(e) / max(total, 1e-9)
        lines.append(f"{share:5.1f}%  {cost(e) / steps / 1e3:8.3f}  {e.count / steps:10.1f}  {e.key[:110]}{shape}")
    return lines


def warmup_line(steps: int, seconds: float, compiled: bool) -> str:
    """The line on the warm-up steps: their time and, compiled, how many graphs Dynamo compiled.

    A compiled row should compile one graph for the inner steps and one for the query (one in
    all where support and query sets have the same shape); more means a step recompiled, which
    costs compile time and, past torch's recompile limit, silently falls back to eager.
    """
    line = f"warm-up: {steps} steps in {seconds:.1f} s"
    if compiled:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        line += f" (compiling included; Dynamo compiled {graphs} graph{'s' if graphs != 1 else ''})"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=tuple(bench_maml.CONFIGS), default="conv4-fo")
    parser.add_argument("--impl", choices=tuple(bench_maml.IMPLS), default="loop")
    parser.add_argument("--dropgrad", choices=("on", "off"), default="on", help="gaussian p=0.1 (default on)")
    parser.add_argument("--steps", type=common._positive, default=3, help="timed and then profiled steps (default 3)")
    parser.add_argument("--warmup", type=common._non_negative, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--top", type=common._positive, default=25, help="rows of the top table (default 25)")
    parser.add_argument("--quick", action="store_true", help="bench_maml's tiny --quick shapes (a CPU smoke run)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--by-op", action="store_true",
                        help="the time per aten operator and input shapes "
                             "(on a GPU: its kernels' time, after the kernel table)")
    args = parser.parse_args(argv)
    try:
        device = dropgrad.select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in bench_maml: fixed shapes
    elif bench_maml.IMPLS[args.impl].compile:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # inductor's CPU kernels, by name, in the profile
    _profile(args, device)
    return 0


def _profile(args: argparse.Namespace, device: torch.device) -> None:
    row = build_row(args.config, args.impl, args.quick, device)
    noise = args.dropgrad == "on"
    step = bench_maml.row_steps(row, device, noise=(noise,))[noise]
    print(f"{args.config} ({row.model} {row.px} px, {row.order} order) impl {args.impl}, DropGrad {args.dropgrad}; "
          f"{row.tasks} tasks {row.ways}-way {row.shots}-shot {row.queries}-query, {row.steps} inner steps; "
          f"device {common.device_name(device)}, torch {torch.__version__}")
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    print(warmup_line(args.warmup, time.perf_counter() - t0, bench_maml.IMPLS[args.impl].compile))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    wall_ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(f"step time {wall_ms:.2f} ms without the profiler ({row.tasks * 1e3 / wall_ms:.3g} tasks/s)")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=args.by_op) as prof:
        for _ in range(args.steps):
            step()
        _sync(device)
    if device.type == "cuda":
        lines, count = kernel_table(prof, args.steps, args.top)
        print("\n".join(lines))
        if args.by_op:
            print("\n".join(op_table(prof, args.steps, args.top, device_time=True, shapes=True)))
        if count == 0:
            print("no kernels seen: this torch's profiler does not report kernels replayed from a CUDA graph; "
                  "profile the same impl without +graph")
    else:
        print(cpu_compute_calls(prof, args.steps))
        print("\n".join(op_table(prof, args.steps, args.top, shapes=args.by_op)))


if __name__ == "__main__":
    raise SystemExit(main())
