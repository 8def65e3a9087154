"""The tasks of a meta-batch on concurrent CUDA streams, and meta-gradient accumulation.

Replayed from a CUDA graph, a meta-step no longer waits on the CPU: it is bound by the GPU time
of thousands of small kernels (25 support and 80 query images per task), each too small to
fill the GPU. The tasks of a meta-batch are independent until their meta-gradients are summed,
so :class:`dropgrad.MAML` (``task_streams=k``) can enqueue task ``t`` on stream ``t % k``. Run
eagerly, the CPU still issues one kernel after another; recorded in a CUDA graph, the graph
holds k independent branches that the GPU runs side by side.

The per-task meta-gradients are summed per stream and then across streams on the calling
stream, so the result equals the sequential loop's up to the order of a few additions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["accumulate_grads", "backward_on_streams", "task_streams"]

# Streams are reused across calls (and learners): a capture records them, and creating streams
# per step would leak them.
_STREAMS: dict[tuple[int, int], list[torch.cuda.Stream]] = {}

Grads = list[Tensor | None]


def task_streams(device: torch.device, k: int) -> list[torch.cuda.Stream]:
    """``k`` side streams on CUDA ``device``, the same ones on every call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, k)
    if key not in _STREAMS:
        _STREAMS[key] = [torch.cuda.Stream(device=torch.device("cuda", index)) for _ in range(k)]
    return _STREAMS[key]


def _add(a: Grads, b: Grads) -> Grads:
    """Elementwise ``a + b`` of two gradient lists (``None``: no gradient), out of place."""
    both = [i for i, (x, y) in enumerate(zip(a, b)) if x is not None and y is not None]
    out = [x if x is not None else y for x, y in zip(a, b)]
    if both:
        for i, s in zip(both, torch._foreach_add([a[i] for i in both], [b[i] for i in both])):  # type: ignore[misc]
            out[i] = s
    return out


def accumulate_grads(params: Sequence[Tensor], grads: Grads) -> None:
    """Add ``grads`` into the parameters' ``.grad`` as ``backward()`` would (a fresh ``.grad`` is a copy).

    >>> p = torch.zeros(2, requires_grad=True)
    >>> accumulate_grads([p], [torch.ones(2)]); accumulate_grads([p], [torch.ones(2)])
    >>> p.grad
    tensor([2., 2.])
    """
    fresh = [(p, g) for p, g in zip(params, grads) if g is not None and p.grad is None]
    summed = [(p, g) for p, g in zip(params, grads) if g is not None and p.grad is not None]
    if fresh:
        copies = torch._foreach_add([g for _, g in fresh], 0.0)  # one launch for every fresh .grad
        for (p, _), c in zip(fresh, copies):
            p.grad = c
    if summed:
        torch._foreach_add_([p.grad for p, _ in summed], [g for _, g in summed])  # type: ignore[misc]


def backward_on_streams(
    n: int,
    run_task: Callable[[int], tuple[Tensor, Tensor]],
    params: Sequence[Tensor],
    streams: Sequence[torch.cuda.Stream | None],
) -> tuple[list[Tensor], list[Tensor]]:
    """Run ``run_task(t)`` for the ``n`` tasks round robin on ``streams``; back-propagate ``loss / n``.

    Args:
        n: number of tasks.
        run_task: ``t -> (loss, output)`` of task ``t`` (a scalar loss, differentiable w.r.t. ``params``).
        params: the meta-parameters; their ``.grad`` receives the summed meta-gradient.
        streams: CUDA streams, or ``None`` entries to run on the current stream (CPU; tests).

    Returns:
        The detached losses and outputs, safe to use on the calling stream.
    """
    concurrent = all(s is not None for s in streams)
    main = torch.cuda.current_stream(streams[0].device) if concurrent else None  # type: ignore[union-attr]
    sums: list[Grads | None] = [None] * len(streams)
    losses, outputs = [], []
    for t in range(n):
        j = t % len(streams)
        stream = streams[j]
        if stream is not None:
            stream.wait_stream(main)  # the parameters and the task's data are ready
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            loss, output = run_task(t)
            grads = list(torch.autograd.grad(loss / n, list(params), allow_unused=True))
            sums[j] = grads if sums[j] is None else _add(sums[j], grads)  # type: ignore[arg-type]
        losses.append(loss.detach())
        outputs.append(output.detach())
    total: Grads = [None] * len(params)
    for j, part in enumerate(sums):
        if part is None:
            continue
        if main is not None:
            main.wait_stream(streams[j])  # type: ignore[arg-type]
            # Made on a side stream, read on this one: the allocator must not hand their memory
            # back to the side stream before this stream is done with them.
            for tensor in part:
                if tensor is not None:
                    tensor.record_stream(main)
        total = _add(total, part)
    if main is not None:
        for tensor in losses + outputs:
            tensor.record_stream(main)
    accumulate_grads(params, total)
    return losses, outputs
