"""dropgrad.poolkernels: max pooling as two Triton kernels, held to ATen's F.max_pool2d.

The kernels run on a CPU under Triton's interpreter (TRITON_INTERPRET=1, in a subprocess: the
variable is read when the kernels are made), on a GPU natively (gpu test); the op's ATen path
(tensors off a CUDA device) is checked in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dropgrad import poolkernels

# Ties (values rounded to tenths), a NaN, a constant corner window; odd sides (the last row or
# column is in no window), a one-channel input (channels-last and NCHW are then the same
# memory), windows that are not square.
SHAPES = [(2, 3, 8, 8), (2, 3, 9, 7), (3, 5, 21, 21), (2, 1, 5, 5), (2, 64, 10, 10)]
WINDOWS = [(2, 2), (3, 2)]


def cases(device: str = "cpu"):
    torch.manual_seed(0)
    for shape in SHAPES:
        for window in WINDOWS:
            for dtype in (torch.float64, torch.bfloat16):
                x = torch.randn(*shape, dtype=dtype, device=device).round(decimals=1)
                x[0, 0, 0, 0] = float("nan")
                x[-1, -1, -2:, -2:] = 0.5
                for channels_last in (False, True):
                    yield (x.to(memory_format=torch.channels_last) if channels_last else x), window


def compare(x: torch.Tensor, window: tuple[int, int]) -> list[str]:
    """What differs between ATen's pooling and ``window_max_pool`` on ``x`` (values, input
    gradients, the output's memory format); empty if nothing."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = F.max_pool2d(a, window), poolkernels.window_max_pool(b, *window)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format
    problems = []
    if not torch.equal(want.nan_to_num(7.0), got.nan_to_num(7.0)):
        problems.append("values")
    if not torch.equal(a.grad, b.grad):
        problems.append("gradients")
    if not got.is_contiguous(memory_format=fmt):
        problems.append("memory format")
    return problems


def test_the_ops_aten_path_equals_aten_pooling():
    failed = [(tuple(x.shape), x.dtype, w, p) for x, w in cases() for p in [compare(x, w)] if p]
    assert not failed


def test_positions_name_the_element_aten_chose():
    x = torch.tensor([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, float("nan"), float("nan")]]]])
    out, which = torch.ops.dropgrad.window_max_pool(x, 2, 2)
    # the first maximum in row-major order; of two NaNs, the last
    assert which.flatten().tolist() == [1, 3]
    assert out[0, 0, 0, 0] == 3.0 and out[0, 0, 0, 1].isnan()


def test_compiled_with_inductor_equals_aten():
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()

    def f(pool, x):
        return (pool(torch.relu(conv(x))) ** 2).sum()

    want = torch.autograd.grad(f(lambda t: F.max_pool2d(t, 2), x.requires_grad_()), x)[0]
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda t: f(lambda u: poolkernels.window_max_pool(u, 2, 2), t))
        got = torch.autograd.grad(compiled(x), x)[0]
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="expected a 4-d"):
        poolkernels.window_max_pool(torch.zeros(3, 4, 4), 2, 2)
    with pytest.raises(ValueError, match="a 5x2 window does not fit a 4x4 input"):
        poolkernels.window_max_pool(torch.zeros(1, 1, 4, 4), 5, 2)


_INTERPRETED = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
import test_poolkernels as t
from dropgrad import poolkernels
assert poolkernels._use_kernels(torch.zeros(1, 1, 2, 2)), "the interpreter path is not taken"
failed = [(tuple(x.shape), x.dtype, w, p) for x, w in t.cases() for p in [t.compare(x, w)] if p]
print("FAILED", failed) if failed else print("ALL EQUAL")
"""


@pytest.mark.skipif(not poolkernels.has_triton(), reason="needs Triton (the kernels are Triton's)")
@pytest.mark.torch_at_least(2, 14, "older torch.library.wrap_triton refuses kernels under Triton's interpreter")
def test_the_kernels_under_tritons_interpreter_equal_aten_pooling():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _INTERPRETED, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "ALL EQUAL", run.stdout[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_kernels_on_a_gpu_equal_aten_pooling():
    assert poolkernels._use_kernels(torch.zeros(1, 1, 2, 2, device="cuda"))
    failed = [(tuple(x.shape), x.dtype, w, p) for x, w in cases("cuda") for p in [compare(x, w)] if p]
    assert not failed
