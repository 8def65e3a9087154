"""Meta-training steps replayed from a CUDA graph.

A MAML meta-step dispatches thousands of small operators (about 4,700 for Conv4 and 17,600 for
ResNet-18 with 4 tasks and 5 inner steps; ``tools/count_meta_step_ops.py``), and on a fast GPU
the CPU cost of dispatching them is a large part of the step time (docs/performance.md).
The shapes of a meta-step never change within a run, so the whole step (every inner
``autograd.grad``, the DropGrad draws, the query loss and its backward into the
meta-parameters) can be recorded once with :class:`torch.cuda.CUDAGraph` and replayed: one
launch instead of thousands.

What replay keeps exact:

* the parameters are read from their storage at every replay, so optimiser updates made in
  place between steps are seen (torch's optimisers update in place);
* DropGrad's noise comes from CUDA's default generator, which graphs draw from afresh at every
  replay; a capture restores the generator (and every buffer of the learner, e.g. BatchNorm's
  running statistics) to its state before the capture's warm-up steps, so the random stream
  of a run does not depend on when graphs were (re)captured;
* DropGrad's strength under the linear schedule lives in a device tensor the draws read at every
  replay, so one graph follows the ramp;
* everything else a step depends on that the graph cannot see (input shapes, DropGrad's kind and
  constant strength, the autocast state, and the learner's ``graph_state()``: train/eval
  mode, the derivative order, MAML++'s multi-step loss weights) is part of a key; a new key
  captures a new graph.

Steps that cannot be captured (not on CUDA, not meta-training) run eagerly, with the same
results as :meth:`MAML.meta_backward`.

Evaluation (adapt in eval mode, score the query sets: :meth:`MAML.meta_loss`) dispatches as
many operators per task as a first-order training step, and a validation pass adapts as many
tasks per epoch as training does with the usual settings; :class:`CapturedEvaluation` replays it
the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from .dropout import ConsistentDropout
from .inner import MAML, MetaOutput, Task
from .streams import accumulate_grads

__all__ = ["CapturedEvaluation", "CapturedMetaStep"]


def _cuda_autocast() -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of CUDA autocast now; torch < 2.4 only has the GPU-specific getters."""
    try:
        return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    except (TypeError, AttributeError):
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


# Every live step, so a new capture can share the memory pool of a graph that is still alive.
_LIVE: weakref.WeakSet[CapturedMetaStep] = weakref.WeakSet()


def _shared_pool(device: torch.device) -> tuple[int, int] | None:
    """The memory pool of a live graph on ``device`` (None: the capture makes its own).

    Sharing is safe here because a replay's outputs are copied out before anything else runs:
    another graph may reuse this graph's scratch memory, but never while it is being read. So
    two steps (e.g. DropGrad off and on) cost one step's memory, not two. Only a live graph's
    pool can be shared: torch refuses a pool whose graphs were all freed.
    """
    for step in list(_LIVE):
        cap = step._captured
        if cap is not None and cap.device == device:
            return cap.graph.pool()
    return None


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One capture stream per GPU, shared by every capture on it (as torch.cuda.graph's default
    stream is), so graphs that share a memory pool also share its stream-tagged blocks."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[index] = torch.cuda.Stream(device=torch.device("cuda", index))
    return _CAPTURE_STREAMS[index]


def _refuse_own_generators(learner: MAML) -> None:
    """Raise ValueError when a training step would draw from a generator of its own.

    A CUDA graph draws fresh numbers at every replay only from CUDA's default generator: a CPU
    generator's draw is copied to the GPU (a host copy a capture refuses), and another CUDA
    generator is not registered with the graph. DropGrad's noise and ConsistentDropout's masks
    are the draws of a meta-training step.
    """
    if learner.dropgrad.generator is not None and learner.dropgrad.active:
        raise ValueError(
            "CapturedMetaStep: the DropGrad operator draws from its own generator; a CUDA graph can only "
            "draw fresh noise from CUDA's default generator (build DropGrad without generator=)"
        )
    own = [name for name, m in learner.named_modules()
           if isinstance(m, ConsistentDropout) and m.generator is not None and m.training and m.p > 0]
    if own:
        raise ValueError(
            f"CapturedMetaStep: ConsistentDropout {', '.join(own)} draws its masks from its own generator; a CUDA "
            "graph can only draw fresh masks from CUDA's default generator (build it without generator=)"
        )


@dataclass
class _Captured:
    key: Hashable
    device: torch.device
    graph: torch.cuda.CUDAGraph
    inputs: Task
    output: MetaOutput
    params: list[Tensor]  # the meta-parameters, in the order of ``grads``
    grads: list[Tensor | None]


class CapturedMetaStep:
    """``learner.meta_backward(tasks, batched)``, recorded once in a CUDA graph and replayed.

    Call it where you would call ``meta_backward``: it accumulates the meta-gradient into each
    parameter's ``.grad`` (creating it when ``None``) and returns the detached
    :class:`MetaOutput`. The returned tensors and gradients are the caller's own (copies of the
    graph's static outputs), so nothing is overwritten by the next replay.

    Args:
        learner: the meta-learner (its parameters are the meta-parameters).
        batched: adapt the tasks together with vmap (as in :meth:`MAML.meta_backward`).
        warmup: eager steps run before a capture (cuDNN's kernel choice and the allocator must
            be settled before recording); their effects on gradients, buffers and the random
            stream are undone.

    Raises:
        ValueError: (at the first call) the DropGrad operator, or a ConsistentDropout of the
            model, draws from its own generator: a graph draws fresh numbers at every replay
            only from CUDA's default generator.

    A capture that fails (an operator that waits for the CPU, e.g. ``.item()`` inside the
    model) raises torch's error; CUDA's random state is then unusable for the rest of the
    process (torch 2.11), so use ``meta_backward`` for such models.
    """

    def __init__(self, learner: MAML, batched: bool = False, warmup: int = 2) -> None:
        if warmup < 1:
            raise ValueError(f"CapturedMetaStep: warmup must be >= 1, got {warmup!r}")
        self.learner = learner
        self.batched = batched
        self.warmup = warmup
        self.captures = 0  # how many graphs were recorded (a new one per new key)
        self._captured: _Captured | None = None
        _LIVE.add(self)

    # ---------------------------------------------------------------- public
    def capturable(self, tasks: Task) -> bool:
        """Whether this step would run from a graph (CUDA inputs, meta-training, grad enabled)."""
        return (
            tasks.support_x.is_cuda
            and self.learner.training
            and torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def __call__(self, tasks: Task) -> MetaOutput:
        if not self.capturable(tasks):
            return self._eager(tasks)
        key = self._key(tasks)
        if self._captured is None or self._captured.key != key:
            self._captured = None  # frees the old graph's memory before recording the new one
            self._captured = self._capture(tasks, key)
        cap = self._captured
        for static, new in zip(cap.inputs, tasks):
            static.copy_(new, non_blocking=True)
        cap.graph.replay()
        accumulate_grads(cap.params, cap.grads)
        out = cap.output
        return MetaOutput(out.loss.clone(), out.task_losses.clone(), out.query_output.clone())

    def reset(self) -> None:
        """Drop the recorded graph (and its memory); the next call records a new one."""
        self._captured = None

    # --------------------------------------------------------------- capture
    def _eager(self, tasks: Task) -> MetaOutput:
        """The step this class records, run eagerly."""
        return self.learner.meta_backward(tasks, batched=self.batched)

    def _params(self) -> list[Tensor]:
        return [p for p in self.learner.parameters() if p.requires_grad]

    def _key(self, tasks: Task) -> Hashable:
        learner = self.learner
        noise = learner.dropgrad.graph_key()
        inputs = tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in tasks)
        autocast = _cuda_autocast()
        # What the learner reads in Python while building its step (MAML++'s epoch-dependent losses).
        return (inputs, noise, autocast, learner.graph_state(), self.batched, tuple(id(p) for p in self._params()))

    def _run(self, tasks: Task) -> MetaOutput:
        # Autocast's cast cache would hand the graph the bf16 copies of the parameters made
        # during warm-up, frozen; without the cache every cast is recorded and redone per replay.
        enabled, dtype = _cuda_autocast()
        with torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False):
            return self._eager(tasks)

    def _capture(self, tasks: Task, key: Hashable) -> _Captured:
        _refuse_own_generators(self.learner)
        device = tasks.support_x.device
        params = self._params()
        saved_grads = [p.grad for p in params]
        saved_buffers = [b.detach().clone() for b in self.learner.buffers()]
        saved_rng = torch.cuda.get_rng_state(device)
        inputs = Task(*(t.clone() for t in tasks))
        torch.clear_autocast_cache()

        graph = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    for p in params:
                        p.grad = None
                    self._run(inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            for p in params:
                p.grad = None
            # thread_local: a data-loading thread may use CUDA while this thread records.
            # On the learner's GPU: torch.cuda.graph records on a stream of the current device
            # (cuda:0 unless set), and a learner on cuda:1 would then run eagerly beside an empty
            # graph, whose replays change nothing (only a warning says so).
            with torch.cuda.device(device), torch.cuda.graph(
                graph, pool=_shared_pool(device), stream=_capture_stream(device), capture_error_mode="thread_local"
            ):
                output = self._run(inputs)
            grads = [p.grad for p in params]
        finally:
            for p, g in zip(params, saved_grads):
                p.grad = g
            for b, saved in zip(self.learner.buffers(), saved_buffers):
                b.copy_(saved)
            torch.cuda.set_rng_state(saved_rng, device)
        self.captures += 1
        return _Captured(key, device, graph, inputs, output, params, grads)


class CapturedEvaluation(CapturedMetaStep):
    """``learner.meta_loss(tasks, batched)`` in eval mode, recorded once in a CUDA graph and replayed.

    Evaluation adapts each task (first order, no DropGrad, no dropout) and scores its query set;
    nothing flows back into the meta-parameters, whose ``.grad`` stays untouched. Call it with
    the learner in eval mode, where you would call ``meta_loss``; it returns the detached
    :class:`MetaOutput` (the caller's own copies). A stack of another shape records another
    graph (and drops the last one), so give every call the same number of tasks: pad a last,
    smaller chunk with tasks whose results you drop. In training mode, or off CUDA, it runs
    ``meta_loss`` eagerly, with the same numbers. Args and errors as :class:`CapturedMetaStep`.
    """

    def capturable(self, tasks: Task) -> bool:
        """Whether this call would run from a graph (CUDA inputs, eval mode)."""
        return tasks.support_x.is_cuda and not self.learner.training and not torch.cuda.is_current_stream_capturing()

    def _eager(self, tasks: Task) -> MetaOutput:
        out = self.learner.meta_loss(tasks, batched=self.batched)
        return MetaOutput(out.loss.detach(), out.task_losses.detach(), out.query_output.detach())
