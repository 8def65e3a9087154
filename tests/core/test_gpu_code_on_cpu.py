"""tools/gpu_code_on_cpu.py: inductor's sm_90 code run on the CPU, Triton kernels in the interpreter.

Each check runs in a subprocess: the tool patches torch, inductor and Triton for its whole process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dropgrad import poolkernels

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not poolkernels.has_triton(), reason="needs Triton (its interpreter and compiler)")


def run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python argv...`` in a subprocess, with tools/ and the core's src/ importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "tools"), str(ROOT / "packages" / "core" / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def run_python(code: str) -> subprocess.CompletedProcess:
    return run("-c", textwrap.dedent(code))


@pytest.mark.torch_at_least(2, 11, "the tool sets torch._functorch.config.decompose_custom_triton_ops, which torch 2.6 lacks")
def test_the_gpu_code_of_a_compiled_step_runs_on_the_cpu_and_equals_eager():
    done = run_python("""
        import torch, torch.nn.functional as F
        import gpu_code_on_cpu as tool
        emulation = tool.Emulation(all_configs="combo", max_programs=2000)
        emulation.install()

        def f(x, w):  # pooling and a cast: inductor joins their kernels with combo kernels on
            return F.max_pool2d(torch.relu(x), 2).sum() + (w.float() * 2).sum()

        torch.manual_seed(0)
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
        w = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        torch.compile(f, options={"combo_kernels": True})(x, w).backward()
        got = (x.grad.clone(), w.grad.clone())
        x.grad = w.grad = None
        f(x, w).backward()
        print("equal", torch.equal(got[0], x.grad) and torch.equal(got[1], w.grad))
        print("graphs", emulation.graphs, "launches", len(emulation.launches), "problems", len(emulation.problems))
        print("combo runs", max(runs for name, runs, _ in emulation.launches))
        torch.compile(lambda v, i: v[i] * 2)(torch.arange(9.0), torch.tensor([0, 5, 9]))  # 9 is out of range
        print("after", emulation.problems)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # The wrapper and kernels are the GPU's (inductor's sm_90 code), yet float64 gradients equal eager's bit for bit.
    assert "equal True" in out, out
    assert "problems 0" in out and "graphs 0" not in out and "launches 0" not in out, out
    assert "combo runs 1\n" not in out, out  # the combo kernel ran at several block sizes
    # An index out of range is the GPU's device-side assert, reported here.
    assert "index out of bounds: 0 <= tmp" in out.split("after", 1)[1], out


@pytest.mark.torch_at_least(2, 11, "the tool sets torch._functorch.config.decompose_custom_triton_ops, which torch 2.6 lacks")
def test_a_compiled_step_with_our_triton_pooling_op_runs_and_equals_eager():
    # The +tpool rows: the op's kernels are defined under the interpreter, which torch.library.wrap_triton
    # refuses unless the tool lets it trace them.
    done = run_python("""
        import gpu_code_on_cpu as tool  # first: Triton's functions defined from here on run in its interpreter
        import torch, torch.nn.functional as F
        emulation = tool.Emulation()
        emulation.install()
        from dropgrad import poolkernels

        def f(x):
            return (poolkernels.window_max_pool(torch.relu(x), 2, 2) * 3).sum()

        torch.manual_seed(0)
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
        torch.compile(f)(x).backward()
        got = x.grad.clone()
        x.grad = None
        (F.max_pool2d(torch.relu(x), 2) * 3).sum().backward()
        print("equal", torch.equal(got, x.grad), "graphs", emulation.graphs, "problems", len(emulation.problems))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "equal True" in done.stdout and "problems 0" in done.stdout and "graphs 0" not in done.stdout, done.stdout


def test_a_kernel_that_misses_its_last_block_or_writes_past_a_buffer_is_reported():
    done = run_python("""
        import torch, triton, triton.language as tl
        from triton import Config
        import gpu_code_on_cpu as tool

        @triton.jit
        def double(in_ptr0, out_ptr0, xnumel, XBLOCK: tl.constexpr):
            index = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
            mask = index < xnumel
            tl.store(out_ptr0 + index, tl.load(in_ptr0 + index, mask) * 2, mask)

        class Kernel:  # what the tool needs of inductor's CachingAutotuner
            fn = double
            configs = [Config({"XBLOCK": 8})]
            triton_meta = {"signature": {"in_ptr0": "*fp32", "out_ptr0": "*fp32", "xnumel": "i32"}}
            inductor_meta = {"kernel_name": "double", "grid_type": "Grid1D"}

            def __init__(self, grid):
                self.grid = grid

            def _interpret_args_grid(self, args, config):
                return args, (self.grid(args[2], config.kwargs["XBLOCK"]), 1, 1)

        emulation = tool.Emulation(all_configs="all")
        x = torch.arange(20.0)
        for label, grid in [("cdiv", lambda n, b: -(-n // b)), ("floor", lambda n, b: n // b)]:
            out = emulation._empty((20,), (1,), torch.float32)
            emulation._run(Kernel(grid), (x, out, 20), {})
            print(label, len(emulation.problems), torch.equal(out, x * 2))
        # a store past the end of a buffer the wrapper allocated
        out = emulation._empty((20,), (1,), torch.float32)
        over = torch.empty(0).set_(out.untyped_storage(), out.storage_offset(), (21,))
        double[(1,)](torch.arange(21.0), over, 21, XBLOCK=32)
        emulation._check_guards("double")
        print("problems", emulation.problems)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "cdiv 0 True" in lines, done.stdout
    # floor(20 / b) blocks leave the tail unwritten wherever b does not divide 20
    floor = next(line for line in lines if line.startswith("floor"))
    assert int(floor.split()[1]) > 0, done.stdout
    problems = done.stdout.split("problems", 1)[1]
    assert "differs from" in problems and "unwritten" in problems, done.stdout
    assert "wrote outside a buffer of 80 bytes (0 bytes before it, 4 after)" in problems, done.stdout


def test_a_kernel_whose_programs_race_is_reported_and_the_step_keeps_the_in_order_result():
    # --order-check: on a GPU a kernel's programs run at once, in no set order; the interpreter runs
    # them one by one. A result that changes when they run last to first is a race on the GPU.
    done = run_python("""
        import torch, triton, triton.language as tl
        from triton import Config
        import gpu_code_on_cpu as tool

        @triton.jit
        def shift(in_out_ptr0, xnumel, XBLOCK: tl.constexpr):  # each program reads the next one's block
            index = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
            ahead = tl.load(in_out_ptr0 + index + XBLOCK, index + XBLOCK < xnumel, other=0.0)
            tl.store(in_out_ptr0 + index, ahead + 1, index < xnumel)

        @triton.jit
        def bump(in_out_ptr0, xnumel, XBLOCK: tl.constexpr):  # each program its own block only
            index = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
            tl.store(in_out_ptr0 + index, tl.load(in_out_ptr0 + index, index < xnumel) + 1, index < xnumel)

        class Kernel:  # what the tool needs of inductor's CachingAutotuner
            configs = [Config({"XBLOCK": 4})]
            triton_meta = {"signature": {"in_out_ptr0": "*fp32", "xnumel": "i32", "XBLOCK": "constexpr"}}

            def __init__(self, fn, grid_type):
                self.fn = fn
                self.inductor_meta = {"kernel_name": fn.__name__, "grid_type": grid_type}

            def _interpret_args_grid(self, args, config):
                return args, (-(-args[1] // config.kwargs["XBLOCK"]), 1, 1)

        for fn, grid_type, check in [(shift, "Grid1D", "all"), (bump, "Grid1D", "all"),
                                     (shift, "Grid1D", "combo"), (shift, "RoundRobinComboKernelGrid", "combo")]:
            emulation = tool.Emulation(order_check=check)
            x = torch.arange(16.0)
            emulation._run(Kernel(fn, grid_type), (x, 16), {})
            in_order = torch.cat([torch.arange(4.0, 16.0) + 1, torch.ones(4)]) if fn is shift else torch.arange(16.0) + 1
            print(fn.__name__, grid_type, check, "runs", emulation.launches[0][1], "in order", torch.equal(x, in_order),
                  "problems", len(emulation.problems), *emulation.problems)
        # the mirrored program ids are undone afterwards: the next plain launch runs in order again
        x = torch.arange(16.0)
        shift[(4,)](x, 16, XBLOCK=4)
        print("after", torch.equal(x, torch.cat([torch.arange(4.0, 16.0) + 1, torch.ones(4)])))
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if not line.startswith("PROBLEM")]
    race = ("bytes of in_out_ptr0 differ when its programs run in reverse order with {'XBLOCK': 4}: "
            "a race between programs on the GPU")
    # Reverse order, program 3 writes its block first, and program 2 then reads the new values: the
    # blocks of programs 0-2 differ (20 of their 48 bytes; the others happen to match).
    assert lines[0] == f"shift Grid1D all runs 2 in order True problems 1 shift: 20 {race}", done.stdout
    assert lines[1] == "bump Grid1D all runs 2 in order True problems 0", done.stdout
    # --order-check combo runs only inductor's combo kernels twice.
    assert lines[2] == "shift Grid1D combo runs 1 in order True problems 0", done.stdout
    assert lines[3] == f"shift RoundRobinComboKernelGrid combo runs 2 in order True problems 1 shift: 20 {race}", done.stdout
    assert lines[4] == "after True", done.stdout
    refused = run("tools/gpu_code_on_cpu.py", "--impl", "fold+bf16+cl+compile+combo+unfold+graph", "--order-check",
                  "combo", "--all-configs", "combo")
    assert refused.returncode == 2 and "only without --all-configs" in refused.stderr, refused.stderr


@pytest.mark.torch_at_least(2, 14, "older torch.library.wrap_triton refuses kernels under Triton's interpreter")
def test_our_pooling_kernels_with_their_programs_in_reverse_order_still_equal_aten():
    # The +tpool rows' kernels run outside inductor's launcher, so --order-check does not reach them:
    # here they run last program first over tests/core/test_poolkernels.py's cases.
    done = run_python(f"""
        import sys
        import gpu_code_on_cpu as tool  # first: Triton's functions defined from here on run in its interpreter
        sys.path.insert(0, {str(ROOT / "tests" / "core")!r})
        import test_poolkernels as t
        from dropgrad import poolkernels
        import torch
        assert poolkernels._use_kernels(torch.zeros(1, 1, 2, 2)), "the interpreter path is not taken"
        with tool._programs_reversed():
            failed = [(tuple(x.shape), x.dtype, w, p) for x, w in t.cases() for p in [t.compare(x, w)] if p]
        print("cases", len(list(t.cases())), "failed", failed)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "cases 40 failed []", done.stdout[-3000:]


@pytest.mark.torch_at_least(2, 11, "the tool reads reduction block sizes as R0_BLOCK, which "
                              "torch 2.6's inductor calls RBLOCK")
def test_larger_blocks_for_the_interpreter_stay_within_inductors_and_give_torchs_values(tmp_path):
    # --programs: the sizes a kernel runs at on the CPU. The kernels are written to a file, as inductor's
    # are, so that the tool can read their source.
    script = tmp_path / "kernels.py"
    script.write_text(textwrap.dedent("""
        import gpu_code_on_cpu as tool  # first: Triton's functions defined from here on run in its interpreter
        import torch, triton, triton.language as tl
        from triton import Config
        from torch._inductor.runtime import triton_helpers
        from torch._inductor.runtime.hints import HeuristicType

        @triton.jit
        def row_sums(in_ptr0, out_ptr0, xnumel, r0_numel, XBLOCK: tl.constexpr, R0_BLOCK: tl.constexpr):
            x = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)[:, None]
            acc = tl.zeros([XBLOCK, R0_BLOCK], tl.float32)
            for r0_offset in tl.range(0, r0_numel, R0_BLOCK):
                r = r0_offset + tl.arange(0, R0_BLOCK)[None, :]
                acc += tl.load(in_ptr0 + x * r0_numel + r, (x < xnumel) & (r < r0_numel), other=0.0)
            tl.store(out_ptr0 + x, tl.sum(acc, 1)[:, None], x < xnumel)

        @triton.jit
        def row_maxes(in_ptr0, out_ptr0, xnumel, r0_numel, XBLOCK: tl.constexpr, R0_BLOCK: tl.constexpr):
            x = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)[:, None]
            acc = tl.full([XBLOCK, R0_BLOCK], float("-inf"), tl.float32)
            for r0_offset in tl.range(0, r0_numel, R0_BLOCK):
                r = r0_offset + tl.arange(0, R0_BLOCK)[None, :]
                v = tl.load(in_ptr0 + x * r0_numel + r, (x < xnumel) & (r < r0_numel), other=float("-inf"))
                acc = tl.maximum(acc, v)
            # inductor's max2 reduces with a combining function of its own, which the interpreter
            # applies element by element in Python
            tl.store(out_ptr0 + x, triton_helpers.max2(acc, 1)[:, None], x < xnumel)

        class Kernel:  # what the tool needs of inductor's CachingAutotuner
            triton_meta = {"signature": {"in_ptr0": "*fp32", "out_ptr0": "*fp32", "xnumel": "i32",
                                         "r0_numel": "i32", "XBLOCK": "constexpr", "R0_BLOCK": "constexpr"}}

            def __init__(self, fn, heuristic, combo=False):
                self.fn, self.heuristic_type = fn, heuristic
                self.inductor_meta = {"grid_type": "SequentialComboKernelGrid" if combo else "Grid1D"}

            def _interpret_args_grid(self, args, config):
                return args, (-(-args[2] // config.kwargs["XBLOCK"]), 1, 1)

        torch.manual_seed(0)
        x = torch.randn(5000, 300)
        start = Config({"XBLOCK": 8, "R0_BLOCK": 16})
        for fn, reference in [(row_sums, x.sum(1)), (row_maxes, x.amax(1))]:
            for heuristic, combo in [(HeuristicType.REDUCTION, False), (HeuristicType.PERSISTENT_REDUCTION, False),
                                     (HeuristicType.REDUCTION, True)]:
                kernel = Kernel(fn, heuristic, combo)
                args = (x, torch.empty(5000), 5000, 300)
                config = tool._fewer_programs(kernel, start, args, 1)
                fn[kernel._interpret_args_grid(args, config)[1]](*args, **config.kwargs)
                close = torch.allclose(args[1], reference, rtol=1e-5, atol=1e-4)
                print(fn.__name__, heuristic.name, "combo" if combo else "plain", config.kwargs, close)
    """))
    done = run(str(script))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Every result matches torch's (to float32's rounding of the sums). A looped sum grows its reduction block too, up to a tile of 2**15
    # elements; a looped max with its own combining function gets R0_BLOCK 1. X never passes
    # inductor's largest block (4096): where every block up to it divides a size, inductor leaves the
    # masks out, and a larger block would write past the buffer.
    assert all(line.endswith(" True") for line in lines) and len(lines) == 6, done.stdout
    assert "row_sums REDUCTION plain {'XBLOCK': 1024, 'R0_BLOCK': 32} True" in lines, done.stdout
    assert "row_maxes REDUCTION plain {'XBLOCK': 4096, 'R0_BLOCK': 1} True" in lines, done.stdout
    # A persistent reduction's R block is its whole reduction, and a combo kernel may hold one: both kept.
    for name in ("row_sums", "row_maxes"):
        assert f"{name} PERSISTENT_REDUCTION plain {{'XBLOCK': 2048, 'R0_BLOCK': 16}} True" in lines, done.stdout
        assert f"{name} REDUCTION combo {{'XBLOCK': 2048, 'R0_BLOCK': 16}} True" in lines, done.stdout
    refused = run("tools/gpu_code_on_cpu.py", "--impl", "fold+bf16+cl+compile+combo+unfold+graph", "--programs", "8",
                  "--all-configs", "combo")
    assert refused.returncode == 2 and "only without --all-configs" in refused.stderr, refused.stderr


def test_a_row_that_compiles_nothing_is_refused_by_name():
    done = run("tools/gpu_code_on_cpu.py", "--impl", "fold+bf16+cl+graph")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--impl 'fold+bf16+cl+graph': not a tools/bench_maml.py row with +compile" in done.stderr, done.stderr


@pytest.mark.slow
def test_the_grouped_combo_rows_gpu_code_passes_the_float64_check_on_the_cpu():
    # The row that crashed on an H200 (docs/performance.md): its sm_90 code, run here, equals the per-task loop.
    done = run("tools/gpu_code_on_cpu.py", "--impl", "fold+bf16+cl+compile+combo+unfold+grouped+graph", "--check",
               timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    difference = float(done.stdout.split("against the per-task loop ", 1)[1].split()[0])
    assert difference < 1e-9, done.stdout
    assert "\n0 problems" in done.stdout and "\n0 graphs lowered" not in done.stdout, done.stdout
