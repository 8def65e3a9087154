"""dropgrad.compiling.inductor_backend: inductor with max-pooling's backward lowered pointwise.

Checked against eager PyTorch: pooled values and input gradients equal bit for bit for
non-overlapping windows (ties included), to rounding for overlapping ones. The generated code
must not scatter, which stock inductor does where torch's table has the scatter-based
decomposition (the reason for the backend).
"""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dropgrad.compiling import inductor_backend
from torch._inductor.decomposition import select_decomp_table

from .conftest import lowered_graphs

NON_OVERLAPPING = {"kernel_size": 2}
OVERLAPPING = {"kernel_size": 3, "stride": 2, "padding": 1}  # ResNet's stem pool


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pooled_and_grad(backend, x, g, pool):
    """Max-pool forward and input gradient; compiled with ``backend`` unless it is None."""
    fn = lambda t: F.max_pool2d(t, **pool)
    if backend is not None:
        fn = torch.compile(fn, backend=backend, dynamic=False)
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, g)
    return out.detach(), grad


def inputs(dtype, channels_last, ties, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 5, 21, 21)  # odd side: the last row and column belong to no window
    x = torch.randint(0, 3, shape, generator=gen).to(dtype) if ties else torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_non_overlapping_pooling_equals_eager_bit_for_bit(dtype, channels_last, ties):
    x = inputs(dtype, channels_last, ties)
    g = torch.randn(2, 5, 10, 10, generator=torch.Generator().manual_seed(1)).to(dtype)
    want_out, want_grad = pooled_and_grad(None, x, g, NON_OVERLAPPING)
    got_out, got_grad = pooled_and_grad(inductor_backend(), x, g, NON_OVERLAPPING)
    assert torch.equal(got_out, want_out)
    assert torch.equal(got_grad, want_grad)
    if ties:  # each gradient goes to one element of its window: the one eager chose
        assert (want_grad != 0).sum() == (g != 0).sum()


def test_overlapping_pooling_equals_eager():
    x = inputs(torch.float32, True, ties=False)
    g = torch.randn(2, 5, 11, 11, generator=torch.Generator().manual_seed(1))
    want_out, want_grad = pooled_and_grad(None, x, g, OVERLAPPING)
    got_out, got_grad = pooled_and_grad(inductor_backend(), x, g, OVERLAPPING)
    assert torch.equal(got_out, want_out)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def lowered(backend):
    """The post-grad graphs inductor lowers for the pooling and its gradient, compiled now."""
    x = inputs(torch.float32, True, ties=False)
    with lowered_graphs() as graphs:
        pooled_and_grad(backend, x, torch.ones(2, 5, 10, 10), NON_OVERLAPPING)
    torch._dynamo.reset()
    assert len(graphs) == 2, graphs  # forward and backward
    return "\n".join(graphs)


def test_the_backward_is_not_a_scatter_whichever_compiled_first():
    # Stock inductor after the backend (the module's earlier tests), the backend, stock again:
    # each gets its own table, whichever compiled first in the process (it caches a copy).
    scatters = torch.ops.aten.max_pool2d_with_indices_backward.default in select_decomp_table()
    assert ("scatter_add" in lowered("inductor")) == scatters  # what the backend avoids, where torch has it
    ours = lowered(inductor_backend())
    assert "scatter" not in ours and "max_pool2d_with_indices_backward" in ours
    assert ("scatter_add" in lowered("inductor")) == scatters


def test_mode_and_options_reach_inductor(monkeypatch):
    from torch._inductor import compile_fx

    seen = {}

    op = torch.ops.aten.max_pool2d_with_indices_backward.default
    stock = op in select_decomp_table()

    def spy(graph, example_inputs, config_patches=None, **kwargs):
        seen.update(config_patches or {})
        seen["decomposes max-pool backward"] = op in select_decomp_table()
        return graph.forward  # run the captured graph as is

    monkeypatch.setattr(compile_fx, "compile_fx", spy)
    backend = inductor_backend("max-autotune-no-cudagraphs", {"combo_kernels": True})
    f = torch.compile(lambda t: F.max_pool2d(t, 2) + 1, backend=backend, dynamic=False)
    assert torch.equal(f(torch.ones(1, 1, 4, 4)), torch.full((1, 1, 2, 2), 2.0))
    assert seen["max_autotune"] and seen["combo_kernels"] and not seen["decomposes max-pool backward"]
    assert seen["post_grad_custom_post_pass"].uuid().startswith("dropgrad.compiling")  # the caches' key
    assert (op in select_decomp_table()) == stock, "the table is restored after compiling"


# ------------------------------------------------------------------ torch versions
def test_compiled_steps_warn_on_a_torch_older_than_the_tested_one(monkeypatch):
    from dropgrad import MAML
    from dropgrad.compiling import COMPILE_TESTED_FROM, torch_release, warn_if_compile_untested

    assert torch_release("2.11.0+cu130") == (2, 11) and torch_release("2.6.0") == (2, 6)
    assert torch_release("2.14.0a0+git1234") == (2, 14)
    with pytest.warns(RuntimeWarning, match=r"torch 2\.13\.1: .* tested from torch 2\.14"):
        assert warn_if_compile_untested("2.13.1")
    newest = f"{COMPILE_TESTED_FROM[0]}.{COMPILE_TESTED_FROM[1]}.0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_compile_untested(newest)
        assert not warn_if_compile_untested("3.0.0")
        MAML(torch.nn.Linear(2, 2), inner_lr=0.1, steps=1)  # not compiled: nothing to say
    # A learner asked to compile says it, and still compiles.
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    with pytest.warns(RuntimeWarning, match="compile_forward, fewshot-train --compile"):
        learner = MAML(torch.nn.Linear(2, 2), inner_lr=0.1, steps=1, compile_forward="aot_eager")
    assert learner.compiled


def test_tests_marked_torch_at_least_skip_on_an_older_torch_and_say_why(tmp_path):
    # tests/conftest.py loaded as a plugin into a separate pytest run of two marked tests.
    (tmp_path / "test_marked.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.torch_at_least(99, 0, "a torch from the future")
        def test_future():
            assert False

        @pytest.mark.torch_at_least(1, 0, "any torch")
        def test_past():
            pass
    '''))
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs", "-W",
         "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path / "test_marked.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed, 1 skipped" in done.stdout, done.stdout[-3000:]
    assert f"needs torch >= 99.0 (torch {torch.__version__} here): a torch from the future" in done.stdout, done.stdout
