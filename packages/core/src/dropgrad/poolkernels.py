"""Max pooling over non-overlapping windows as two hand-written Triton kernels (issue 7, experimental).

Why: in inductor's code for the compiled folded Conv4 step (torch 2.11, sm_90), max pooling's
backward is a gather through window offsets with clamped window bounds; compiled offline to
SASS it takes 72-133 instructions per input element, and the query pass's first-layer pooling
backward ran 461 us on an H200 for 145 M bf16 elements, whose bytes need about 100 us. The
kernels here do the same work in 28-30 instructions per element: the forward writes
each window's maximum and the 1-byte position in its window that ATen would choose, and the
backward writes each input element its window's output gradient where that position names it,
else zero (docs/performance.md, "Inductor's GPU code read without a GPU, and max pooling as
Triton kernels"). Not timed on a GPU yet.

Same numbers as ATen (``F.max_pool2d`` with kernel = stride, no padding, floor mode): a window
is scanned row by row, and an element replaces the running maximum when it is larger or NaN, so
the first maximum wins, or the last NaN; each input element is in at most one window, so its
gradient is that window's or zero (rows and columns past the last whole window get zero).

The ops are ``torch.library.triton_op``s, so ``torch.compile`` keeps the kernels inside its
graphs (and CUDA graphs record them). On tensors that are not on a CUDA device, or without
Triton, the ops compute the same with ATen. Under Triton's interpreter (``TRITON_INTERPRET=1``)
the kernels run on CPU tensors, eagerly only (``torch.compile`` refuses interpreted kernels). :func:`window_max_pool` is the entry point;
``dropgrad.folded.compiled_forms(triton_pool=True)`` routes compiled folded steps to it.
"""

from __future__ import annotations

import functools
import os
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["has_triton", "window_max_pool"]

_BLOCK = 1024


@functools.cache
def has_triton() -> bool:
    """Whether Triton can be imported (the kernels exist only then)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


if has_triton():
    # Module level, as torch.compile wants kernels it puts into its own code (the op's body is
    # traced by torch.compile, and inductor copies these kernels into the wrapper it writes).
    import triton
    import triton.language as tl

    @triton.jit
    def _pool_forward(x_ptr, out_ptr, which_ptr, total, sn, sc, sh, sw,
                      C: tl.constexpr, Ho: tl.constexpr, Wo: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, WIDE: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
        # One lane per output element, in the output's memory order; the input is read through
        # its strides. Sizes are compile-time constants: dividing by them then costs a multiply
        # and a shift, not a division (a compiled step has a few fixed shapes).
        idx = (tl.program_id(0).to(tl.int64) if INT64 else tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < total
        if CHANNELS_LAST:
            c = idx % C
            rest = idx // C
            wo = rest % Wo
            rest = rest // Wo
            ho = rest % Ho
            n = rest // Ho
        else:
            wo = idx % Wo
            rest = idx // Wo
            ho = rest % Ho
            rest = rest // Ho
            c = rest % C
            n = rest // C
        base = n * sn + c * sc + (ho * KH) * sh + (wo * KW) * sw
        # Compared in float32 (float64 for float64 inputs): exact for every input dtype.
        best = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float64 if WIDE else tl.float32)
        which = tl.zeros([BLOCK], dtype=tl.int32)
        for k in tl.static_range(1, KH * KW):
            v = tl.load(x_ptr + base + (k // KW) * sh + (k % KW) * sw, mask=mask, other=0.0).to(best.dtype)
            take = (v > best) | (v != v)  # ATen's rule: larger, or NaN
            best = tl.where(take, v, best)
            which = tl.where(take, k, which)
        tl.store(out_ptr + idx, best.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(which_ptr + idx, which.to(tl.uint8), mask=mask)

    @triton.jit
    def _pool_backward(grad_ptr, which_ptr, out_ptr, total,
                       C: tl.constexpr, H: tl.constexpr, W: tl.constexpr, Ho: tl.constexpr, Wo: tl.constexpr,
                       KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, INT64: tl.constexpr,
                       BLOCK: tl.constexpr):
        # One lane per input element; the output gradient and positions are in the input's
        # memory order (both contiguous in it), so every load and the store are coalesced.
        idx = (tl.program_id(0).to(tl.int64) if INT64 else tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < total
        if CHANNELS_LAST:
            c = idx % C
            rest = idx // C
            w = rest % W
            rest = rest // W
            h = rest % H
            n = rest // H
            ho = h // KH
            wo = w // KW
            src = ((n * Ho + ho) * Wo + wo) * C + c
        else:
            w = idx % W
            rest = idx // W
            h = rest % H
            nc = rest // H
            ho = h // KH
            wo = w // KW
            src = (nc * Ho + ho) * Wo + wo
        inside = mask & (ho < Ho) & (wo < Wo)
        pos = (h - ho * KH) * KW + (w - wo * KW)
        which = tl.load(which_ptr + src, mask=inside, other=0).to(tl.int32)
        g = tl.load(grad_ptr + src, mask=inside, other=0.0)
        out = tl.where(inside & (which == pos), g, tl.zeros_like(g))
        tl.store(out_ptr + idx, out, mask=mask)


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format


def _reference_forward(x: Tensor, kh: int, kw: int) -> tuple[Tensor, Tensor]:
    """ATen's pooling and each window's chosen position (uint8), in ``x``'s memory format."""
    out, flat = F.max_pool2d(x, (kh, kw), return_indices=True)
    w = x.shape[-1]
    rows = torch.arange(out.shape[-2], device=x.device)[:, None] * kh
    cols = torch.arange(out.shape[-1], device=x.device) * kw
    which = (flat // w - rows) * kw + (flat % w - cols)
    fmt = _memory_format(x)
    return out.contiguous(memory_format=fmt), which.to(torch.uint8).contiguous(memory_format=fmt)


def _reference_backward(grad: Tensor, which: Tensor, shape: list[int], kh: int, kw: int) -> Tensor:
    """The input gradient from the output gradient and the chosen positions, with ATen operators."""
    n, c, h, w = shape
    ho, wo = grad.shape[-2:]
    spread = [t.repeat_interleave(kh, -2).repeat_interleave(kw, -1) for t in (grad, which.long())]
    rows = torch.arange(ho * kh, device=grad.device) % kh
    cols = torch.arange(wo * kw, device=grad.device) % kw
    out = torch.where(spread[1] == rows[:, None] * kw + cols, spread[0], torch.zeros((), dtype=grad.dtype, device=grad.device))
    out = F.pad(out, (0, w - wo * kw, 0, h - ho * kh))
    return out.contiguous(memory_format=_memory_format(grad))


def _needs_int64(x: Tensor) -> bool:
    """Whether an index into ``x`` (elements or strided offsets) may pass int32's range."""
    reach = sum((size - 1) * abs(stride) for size, stride in zip(x.shape, x.stride())) + 1
    return max(x.numel(), reach) + _BLOCK >= 2**31


def _use_kernels(x: Tensor) -> bool:
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors: how the tests
    # check them without a GPU.
    return (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1") and has_triton() and x.dim() == 4


@torch.library.triton_op("dropgrad::window_max_pool", mutates_args=())
def _forward_op(x: Tensor, kh: int, kw: int) -> tuple[Tensor, Tensor]:
    if not _use_kernels(x):
        return _reference_forward(x, kh, kw)
    n, c, h, w = x.shape
    ho, wo = h // kh, w // kw
    fmt = _memory_format(x)
    out = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    which = torch.empty((n, c, ho, wo), dtype=torch.uint8, device=x.device, memory_format=fmt)
    total = out.numel()
    if total:
        grid = ((total + _BLOCK - 1) // _BLOCK,)
        torch.library.wrap_triton(_pool_forward)[grid](
            x, out, which, total, *x.stride(), C=c, Ho=ho, Wo=wo, KH=kh, KW=kw,
            CHANNELS_LAST=fmt == torch.channels_last, WIDE=x.dtype == torch.float64,
            INT64=_needs_int64(x), BLOCK=_BLOCK,
        )
    return out, which


# typing.List, not list: torch 2.6's schema inference accepts only the typing form.
@torch.library.triton_op("dropgrad::window_max_pool_backward", mutates_args=())
def _backward_op(grad: Tensor, which: Tensor, shape: List[int], kh: int, kw: int) -> Tensor:  # noqa: UP006
    if not _use_kernels(grad):
        return _reference_backward(grad, which, shape, kh, kw)
    n, c, h, w = shape
    fmt = _memory_format(grad) if c > 1 else torch.contiguous_format
    grad = grad.contiguous(memory_format=fmt)
    which = which.contiguous(memory_format=fmt)
    out = torch.empty((n, c, h, w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
    total = out.numel()
    if total:
        grid = ((total + _BLOCK - 1) // _BLOCK,)
        torch.library.wrap_triton(_pool_backward)[grid](
            grad, which, out, total, C=c, H=h, W=w, Ho=h // kh, Wo=w // kw, KH=kh, KW=kw,
            CHANNELS_LAST=fmt == torch.channels_last, INT64=_needs_int64(out), BLOCK=_BLOCK,
        )
    return out


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, kh, kw = inputs
    ctx.save_for_backward(output[1])
    ctx.shape = list(x.shape)
    ctx.window = (kh, kw)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:
    (which,) = ctx.saved_tensors
    return torch.ops.dropgrad.window_max_pool_backward(grad, which, ctx.shape, *ctx.window), None, None


torch.library.register_autograd("dropgrad::window_max_pool", _backward, setup_context=_setup_context)


def window_max_pool(x: Tensor, kh: int, kw: int) -> Tensor:
    """``F.max_pool2d(x, (kh, kw))`` (kernel = stride, no padding, floor mode) for a 4-d ``x``,
    its forward and backward each one Triton kernel on a CUDA device.

    >>> x = torch.tensor([[[[1.0, 3.0], [2.0, 3.0]]]], requires_grad=True)
    >>> y = window_max_pool(x, 2, 2); y.backward(torch.ones_like(y)); y.item(), x.grad.flatten().tolist()
    (3.0, [0.0, 1.0, 0.0, 0.0])
    """
    if x.dim() != 4:
        raise ValueError(f"window_max_pool: expected a 4-d (N, C, H, W) tensor, got {x.dim()} dimensions")
    if kh < 1 or kw < 1 or kh > x.shape[-2] or kw > x.shape[-1]:
        raise ValueError(f"window_max_pool: a {kh}x{kw} window does not fit a {x.shape[-2]}x{x.shape[-1]} input")
    return torch.ops.dropgrad.window_max_pool(x, kh, kw)[0]
