"""The inductor backend that ``MAML(compile_forward=...)`` compiles with.

It is torch's inductor with one change: max-pooling's backward runs as inductor's own pointwise
lowering, not as torch's newer ``scatter_add`` decomposition of
``aten.max_pool2d_with_indices_backward`` (pytorch/pytorch#167318, in torch 2.14's table of
inductor decompositions).

Why: for the 2x2, stride-2 pooling of Conv4 that decomposition writes a zeroed float32 buffer the
size of the pool's input, converts the forward's saved offsets to int64 indices, copies them out
of channels_last, scatters (with atomic adds on a GPU) and converts back (pytorch/pytorch#195123).
The lowering reads the saved indices and the output gradient once and writes the input gradient
once. On 2 CPU cores this made Conv4 meta-steps 1.2-1.6x faster (docs/performance.md).

Same numbers: both route each window's gradient to the input element the forward chose
(its saved index). With non-overlapping windows that is one contribution per element, so the
results are equal bit for bit. With overlapping windows (ResNet's 3x3, stride-2 stem pool) the
order of summing up to four contributions may differ by rounding.

Caches: torch's compile caches key a graph before its decompositions, so a graph compiled by
stock inductor would be found again here (and the reverse). The backend therefore sets a
post-grad pass that does nothing but name this variant (``_Variant``), and the pass's uuid
enters the caches' keys. A ``post_grad_custom_post_pass`` in the options takes its place.

Versions: compiled steps are tested from torch 2.14 (``COMPILE_TESTED_FROM``); the rest of dropgrad
from torch 2.6. :func:`warn_if_compile_untested` says so when a compiled step is asked for on an
older torch (README, "Supported versions", has what the tests showed there).

Scope: only the functions ``MAML`` compiles get this backend. torch's decomposition table is
changed only while one of them compiles, and restored right after, so other ``torch.compile``
calls are unaffected (unless another thread compiles at that very time).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = ["COMPILE_TESTED_FROM", "inductor_backend", "torch_release", "warn_if_compile_untested"]

# The oldest torch release on which every test of the compiled steps passes.
COMPILE_TESTED_FROM: tuple[int, int] = (2, 14)


def torch_release(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of a torch version string, by default the installed torch's.

    >>> torch_release("2.11.0+cu130")
    (2, 11)
    """
    major, minor = (version or torch.__version__).split("+")[0].split(".")[:2]
    return int(major), int(minor)


def warn_if_compile_untested(version: str | None = None) -> bool:
    """Warn (``RuntimeWarning``) when torch is older than ``COMPILE_TESTED_FROM``; whether it is.

    Why a warning and not an error: on torch 2.6 and 2.11 most compiled steps pass the tests that
    compare them with eager steps, and the failures seen are errors or extra graphs, not silently
    wrong numbers beyond float32 rounding; users held to such a torch can still try them.
    """
    version = version or torch.__version__
    if torch_release(version) >= COMPILE_TESTED_FROM:
        return False
    warnings.warn(
        f"torch {version}: dropgrad's compiled steps (compile_forward, fewshot-train --compile) are tested from torch "
        f"{COMPILE_TESTED_FROM[0]}.{COMPILE_TESTED_FROM[1]}. On torch 2.6 and 2.11 the tests saw folded second-order "
        "compiled steps split at a graph break (slower), inductor fail to build some steps (combo kernels on 2.6, indexed "
        "pooling on 2.11's CPU code), and compiled first-order training off eager by 5e-5 (relative, float32); "
        "see the README's 'Supported versions'",
        RuntimeWarning, stacklevel=3,
    )
    return True


@contextlib.contextmanager
def _pool_backward_lowered() -> Iterator[None]:
    """While compiling: inductor's table without the scatter-based max-pool backward.

    The table is edited in place for the length of one compile, not passed to ``compile_fx``
    as ``decompositions=``: a table passed in cannot be pickled into the caches' keys, so every
    run would compile from scratch. Two tables: the one ``select_decomp_table()`` builds on and
    the copy of it that it caches (``fast_random_decomps()``), made at the first compile of the
    process. Editing only the first left the op in the copy when stock inductor had compiled
    first, and took it out of stock inductor's for good when this backend had.
    """
    from torch._inductor import decomposition

    op = torch.ops.aten.max_pool2d_with_indices_backward.default
    tables = [decomposition.decompositions]
    cached = getattr(decomposition, "fast_random_decomps", None)
    if cached is not None:
        tables.append(cached())  # made now, if this is the first compile, with the op in it
    removed = [(table, table.pop(op)) for table in tables if op in table]
    try:
        yield
    finally:
        for table, decomposition_fn in removed:
            table[op] = decomposition_fn


def _variant_pass() -> Any:
    """A post-grad pass that changes nothing; its uuid keeps this backend's cache entries apart."""
    try:
        from torch._inductor.custom_graph_pass import CustomGraphPass
    except ImportError:  # torch without custom graph passes: nothing to key them by either
        return None

    class _Variant(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return "dropgrad.compiling: max-pool backward lowered pointwise, v1"

    return _Variant()


def inductor_backend(mode: str | None = None, options: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """A ``torch.compile`` backend: inductor with ``mode`` and ``options``, as
    ``torch.compile(backend="inductor", mode=mode, options=options)`` gives it, and with
    max-pooling's backward lowered pointwise (see the module's docstring).

    >>> backend = inductor_backend()
    >>> f = torch.compile(lambda x: torch.nn.functional.max_pool2d(x, 2), backend=backend, dynamic=False)
    >>> f(torch.arange(16.0).view(1, 1, 4, 4)).flatten().tolist()
    [5.0, 7.0, 13.0, 15.0]
    """
    config: dict[str, Any] = {}
    if mode is not None and mode != "default":
        # What torch.compile does with a mode: it is a set of inductor settings.
        import torch._inductor

        config.update(torch._inductor.list_mode_options(mode, False))
    marker = _variant_pass()
    if marker is not None:
        config["post_grad_custom_post_pass"] = marker
    config.update(options or {})

    def backend(graph: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        from torch._inductor.compile_fx import compile_fx

        with _pool_backward_lowered():
            return compile_fx(graph, example_inputs, config_patches=config)

    return backend
