"""A meta-batch folded into the batch dimension: the T tasks of a stack run as one batch of T*n samples.

``torch.func.vmap`` batches a layer whose weights differ per task into one grouped kernel (a
convolution with ``groups = T``). :class:`FoldedTasks` batches only what is cheap to batch:

* operators without parameters (activations, pooling, additions, dropout) see one batch of
  ``T * n`` samples, one kernel for all tasks;
* BatchNorm computes each task's statistics over its own ``n`` samples (a reshape to
  ``(T, n, C, ...)`` and one reduction), the per-task scale and shift in one pass;
* LayerNorm and GroupNorm normalise per sample as usual, then apply each task's affine part;
* a linear layer with per-task weights is one batched matmul;
* a convolution with per-task weights runs as T plain convolutions, one per task, written into
  one output: cuDNN's plain kernels, not its grouped ones.

Parameters that are the same for every task (4-d convolution weights, 1-d norm weights: e.g.
parameters the inner loop does not adapt, or MAML++'s per-step BatchNorm) go to the plain kernels
over the whole folded batch; BatchNorm statistics stay per task either way.

Inside the block, per-task parameters have a leading task dimension ``T`` and activations have
``T * n`` rows, task-major. Only the layers above know the difference; an operator outside
that list receiving a per-task parameter raises NotImplementedError rather than broadcasting it
wrongly. That check runs in eager calls; a compiled region is traced through the same rules
unchecked, so ``MAML`` runs one eager forward under the check before its first compiled folded
step (a caller compiling a folded region itself should do the same).

The model must treat its samples independently apart from BatchNorm: a layer of its own that
mixes samples across the batch (attention over the support set, a prototype average) would mix
the tasks, which vmap would not.

:func:`compiled_forms` (off by default) gives layers other forms where torch.compile traces
folded tasks: few-channel convolutions run as a matmul over their unfolded input or padded to a
multiple of 8 channels on a GPU, per-task convolutions as one grouped convolution, max pooling
as pointwise operators or with a pointwise backward. ``MAML(folded_forms=...)`` holds it around
the learner's own compiled steps.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from .fast import batch_stats, normalize

__all__ = ["FoldedTasks", "compiled_forms", "folded_tasks"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)
# The compiled kernel forms of compiled_forms(), off outside it: 1 = channels as they come.
_CHANNEL_MULTIPLE = 1
_POINTWISE_MAX_POOL = False
_INDEXED_POOL_BACKWARD = False
_TRITON_POOL = False
_PAD_DEVICES: tuple[str, ...] = ("cuda",)  # on a CPU, padding 3 channels to 8 did not pay (oneDNN, bf16)
_POOL_WINDOW_MAX = 16  # larger windows keep ATen's kernel (a nested where per window cell)
_UNFOLD_DEPTH = 0  # per-task convolutions with in_channels * kernel cells <= this run as a matmul
_GROUPED_TASKS = False  # per-task convolutions as one grouped convolution, the tasks' channels side by side
_GEMM_ALIGN = 8  # 16-byte rows in half precision: what tensor-core GEMMs want of a matmul's depth
_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)
_ATEN = (torch._ops.OpOverload, torch._ops.OpOverloadPacket)
# Tensor properties that move the leading (task) dimension of a per-task parameter.
_REVERSING = frozenset({"T", "H"})
# Functions that read a tensor's metadata (a module may look at its parameters' shapes).
_METADATA = frozenset({
    "__get__", "size", "dim", "numel", "stride", "is_contiguous", "data_ptr", "element_size", "__len__",
    "__hash__", "__format__", "__repr__", "storage_offset", "is_floating_point", "is_complex", "has_names",
})


def _tasks(x: Tensor, tasks: int) -> Tensor:
    """``(T * n, ...)`` as ``(T, n, ...)`` (a view)."""
    if x.shape[0] % tasks:
        raise ValueError(f"folded tasks: a batch of {x.shape[0]} rows does not split into {tasks} tasks")
    return x.unflatten(0, (tasks, x.shape[0] // tasks))


def _per_task(p: Tensor | None, tasks: int, dims: int) -> bool:
    """Whether ``p`` is a per-task parameter: one more dimension than the layer's own (``dims``)."""
    return p is not None and p.dim() == dims + 1 and p.shape[0] == tasks


def _autocast(*tensors: Tensor | None) -> list[Tensor | None]:
    """``tensors`` cast as autocast would cast a convolution's arguments, once for all tasks
    (the per-task convolutions then find them cast already)."""
    first = tensors[0]
    assert first is not None
    kind = first.device.type
    try:
        enabled, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch < 2.4
        return list(tensors)
    if not enabled:
        return list(tensors)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _add_bias(tasks: int, out: Tensor, bias: Tensor) -> Tensor:
    """``out + bias`` with a per-task ``(T, C)`` bias over ``(T * n, C, ...)`` rows."""
    outs = _tasks(out, tasks)
    return (outs + bias.reshape(tasks, 1, bias.shape[1], *(1,) * (outs.dim() - 3))).flatten(0, 1)


def _padded_channels(input: Tensor, weight: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """``input`` and the per-task ``weight`` (``(T, out, in, *kernel)``) with zero input channels added
    up to a multiple of ``_CHANNEL_MULTIPLE`` (compiled, half precision, on a GPU).

    An H200 profile of the compiled folded Conv4 step had the 3-channel first convolution on
    cuDNN's direct NHWC kernels: 18% of the step's GPU time, nearly as much as the other three
    convolutions together, for a seventh of their arithmetic. cuDNN's tensor-core kernels want
    channels in multiples of 8. The added channels multiply zeros by zero weights, so each
    output is the same sum; autograd slices the weight gradient back to the real channels.
    """
    channels = input.shape[1]
    if (
        _CHANNEL_MULTIPLE <= 1 or groups != 1 or channels % _CHANNEL_MULTIPLE == 0
        or input.device.type not in _PAD_DEVICES or input.dtype not in _LOW_PRECISION or not _compiling()
    ):
        return input, weight
    extra = -channels % _CHANNEL_MULTIPLE
    pad = (0, 0) * (input.dim() - 2) + (0, extra)  # F.pad counts from the last dimension: channels come last
    return F.pad(input, pad), F.pad(weight, pad)


def _unfoldable(input: Tensor, weight: Tensor, options: dict[str, Any]) -> bool:
    """Whether a per-task 2-d convolution runs as :func:`_unfolded_conv` (compiled, within
    ``compiled_forms(unfold_depth=...)``, a shallow enough kernel, numeric padding, one group)."""
    return (
        _UNFOLD_DEPTH > 0 and input.dim() == 4 and weight.dim() == 5 and options["groups"] == 1
        and not isinstance(options["padding"], str) and weight.shape[2:].numel() <= _UNFOLD_DEPTH and _compiling()
    )


def _unfolded_conv(tasks: int, input: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any) -> Tensor:
    """A per-task 2-d convolution (``weight``: ``(T, out, in, kh, kw)``) as one batched matmul over its
    unfolded input (im2col), for few-channel convolutions in a compiled step.

    The H200 profile of the compiled folded Conv4 step spent 18% of its GPU time in the
    3-channel first convolution, on cuDNN's direct NHWC kernels, for a seventh of the other
    convolutions' arithmetic. Its unfolded input is only ``in * kh * kw`` = 27 values per output
    pixel, so the convolution becomes a GEMM of depth 27 (padded to 32 for tensor cores), its
    output already channels-last. The batch is one image per matrix product, not one task: the
    weight gradient then runs as one product per image, summed by autograd's backward of the
    weight's ``expand``, instead of T products of depth ``n * H * W`` each, which would keep only
    a few of the GPU's cores busy.
    """
    n_all = input.shape[0]
    out_channels, kh, kw = weight.shape[1], weight.shape[3], weight.shape[4]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    x = F.pad(input, (pw, pw, ph, ph)) if ph or pw else input
    ho = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"folded tasks: a {kh}x{kw} kernel (dilation {dh}, {dw}) does not fit the padded "
            f"{x.shape[2]}x{x.shape[3]} input"
        )
    window = (kh, kw, sh, sw, dh, dw, ho, wo)
    # Each form orders the depth its own way; the weight's columns follow.
    if input.requires_grad:
        cols, w = _stacked_cells(x, *window), weight.flatten(2)
    else:
        cols, w = _gathered_cells(x, *window), weight.permute(0, 1, 3, 4, 2).flatten(2)
    depth = cols.shape[-1]
    extra = -depth % _GEMM_ALIGN
    if extra:  # zero columns times zero weights: the same sums
        cols, w = F.pad(cols, (0, extra)), F.pad(w, (0, extra))
    per_image = _tasks(input, tasks).shape[1]
    w = w.transpose(1, 2).unsqueeze(1).expand(-1, per_image, -1, -1).reshape(n_all, depth + extra, out_channels)
    out = torch.bmm(cols, w)  # (N, ho * wo, out)
    return out.reshape(n_all, ho, wo, out_channels).permute(0, 3, 1, 2)


def _stacked_cells(x: Tensor, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> Tensor:
    """The unfolded input ``(N, ho * wo, in * kh * kw)``, depth in the weight's ``(in, kh, kw)`` order,
    as the kernel's ``kh * kw`` shifted slices of ``x`` stacked: its backward sums the slices'
    gradients, for an input that needs one."""
    cells = [
        x[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw].permute(0, 2, 3, 1)
        for i in range(kh) for j in range(kw)
    ]
    return torch.stack(cells, dim=-1).flatten(1, 2).flatten(2)


def _gathered_cells(x: Tensor, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int) -> Tensor:
    """The unfolded input ``(N, ho * wo, kh * kw * in)``, depth in ``(kh, kw, in)`` order, as one
    indexed read of ``x``, for an input without a gradient (a network's images).

    Inductor lowers the read, the image padding before it and the tensor-core padding after it
    as one pointwise kernel. A stack of the 9 slices of a 3x3 kernel is more inputs than inductor
    writes as one pointwise ``cat`` (``max_pointwise_cat_inputs`` = 8): it copies each slice into
    its few columns of every row, 9 passes over the output, then pads in another kernel. In the
    H200 profile of the unfolded Conv4 step, a kernel that fits those copies and the padding took
    0.99 ms of 10.85 ms of kernel time; writing the output once takes about 0.1 ms. With this
    read, the unfolded row went from 1.08x to 1.17x the folded step without it (docs/performance.md).
    """
    device = x.device
    rows = torch.arange(ho, device=device).mul(sh).view(ho, 1, 1, 1) + torch.arange(kh, device=device).mul(dh).view(kh, 1)
    cols = torch.arange(wo, device=device).mul(sw).view(wo, 1, 1) + torch.arange(kw, device=device).mul(dw)
    return x.permute(0, 2, 3, 1)[:, rows, cols].flatten(1, 2).flatten(2)  # (N, ho, wo, kh, kw, in) before


def _grouped_conv(
    func: Callable[..., Tensor], tasks: int, input: Tensor, weight: Tensor, bias: Tensor | None,
    stride: Any, padding: Any, dilation: Any, groups: int,
) -> Tensor:
    """T per-task convolutions as one convolution of ``groups * T`` groups over the tasks' channels
    side by side: ``(T * n, C, ...)`` rows become ``(n, T * C, ...)``; the output goes back.

    The H200 profiles of the compiled folded Conv4 step spend about 2.6 ms of its 11 ms of kernel
    time in cuDNN's per-task convolutions of 25 or 80 images each (four calls per layer, pass and
    direction, plus workspace kernels), where their arithmetic would take about 0.7 ms at the
    rate of large bf16 GEMMs (an estimate). One grouped call per layer has 4 times the work per
    launch; on an H200 the whole step with this form gave 387 against 356 tasks/s (+8.9%, same run);
    cuDNN's grouped kernels' own rate per FLOP is not measured. The moves of the task
    dimension into the channels and back are layout copies, which inductor can fuse into the
    kernels that write and read the activations. Channels-last inputs keep the channels last
    (``(n, ..., T, C)`` in memory), so that cuDNN's NHWC kernels see a channels-last tensor.
    """
    last = input.dim() in (4, 5) and input.is_contiguous(
        memory_format=torch.channels_last if input.dim() == 4 else torch.channels_last_3d
    )
    if last:  # (T, n, *space, C) in memory -> (n, *space, T * C) -> (n, T * C, *space), channels last
        rows = _tasks(input.movedim(1, -1), tasks).movedim(0, -2).flatten(-2).movedim(-1, 1)
    else:
        rows = _tasks(input, tasks).transpose(0, 1).flatten(1, 2)
    bias = None if bias is None else bias.repeat(tasks)  # a bias shared by the tasks, once per group of them
    out = func(rows, weight.flatten(0, 1), bias, stride, padding, dilation, groups * tasks)
    if last:
        out = out.movedim(1, -1).unflatten(-1, (tasks, -1)).movedim(-2, 0).flatten(0, 1).movedim(-1, 1)
    else:
        out = out.unflatten(1, (tasks, -1)).transpose(0, 1).flatten(0, 1)
    return out


def _conv(func: Callable[..., Tensor], dims: int) -> Callable[..., Tensor]:
    def rule(tasks: int, input: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any) -> Tensor:
        if not _per_task(weight, tasks, dims + 2):
            if bias is not None and _per_task(bias, tasks, 1):  # e.g. only the biases are adapted
                return _add_bias(tasks, func(input, weight, None, *args, **kwargs), bias)
            return func(input, weight, bias, *args, **kwargs)
        input, weight, bias = _autocast(input, weight, bias)
        options = dict(zip(("stride", "padding", "dilation", "groups"), args))
        options = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, **options, **kwargs}
        per_task_bias = _per_task(bias, tasks, 1)
        if _unfoldable(input, weight, options):
            options.pop("groups")
            out = _unfolded_conv(tasks, input, weight, **options)
            if bias is not None and not per_task_bias:
                out = out + bias.reshape(-1, 1, 1)
        elif _GROUPED_TASKS and _compiling():
            input, weight = _padded_channels(input, weight, options["groups"])
            out = _grouped_conv(func, tasks, input, weight, None if per_task_bias else bias, **options)
        else:
            input, weight = _padded_channels(input, weight, options["groups"])
            # unbind, not indexing: its backward stacks the T slices' gradients in one kernel, where
            # the backward of weight[t] writes each into a zero tensor of all T tasks. The images go
            # by split, whose slices keep the batch's strides: a slice of _tasks' view with one image
            # per task has a batch stride of its own, and torch 2.14's CPU grouped convolution then
            # returns a wrong weight gradient for channels_last weights.
            xs, ws = input.split(_tasks(input, tasks).shape[1]), weight.unbind(0)
            out = torch.cat([func(x, w, None if per_task_bias else bias, *args, **kwargs) for x, w in zip(xs, ws)])
        # A per-task bias is added once for all tasks: compiled, that addition (and its gradient,
        # a reduction) fuses into the next layer's kernels instead of T bias kernels per pass.
        return _add_bias(tasks, out, bias) if per_task_bias else out

    return rule


def _linear(tasks: int, input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if not _per_task(weight, tasks, 2):
        if bias is not None and _per_task(bias, tasks, 1):
            out = _tasks(F.linear(input, weight), tasks)
            return (out + bias.reshape(tasks, *(1,) * (out.dim() - 2), -1)).flatten(0, 1)
        return F.linear(input, weight, bias)
    xs = _tasks(input, tasks)
    flat = xs.reshape(tasks, -1, xs.shape[-1])  # (T, rows, in)
    w = weight.transpose(1, 2)  # (T, in, out)
    if bias is None:
        out = torch.bmm(flat, w)
    else:  # a per-task (T, out) bias as (T, 1, out); a shared (out,) one broadcasts as it is
        out = torch.baddbmm(bias.unsqueeze(1) if _per_task(bias, tasks, 1) else bias, flat, w)
    return out.reshape(*input.shape[:-1], weight.shape[1])


def _affine(tasks: int, y: Tensor, weight: Tensor | None, bias: Tensor | None, channel_dims: int) -> Tensor:
    """``y * weight + bias`` with per-task or shared ``(C, ...)`` weights over ``(T * n, C, ...)`` rows."""
    ys = _tasks(y, tasks)
    for p, op in ((weight, torch.mul), (bias, torch.add)):
        if p is None:
            continue
        per_task = p.dim() > channel_dims
        shape = (tasks if per_task else 1, 1, *p.shape[1 if per_task else 0:])
        ys = op(ys, p.reshape(shape + (1,) * (ys.dim() - len(shape))))
    return ys.flatten(0, 1)


def _batch_norm(
    tasks: int, input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
    momentum: float | None = 0.1, eps: float = 1e-5,
) -> Tensor:
    if training and running_mean is not None:
        raise ValueError(
            "folded tasks: T tasks cannot update one BatchNorm's running statistics; build it with "
            "track_running_stats=False or adapt the tasks one at a time (batched=False)"
        )
    xs = _tasks(input, tasks)  # (T, n, C, *spatial)
    fused = _compiling()  # half precision: float32 throughout, the casts fused (see normalize)
    if training or running_mean is None or running_var is None:
        var, mean = batch_stats(xs, [1, *range(3, xs.dim())], fused)  # (T, C): each task's own statistics
    else:
        stat_dtype = torch.float32 if input.dtype in _LOW_PRECISION else input.dtype
        var = running_var.to(stat_dtype).expand(tasks, -1)
        mean = running_mean.to(stat_dtype).expand(tasks, -1)
    # One pointwise pass over every task's activations (two, eager in half precision).
    out = normalize(xs, var, mean, weight, bias, eps, (tasks, 1, -1) + (1,) * (xs.dim() - 3), fused)
    return out.flatten(0, 1)


def _layer_norm(
    tasks: int, input: Tensor, normalized_shape: Any, weight: Tensor | None = None,
    bias: Tensor | None = None, eps: float = 1e-5,
) -> Tensor:
    dims = len(normalized_shape)
    if not (_per_task(weight, tasks, dims) or _per_task(bias, tasks, dims)):
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    ys = _tasks(F.layer_norm(input, normalized_shape, None, None, eps), tasks)
    lead = (1,) * (ys.dim() - 1 - dims)
    for p, op in ((weight, torch.mul), (bias, torch.add)):
        if p is not None:  # a shared one broadcasts over the trailing dimensions as it is
            ys = op(ys, p.reshape(tasks, *lead, *p.shape[1:]) if _per_task(p, tasks, dims) else p)
    return ys.flatten(0, 1)


def _group_norm(
    tasks: int, input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    if not (_per_task(weight, tasks, 1) or _per_task(bias, tasks, 1)):
        return F.group_norm(input, num_groups, weight, bias, eps)
    return _affine(tasks, F.group_norm(input, num_groups, None, None, eps), weight, bias, 1)


def _max_pool2d(
    tasks: int, input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
    ceil_mode: bool = False, return_indices: bool = False,
) -> Any:
    if (_POINTWISE_MAX_POOL or _INDEXED_POOL_BACKWARD or _TRITON_POOL) and _compiling():  # eager calls go straight to ATen
        kernel = _pair(kernel_size)
        steps = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _pair(stride)
        if (
            steps == kernel and _pair(padding) == (0, 0) and _pair(dilation) == (1, 1) and not ceil_mode
            and not return_indices and input.dim() == 4 and kernel[0] * kernel[1] <= _POOL_WINDOW_MAX
        ):
            if _POINTWISE_MAX_POOL:
                return _window_max(input, *kernel)
            if _TRITON_POOL:
                from .poolkernels import window_max_pool

                return window_max_pool(input, *kernel)  # off a CUDA device: ATen's pooling in the same op
            return _indexed_max_pool(input, *kernel)
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=return_indices)


def _window_max(x: Tensor, kh: int, kw: int) -> Tensor:
    """Max pooling over non-overlapping ``kh x kw`` windows as pointwise operators, for a compiled step.

    The H200 profile of the compiled folded Conv4 step spent 16% of its GPU time in inductor's
    max-pool kernels, one of them at about a quarter of the memory bandwidth its bytes need.
    Written like this, the pooling and its gradient are pointwise operators that inductor may
    fuse with the ReLU and BatchNorm kernels around them. On a CPU the folded Conv4 step ran at
    0.8-1.1x its speed with ATen's pooling; on an H200 0.36x (116 against 325 tasks/s), hence off
    by default.

    Values and gradients are ATen's: ATen scans a window row by row and keeps the first maximum,
    or the last NaN; the nested ``where`` selects that same element, so the gradient reaches it
    alone (ties included).
    """
    h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    cells = [x[..., i:h:kh, j:w:kw] for i in range(kh) for j in range(kw)]  # row-major window order
    peak = functools.reduce(torch.maximum, cells)
    out = cells[-1]
    for cell in reversed(cells[:-1]):  # the first cell equal to the maximum ends outermost
        out = torch.where(cell == peak, cell, out)
    # NaN: ATen keeps the last one, so it ends outermost. ``cell != cell`` rather than isnan():
    # inductor's CPU code vectorizes the comparison, but runs isnan element by element.
    for cell in cells:
        out = torch.where(cell != cell, cell, out)  # noqa: PLR0124  (the NaN test, see above)
    return out


class _IndexedMaxPool(torch.autograd.Function):
    """Max pooling over non-overlapping ``kh x kw`` windows (ATen's forward and indices) whose
    backward is one pointwise select: each input element takes its window's output gradient
    where the forward's saved index names it, else zero.

    Why: inductor lowers ``max_pool2d_with_indices_backward`` as a gather over the windows that
    may hold each element, through computed (indirect) indices, and for channels-last tensors
    forces its result into a buffer of its own (``require_channels_last``), so BatchNorm's
    backward reads the gradient back. In the H200 profiles of the compiled folded Conv4 step
    that backward took 1.1 ms of 10.9 per step, 4-5x the time its bytes need. Here the output gradient
    and the indices are read at ``(h // kh, w // kw)``, plain affine indexing, and the select
    is a pointwise operator inductor may compute inside the kernels that consume it. Unlike
    :func:`_window_max` (the pointwise form of the whole pooling, slower on the H200), nothing
    of the forward is recomputed: the indices come from the saved 1-byte window offsets.

    Same numbers as ATen: ATen's own indices choose the element (its ties and NaN rules), and
    non-overlapping windows give each input element at most one gradient term.
    """

    @staticmethod
    def forward(x: Tensor, kh: int, kw: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return F.max_pool2d(x, (kh, kw), return_indices=True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, kh, kw = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.meta = (tuple(x.shape), kh, kw)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (indices,) = ctx.saved_tensors
        (n, c, h, w), kh, kw = ctx.meta
        ho, wo = grad.shape[-2:]
        channels_last = grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last) and c > 1

        def spread(t: Tensor) -> Tensor:
            """(n, c, ho, wo) -> (n, c, ho * kh, wo * kw): each value over its window, in t's layout."""
            if channels_last:
                t = t.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, ho, kh, wo, kw, c)
                return t.reshape(n, ho * kh, wo * kw, c).permute(0, 3, 1, 2)
            t = t[:, :, :, None, :, None].expand(n, c, ho, kh, wo, kw)
            return t.reshape(n, c, ho * kh, wo * kw)

        rows = torch.arange(ho * kh, device=grad.device) * w
        flat = rows[:, None] + torch.arange(wo * kw, device=grad.device)  # each element's own index
        out = torch.where(spread(indices) == flat, spread(grad), torch.zeros((), dtype=grad.dtype, device=grad.device))
        if (ho * kh, wo * kw) != (h, w):  # rows and columns past the last whole window get nothing
            out = F.pad(out, (0, w - wo * kw, 0, h - ho * kh))
        return out, None, None


def _indexed_max_pool(x: Tensor, kh: int, kw: int) -> Tensor:
    """Max pooling over non-overlapping ``kh x kw`` windows with :class:`_IndexedMaxPool`'s backward."""
    return _IndexedMaxPool.apply(x, kh, kw)[0]


_RULES: dict[Callable[..., Any], Callable[..., Tensor]] = {
    F.conv1d: _conv(F.conv1d, 1),
    F.conv2d: _conv(F.conv2d, 2),
    F.conv3d: _conv(F.conv3d, 3),
    F.linear: _linear,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.max_pool2d: _max_pool2d,
}


@contextlib.contextmanager
def compiled_forms(
    pointwise_max_pool: bool = False, channel_multiple: int = 8, unfold_depth: int = 27, grouped_tasks: bool = False,
    indexed_pool_backward: bool = False, triton_pool: bool = False,
) -> Iterator[None]:
    """Other forms of layers in compiled folded tasks, within the block (issue 7). The defaults
    are the forms that paid on an H200: the unfolded first convolution and channels padded to 8.

    * ``pointwise_max_pool``: max pooling over non-overlapping windows (kernel = stride, no
      padding, dilation or ceil mode) as pointwise operators, ATen's values and gradients;
    * ``channel_multiple``: per-task convolutions on a GPU in half precision get zero input
      channels added up to a multiple of it (3 -> 8 for RGB images);
    * ``unfold_depth``: per-task 2-d convolutions (one group) whose ``in_channels * kh * kw`` is
      at most this (27 for a 3x3 RGB convolution; 0 = none) run as one batched matmul over
      their unfolded input, output channels-last; these skip the channel padding;
    * ``grouped_tasks``: the other per-task convolutions run as one convolution of ``groups * T``
      groups over the tasks' channels side by side;
    * ``indexed_pool_backward``: max pooling over non-overlapping windows keeps ATen's forward,
      and its backward is a pointwise select at the saved indices (not with
      ``pointwise_max_pool``, which replaces the whole pooling);
    * ``triton_pool``: max pooling over non-overlapping windows as two hand-written Triton
      kernels on a CUDA device (:func:`dropgrad.poolkernels.window_max_pool`; elsewhere ATen's
      pooling through the same op), ATen's values and gradients; its backward takes 28-30 SASS
      instructions per element where inductor's takes 72-133 (torch 2.11's kernels for the Conv4
      step, compiled offline). Not timed on a GPU yet. One pooling form at a time.

    They apply only where torch.compile traces the folded tasks; eager calls keep ATen's
    kernels. Compiled graphs depend on these settings (a change recompiles).
    ``MAML(folded_forms=...)`` enters this block around its own compiled folded steps, with the
    settings it is not given off. Measured on an H200 (torch 2.11, the folded Conv4 84 px
    first-order step with combo kernels, replayed; docs/performance.md): the unfolded first
    convolution 366 against 313 tasks/s, channels padded to 8 339 against 325, pointwise pooling
    116 against 325 (slower; on by default until that measurement); with the unfolded first
    convolution, grouped tasks 387 and 400 tasks/s in two machine starts (356 for the unfolded
    convolution alone in the first), and the indexed pooling backward 256 against 356 (slower).
    But grouped tasks with inductor's ``combo_kernels`` crashed on that card in three of five
    runs (inductor's kernel for max pooling's backward read window offsets out of range: a
    device-side assert, or an illegal memory access with the indexed backward); fewshot-train
    refuses that pair. On a CPU none of the forms paid.
    """
    global _POINTWISE_MAX_POOL, _CHANNEL_MULTIPLE, _UNFOLD_DEPTH, _GROUPED_TASKS, _INDEXED_POOL_BACKWARD, _TRITON_POOL
    pooling = [name for name, on in (("pointwise_max_pool", pointwise_max_pool),
                                     ("indexed_pool_backward", indexed_pool_backward), ("triton_pool", triton_pool)) if on]
    if len(pooling) > 1:
        raise ValueError(f"compiled_forms: {' and '.join(pooling)} are forms of the same pooling; choose one")
    if channel_multiple < 1:
        raise ValueError(f"compiled_forms: channel_multiple must be >= 1, got {channel_multiple}")
    if unfold_depth < 0:
        raise ValueError(f"compiled_forms: unfold_depth must be >= 0, got {unfold_depth}")
    saved = _POINTWISE_MAX_POOL, _CHANNEL_MULTIPLE, _UNFOLD_DEPTH, _GROUPED_TASKS, _INDEXED_POOL_BACKWARD, _TRITON_POOL
    _POINTWISE_MAX_POOL, _CHANNEL_MULTIPLE, _UNFOLD_DEPTH, _GROUPED_TASKS, _INDEXED_POOL_BACKWARD, _TRITON_POOL = (
        pointwise_max_pool, channel_multiple, unfold_depth, grouped_tasks, indexed_pool_backward, triton_pool)
    try:
        yield
    finally:
        _POINTWISE_MAX_POOL, _CHANNEL_MULTIPLE, _UNFOLD_DEPTH, _GROUPED_TASKS, _INDEXED_POOL_BACKWARD, _TRITON_POOL = saved


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class FoldedTasks(TorchFunctionMode):
    """Within the block, the layers listed in the module docstring treat their inputs as ``T`` tasks folded
    into the batch dimension and parameters with a leading ``T`` as per-task parameters.

    Args:
        tasks: the number of tasks ``T``.
        per_task: the per-task parameter tensors (checked by identity: an unsupported operator
            that receives one raises NotImplementedError naming it).
    """

    def __init__(self, tasks: int, per_task: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.tasks = tasks
        self._per_task_ids = {id(t) for t in per_task}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None:
            return rule(self.tasks, *args, **kwargs)
        # aten operators reach the mode only from compiler internals (a trace of code that went
        # through these rules already), never from a model's own layers.
        if self._per_task_ids and not _compiling() and not isinstance(func, _ATEN):
            name, what = getattr(func, "__name__", ""), getattr(func, "__qualname__", "")
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if name == "__get__" and prop in _REVERSING:  # p.T reverses every dimension, the task dimension too
                name, what = prop, f"Tensor.{prop}"
            if name not in _METADATA and not name.startswith("_"):  # private: torch's own internals
                for t in _tensors(list(args) + list(kwargs.values())):
                    if id(t) in self._per_task_ids:
                        raise NotImplementedError(
                            f"folded tasks: {what or name} on a per-task parameter is not "
                            "supported (conv1d/2d/3d, linear, batch_norm, layer_norm and group_norm are); "
                            "batch the tasks with vmap or adapt them one at a time (batched=False)"
                        )
        return func(*args, **kwargs)


@contextlib.contextmanager
def folded_tasks(tasks: int, per_task: Iterable[Tensor] = ()) -> Iterator[None]:
    """:class:`FoldedTasks` as a context manager.

    >>> conv = torch.nn.Conv2d(3, 4, 3)
    >>> w = torch.randn(2, 4, 3, 3, 3)  # two tasks' weights
    >>> x = torch.randn(2 * 5, 3, 8, 8)  # five images per task, task-major
    >>> with folded_tasks(2, [w]):
    ...     y = torch.func.functional_call(conv, {"weight": w}, (x,))
    >>> torch.allclose(y[5:], F.conv2d(x[5:], w[1], conv.bias), atol=1e-6)
    True
    """
    with FoldedTasks(tasks, per_task):
        yield
