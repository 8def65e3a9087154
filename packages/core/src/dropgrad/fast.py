"""Fast-path helpers for a batched meta-step: norm layers that vmap differentiates exactly, and
channels_last task stacks.

``torch.func.vmap`` batches a convolution whose weights differ per task into one grouped
convolution (the task dimension folded into the channels, ``groups = T``), which is what lets a
meta-batch run as one wide kernel per layer; :class:`dropgrad.MAML` vmaps only the forward and
takes the inner gradients with plain autograd over those batched kernels (exact to any order).

Two gaps of torch's own vmap rules for ``batch_norm``/``layer_norm`` are closed by
:func:`decomposed_norms`, which swaps both functions for reductions and pointwise ops
(``var_mean``, ``addcmul``) whose batching rules are complete:

* on CUDA (torch 2.11) ``batch_norm`` under vmap raises NotImplementedError for channels_last
  inputs;
* ``torch.func.grad`` nested inside vmap gives second derivatives through them that are off
  by ~1e-3 in float64 (tests/core/test_batched_equivalence.py); the decomposition is exact
  there too, for code that does nest them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "batch_norm", "batch_stats", "channels_last_tasks", "decomposed_norms", "is_channels_last", "layer_norm", "normalize",
]

_LOW_PRECISION = (torch.bfloat16, torch.float16)
_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)


def batch_stats(x: Tensor, dims: Sequence[int], fused: bool) -> tuple[Tensor, Tensor]:
    """BatchNorm's ``(var, mean)`` of ``x`` over ``dims``, in float32 for half-precision ``x``
    (``x``'s own dtype otherwise), as :func:`normalize` wants them.

    ``fused``: the caller is being compiled, where the cast of ``x`` fuses into the reduction.
    Otherwise the mean is accumulated and returned in float32 without a float32 copy of ``x``,
    and the variance comes rounded to ``x``'s precision (which moves the scale by at most
    2**-10 of itself in bf16).
    """
    stat_dtype = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    var, mean = torch.var_mean(x.to(stat_dtype) if fused else x, dim=list(dims), correction=0)
    if x.dtype != stat_dtype and not fused:
        mean = x.mean(dim=list(dims), dtype=stat_dtype)
    return var.to(stat_dtype), mean.to(stat_dtype)


def normalize(
    x: Tensor, var: Tensor, mean: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
    shape: Sequence[int], fused: bool,
) -> Tensor:
    """``(x - mean) * rsqrt(var + eps) * weight + bias`` in one pointwise pass over ``x`` (two,
    eager in half precision), the statistics (of :func:`batch_stats`, or running ones in the
    statistics' dtype) viewed as ``shape`` against ``x``.

    Half precision: written as ``x * scale + shift``, a shift of about ``-mean / deviation``
    rounded to ``x``'s precision would cancel against ``x * scale`` and keep an error of the
    mean's size (4x ATen's where the mean is 30x the deviation; tested). So, ``fused``
    (compiled), it is computed in float32 and rounded once; otherwise ``x - m`` is taken in
    ``x``'s precision, with ``m`` the mean rounded to it (the difference is rounded relative to
    itself), and the shift keeps the rest of the mean.
    """
    stat_dtype = mean.dtype
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.to(stat_dtype)  # broadcasts against the statistics
    centre, dtype = mean, stat_dtype if fused else x.dtype
    if x.dtype != stat_dtype and not fused:
        m = mean.to(x.dtype)
        x, centre = x - m.reshape(shape), mean - m.to(stat_dtype)
    shift = -centre * scale if bias is None else torch.addcmul(bias.to(stat_dtype), centre, scale, value=-1)
    out = torch.addcmul(shift.to(dtype).reshape(shape), x, scale.to(dtype).reshape(shape))
    return out.to(x.dtype)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm`` as reductions and one or two pointwise passes (exact under vmap, twice
    differentiable).

    Args:
        x: of shape ``(batch, channels, *spatial)``.
        running_mean, running_var: of shape ``(channels,)``; used when ``training`` is False.
            Updating them (``training`` with running statistics) is refused: a batched step
            cannot write one shared buffer from T tasks.
        weight, bias: of shape ``(channels,)`` or ``None``.

    Returns:
        Of the shape and dtype of ``x``. For bf16/fp16 inputs the statistics, scale and shift
        are float32 (as cuDNN keeps them): see :func:`normalize`.

    >>> x = torch.randn(8, 3, 4, 4)
    >>> torch.allclose(batch_norm(x, None, None, training=True), F.batch_norm(x, None, None, training=True), atol=1e-5)
    True
    """
    if training and running_mean is not None:
        raise ValueError(
            "decomposed batch_norm: updating BatchNorm running statistics is not supported on the "
            "batched path; build the model with track_running_stats=False or use the per-task loop"
        )
    fused = _compiling()
    if training or running_mean is None or running_var is None:
        var, mean = batch_stats(x, [0, *range(2, x.dim())], fused)
    else:
        stat_dtype = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
        var, mean = running_var.to(stat_dtype), running_mean.to(stat_dtype)
    return normalize(x, var, mean, weight, bias, eps, [1, -1] + [1] * (x.dim() - 2), fused)


def layer_norm(
    x: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``F.layer_norm`` as ``var_mean`` and pointwise ops; ``x`` of shape ``(*, *normalized_shape)``.

    >>> x = torch.randn(2, 5)
    >>> torch.allclose(layer_norm(x, (5,)), F.layer_norm(x, (5,)), atol=1e-6)
    True
    """
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    var, mean = torch.var_mean(xf, dim=dims, correction=0, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    if xf is not x and not _autocast_enabled(x.device.type):
        y = y.to(x.dtype)  # as F.layer_norm outside autocast (under CUDA autocast it returns float32)
    return y


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


class _DecomposedNorms(TorchFunctionMode):
    _table: ClassVar[dict[Callable[..., Any], Callable[..., Tensor]]] = {
        F.batch_norm: batch_norm,
        F.layer_norm: layer_norm,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        impl = self._table.get(func)
        if impl is not None:
            return impl(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def decomposed_norms(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``F.batch_norm`` and ``F.layer_norm`` (so ``nn.BatchNorm*`` and
    ``nn.LayerNorm``) run as :func:`batch_norm` / :func:`layer_norm`.

    >>> bn = nn.BatchNorm1d(3, track_running_stats=False)
    >>> x = torch.randn(4, 3)
    >>> with decomposed_norms():
    ...     y = bn(x)
    >>> torch.allclose(y, bn(x), atol=1e-5)
    True
    """
    if not enabled:
        yield
        return
    with _DecomposedNorms():
        yield


def is_channels_last(module: nn.Module) -> bool:
    """Whether ``module``'s 4-d parameters are stored channels_last (and so not plain contiguous)."""
    for p in module.parameters():
        if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def channels_last_tasks(x: Tensor) -> Tensor:
    """A stack of image batches, of shape ``(T, B, C, H, W)``, laid out so every ``x[t]`` is channels_last.

    Returns a tensor of the same shape and values (a permuted view of a ``(T, B, H, W, C)`` buffer).
    4-d inputs ``(B, C, H, W)`` get ``torch.channels_last``; other ranks are returned unchanged.

    >>> y = channels_last_tasks(torch.randn(2, 3, 4, 5, 5))
    >>> y.shape, y[0].is_contiguous(memory_format=torch.channels_last)
    (torch.Size([2, 3, 4, 5, 5]), True)
    """
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() != 5:
        return x
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
