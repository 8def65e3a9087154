#!/usr/bin/env python
"""Inductor's GPU code for compiled steps run on the CPU, its Triton kernels in Triton's interpreter.

A diagnostic for issue 7, for sessions without a GPU. Every graph ``torch.compile`` hands inductor
in this process is lowered for the pretend sm_90 card of ``tools/offline_kernels.py``: the same
wrapper and Triton kernels an H100/H200 would run. That wrapper then runs on the CPU tensors the
step gives it: cuDNN's and cuBLAS's calls as ATen's CPU operators, each Triton kernel in Triton's
interpreter with device asserts on. It reports, and exits 1 on:

* a device assert (on the GPU: "device-side assert triggered");
* a write outside a buffer the wrapper allocated (each has 4 KiB of sentinel bytes either side);
* with ``--order-check``: a kernel whose outputs depend on the order its programs run in (a race
  between programs on the GPU, where they run at once);
* with ``--all-configs``: a kernel whose outputs differ between its block sizes (inductor's
  configs and each block size halved, quartered, doubled and quadrupled, as coordinate descent
  moves them), or that leaves bytes of its outputs unwritten (a second run on zeroed outputs).

    python tools/gpu_code_on_cpu.py --impl fold+bf16+cl+compile+combo+unfold+grouped+graph --all-configs combo
    python tools/gpu_code_on_cpu.py --combo train -- --device cpu --compile --batched fold ...
    python tools/gpu_code_on_cpu.py --impl fold+bf16+cl+compile+combo+unfold+grouped+graph --programs 16 --order-check all

What it cannot see: Triton's compiler (PTX, SASS), races between kernels or streams, cuDNN's own kernels,
memory the step did not allocate through the wrapper, and time. The interpreter is slow: one
Conv4 meta-step at 28 px takes minutes (fewer with ``--programs``: block sizes chosen for the
interpreter). Triton 3.6 (torch 2.11, the GPU machine's) needs numpy older than 2.4 in its
interpreter.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator

os.environ["TRITON_INTERPRET"] = "1"  # read when a kernel is defined: every kernel then runs in the interpreter
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # a cache hit would bypass the lowering

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_maml  # noqa: E402  (tools/ is not a package)
import offline_kernels  # noqa: E402

GUARD = 4096  # sentinel bytes before and after each buffer a wrapper allocates
SCALES = (0.25, 0.5, 2, 4)  # block sizes tried around each of inductor's configs
TILE = 2 ** 15  # --programs grows blocks to at most this many elements: numpy's cost per element rules above it


class Emulation:
    """The process-wide patches, and what the emulated kernels did."""

    def __init__(self, all_configs: str = "none", max_programs: int = 20000, combo: bool = False,
                 sentinel: int = 0x7F, programs: int | None = None, progress: bool = False,
                 order_check: str = "none") -> None:
        self.all_configs, self.max_programs, self.combo, self.sentinel = all_configs, max_programs, combo, sentinel
        self.programs, self.progress, self.order_check = programs, progress, order_check
        self.problems: list[str] = []
        self.launches: list[tuple[str, int, float]] = []  # kernel, configs run, seconds
        self.graphs = 0
        self._guarded: list[tuple[torch.Tensor, int]] = []

    # ------------------------------------------------------------------ setup
    def install(self) -> None:
        import torch._inductor.compile_fx as cfx
        import torch._inductor.runtime.triton_helpers as helpers
        import triton.language as tl
        import triton.runtime.interpreter as interpreter
        from torch._inductor.graph import GraphLowering
        from torch._inductor.runtime import triton_heuristics

        self._cuda = offline_kernels.pretend_sm90()
        _trace_interpreted_kernels()
        self._use_cuda(real=True)
        helpers.set_driver_to_gpu = lambda: None
        helpers.libdevice = _Libdevice(tl)
        # The interpreter drops device asserts unless its options say debug (inductor compiles with it on).
        interpreter.interpreter_builder.options = interpreter.InterpreterOptions(debug=True)
        triton_heuristics.CachingAutotuner.run = lambda kernel, *args, stream=None, **kwargs: \
            self._run(kernel, args, kwargs)
        compile_to_module = GraphLowering.compile_to_module

        def on_cpu(lowering: Any) -> Any:
            module = compile_to_module(lowering)
            module.__dict__["empty_strided_cuda"] = self._empty
            module.__dict__["get_raw_stream"] = lambda *a: 0
            module.__dict__["assert_size_stride"] = _as_on_the_gpu
            self._module = module
            return module

        GraphLowering.compile_to_module = on_cpu
        torch.cuda._DeviceGuard = offline_kernels.NoDevice
        torch.cuda.set_device = lambda *a: None
        compile_fx = cfx.compile_fx

        def lowered_later(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
            options = dict(kwargs.get("config_patches") or {})
            kwargs.setdefault("inner_compile", lambda g, inputs, **kw: self._lazy(g, inputs, kw, options))
            return compile_fx(gm, example_inputs, **kwargs)

        cfx.compile_fx = lowered_later
        import torch._functorch.config as functorch_config

        functorch_config.decompose_custom_triton_ops = False  # dropgrad's Triton ops stay ops

    def _use_cuda(self, real: bool) -> None:
        for name, (real_fn, pretend_fn) in self._cuda.items():
            setattr(torch.cuda, name, real_fn if real else pretend_fn)

    def _lazy(self, gm: Any, example_inputs: Any, kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        """The graph's sm_90 module, lowered at its first call (outside the tracing of the CPU compile)."""
        import torch._inductor.config as inductor_config

        current = inductor_config.get_config_copy()
        settings = dict(options)
        for key in ("combo_kernels", "combo_kernel_allow_mixed_sizes", "coordinate_descent_tuning"):
            settings.setdefault(key, current[key])
        if self.combo:
            settings["combo_kernels"] = True
        graph = copy.deepcopy(gm)
        inputs = [(tuple(t.shape), tuple(t.stride()), t.dtype) if isinstance(t, torch.Tensor) else t
                  for t in example_inputs]
        keep = {k: v for k, v in kwargs.items() if k in offline_kernels.INNER_KWARGS}
        state: dict[str, Any] = {}

        def call(args: list[Any]) -> Any:
            if "module" not in state:
                self._use_cuda(real=False)
                try:
                    offline_kernels.lower_graph(graph, inputs, keep, settings)
                finally:
                    self._use_cuda(real=True)
                state["module"] = self._module
                self.graphs += 1
            return state["module"].call(list(args))

        call._boxed_call = True  # type: ignore[attr-defined]
        return call

    # ------------------------------------------------------------------ memory
    def _empty(self, size: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        item = torch.empty(0, dtype=dtype).element_size()
        extent = _extent(size, stride)
        store = torch.full((2 * GUARD + extent * item,), self.sentinel, dtype=torch.uint8)
        self._guarded.append((store, extent * item))
        return torch.empty(0, dtype=dtype).set_(store.untyped_storage(), GUARD // item, size, stride)

    def _check_guards(self, kernel: str) -> None:
        for store, nbytes in self._guarded:
            before, after = store[:GUARD], store[GUARD + nbytes:]
            if bool((before != self.sentinel).any()) or bool((after != self.sentinel).any()):
                self._problem(f"{kernel}: wrote outside a buffer of {nbytes} bytes "
                              f"({int((before != self.sentinel).sum())} bytes before it, "
                              f"{int((after != self.sentinel).sum())} after)")
                before.fill_(self.sentinel)
                after.fill_(self.sentinel)

    # ------------------------------------------------------------------ kernels
    def _run(self, kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = kernel.inductor_meta.get("kernel_name", "?")
        combo = "Combo" in kernel.inductor_meta.get("grid_type", "")
        started = time.time()
        if self.all_configs == "all" or (self.all_configs == "combo" and combo):
            runs = self._every_config(kernel, name, args, kwargs)
            sizes: Any = "every block size"
        else:
            config = max(kernel.configs, key=_block_elements)  # fewest programs
            if self.programs is not None:
                config = _fewer_programs(kernel, config, args, self.programs)
            if self.order_check == "all" or (self.order_check == "combo" and combo):
                runs = self._both_orders(kernel, config, args, kwargs, name)
            else:
                self._launch(kernel, config, args, kwargs, name)
                runs = 1
            sizes = config.kwargs
        self._check_guards(name)
        self.launches.append((name, runs, time.time() - started))
        if self.progress:
            print(f"launch {len(self.launches)}: {name} ({sizes}), {runs} run(s), {time.time() - started:.1f} s",
                  flush=True)

    def _launch(self, kernel: Any, config: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> bool:
        new_args, grid = kernel._interpret_args_grid(args, config)
        try:
            kernel.fn[grid](*new_args, **kwargs, **config.kwargs)
        except Exception as error:  # the interpreter raises on a device assert
            self._problem(f"{name} with {config.kwargs}, grid {grid}: {type(error).__name__}: {str(error)[:300]}")
            return False
        return True

    def _both_orders(self, kernel: Any, config: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str) -> int:
        """``kernel`` run from the same bytes with its programs in order, then in reverse order. On a GPU its
        programs run at once, in no set order: a result that depends on the order is a race there (one
        program reading what another writes), which the interpreter's one-by-one order hides. The step
        goes on with the in-order result."""
        names = list(kernel.triton_meta["signature"])
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        before = [_bytes(args[i]).clone() for i in tensors]
        if not self._launch(kernel, config, args, kwargs, name):
            return 1
        in_order = [_bytes(args[i]).clone() for i in tensors]
        for i, saved in zip(tensors, before):
            _bytes(args[i]).copy_(saved)
        with _programs_reversed():
            if not self._launch(kernel, config, args, kwargs, name):
                return 2
        for i, a in zip(tensors, in_order):
            differ = int((_bytes(args[i]) != a).sum())
            if differ:
                atomic = " (the kernel adds atomically: float sums in another order may round differently)" \
                    if "atomic_add" in (_source(kernel) or "") else ""
                self._problem(f"{name}: {differ} bytes of {names[i]} differ when its programs run in reverse order "
                              f"with {config.kwargs}: a race between programs on the GPU{atomic}")
            _bytes(args[i]).copy_(a)
        return 2

    def _every_config(self, kernel: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        names = list(kernel.triton_meta["signature"])
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        before = [_bytes(args[i]).clone() for i in tensors]

        def restore(zero_outputs: bool = False) -> None:
            for i, saved in zip(tensors, before):
                _bytes(args[i]).copy_(saved)
                if zero_outputs and names[i].startswith("out_ptr"):
                    _bytes(args[i]).zero_()

        results, tried = [], 0
        for config in _configs(kernel):
            grid = kernel._interpret_args_grid(args, config)[1]
            if grid[0] * grid[1] * grid[2] > self.max_programs:
                continue
            restore()
            tried += 1
            if self._launch(kernel, config, args, kwargs, name):
                results.append((config, [_bytes(args[i]).clone() for i in tensors]))
        if not tried:  # every block size over --max-programs: the step still needs the kernel's outputs
            self._launch(kernel, max(kernel.configs, key=_block_elements), args, kwargs, name)
            return 1
        if not results:
            return 0
        first, reference = results[0]
        for config, outputs in results[1:]:
            for i, a, b in zip(tensors, reference, outputs):
                if not torch.equal(a, b):
                    self._problem(f"{name}: {names[i]} with {config.kwargs} differs from {first.kwargs}")
        restore(zero_outputs=True)
        self._launch(kernel, first, args, kwargs, name)
        for i, a in zip(tensors, reference):
            unwritten = int((_bytes(args[i]) != a).sum())
            if unwritten:
                self._problem(f"{name}: {unwritten} bytes of {names[i]} unwritten with {first.kwargs}")
        return len(results)

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"PROBLEM {text}", flush=True)

    def summary(self, seconds: float) -> str:
        total, count = collections.Counter(), collections.Counter()
        for name, _, spent in self.launches:
            total[name] += spent
            count[name] += 1
        lines = [f"{self.graphs} graphs lowered for sm_90 and run on the CPU; {len(self.launches)} kernel launches "
                 f"({sum(r for _, r, _ in self.launches)} runs) in {seconds:.0f} s; torch {torch.__version__}"]
        lines += [f"  {spent:7.1f} s {count[name]:3d}x {name}" for name, spent in total.most_common(5)]
        lines.append(f"{len(self.problems)} problems" + "".join(f"\n  {p}" for p in self.problems[:40]))
        return "\n".join(lines)


def _trace_interpreted_kernels() -> None:
    """Let ``torch.library.wrap_triton`` take kernels defined under the interpreter (our ``triton_op``s'),
    which it refuses. While tracing (Dynamo's and AOTAutograd's fake runs of the op) it gets a Triton
    JIT function of the same Python; run eagerly, as when the wrapper calls the op, the kernel stays
    interpreted. (In the graphs lowered here AOTAutograd keeps the op as one call.)"""
    import torch._library.triton as library_triton
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    wrap = library_triton.wrap_triton
    jitted: dict[int, JITFunction] = {}

    def wrap_triton(kernel: Any) -> Any:
        if not isinstance(kernel, InterpretedFunction):
            return wrap(kernel)
        if not library_triton.is_wrap_triton_enabled():
            return kernel
        if id(kernel) not in jitted:
            jitted[id(kernel)] = JITFunction(kernel.fn)
        return wrap(jitted[id(kernel)])

    library_triton.wrap_triton = torch.library.wrap_triton = wrap_triton


class _Libdevice:
    """libdevice's functions (CUDA library calls the interpreter cannot make) as triton.language.math's."""

    def __init__(self, tl: Any) -> None:
        self._math = tl.math

    def __getattr__(self, name: str) -> Any:
        if name == "mul_rn":  # a product kept out of fused multiply-adds: numpy rounds each product anyway
            return lambda x, y: x * y
        if not hasattr(self._math, name):
            raise AttributeError(f"gpu_code_on_cpu: libdevice.{name} has no interpreter counterpart in triton.language.math")
        return lambda *args: getattr(self._math, name)(*args)


def _as_on_the_gpu(t: torch.Tensor, size: Any, stride: Any, *rest: Any) -> None:
    """Inductor's check of an external kernel's output, which here is ATen's CPU operator: its layout
    may differ from cuDNN's, so ``t`` is given the layout the GPU code expects (values kept)."""
    if tuple(t.shape) != tuple(size):
        raise AssertionError(f"gpu_code_on_cpu: {rest[0] if rest else 'an external kernel'} gave size "
                             f"{tuple(t.shape)}, the GPU code expects {tuple(size)}")
    if any(n > 1 and a != b for n, a, b in zip(size, t.stride(), stride)):
        moved = torch.empty_strided(size, stride, dtype=t.dtype)
        moved.copy_(t)
        t.set_(moved)


def _extent(size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements from a tensor's first to its last, inclusive."""
    return 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(n > 0 for n in size) else 0


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t``'s storage from its first element to its last (a view)."""
    item = t.element_size()
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage(), t.storage_offset() * item,
                                                  (_extent(t.shape, t.stride()) * item,))


def _block_elements(config: Any) -> int:
    n = 1
    for key, value in config.kwargs.items():
        n *= value if key.endswith("BLOCK") else 1
    return n


def _max_block(key: str) -> int:
    """Inductor's largest block for ``key`` (XBLOCK, YBLOCK, ...): it leaves a kernel's masks out where
    every block up to this one divides the size, so a larger block would run past the buffers."""
    from torch._inductor.runtime.hints import TRITON_MAX_BLOCK

    return TRITON_MAX_BLOCK[key[: -len("BLOCK")]]  # "XBLOCK" -> "X", "R0_BLOCK" -> "R0_"


def _fewer_programs(kernel: Any, config: Any, args: tuple[Any, ...], limit: int) -> Any:
    """``config`` made cheap for the interpreter: block sizes doubled, the one that cuts the work most each
    time, until the kernel needs at most ``limit`` programs (times its reduction loop's turns), no
    doubling cuts that, or a block reaches inductor's largest (or the tile TILE elements).

    The interpreter pays per program and per loop turn. A reduction with its own combining function
    (Welford's mean and variance, inductor's max2) runs as a Python loop over every element of the
    tile it reduces, so such a looped reduction gets R blocks of 1: its last step, reducing the
    [XBLOCK, R0_BLOCK] accumulators, is then a copy. A kernel's values do not depend on its block
    sizes (which ``--all-configs`` checks), up to the order of its sums. A persistent reduction's R
    block is its whole reduction, which inductor may leave unmasked, and a combo kernel's sub-kernels
    may be persistent: both keep their R blocks."""
    from torch._inductor.runtime.hints import HeuristicType
    from triton import Config

    kwargs = dict(config.kwargs)
    looped = kernel.heuristic_type == HeuristicType.REDUCTION and "Combo" not in kernel.inductor_meta.get(
        "grid_type", "")
    r_keys = [k for k in kwargs if k.startswith("R") and k.endswith("BLOCK")] if looped else []
    if r_keys and _combines_in_python(kernel):
        kwargs.update({k: 1 for k in r_keys})
        r_keys = []
    sizes = dict(zip([n for n in kernel.triton_meta["signature"] if n not in kwargs], args))

    def work(kw: dict[str, Any]) -> int:
        grid = kernel._interpret_args_grid(args, Config(kw))[1]
        turns = 1
        for k in r_keys:  # "R0_BLOCK" loops over "r0_numel"
            turns *= -(-int(sizes.get(k[: -len("_BLOCK")].lower() + "_numel", kw[k])) // kw[k])
        return grid[0] * grid[1] * grid[2] * turns

    keys = [k for k in kwargs if k.endswith("BLOCK") and not k.startswith("R")] + r_keys
    count = work(kwargs)
    while count > limit:
        tries = [(work({**kwargs, k: kwargs[k] * 2}), k) for k in keys
                 if kwargs[k] * 2 <= _max_block(k) and _block_elements(Config(kwargs)) * 2 <= TILE]
        fewest, key = min(tries, default=(count, None))
        if key is None or fewest >= count:
            break
        kwargs[key] *= 2
        count = fewest
    return Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _combines_in_python(kernel: Any) -> bool:
    """Whether ``kernel`` reduces with a combining function the interpreter applies element by element
    (anything but its numpy sum, max and min)."""
    source = _source(kernel)
    if source is None:
        return True  # unknown: R blocks of 1 are correct either way, only slower for a plain sum
    return any(name in source for name in ("welford", "max2(", "min2(", "prod(", "_with_index(", "tl.reduce("))


def _source(kernel: Any) -> str | None:
    import inspect

    try:
        return inspect.getsource(getattr(kernel.fn, "fn", kernel.fn))
    except (OSError, TypeError):
        return None


@contextlib.contextmanager
def _programs_reversed() -> Iterator[None]:
    """Inside the block, Triton's interpreter runs a grid's programs last to first: it still walks the
    grid in order, but each program is handed the mirrored index."""
    from triton.runtime.interpreter import interpreter_builder as builder

    in_order = builder.set_grid_idx

    def mirrored(x: int, y: int, z: int) -> None:
        nx, ny, nz = builder.grid_dim
        in_order(nx - 1 - x, ny - 1 - y, nz - 1 - z)

    builder.set_grid_idx = mirrored
    try:
        yield
    finally:
        del builder.set_grid_idx  # the class's method again


def _configs(kernel: Any) -> list[Any]:
    """Inductor's configs for ``kernel``, then each with one block size scaled by SCALES (reductions' R kept)."""
    from triton import Config

    found = list(kernel.configs)
    for config in kernel.configs:
        for key, value in config.kwargs.items():
            if key.endswith("BLOCK") and not key.startswith("R"):
                for scale in SCALES:
                    if 1 <= int(value * scale) <= _max_block(key):
                        found.append(Config({**config.kwargs, key: int(value * scale)}, num_warps=config.num_warps,
                                            num_stages=config.num_stages))
    unique: dict[tuple, Any] = {}
    for config in found:
        unique.setdefault(tuple(sorted(config.kwargs.items())), config)
    return list(unique.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", help="a tools/bench_maml.py row with +compile: one Conv4 meta-step, first order")
    offline_kernels.add_shape_options(parser, px=28, tasks=2, ways=3, shots=1, queries=2, steps=2)
    parser.add_argument("--check", action="store_true",
                        help="instead of the timed step: the bench's float64 check (loss and meta-gradients against the "
                             "per-task loop, tiny shapes, noise off, no bf16), the row's graphs run as GPU code")
    parser.add_argument("--all-configs", choices=("none", "combo", "all"), default="none",
                        help="kernels run at every block size and compared (combo: inductor's combo kernels only); "
                             "otherwise each runs once, at its largest block")
    parser.add_argument("--max-programs", type=int, default=20000,
                        help="with --all-configs: block sizes needing more programs than this are left out")
    parser.add_argument("--programs", type=int,
                        help="without --all-configs: block sizes chosen for the interpreter, each kernel's doubled "
                             "(up to inductor's largest) until it needs at most this many programs")
    parser.add_argument("--order-check", choices=("none", "combo", "all"), default="none",
                        help="without --all-configs: kernels (combo: inductor's combo kernels only) run again with "
                             "their programs in reverse order; a different result is a race on the GPU")
    parser.add_argument("--progress", action="store_true", help="a line per kernel launch")
    parser.add_argument("--combo", action="store_true",
                        help="inductor's combo kernels in every compiled graph (for settings an app refuses)")
    parser.add_argument("command", nargs="?", choices=("train",),
                        help="train: run fewshot-train with the options after --, instead of --impl")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if (args.impl is None) == (args.command is None):
        parser.error("give --impl ROW or train -- <fewshot-train options>")
    if args.impl is not None and not getattr(bench_maml.IMPLS.get(args.impl), "compile", False):
        parser.error(f"--impl {args.impl!r}: not a tools/bench_maml.py row with +compile (the rows are its IMPLS)")
    if args.check and args.command:
        parser.error("--check goes with --impl, not with train")
    if args.programs is not None and (args.programs < 1 or args.all_configs != "none"):
        parser.error(f"--programs {args.programs}: a count >= 1, and only without --all-configs")
    if args.order_check != "none" and args.all_configs != "none":
        parser.error(f"--order-check {args.order_check}: only without --all-configs")
    emulation = Emulation(args.all_configs, args.max_programs, args.combo, programs=args.programs,
                          progress=args.progress, order_check=args.order_check)
    emulation.install()
    started = time.time()
    if args.command == "train":
        from dropgrad_fewshot import cli

        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        status = cli.train_main(rest)
        print(f"fewshot-train exit status {status}")
        if status:
            return status
    elif args.check:
        difference = bench_maml.check_row(types.SimpleNamespace(model="conv4", order="first"),
                                          bench_maml.IMPLS[args.impl], torch.device("cpu"))
        print(f"{args.impl}: float64 max |loss, meta-gradient difference| against the per-task loop {difference:.3g}")
    else:
        loss = offline_kernels.conv4_step(args.impl, args.px, args.tasks, args.ways, args.shots, args.queries, args.steps)
        print(f"{args.impl}: meta-step loss {float(loss):.6f}")
    print(emulation.summary(time.time() - started))
    return 1 if emulation.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
