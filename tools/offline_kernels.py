#!/usr/bin/env python
"""Inductor's GPU code for a bench row's compiled meta-step, generated and counted without a GPU.

A diagnostic for issue 7, for sessions without a GPU. It runs one meta-step of a
``tools/bench_maml.py`` row on the CPU and records every graph inductor is given (each
compiled region's forward and backward, after AOTAutograd's partition). Then it lowers those
graphs again for a CUDA device that is not there (an sm_90 card, as an H100/H200 reports
itself), which gives the Triton kernels and the wrapper code inductor would run on that card. Each
pointwise kernel is compiled offline to SASS (Triton's own ptxas and nvdisasm), and its
instructions per element times its elements is a measure of its integer and float work:

    python tools/offline_kernels.py --impl fold+bf16+cl+compile+combo+unfold+grouped+graph --out kernels

What it is good for, and where it is not:

* Kernel names, launch order and wrapper code came out as on the H200 (torch 2.11): the kernels
  the GPU profiles name (``triton_poi_fused_24`` and so on) are the ones printed here, and the
  device-side assert that crashed the grouped combo rows sits on line 50 of the generated
  kernels, as the GPU's message said.
* The time column assumes a kernel is bound by its instructions, at 23.8 T lane-instructions/s:
  the rate that makes the largest kernel's count (76 per element over 145 M elements) match
  its H200 time (461 us). It ignores memory: a kernel that moves many bytes per instruction,
  or reads uncoalesced, takes longer than printed. Reductions are listed without a time
  (their loops make a static count meaningless).
* ``dropgrad.poolkernels``' op (``+tpool`` rows) stays one node, which the wrapper calls; its
  kernels are not in the table (``--pool-kernels`` counts them).
* It patches torch's CUDA queries (device properties, the convolution backend, CUDA's random
  state) for the length of the process; torch 2.11 (the GPU machine's) and 2.14 were tried.
  Use the GPU machine's torch to see its code: the kernels differ between releases.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # a cache hit would skip the recording

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inner_loop as common  # noqa: E402  (tools/ is not a package)
import bench_maml  # noqa: E402

LANE_INSTRUCTIONS_PER_S = 23.8e12  # fitted to one H200 kernel (module docstring)
SM90 = types.SimpleNamespace(
    name="NVIDIA H200 (offline)", major=9, minor=0, multi_processor_count=132, max_threads_per_multi_processor=2048,
    warp_size=32, total_memory=140 * 2**30, regs_per_multiprocessor=65536, shared_memory_per_block_optin=232448,
    L2_cache_size=50 * 2**20, gcnArchName="", clock_rate=1980000, memory_clock_rate=2619000, memory_bus_width=6144,
)


INNER_KWARGS = ("static_input_idxs", "is_backward", "is_inference", "graph_id")  # what lowering again needs


# ----------------------------------------------------------------- recording
def conv4_step(impl_name: str, px: int, tasks: int, ways: int, shots: int, queries: int, steps: int) -> torch.Tensor:
    """One Conv4 meta-step of a ``tools/bench_maml.py`` row on the CPU (first order, DropGrad on, seed 0); its loss."""
    impl = bench_maml.IMPLS[impl_name]
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = common.build_model("conv4", px, ways, batch_stats=True)
    batch = bench_maml.prepare(impl, model, common.make_tasks(tasks, ways, shots, queries, px, cpu, torch.float32))
    return bench_maml.make_step(impl, model, batch, steps=steps, first_order=True, noise_on=True, device=cpu)()


def record_graphs(impl_name: str, px: int, tasks: int, ways: int, shots: int, queries: int, steps: int) -> list[tuple]:
    """Run the row's meta-step on the CPU; return (graph, input (shape, stride, dtype), kwargs) per compiled graph.

    The recorded graphs run eagerly here (not compiled for the CPU): only their lowering for the
    GPU matters, and inductor's CPU code for some of them does not build (torch 2.11).
    """
    import torch._inductor.compile_fx as cfx
    from torch._functorch.aot_autograd import make_boxed_func

    records: list[tuple] = []
    compile_fx = cfx.compile_fx

    def inner(gm: torch.fx.GraphModule, example_inputs: Any, **kwargs: Any) -> Any:
        inputs = [(tuple(t.shape), tuple(t.stride()), t.dtype) if isinstance(t, torch.Tensor) else t
                  for t in example_inputs]
        keep = {k: v for k, v in kwargs.items() if k in INNER_KWARGS}
        records.append((copy.deepcopy(gm), inputs, keep))
        return make_boxed_func(copy.deepcopy(gm))

    def recording_compile_fx(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("inner_compile", inner)
        return compile_fx(gm, example_inputs, **kwargs)

    cfx.compile_fx = recording_compile_fx
    # dropgrad.poolkernels' op stays one node: traced into on the CPU it would be its ATen path
    # (on the pretend GPU the wrapper then calls the op, whose kernels report() adds).
    import torch._functorch.config as functorch_config

    decompose = functorch_config.decompose_custom_triton_ops
    functorch_config.decompose_custom_triton_ops = False
    try:
        if not bench_maml.IMPLS[impl_name].compile:
            raise SystemExit(f"offline_kernels: row {impl_name!r} compiles nothing (it has no +compile)")
        conv4_step(impl_name, px, tasks, ways, shots, queries, steps)
    finally:
        cfx.compile_fx = compile_fx
        functorch_config.decompose_custom_triton_ops = decompose
    return records


# ------------------------------------------------------------ a GPU that is not there
class NoDevice:
    """``torch.cuda.device`` (and its guards) for a GPU that is not there: a context that does nothing."""

    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> NoDevice:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


def pretend_sm90() -> dict[str, tuple[Any, Any]]:
    """Make torch and Triton lower code for an sm_90 CUDA device (for the rest of the process).

    Returns the ``torch.cuda`` functions it replaced, as name: (real, pretend), for a caller
    that runs real CPU work between lowerings (``tools/gpu_code_on_cpu.py``).
    """
    import torch._dynamo.device_interface as di
    import torch._inductor.fx_passes.fuse_attention as fuse_attention
    import torch._inductor.fx_passes.misc_patterns as misc_patterns
    import torch._inductor.fx_passes.pad_mm as pad_mm
    import torch._subclasses.fake_tensor as fake_tensor
    import torch.utils._triton as torch_triton
    import triton.runtime.driver as driver
    from triton.backends.compiler import GPUTarget

    cuda = torch.cuda
    replaced: dict[str, tuple[Any, Any]] = {}
    for name, value in {
        "is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
        "get_device_capability": lambda d=None: (9, 0), "get_device_properties": lambda d=None: SM90,
        "get_rng_state": lambda *a, **k: torch.zeros(16, dtype=torch.uint8), "set_rng_state": lambda *a, **k: None,
        "_lazy_init": lambda: None, "device": NoDevice, "_exchange_device": lambda i: 0,
        "_maybe_exchange_device": lambda i: 0, "synchronize": lambda *a, **k: None,
        "is_bf16_supported": lambda *a, **k: True,
    }.items():
        replaced[name] = (getattr(cuda, name), value)
        setattr(cuda, name, value)
    for name, value in {
        "get_device_properties": lambda d=None: SM90, "get_compute_capability": lambda d=None: 90,
        "is_available": lambda: True, "current_device": lambda: 0, "device_count": lambda: 1,
        "get_raw_stream": lambda d=None: 0,
    }.items():
        setattr(di.CudaInterface, name, staticmethod(value))
    if hasattr(di.CudaInterface, "Worker"):
        di.CudaInterface.Worker.get_device_properties = staticmethod(lambda d=None: SM90)

    class Driver:
        def get_current_target(self) -> Any:
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: Any = None) -> int:
            return 0

    driver._active = Driver()
    # Pattern tables made with real CUDA tensors at first use; none of them matches a Conv4 step.
    fuse_attention._sfdp_init = misc_patterns._misc_patterns_init = pad_mm._pad_mm_init = lambda *a, **k: None
    original = torch_triton.has_triton
    for module in list(sys.modules.values()):
        if getattr(module, "has_triton", None) is original:
            # torch 2.15 asks has_triton(include_cpu=True) while tracing.
            module.has_triton = lambda *a, **k: True
    if hasattr(fake_tensor, "init_gpu_context"):
        fake_tensor.init_gpu_context = lambda device: None
    # Without a GPU, ATen picks its reference convolution for CUDA tensors, whose fake outputs are
    # NCHW; on the GPU cuDNN runs them, channels-last in, channels-last out.
    select = torch._C._select_conv_backend

    def conv_backend(*args: Any, **kwargs: Any) -> Any:
        chosen = select(*args, **kwargs)
        first = args[0] if args else kwargs["input"]
        slow = (torch._C._ConvBackend.Slow2d, torch._C._ConvBackend.SlowDilated2d)
        return torch._C._ConvBackend.Cudnn if first.device.type == "cuda" and chosen in slow else chosen

    torch._C._select_conv_backend = conv_backend
    return replaced


def on_gpu(value: Any) -> Any:
    """``value`` with every CPU device in it the pretend GPU's."""
    if isinstance(value, torch.device) and value.type == "cpu":
        return torch.device("cuda", 0)
    if isinstance(value, (list, tuple)):
        return type(value)(on_gpu(v) for v in value)
    if isinstance(value, dict):
        return {k: on_gpu(v) for k, v in value.items()}
    return value


def lower_graph(gm: torch.fx.GraphModule, inputs: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
    """Lower ``gm`` (a recorded CPU graph, changed in place) for the pretend GPU with inductor ``options``.

    ``inputs`` are (shape, stride, dtype) per tensor input; the wrapper module is what
    ``GraphLowering.compile_to_module`` gives, which the callers intercept.
    """
    import torch._inductor.compile_fx as cfx
    import torch._inductor.config as inductor_config
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from dropgrad.compiling import _pool_backward_lowered

    gpu = torch.device("cuda", 0)
    for node in gm.graph.nodes:
        node.args, node.kwargs = on_gpu(node.args), on_gpu(node.kwargs)
    gm.recompile()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake = [torch.empty_strided(i[0], i[1], dtype=i[2], device=gpu) if isinstance(i, tuple) else i for i in inputs]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fake)
    with inductor_config.patch(options), _pool_backward_lowered(), mode:
        cfx.compile_fx_inner(gm, fake, **kwargs)


def lower_for_gpu(records: list[tuple], options: dict[str, Any]) -> list[tuple[str, str]]:
    """Each recorded graph lowered for the pretend GPU: (forward/backward, wrapper module source)."""
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.graph import GraphLowering

    AsyncCompile.triton = lambda self, name, source, device_str="cuda": None  # nothing to compile or run
    wrappers: list[str] = []
    compile_to_module = GraphLowering.compile_to_module

    def keep(self: Any) -> Any:
        module = compile_to_module(self)
        wrappers.append(Path(module.__file__).read_text())
        return module

    GraphLowering.compile_to_module = keep
    out = []
    try:
        for gm, inputs, kwargs in records:
            before = len(wrappers)
            lower_graph(gm, inputs, kwargs, options)
            if len(wrappers) != before + 1:
                raise RuntimeError("offline_kernels: inductor gave no wrapper module for a graph")
            out.append(("backward" if kwargs.get("is_backward") else "forward", wrappers[-1]))
    finally:
        GraphLowering.compile_to_module = compile_to_module
    return out


# ---------------------------------------------------------------------- SASS
def kernel_source(wrapper: str, name: str) -> str:
    match = re.search(re.escape(name) + r" = async_compile\.triton\('" + re.escape(name) + r"', '''(.*?)'''", wrapper, re.S)
    if match is None:
        raise KeyError(name)
    return match.group(1)


def sass_instructions(source: str, name: str, constexprs: dict[str, int], num_warps: int = 4) -> Counter[str]:
    """SASS opcodes of kernel ``name`` in ``source`` (an inductor kernel), compiled offline for sm_90."""
    lines, skipping = [], False
    for line in source.splitlines():  # inductor's autotuning decorator and driver call go; @triton.jit stays
        skipping = skipping or line.startswith("@triton_heuristics")
        if skipping and line.startswith("@triton.jit"):
            skipping = False
        if not skipping and "set_driver_to_gpu" not in line:
            lines.append(line)
    folder = Path(tempfile.mkdtemp())
    (folder / f"{name}.py").write_text("\n".join(lines))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fn = getattr(module, name)
    signature = eval(re.search(r"'signature': (\{[^}]*\})", source).group(1))  # noqa: S307  (inductor's literal)
    constants = dict(constexprs)
    found = re.search(r"'constants': (\{[^}]*\})", source)
    if found:
        constants.update(eval(found.group(1)))  # noqa: S307
    for key, kind in signature.items():
        if kind == "constexpr":
            constants.setdefault(key, 1)
    types_ = {k: v for k, v in signature.items() if k not in constants}
    return compile_sm90(fn, types_, {k: v for k, v in constants.items() if k in signature}, num_warps)


def compile_sm90(fn: Any, types_: dict[str, str], constants: dict[str, Any], num_warps: int = 4) -> Counter[str]:
    """SASS opcodes of the ``@triton.jit`` kernel ``fn`` compiled offline for sm_90: ``types_``
    gives its runtime arguments' Triton types, ``constants`` its compile-time ones."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    sig = {n: ("constexpr" if n in constants else types_[n]) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if sig[n].startswith("*")}
    source = ASTSource(fn=fn, signature=sig, attrs=attrs, constexprs={(names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return disassemble(compiled.asm["cubin"])


def disassemble(cubin: bytes) -> Counter[str]:
    import triton

    path = Path(tempfile.mkdtemp()) / "kernel.cubin"
    path.write_bytes(cubin)
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    text = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    ops: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)", line)
        if match:
            ops[match.group(2).split(".")[0]] += 1
    return ops


def pointwise_work(wrapper: str) -> list[tuple[str, int, float]]:
    """(kernel, elements, SASS instructions per element) for each pointwise launch of ``wrapper``.

    Each kernel is compiled with 1024 elements per program of 4 warps (8 per lane), a 2-d one
    with 32 x 32; per element is the kernel's instruction count over the 8 elements of a lane.
    """
    rows, per_element = [], {}
    for name, args in re.findall(r"^\s+(triton_poi_\w+)\.run\((.*)\)\s*$", wrapper, re.M):
        source = kernel_source(wrapper, name)
        header = source.split("def ", 1)[1].split(")", 1)[0]
        if name not in per_element:
            blocks = {"XBLOCK": 32, "YBLOCK": 32} if "YBLOCK" in header else {"XBLOCK": 1024}
            per_element[name] = sum(sass_instructions(source, name, blocks).values()) / 8
        sizes = [int(a) for a in (s.strip() for s in args.split(",")) if a.isdigit()]
        elements = 1
        for size in sizes:
            elements *= size
        combined = [int(v) for v in re.findall(r"'xnumel_\d+': (\d+)", source)]
        if combined:  # a combo kernel: its parts' sizes are in its own metadata
            elements = sum(combined)
        elif not sizes:
            inside = re.findall(r"xnumel = (\d+)", source)
            elements = int(inside[0]) if inside else 1
        rows.append((name, elements, per_element[name]))
    return rows


def pool_kernel_counts(sizes: list[tuple[int, int, int]]) -> None:
    """SASS per element of dropgrad.poolkernels' two kernels (2x2 windows, bf16, channels last).

    This tool's graphs cannot show them: the CPU recording traces the op's ATen path.
    """
    from dropgrad import poolkernels

    def count(fn: Any, types_: dict[str, str], constants: dict[str, Any]) -> float:
        return sum(compile_sm90(fn, types_, constants).values()) / 8  # 1024 elements, 128 lanes

    for c, h, w in sizes:
        common_ = {"KH": 2, "KW": 2, "CHANNELS_LAST": True, "INT64": False, "BLOCK": 1024}
        back = count(poolkernels._pool_backward, {"grad_ptr": "*bf16", "which_ptr": "*u8", "out_ptr": "*bf16", "total": "i32"},
                     {"C": c, "H": h, "W": w, "Ho": h // 2, "Wo": w // 2, **common_})
        fwd = count(poolkernels._pool_forward, {"x_ptr": "*bf16", "out_ptr": "*bf16", "which_ptr": "*u8", "total": "i32", "sn": "i32",
                              "sc": "i32", "sh": "i32", "sw": "i32"},
                    {"C": c, "Ho": h // 2, "Wo": w // 2, "WIDE": False, **common_})
        print(f"dropgrad.poolkernels {c}x{h}x{w}: backward {back:.1f} SASS per input element, "
              f"forward {fwd:.1f} per output element")


def report(kind: str, wrapper: str, top: int) -> float:
    rows = pointwise_work(wrapper)
    total = sum(e * p for _, e, p in rows) / LANE_INSTRUCTIONS_PER_S
    print(f"{kind} graph: {len(rows)} pointwise launches, {total * 1e6:.0f} us if bound by instructions")
    for name, elements, per in sorted(rows, key=lambda r: -r[1] * r[2])[:top]:
        print(f"  {name[:64]:64s} {elements:>12,d} elements {per:6.1f} per element "
              f"{elements * per / LANE_INSTRUCTIONS_PER_S * 1e6:8.1f} us")
    return total


def add_shape_options(parser: argparse.ArgumentParser, **defaults: int) -> None:
    """--px, --tasks, --ways, --shots, --queries and --steps (inner steps) of the Conv4 meta-step, with ``defaults``."""
    for name in ("px", "tasks", "ways", "shots", "queries", "steps"):
        parser.add_argument(f"--{name}", type=int, default=defaults[name], help="inner steps" if name == "steps" else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", help="a tools/bench_maml.py row with +compile (Conv4 first order)")
    parser.add_argument("--out", type=Path, help="folder for the wrapper modules (one per graph)")
    parser.add_argument("--pool-kernels", action="store_true",
                        help="instead: count dropgrad.poolkernels' kernels at Conv4's four pooling sizes (84 px)")
    add_shape_options(parser, px=84, tasks=4, ways=5, shots=5, queries=16, steps=5)
    parser.add_argument("--top", type=int, default=8, help="kernels listed per graph")
    args = parser.parse_args(argv)
    if args.pool_kernels:
        pool_kernel_counts([(64, 84, 84), (64, 42, 42), (64, 21, 21), (64, 10, 10)])
        return 0
    if args.impl is None or args.out is None:
        parser.error("--impl and --out are required (or --pool-kernels)")
    if args.impl not in bench_maml.IMPLS:
        parser.error(f"--impl: unknown row {args.impl!r}; the rows are IMPLS in tools/bench_maml.py")
    records = record_graphs(args.impl, args.px, args.tasks, args.ways, args.shots, args.queries, args.steps)
    pretend_sm90()
    impl = bench_maml.IMPLS[args.impl]
    options = dict((impl.compile_forward() or {}).get("options", {})) if isinstance(impl.compile_forward(), dict) else {}
    args.out.mkdir(parents=True, exist_ok=True)
    # inductor's warnings about the missing GPU would bury the table; OFFLINE_KERNELS_VERBOSE=1 keeps them
    with open(os.devnull, "w") as sink, (contextlib.nullcontext() if os.environ.get("OFFLINE_KERNELS_VERBOSE")
                                         else contextlib.redirect_stderr(sink)):
        lowered = lower_for_gpu(records, options)
    print(f"{args.impl}: {len(lowered)} graphs, torch {torch.__version__}, sm_90 (offline)")
    for i, (kind, wrapper) in enumerate(lowered):
        (args.out / f"graph{i}_{kind}.py").write_text(wrapper)
        report(f"{i} {kind}", wrapper, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
