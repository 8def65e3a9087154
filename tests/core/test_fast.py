"""dropgrad.fast's decomposed norms against torch's own kernels, case by case (float64 references).

The meta-step comparisons through these decompositions are in tests/core/test_batched_equivalence.py;
here: eval-mode BatchNorm with running statistics, LayerNorm over several trailing dimensions,
the float32 mean of half-precision activations, and the output dtype of each decomposition.
"""

import pytest
import torch
import torch.nn.functional as F
from dropgrad import fast
from torch import nn


def test_eval_batch_norm_uses_the_running_mean_and_variance_each_in_its_place():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    mean = torch.randn(4, generator=g, dtype=torch.float64)
    var = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    w, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    got = fast.batch_norm(x, mean, var, w, b, training=False, eps=1e-3)
    # By hand: (x - running_mean) / sqrt(running_var + eps) * w + b, per channel.
    want = (x - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + 1e-3).sqrt() * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, F.batch_norm(x, mean, var, w, b, training=False, eps=1e-3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6,), (3, 6), (2, 3, 6)])
def test_layer_norm_normalises_over_every_trailing_dimension_given(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, *(5, 2, 3, 6)[4 - len(shape):], generator=g, dtype=torch.float64) * 3 + 1
    w, b = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fast.layer_norm(x, shape, w, b), F.layer_norm(x, shape, w, b), rtol=1e-12, atol=1e-12)


def test_half_precision_batch_statistics_keep_a_float32_mean():
    # bf16 activations whose mean is 30x their deviation: a mean rounded to bf16 is off by up to
    # 2**-9 of 30 (~0.06 of a deviation); accumulated in float32 it is within 1e-5.
    torch.manual_seed(0)
    x = (torch.randn(24, 8, 9, 9) + 30).bfloat16()
    var, mean = fast.batch_stats(x, [0, 2, 3], fused=False)
    assert mean.dtype == var.dtype == torch.float32
    ref_var, ref_mean = torch.var_mean(x.double(), dim=[0, 2, 3], correction=0)
    assert float((mean.double() - ref_mean).abs().max()) < 1e-5
    torch.testing.assert_close(var.double(), ref_var, rtol=2**-7, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_decomposed_norms_return_the_input_dtype_as_torchs_do(dtype):
    # Outside autocast torch's norms return the input's dtype; a float32 LayerNorm output fed
    # the next half-precision layer a mismatched input (RuntimeError in a .bfloat16() model).
    x = torch.randn(4, 6).to(dtype)
    assert fast.layer_norm(x, (6,)).dtype == F.layer_norm(x, (6,)).dtype == dtype
    assert fast.batch_norm(x, None, None, training=True).dtype == dtype
    net = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 2)).to(dtype)
    with fast.decomposed_norms():
        out = net(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), net(x).float(), rtol=2e-2, atol=2e-2)
