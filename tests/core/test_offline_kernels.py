"""tools/offline_kernels.py: inductor's GPU code and SASS counts made without a GPU.

Each check runs the tool in a subprocess: it patches torch's CUDA queries for the rest of its process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dropgrad import poolkernels

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "offline_kernels.py"

pytestmark = pytest.mark.skipif(not poolkernels.has_triton(), reason="needs Triton (its compiler and nvdisasm)")


def run_tool(*args: str, timeout: int = 600) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "packages" / "core" / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.torch_at_least(2, 11, "the tool passes Triton's ASTSource a constexprs keyword, which the Triton of torch 2.6 lacks")
def test_the_triton_pooling_backward_takes_a_third_of_inductors_instructions():
    # Inductor's own pooling backward for the Conv4 step took 72-133 SASS instructions per element
    # on torch 2.11 (docs/performance.md); the hand-written kernel's index arithmetic is the lever.
    out = run_tool("--pool-kernels")
    backward = [float(v) for v in re.findall(r"backward ([\d.]+) SASS per input element", out)]
    forward = [float(v) for v in re.findall(r"forward ([\d.]+) per output element", out)]
    assert len(backward) == len(forward) == 4, out
    assert all(0 < b <= 36 for b in backward), out
    assert all(0 < f <= 64 for f in forward), out


@pytest.mark.slow
def test_a_rows_graphs_come_out_as_gpu_code(tmp_path):
    out = run_tool("--impl", "fold+bf16+cl+compile+combo+unfold+grouped+graph", "--out", str(tmp_path), "--px", "28",
                   "--tasks", "2", "--queries", "3", "--steps", "1", "--top", "2")
    assert "sm_90 (offline)" in out, out
    # support and query steps: a forward and a backward graph each (torch 2.11 splits each in two)
    backward = [w.read_text() for w in sorted(tmp_path.glob("graph*_backward.py"))]
    assert len(backward) >= 2 and len(list(tmp_path.glob("graph*_forward.py"))) == len(backward), out
    # GPU code: Triton kernels, cuDNN's convolution backward, and inductor's combo kernels (the setting of the row)
    assert any("@triton.jit" in b and "convolution_backward" in b and "SequentialComboKernelGrid" in b for b in backward)
    assert re.search(r"\d+\.\d per element", out)
