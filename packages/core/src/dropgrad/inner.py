"""Functional inner loops on any ``nn.Module``: MAML, MetaSGD and MAML++, with DropGrad.

The kernel is :func:`sgd_step` plus :meth:`MAML.adapt`: parameters are a name -> tensor dict and
the model is run with ``torch.func.functional_call``, so no layer needs a fast-weight subclass.
Per task with support ``(xs, ys)``::

    g      = grad_theta loss(f_theta(xs), ys)
    g'     = dropgrad(g)                 # identity outside meta-training
    theta' = theta - alpha * g'          # alpha: float (MAML), per element (MetaSGD),
                                         # per tensor and step (MAML++)

A batch of tasks is adapted either one task at a time (``batched=False``) or together with
``torch.func.vmap`` (``batched=True``); both give the same numbers. Speed and memory options
(see docs/performance.md): ``batch_with`` (vmap, or the tasks folded into the batch),
``vmap_norms`` / ``loop_norms`` (torch's or decomposed BatchNorm/LayerNorm in either path, e.g.
for channels_last under vmap), ``checkpoint`` (recompute each second-order inner step in the
backward pass), ``task_chunk`` (batched backward in chunks of tasks), ``compile_forward``
(``torch.compile`` of the model's forward in first-order steps), ``compile_second_order`` (whole
second-order inner steps compiled), ``folded_forms`` (other forms of layers where compiled steps
trace folded tasks), ``task_streams`` (the loop's tasks on concurrent CUDA streams).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint as _checkpoint

from .compiling import inductor_backend, warn_if_compile_untested
from .dropout import has_consistent_dropout, resample_dropout_masks
from .fast import decomposed_norms, is_channels_last
from .folded import FoldedTasks, compiled_forms
from .noise import DropGrad
from .streams import backward_on_streams, task_streams

Params = dict[str, Tensor]
StepSize = float | Mapping[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
VmapNorms = Literal["auto", "decomposed", "native"]
VMAP_NORMS: tuple[str, ...] = ("auto", "decomposed", "native")
LoopNorms = Literal["native", "decomposed"]
LOOP_NORMS: tuple[str, ...] = ("native", "decomposed")
BatchWith = Literal["vmap", "fold"]
BATCH_WITH: tuple[str, ...] = ("vmap", "fold")
# torch.compile keywords compile_forward may set. Modes that record CUDA graphs of their own
# ("reduce-overhead", "max-autotune") are left out: CapturedMetaStep records the whole step, and a
# compiled region that replays its own graphs cannot be recorded inside another.
COMPILE_KEYS: tuple[str, ...] = ("backend", "mode", "options")
COMPILE_MODES: tuple[str, ...] = ("default", "max-autotune-no-cudagraphs")
# MAML(folded_forms=...): dropgrad.folded.compiled_forms' settings, and each one's "off" value.
FOLDED_FORMS_OFF: dict[str, Any] = {
    "pointwise_max_pool": False, "channel_multiple": 1, "unfold_depth": 0, "grouped_tasks": False,
    "indexed_pool_backward": False, "triton_pool": False,
}

__all__ = ["MAML", "MAMLPlusPlus", "MetaOutput", "MetaSGD", "Task", "msl_weights", "sgd_step"]


class Task(NamedTuple):
    """One few-shot task, or a stack of tasks with a leading task dimension T.

    Attributes:
        support_x: of shape ``(n_support, *input)`` or ``(T, n_support, *input)``.
        support_y: of shape ``(n_support, ...)`` or ``(T, n_support, ...)``.
        query_x: of shape ``(n_query, *input)`` or ``(T, n_query, *input)``.
        query_y: of shape ``(n_query, ...)`` or ``(T, n_query, ...)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def n_tasks(self) -> int:
        """Size of the leading task dimension of a stacked batch."""
        return self.support_x.shape[0]

    def task(self, t: int) -> Task:
        """Task ``t`` of a stacked batch."""
        return Task(self.support_x[t], self.support_y[t], self.query_x[t], self.query_y[t])

    def to(self, device: torch.device | str) -> Task:
        return Task(*(x.to(device, non_blocking=True) for x in self))


@dataclass
class MetaOutput:
    """Result of a meta-batch.

    Attributes:
        loss: scalar mean query loss over the tasks (differentiable unless detached).
        task_losses: of shape ``(T,)``.
        query_output: the adapted model's query outputs, of shape ``(T, n_query, *out)``.
    """

    loss: Tensor
    task_losses: Tensor
    query_output: Tensor

    def accuracy(self, query_y: Tensor) -> Tensor:
        """Per-task classification accuracy in [0, 1], of shape ``(T,)``; ``query_y`` is ``(T, n_query)``."""
        return (self.query_output.argmax(-1) == query_y).float().mean(-1)


def sgd_step(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    lr: StepSize,
    noise: Sequence[Tensor | None] | None = None,
) -> Params:
    """One inner update ``theta - lr * g`` (``theta - lr * g * n`` with DropGrad noise) per named tensor.

    Args:
        params: name -> tensor (any shapes, e.g. with a leading task dimension).
        grads: name -> gradient, shaped like ``params``.
        lr: a float (MAML), or name -> tensor broadcastable to the parameter (a per-element
            MetaSGD rate shaped like the parameter, or a 0-dim MAML++ rate).
        noise: optional, in the order of ``params``: the noise of :meth:`DropGrad.draw`
            (``None`` entries: no noise). With a float ``lr`` the multiply is fused into the
            update (one ``_foreach_addcmul`` pass instead of a multiply pass and an add pass).

    >>> p = {"w": torch.tensor([1.0, 2.0])}
    >>> sgd_step(p, {"w": torch.tensor([1.0, -1.0])}, 0.5)["w"]
    tensor([0.5000, 2.5000])
    >>> sgd_step(p, {"w": torch.tensor([1.0, -1.0])}, 0.5, noise=[torch.tensor([2.0, 0.0])])["w"]
    tensor([0., 2.])
    """
    names = list(params)
    if noise is not None and any(n is not None for n in noise):
        if isinstance(lr, Mapping):
            grads = DropGrad.apply(grads, noise)
        else:
            noisy = [i for i, n in enumerate(noise) if n is not None]
            plain = [i for i, n in enumerate(noise) if n is None]
            out: list[Tensor | None] = [None] * len(names)
            new = torch._foreach_addcmul(
                [params[names[i]] for i in noisy], [grads[names[i]] for i in noisy],
                [noise[i] for i in noisy], value=-lr,  # type: ignore[misc]
            )
            for i, t in zip(noisy, new):
                out[i] = t
            if plain:
                new = torch._foreach_add([params[names[i]] for i in plain], [grads[names[i]] for i in plain], alpha=-lr)
                for i, t in zip(plain, new):
                    out[i] = t
            return dict(zip(names, out))  # type: ignore[arg-type]
    if isinstance(lr, Mapping):
        return {n: params[n] - lr[n] * grads[n] for n in names}
    new = torch._foreach_add([params[n] for n in names], [grads[n] for n in names], alpha=-lr)
    return dict(zip(names, new))


def _forward_with(model: nn.Module, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
    # The function MAML(compile_forward=...) compiles. The module is an argument, not a closure:
    # torch.compile (2.14) then treats every tensor in ``tensors`` as a graph input. A module
    # it reaches as a global or closure variable has its own parameter objects taken as module
    # state, and a graph first traced with theta then dropped the gradients of later fast weights.
    return functional_call(model, tensors, (x,))


def _compile_kwargs(compile_forward: bool | str | Mapping[str, Any]) -> dict[str, Any]:
    """``torch.compile`` keywords for ``MAML(compile_forward=...)``; ValueError names what is wrong."""
    warn_if_compile_untested()
    if compile_forward is True:
        return {"backend": "inductor"}
    if isinstance(compile_forward, str) and compile_forward:
        return {"backend": compile_forward}
    if not isinstance(compile_forward, Mapping):
        raise ValueError(
            "inner loop: compile_forward must be True, False, a torch.compile backend name or a mapping of "
            f"torch.compile keywords ({', '.join(COMPILE_KEYS)}), got {compile_forward!r}"
        )
    unknown = sorted(set(compile_forward) - set(COMPILE_KEYS))
    if unknown:
        raise ValueError(
            f"inner loop: compile_forward keys must be among {', '.join(COMPILE_KEYS)}, got {', '.join(map(str, unknown))}"
        )
    mode = compile_forward.get("mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(
            f"inner loop: compile_forward mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r} (modes that "
            "record CUDA graphs of their own cannot run inside the meta-step's graph, dropgrad.CapturedMetaStep)"
        )
    options = compile_forward.get("options")
    if options is not None and (not isinstance(options, Mapping) or "triton.cudagraphs" in options):
        raise ValueError(
            f"inner loop: compile_forward options must be a mapping of inductor settings without "
            f"'triton.cudagraphs', got {options!r}"
        )
    kwargs = {"backend": "inductor", **compile_forward}
    if options is not None:
        kwargs["options"] = dict(options)
        if mode is not None:
            # torch.compile takes a mode or options, not both: a mode is a set of inductor options.
            # (Imported here: inductor is slow to import, and most runs never compile.)
            import torch._inductor

            kwargs["options"] = {**torch._inductor.list_mode_options(kwargs.pop("mode")), **kwargs["options"]}
    return kwargs


def _torch_compile(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` with ``_compile_kwargs``' keywords; inductor as ``dropgrad.compiling``'s backend."""
    if kwargs.get("backend") == "inductor":
        kwargs = {"backend": inductor_backend(kwargs.get("mode"), kwargs.get("options"))}
    return torch.compile(fn, dynamic=False, **kwargs)


def _within_forms(fn: Callable[..., Any], forms: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` always called within ``dropgrad.folded.compiled_forms(**forms)``: Dynamo reads the
    settings when it traces and guards on them, so every call must see the same ones."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with compiled_forms(**forms):
            return fn(*args, **kwargs)

    return call


def _fold_tasks(learner: MAML, params: Params, shared: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    # As _vmap_tasks, with the tasks folded into the batch dimension (dropgrad.folded); the
    # caller holds the FoldedTasks mode (entered outside any compiled region).
    tasks, n = x.shape[:2]
    out = functional_call(learner.model, {**params, **shared}, (x.flatten(0, 1),)).unflatten(0, (tasks, n))
    if learner.loss_fn is F.cross_entropy:  # one kernel for all tasks, each task's own mean
        flat = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
        if y.is_floating_point():  # class probabilities: no ignore_index, the mean over every sample
            return flat.view(tasks, -1).mean(1), out
        # As F.cross_entropy's mean: over the labels not ignored (ignore_index -100 gives 0 above).
        kept = (y.flatten(1) != -100).sum(1)
        return flat.view(tasks, -1).sum(1) / kept, out
    return torch.stack([learner.loss_fn(out[t], y[t]) for t in range(tasks)]), out


def _vmap_tasks(learner: MAML, params: Params, shared: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    # (T,) losses and (T, n, *out) outputs: ``params`` and the data carry the task dimension,
    # ``shared`` (a step's own tensors, e.g. MAML++'s BatchNorm rows) is the same for every task.
    def one(p: Params, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(learner.model, {**p, **shared}, (xs,))
        return learner.loss_fn(out, ys), out

    return torch.func.vmap(one, randomness="different")(params, x, y)


def _loop_second_order_step(
    learner: MAML, params: Params, shared: dict[str, Tensor], x: Tensor, y: Tensor, lr: StepSize,
    noise: list[Tensor | None],
) -> Params:
    # One whole second-order inner step of one task, the function MAML(compile_second_order=True)
    # compiles. AOTAutograd has no double backward, so a compiled forward cannot sit under
    # autograd.grad(create_graph=True); traced inside torch.compile, torch.func.grad instead
    # makes the support gradient ordinary operators of the compiled graph, and the meta-gradient
    # through them is that graph's (compiled) backward.
    def support_loss(p: Params, s: dict[str, Tensor]) -> Tensor:
        return learner.loss_fn(functional_call(learner.model, {**p, **s}, (x,)), y)

    # ``shared`` is an argument, not captured: BatchNorm updates running statistics in place,
    # and functorch refuses in-place writes to tensors a transformed function captures.
    return sgd_step(params, torch.func.grad(support_loss)(params, shared), lr, noise)


def _folded_second_order_step(
    learner: MAML, params: Params, shared: dict[str, Tensor], x: Tensor, y: Tensor, lr: StepSize,
    noise: list[Tensor | None],
) -> Params:
    # As _loop_second_order_step for T tasks folded into the batch (the caller holds FoldedTasks):
    # the tasks are independent, so the gradient of the summed losses w.r.t. the (T, *shape)
    # parameters holds every task's own gradient.
    def support_loss(p: Params, s: dict[str, Tensor]) -> Tensor:
        return _fold_tasks(learner, p, s, x, y)[0].sum()

    return sgd_step(params, torch.func.grad(support_loss)(params, shared), lr, noise)


class _BuffersRestored:
    """Within the block ``buffers`` may change; on leaving, each holds its value from entering again.

    Reusable: a checkpointed step may be recomputed more than once (second order).
    """

    def __init__(self, buffers: Sequence[Tensor]) -> None:
        self.buffers = list(buffers)
        self.saved: list[Tensor] = []

    def __enter__(self) -> None:
        self.saved = [b.clone() for b in self.buffers]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for b, value in zip(self.buffers, self.saved):
                b.copy_(value)
        self.saved = []


def msl_weights(n_steps: int, epoch: int, msl_epochs: int) -> Tensor:
    """MAML++ multi-step loss weights for ``epoch``, of shape ``(n_steps,)``.

    All steps start at ``1/n``; each epoch the non-final weights decay by ``1/(n * msl_epochs)``
    down to ``0.03/n`` and the final weight grows by the same total, capped at
    ``1 - (n - 1) * 0.03/n`` (the annealing of Antoniou et al., "How to train your MAML").

    >>> msl_weights(4, 0, 10)
    tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    n = n_steps
    w = torch.full((n,), 1.0 / n)
    decay = 1.0 / n / max(msl_epochs, 1)
    floor = 0.03 / n
    w[:-1] = torch.clamp(w[:-1] - epoch * decay, min=floor)
    w[-1] = min(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return w


def _escape(name: str) -> str:
    # ParameterDict keys may not contain "."; parameter names always do.
    return name.replace(".", "__")


# Methods of MAML that only the per-task loop calls, and the batched paths' counterparts.
_LOOP_ONLY = ("adapt", "task_loss", "_loop_step", "_support_loss", "_query_step", "functional_forward", "_run_model")
_BATCHED_ONLY = ("_meta_loss_vmap", "_vmap_step", "_vmapped")


class MAML(nn.Module):
    """Model-agnostic meta-learning (Finn et al. 2017) over any ``nn.Module``, with DropGrad.

    The wrapped ``model``'s own parameters are the meta-learned initialisation theta.

    Args:
        model: the network ``f_theta``; any module that ``functional_call`` can run.
        inner_lr: inner-loop step size alpha.
        steps: inner-loop steps per task.
        first_order: drop second-order terms (FOMAML): the inner gradients are constants.
        dropgrad: the DropGrad operator (``None``: no noise). It follows this module's
            train/eval mode, so it is off whenever the learner is in eval mode.
        loss_fn: ``loss_fn(output, target) -> scalar``; default cross-entropy.
        adapt: which parameters the inner loop adapts (``fnmatch`` patterns over parameter
            names; default all). The others are meta-learned but fixed within a task.
        checkpoint: activation checkpointing of second-order inner steps: each step keeps only
            its input parameters and is recomputed during the backward pass (about one more
            forward+backward per step, for a peak of one step's graph instead of all of them).
            The DropGrad noise is drawn before the step, so the recomputation reuses it.
            No effect on first-order steps (they keep no support graph anyway).
        task_chunk: with ``meta_backward(batched=True)``, adapt and back-propagate this many
            tasks at a time (peak memory of a chunk, not of the meta-batch); ``None``: all.
        compile_forward: run the model through ``torch.compile`` (``True``: its default backend,
            inductor; a string: that backend; a mapping: ``torch.compile`` keywords among
            ``backend``, ``mode`` (``"default"`` or ``"max-autotune-no-cudagraphs"``: Triton
            templates autotuned against cuDNN, minutes of compiling) and ``options`` (inductor
            settings, e.g. ``{"combo_kernels": True}``)) wherever no second-order graph is
            needed, i.e. in meta-training steps while :attr:`second_order` is False. Fewer,
            fused kernels per forward and backward (BatchNorm, activations, pooling); the
            convolutions stay cuDNN's. The inductor backend (``True``, or no ``backend`` in the
            mapping) lowers max-pooling's backward pointwise instead of through torch's
            scatter-based decomposition (``dropgrad.compiling``; the same numbers). With
            ``batched=True`` the whole batched forward is compiled (vmap's grouped convolutions
            included; folded tasks in one graph).
            Second order runs eagerly unless ``compile_second_order`` (AOTAutograd has no
            double backward); evaluation runs eagerly: its shapes would add recompilations for
            little time. Shapes are compiled statically; a new shape compiles again. Models
            with ``ConsistentDropout`` are refused (their per-task mask is module state drawn
            inside the forward).
        compile_second_order: with ``compile_forward``, also compile second-order
            meta-training steps, with the same ``torch.compile`` settings. Each inner step
            (support forward, gradient by ``torch.func.grad``, DropGrad noise, update) is one
            compiled function, so its forward graph holds the support backward and the graph
            AOTAutograd derives from it, the double backward, is compiled too; the query forward
            is compiled as in first order. In the per-task loop and with ``batch_with="fold"``;
            refused for second order batched with vmap. Exact: the loop's numbers up to
            rounding (float64 tests).
        folded_forms: experimental (issue 7), with ``compile_forward`` and ``batch_with="fold"``:
            other forms of layers where the compiled steps trace the folded tasks, as
            :func:`dropgrad.folded.compiled_forms` gives them: a mapping with any of
            ``pointwise_max_pool`` (bool), ``channel_multiple`` (int), ``unfold_depth`` (int),
            ``grouped_tasks`` (bool), ``indexed_pool_backward`` and ``triton_pool`` (bools; compiled
            second-order inner steps leave these two out); a setting left out is off. Each form gives the same sums
            as the layer it replaces, up to rounding (float64 tests); their speed on a GPU is in
            docs/performance.md.
            Eager calls (evaluation, second order not compiled) keep the plain layers.
        task_streams: with ``meta_backward(batched=False)`` on a GPU, enqueue task ``t`` of a
            meta-batch on CUDA stream ``t % task_streams`` (:mod:`dropgrad.streams`), so that a
            step recorded in a CUDA graph (:class:`dropgrad.CapturedMetaStep`) runs the tasks'
            small kernels side by side. Meta-gradients are summed per stream, then across
            streams: equal to the sequential loop up to the order of those additions. Peak
            memory holds up to ``task_streams`` task graphs at once. ``None``: one task after
            another (also on a CPU, whatever the setting). Refused with BatchNorm running
            statistics, which concurrent tasks would update at the same time.
        vmap_norms: how the batched (vmap) path runs ``batch_norm``/``layer_norm``:
            ``"native"`` (torch's kernels), ``"decomposed"`` (:func:`dropgrad.fast.decomposed_norms`,
            reductions and pointwise ops; works where torch's vmap rule does not, e.g. CUDA
            channels_last BatchNorm in torch 2.11), or ``"auto"`` (decomposed exactly when
            the model's conv weights are channels_last). Both are exact to second order.
        batch_with: how ``batched=True`` adapts a meta-batch together: ``"vmap"``
            (``torch.func.vmap``; a layer with per-task weights becomes one grouped kernel) or
            ``"fold"`` (:mod:`dropgrad.folded`: the tasks folded into the batch dimension;
            parameter-free layers and norms run once for all tasks, convolutions with per-task
            weights as one plain convolution per task; for models whose only layer that mixes
            samples is BatchNorm). Both give the loop's numbers.
        loop_norms: how the per-task loop runs them: ``"native"`` (torch's kernels) or
            ``"decomposed"``. The decomposition's derivatives of every order are a few
            reductions and pointwise operations in the input's dtype; torch's BatchNorm double
            backward multiplies bf16 activations by its float32 statistics, so its full-size
            temporaries are float32 under autocast (a speed lever for second order;
            docs/performance.md). Refused for BatchNorm that updates running statistics.

    Example, a 2-task meta-batch of 3-way 1-shot tasks on a linear model:

    >>> _ = torch.manual_seed(0)
    >>> learner = MAML(nn.Linear(4, 3), inner_lr=0.1, steps=2, dropgrad=DropGrad(0.1))
    >>> tasks = Task(torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1),
    ...              torch.randn(2, 6, 4), torch.arange(3).repeat(2, 2))
    >>> out = learner.meta_loss(tasks)
    >>> out.loss.backward()
    >>> out.query_output.shape, learner.model.weight.grad.shape
    (torch.Size([2, 6, 3]), torch.Size([3, 4]))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.01,
        steps: int = 5,
        first_order: bool = False,
        dropgrad: DropGrad | None = None,
        loss_fn: LossFn = F.cross_entropy,
        adapt: str | Sequence[str] | None = None,
        checkpoint: bool = False,
        task_chunk: int | None = None,
        vmap_norms: VmapNorms = "auto",
        loop_norms: LoopNorms = "native",
        batch_with: BatchWith = "vmap",
        compile_forward: bool | str | Mapping[str, Any] = False,
        compile_second_order: bool = False,
        folded_forms: Mapping[str, Any] | None = None,
        task_streams: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"inner loop: steps must be an integer >= 1, got steps={steps!r}")
        try:
            lr = float(inner_lr)
        except (TypeError, ValueError):
            lr = math.nan
        if isinstance(inner_lr, (bool, str)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"inner loop: inner_lr must be a finite number > 0, got inner_lr={inner_lr!r}")
        if task_chunk is not None and (isinstance(task_chunk, bool) or not isinstance(task_chunk, int) or task_chunk < 1):
            raise ValueError(f"inner loop: task_chunk must be None or an integer >= 1, got task_chunk={task_chunk!r}")
        if vmap_norms not in VMAP_NORMS:
            raise ValueError(f"inner loop: vmap_norms must be one of {', '.join(VMAP_NORMS)}, got {vmap_norms!r}")
        if loop_norms not in LOOP_NORMS:
            raise ValueError(f"inner loop: loop_norms must be one of {', '.join(LOOP_NORMS)}, got {loop_norms!r}")
        if batch_with not in BATCH_WITH:
            raise ValueError(f"inner loop: batch_with must be one of {', '.join(BATCH_WITH)}, got {batch_with!r}")
        self.batch_with: str = batch_with
        self.checkpoint = bool(checkpoint)
        self.task_chunk = task_chunk
        self.vmap_norms: str = vmap_norms
        self.loop_norms: str = loop_norms
        self.model = model
        self.inner_lr = float(inner_lr)
        self.steps = steps
        self.first_order = bool(first_order)
        self.dropgrad = dropgrad if dropgrad is not None else DropGrad(kind="none")
        self.loss_fn = loss_fn
        self.fast_names = self._select_fast_names(adapt)
        # Checked now, not at the first noisy step: that may be an epoch away (linear schedule).
        try:
            self.dropgrad.selected(self.fast_names)
        except ValueError as err:
            if adapt is None:
                raise
            # The entry may well match the model: say that adapt= left its parameters out.
            raise ValueError(
                f"{err}; DropGrad sees only the parameters the inner loop adapts (adapt={adapt!r}), "
                "so its params must name some of those"
            ) from None
        self._compiled, self._compiled_vmap = self._compile(compile_forward, batch_with)
        self._compiled_second_order = self._compile_second_order(compile_second_order, compile_forward)
        # Compiled folded steps skip FoldedTasks' check for layers it cannot fold; one eager
        # forward runs it before the first of them (see _check_folded_layers).
        self._folded_layers_checked = False
        self.folded_forms = self._check_folded_forms(folded_forms, compile_forward)
        if self.folded_forms:
            forms = {**FOLDED_FORMS_OFF, **self.folded_forms}
            self._compiled_vmap = _within_forms(self._compiled_vmap, forms)  # type: ignore[arg-type]
            if self._compiled_second_order is not None:
                # Not the indexed pooling backward (a custom autograd.Function): under torch.func.grad
                # inside torch.compile, its backward's own derivative comes out wrong (torch 2.14;
                # tests/core/test_compile.py keeps the case), so second order keeps ATen's pooling.
                # Nor the Triton pooling, whose backward kernel has no derivative of its own.
                second = {**forms, "indexed_pool_backward": False, "triton_pool": False}
                self._compiled_second_order["fold"] = _within_forms(self._compiled_second_order["fold"], second)
        self.task_streams = self._check_task_streams(task_streams)
        if loop_norms == "decomposed":
            self._refuse_running_stats(
                "loop_norms='decomposed' cannot update the running statistics", "leave loop_norms='native'")

    def _refuse_running_stats(self, what: str, instead: str) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                raise ValueError(
                    f"inner loop: {what} of BatchNorm '{name}'; build it with track_running_stats=False or {instead}"
                )

    def _check_folded_forms(
        self, forms: Mapping[str, Any] | None, compile_forward: bool | str | Mapping[str, Any],
    ) -> dict[str, Any]:
        """The forms that are on, checked: ``{}`` for ``None`` or a mapping of settings left off."""
        if forms is None:
            return {}
        if not isinstance(forms, Mapping):
            raise ValueError(f"inner loop: folded_forms must be None or a mapping, got {forms!r}")
        unknown = sorted(set(forms) - set(FOLDED_FORMS_OFF))
        if unknown:
            raise ValueError(
                f"inner loop: folded_forms keys must be among {', '.join(FOLDED_FORMS_OFF)}, got {', '.join(map(str, unknown))}"
            )
        for key, value in forms.items():
            kind = type(FOLDED_FORMS_OFF[key])
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"inner loop: folded_forms[{key!r}] must be a {kind.__name__}, got {value!r}")
        with compiled_forms(**{**FOLDED_FORMS_OFF, **forms}):  # its own range checks
            pass
        on = {k: v for k, v in forms.items() if v != FOLDED_FORMS_OFF[k]}
        if on and (compile_forward is False or self.batch_with != "fold"):
            raise ValueError(
                "inner loop: folded_forms apply where compiled steps trace folded tasks; they need compile_forward "
                f"and batch_with='fold', got compile_forward={compile_forward!r}, batch_with={self.batch_with!r}"
            )
        return on

    def _check_task_streams(self, k: int | None) -> int | None:
        if k is None:
            return None
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"inner loop: task_streams must be None or an integer >= 2, got task_streams={k!r}")
        self._refuse_running_stats(
            "task_streams cannot run tasks concurrently that update the running statistics", "leave task_streams=None")
        return k

    def _compile(
        self, compile_forward: bool | str | Mapping[str, Any], batch_with: str,
    ) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
        """The compiled per-task forward and the compiled batched forward, or ``(None, None)``."""
        if compile_forward is False:
            return None, None
        kwargs = _compile_kwargs(compile_forward)
        if has_consistent_dropout(self.model):
            raise ValueError(
                "inner loop: compile_forward does not support ConsistentDropout (its per-task mask is module "
                "state drawn inside the forward); use compile_forward=False"
            )
        batched = _fold_tasks if batch_with == "fold" else _vmap_tasks
        return _torch_compile(_forward_with, kwargs), _torch_compile(batched, kwargs)

    def _compile_second_order(
        self, enabled: bool, compile_forward: bool | str | Mapping[str, Any],
    ) -> dict[str, Callable[..., Any]] | None:
        """The compiled whole inner steps of second order, per path ("loop", "fold"), or ``None``."""
        if not isinstance(enabled, bool):
            raise ValueError(f"inner loop: compile_second_order must be True or False, got {enabled!r}")
        if not enabled:
            return None
        if self.checkpoint:
            raise ValueError(
                "inner loop: compile_second_order=True cannot checkpoint its steps (torch.func.grad, which the "
                "compiled step uses, turns off the saved-tensor hooks checkpointing needs); set checkpoint=False"
            )
        if compile_forward is False:
            raise ValueError(
                "inner loop: compile_second_order=True needs compile_forward (the torch.compile settings it uses); "
                "set compile_forward=True"
            )
        kwargs = _compile_kwargs(compile_forward)
        return {
            "loop": _torch_compile(_loop_second_order_step, kwargs),
            "fold": _torch_compile(_folded_second_order_step, kwargs),
        }

    @property
    def compiled(self) -> bool:
        """Whether first-order meta-training forwards run through ``torch.compile``."""
        return self._compiled is not None

    @property
    def compiled_second_order(self) -> bool:
        """Whether second-order meta-training steps run through ``torch.compile`` as well."""
        return self._compiled_second_order is not None

    def _use_compiled(self) -> bool:
        # In meta-training only; under create_graph (second order) only as whole compiled steps:
        # AOTAutograd has no double backward of a compiled forward.
        if self._compiled is None or not self.training:
            return False
        return not self._modes()[1] or self._compiled_second_order is not None

    def _second_order_step(self, path: str, create_graph: bool) -> Callable[..., Any] | None:
        """The compiled whole step for ``path`` when this step is compiled second order, else ``None``."""
        if not create_graph or self._compiled_second_order is None:
            return None
        return self._compiled_second_order[path]

    # ------------------------------------------------------------ parameters
    def _select_fast_names(self, adapt: str | Sequence[str] | None) -> list[str]:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not names:
            raise ValueError("inner loop: the model has no parameter that requires a gradient, nothing to adapt")
        if adapt is None:
            return names
        patterns = [adapt] if isinstance(adapt, str) else list(adapt)
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"inner loop: adapt pattern {pattern!r} matches no parameter of the model")
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def initial_params(self) -> Params:
        """The initialisation theta of the adapted parameters (the model's own tensors)."""
        own = dict(self.model.named_parameters())
        return {n: own[n] for n in self.fast_names}

    def _first_step_params(self, tasks: int | None) -> Params:
        """theta as the first inner step's input: as is per task, ``(tasks, *shape)`` when batched.

        The tensors pass the guards of every later step's inputs, so a compiled first step
        reuses the later steps' graph instead of compiling one of its own (for second order the
        largest graph of the run): per task, views rather than the module's own Parameter
        objects; batched, a copy per task in theta's layout rather than an expansion with
        stride 0. The copy is made compiled or not, so both draw their noise into the same
        layout (the draw follows the tensors' strides).
        """
        theta = self.initial_params()
        if tasks is not None:
            return {n: p.expand(tasks, *p.shape).clone() for n, p in theta.items()}
        return {n: p.view_as(p) for n, p in theta.items()} if self._use_compiled() else theta

    def step_size(self, step: int) -> StepSize:
        """The step size used at inner step ``step``."""
        return self.inner_lr

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient currently flows through the inner gradients."""
        return not self.first_order

    def graph_state(self) -> tuple[Any, ...]:
        """The Python-side settings a step is built from; :class:`CapturedMetaStep` re-records on a change.

        Train or eval mode, the number of steps and, while meta-training, the derivative order
        (evaluation adapts first order either way). A subclass whose step reads other Python
        state (a schedule, a flag) adds it here, or a replayed graph would keep the old value.
        """
        return (self.training, self.second_order if self.training else None, self.steps)

    # ----------------------------------------------------------------- forward
    def functional_forward(self, params: Mapping[str, Tensor], x: Tensor, step: int | None = None) -> Tensor:
        """Run the model with ``params`` in place of its adapted parameters.

        Args:
            params: name -> tensor for (a subset of) the model's parameters.
            x: a batch of inputs, of shape ``(batch, *input)``.
            step: the inner step this forward belongs to (used by MAML++'s per-step BatchNorm).
        """
        return self._run_model({**params, **self._step_tensors(step)}, x)

    def _step_tensors(self, step: int | None) -> dict[str, Tensor]:
        """Module tensors that depend on the inner step (MAML++'s BatchNorm rows); none here."""
        return {}

    def _run_model(self, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        """``functional_call`` of the model with ``tensors`` in place of its own, compiled where it applies."""
        with self._loop_norms_mode():
            if self._use_compiled():
                return self._compiled(self.model, tensors, x)  # type: ignore[misc]
            return functional_call(self.model, tensors, (x,))

    def _loop_norms_mode(self) -> contextlib.AbstractContextManager[None]:
        # Every forward of every inner step passes here: enter the mode only when it is asked for.
        return decomposed_norms() if self.loop_norms == "decomposed" else contextlib.nullcontext()

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Predict with adapted ``params`` (from :meth:`adapt`) or with theta; ``x`` is ``(batch, *input)``."""
        return self.functional_forward(self.initial_params() if params is None else params, x, None)

    # ------------------------------------------------------------- inner loop
    def _modes(self) -> tuple[bool, bool]:
        """(track, create_graph): keep the graph back to theta; and through the gradients."""
        track = self.training and torch.is_grad_enabled()
        return track, track and self.second_order

    def adapt(self, support_x: Tensor, support_y: Tensor) -> list[Params]:
        """Adapt theta to one task's support set.

        Args:
            support_x: of shape ``(n_support, *input)``.
            support_y: of shape ``(n_support, ...)``.

        Returns:
            The parameters after each inner step (``steps`` dicts). While meta-training they are
            differentiable w.r.t. theta (and the step sizes); in eval mode, or under
            ``torch.no_grad()``, each step starts from detached tensors and no graph is kept.
        """
        track, create_graph = self._modes()
        params = self._first_step_params(None)
        trajectory: list[Params] = []
        with torch.enable_grad():
            for step in range(self.steps):
                if not track:
                    params = {n: p.detach().requires_grad_() for n, p in params.items()}
                noise = self.dropgrad.draw(params)
                step_fn = partial(self._loop_step, x=support_x, y=support_y, step=step, create_graph=create_graph, noise=noise)
                params = self._maybe_checkpointed(step_fn, params, create_graph)
                trajectory.append(params)
        return trajectory

    def _loop_step(
        self, params: Params, x: Tensor, y: Tensor, step: int, create_graph: bool, noise: list[Tensor | None]
    ) -> Params:
        compiled = self._second_order_step("loop", create_graph)
        if compiled is not None:
            with self._loop_norms_mode():
                return compiled(self, params, self._step_tensors(step), x, y, self.step_size(step), noise)
        loss = self._support_loss(params, x, y, step)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, materialize_grads=True)
        return sgd_step(params, dict(zip(params, grads)), self.step_size(step), noise)

    def _maybe_checkpointed(self, step_fn: Callable[[Params], Params], params: Params, create_graph: bool) -> Params:
        """``step_fn(params)``, recomputed in the backward pass when checkpointing second order."""
        if not (self.checkpoint and create_graph):
            return step_fn(params)
        names = list(params)

        def flat(*tensors: Tensor) -> tuple[Tensor, ...]:
            return tuple(step_fn(dict(zip(names, tensors))).values())

        # The recomputation runs the support forward again: BatchNorm layers that track running
        # statistics (MAML++'s per-step rows included) would count that batch a second time.
        tracked = list(self.buffers()) if self._tracks_running_stats() else []

        def contexts() -> tuple[contextlib.AbstractContextManager[None], _BuffersRestored]:
            return contextlib.nullcontext(), _BuffersRestored(tracked)

        return dict(zip(names, _checkpoint(flat, *params.values(), use_reentrant=False, context_fn=contexts)))

    def _tracks_running_stats(self) -> bool:
        """Whether a training forward updates BatchNorm running statistics."""
        return any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
            for m in self.model.modules()
        )

    def query_loss(
        self, trajectory: Sequence[Params], query_x: Tensor, query_y: Tensor, batched: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Query loss of the adapted parameters (the trajectory's last entry) and the query outputs.

        Shapes: ``query_x`` ``(n_query, *input)`` gives a scalar loss and ``(n_query, *out)``;
        with ``batched=True`` everything has a leading task dimension and the loss is ``(T,)``.
        """
        return self._query_at(trajectory[-1], query_x, query_y, len(trajectory) - 1, batched)

    def _query_at(self, params: Params, x: Tensor, y: Tensor, step: int, batched: bool) -> tuple[Tensor, Tensor]:
        if batched:
            return self._vmapped(params, x, y, step)
        return self._query_step(params, x, y, step)

    def _vmapped(self, params: Params, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """``(T,)`` losses and ``(T, n, *out)`` outputs of a task stack, batched (compiled where it applies)."""
        shared = self._step_tensors(step)
        if self.batch_with == "fold":
            if self._use_compiled():
                # The check for unsupported layers runs in eager calls only: a compiled region
                # passes its own internals through the mode.
                with FoldedTasks(x.shape[0]):
                    return self._compiled_vmap(self, params, shared, x, y)  # type: ignore[misc]
            with FoldedTasks(x.shape[0], params.values()):
                return _fold_tasks(self, params, shared, x, y)
        if self._use_compiled():
            # A compiled function called inside vmap runs eagerly; vmap traced inside
            # torch.compile compiles, grouped convolutions and all. The step's tensors go in as
            # inputs, so one graph serves every step.
            return self._compiled_vmap(self, params, shared, x, y)  # type: ignore[misc]
        return _vmap_tasks(self, params, shared, x, y)

    def task_loss(self, task: Task) -> tuple[Tensor, Tensor]:
        """Adapt on one task's support set; return (query loss, query outputs)."""
        resample_dropout_masks(self.model)
        trajectory = self.adapt(task.support_x, task.support_y)
        return self.query_loss(trajectory, task.query_x, task.query_y)

    # -------------------------------------------------------------- meta-batch
    def meta_loss(self, tasks: Task, batched: bool = False) -> MetaOutput:
        """Mean query loss over a stack of T tasks (each field has a leading task dimension).

        ``batched=False`` adapts the tasks one after another; ``batched=True`` adapts them
        together, with ``torch.func.vmap`` or folded into the batch (``batch_with``; same numbers;
        see :meth:`check_batchable`).
        """
        if batched:
            return self._meta_loss_vmap(tasks)
        losses, outputs = zip(*(self.task_loss(tasks.task(t)) for t in range(tasks.n_tasks)))
        task_losses = torch.stack(losses)
        return MetaOutput(task_losses.mean(), task_losses, torch.stack(outputs))

    def meta_backward(self, tasks: Task, batched: bool = False) -> MetaOutput:
        """Back-propagate the mean query loss; returns detached outputs.

        With ``batched=False`` each task's graph is freed right after its own backward, so peak
        memory is one task's graph (what makes second-order ResNets fit); with ``task_streams``
        on a GPU the tasks go round robin onto that many CUDA streams instead. With ``batched=True``
        the tasks go through vmap ``task_chunk`` at a time (all at once by default), each chunk
        back-propagated before the next.
        """
        n = tasks.n_tasks
        if batched:
            chunk = self.task_chunk or n
            if chunk >= n:
                out = self._meta_loss_vmap(tasks)
                out.loss.backward()
                return MetaOutput(out.loss.detach(), out.task_losses.detach(), out.query_output.detach())
            losses, outputs = [], []
            for start in range(0, n, chunk):
                part = self._meta_loss_vmap(Task(*(f[start : start + chunk] for f in tasks)))
                (part.task_losses.sum() / n).backward()
                losses.append(part.task_losses.detach())
                outputs.append(part.query_output.detach())
            task_losses = torch.cat(losses)
            return MetaOutput(task_losses.mean(), task_losses, torch.cat(outputs))
        device = tasks.support_x.device
        if self.task_streams is not None and device.type == "cuda" and n > 1:
            streams = task_streams(device, min(self.task_streams, n))
            params = [p for p in self.parameters() if p.requires_grad]
            losses, outputs = backward_on_streams(n, lambda t: self.task_loss(tasks.task(t)), params, streams)
        else:
            losses, outputs = [], []
            for t in range(n):
                loss, output = self.task_loss(tasks.task(t))
                (loss / n).backward()
                losses.append(loss.detach())
                outputs.append(output.detach())
        task_losses = torch.stack(losses)
        return MetaOutput(task_losses.mean(), task_losses, torch.stack(outputs))

    # ------------------------------------------------------------------ vmap
    def check_batchable(self) -> None:
        """Raise ValueError if the model cannot be adapted under ``vmap`` in its current mode.

        vmap cannot update shared running statistics from per-task batches, nor keep a
        per-task dropout mask in module state; such models use the per-task loop (same numbers).
        A subclass that overrides a method only the per-task loop calls (:meth:`adapt`,
        :meth:`task_loss`, :meth:`functional_forward`, ...: ``_LOOP_ONLY``) but none of the
        batched path's own (``_BATCHED_ONLY``) is refused too.

        Second order through BatchNorm/LayerNorm is exact here: only the forward is vmapped
        and the inner gradients come from plain autograd over the batched kernels. (Nesting
        ``torch.func.grad`` inside ``vmap`` instead gives second derivatives through
        ``batch_norm``/``layer_norm`` that are off by ~1e-3 in float64; see
        tests/core/test_batched_equivalence.py.)
        """
        cls = type(self)
        loop_only = [m for m in _LOOP_ONLY if getattr(cls, m) is not getattr(MAML, m)]
        if loop_only and all(getattr(cls, m) is getattr(MAML, m) for m in _BATCHED_ONLY):
            # The batched paths call the model through functional_call themselves and never
            # call these: batching would silently train the plain learner instead of the subclass.
            raise ValueError(
                f"batched adaptation ({self.batch_with}): {cls.__name__} overrides {', '.join(loop_only)}, which only "
                "the per-task loop calls; use batched=False, or override _vmapped / _vmap_step too"
            )
        for name, module in self.model.named_modules():
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if is_bn and module.training and module.track_running_stats:
                raise ValueError(
                    f"batched adaptation ({self.batch_with}) cannot update the running statistics of BatchNorm "
                    f"'{name}'; build it with track_running_stats=False or use batched=False"
                )
        if self.model.training and has_consistent_dropout(self.model):
            raise ValueError(
                f"batched adaptation ({self.batch_with}) does not support ConsistentDropout masks; use batched=False"
            )

    def _support_loss(self, params: Params, x: Tensor, y: Tensor, step: int) -> Tensor:
        return self.loss_fn(self.functional_forward(params, x, step), y)

    def _query_step(self, params: Params, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        out = self.functional_forward(params, x, step)
        return self.loss_fn(out, y), out

    def _decompose_norms(self) -> bool:
        if self.vmap_norms == "auto":
            return is_channels_last(self.model)
        return self.vmap_norms == "decomposed"

    def _vmap_step(
        self, params: Params, x: Tensor, y: Tensor, step: int, create_graph: bool, noise: list[Tensor | None]
    ) -> Params:
        # vmap only the forward; differentiate the sum of the T task losses with plain autograd
        # w.r.t. the (T, *shape) parameters: the tasks are independent, so each task's slice of
        # that gradient is its own gradient. Autograd then runs on the batched kernels vmap
        # chose (no torch.func.grad transform), which is exact to any order, supports
        # checkpointing, and costs less than vmapping every backward op.
        compiled = self._second_order_step(self.batch_with, create_graph)
        if compiled is not None:
            with FoldedTasks(x.shape[0]):
                return compiled(self, params, self._step_tensors(step), x, y, self.step_size(step), noise)
        losses, _ = self._vmapped(params, x, y, step)
        values = list(params.values())
        grads = torch.autograd.grad(losses.sum(), values, create_graph=create_graph, materialize_grads=True)
        return sgd_step(params, dict(zip(params, grads)), self.step_size(step), noise)

    def _check_folded_layers(self, params: Params, x: Tensor) -> None:
        """One eager forward of the folded support batch (no graph, random state kept) through
        :class:`FoldedTasks`' check: a layer it cannot fold raises NotImplementedError here. A
        compiled region traces through the folding rules unchecked, and such a layer would
        broadcast the per-task parameters wrongly (or fail with a shape error)."""
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), FoldedTasks(x.shape[0], params.values()):
            functional_call(self.model, {**params, **self._step_tensors(0)}, (x.flatten(0, 1),))
        self._folded_layers_checked = True

    def _meta_loss_vmap(self, tasks: Task) -> MetaOutput:
        self.check_batchable()
        track, create_graph = self._modes()
        if create_graph and self._compiled_second_order is not None and self.batch_with == "vmap":
            raise ValueError(
                "inner loop: compile_second_order compiles second-order steps of the per-task loop "
                "(batched=False) or of folded tasks (batch_with='fold'), not under vmap"
            )
        n = tasks.n_tasks
        params = self._first_step_params(n)
        if self.batch_with == "fold" and self._use_compiled() and not self._folded_layers_checked:
            self._check_folded_layers(params, tasks.support_x)
        trajectory: list[Params] = []
        # Folded tasks compute BatchNorm per task themselves; vmap may need the decomposition.
        with decomposed_norms(self.batch_with == "vmap" and self._decompose_norms()):
            with torch.enable_grad():
                for step in range(self.steps):
                    if not track:
                        params = {k: v.detach().requires_grad_() for k, v in params.items()}
                    # Noise is drawn outside vmap, shaped (T, *param): a fresh draw per task and element.
                    noise = self.dropgrad.draw(params)
                    step_fn = partial(
                        self._vmap_step, x=tasks.support_x, y=tasks.support_y, step=step,
                        create_graph=create_graph, noise=noise,
                    )
                    params = self._maybe_checkpointed(step_fn, params, create_graph)
                    trajectory.append(params)
            # Outside enable_grad: under torch.no_grad() (evaluation) the query keeps no graph.
            task_losses, outputs = self.query_loss(trajectory, tasks.query_x, tasks.query_y, batched=True)
        return MetaOutput(task_losses.mean(), task_losses, outputs)


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): a learned step size per parameter element.

    The step sizes live in ``self.lrs`` (initialised to ``inner_lr``) and are trained by the
    outer optimiser together with theta; everything else is as in :class:`MAML`.

    >>> learner = MetaSGD(nn.Linear(2, 2), inner_lr=0.05, steps=1)
    >>> learner.lrs["weight"].shape
    torch.Size([2, 2])
    """

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.lrs = nn.ParameterDict(
            {_escape(n): nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for n, p in self.initial_params().items()}
        )

    def step_size(self, step: int) -> StepSize:
        return {n: self.lrs[_escape(n)] for n in self.fast_names}


class MAMLPlusPlus(MAML):
    """MAML++ (Antoniou et al. 2019) with DropGrad.

    * learned per-layer per-step step sizes (``self.lrs[name]`` of shape ``(steps,)``),
    * multi-step loss: the query loss after every step, weighted by :func:`msl_weights`, for the
      first ``msl_epochs`` epochs; afterwards only the final step's loss,
    * per-step BatchNorm: every BatchNorm layer gets ``steps`` sets of weights/biases (meta-learned,
      not adapted in the inner loop) and of running statistics, indexed by the inner step,
    * derivative-order annealing: first-order for the first ``first_order_epochs`` epochs.

    Call :meth:`set_epoch` at the start of each epoch (the core trainer's ``on_epoch_start``).

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    >>> learner = MAMLPlusPlus(net, steps=3, first_order_epochs=2)
    >>> learner.lrs["0__weight"].shape, learner.bn_weight["1"].shape, learner.second_order
    (torch.Size([3]), torch.Size([3, 4]), False)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        per_step_bn: bool = True,
        msl_epochs: int = 10,
        first_order_epochs: int = 0,
        **kwargs,
    ) -> None:
        for name, value in (("msl_epochs", msl_epochs), ("first_order_epochs", first_order_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"MAML++: {name} must be an integer >= 0, got {name}={value!r}")
        self._bn_modules: list[tuple[str, nn.modules.batchnorm._BatchNorm]] = []
        if per_step_bn:
            self._bn_modules = [
                (name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
        super().__init__(model, **kwargs)
        self.per_step_bn = per_step_bn
        self.msl_epochs = msl_epochs
        self.first_order_epochs = first_order_epochs
        self.epoch = 0
        self.lrs = nn.ParameterDict(
            {_escape(n): nn.Parameter(torch.full((self.steps,), self.inner_lr)) for n in self.fast_names}
        )
        self.bn_weight = nn.ParameterDict()
        self.bn_bias = nn.ParameterDict()
        for name, m in self._bn_modules:
            key = _escape(name)
            if m.affine:
                self.bn_weight[key] = nn.Parameter(m.weight.detach().clone().repeat(self.steps, 1))
                self.bn_bias[key] = nn.Parameter(m.bias.detach().clone().repeat(self.steps, 1))
            if m.track_running_stats:
                self.register_buffer(f"bn_mean__{key}", m.running_mean.detach().clone().repeat(self.steps, 1))
                self.register_buffer(f"bn_var__{key}", m.running_var.detach().clone().repeat(self.steps, 1))
                self.register_buffer(f"bn_count__{key}", torch.zeros(self.steps, dtype=torch.long))

    def _select_fast_names(self, adapt: str | Sequence[str] | None) -> list[str]:
        names = super()._select_fast_names(adapt)
        # Per-step BatchNorm parameters are meta-learned only, never adapted in the inner loop.
        bn = {f"{m}.{p}" for m, _ in self._bn_modules for p in ("weight", "bias")}
        kept = [n for n in names if n not in bn]
        if not kept:
            raise ValueError(
                f"MAML++: adapt={adapt!r} selects only BatchNorm parameters, which per-step BatchNorm meta-learns "
                "and never adapts, so the inner loop would have nothing to adapt; select other parameters too or "
                "set per_step_bn=False"
            )
        return kept

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's derivative order and multi-step loss weights."""
        self.epoch = int(epoch)

    @property
    def second_order(self) -> bool:
        return not self.first_order and self.epoch >= self.first_order_epochs

    def step_size(self, step: int) -> StepSize:
        return {n: self.lrs[_escape(n)][step] for n in self.fast_names}

    def _step_tensors(self, step: int | None) -> dict[str, Tensor]:
        i = self.steps - 1 if step is None else step
        tensors: dict[str, Tensor] = {}
        for name, m in self._bn_modules:
            key = _escape(name)
            if m.affine:
                tensors[f"{name}.weight"] = self.bn_weight[key][i]
                tensors[f"{name}.bias"] = self.bn_bias[key][i]
            if m.track_running_stats:
                # Row views: BatchNorm's in-place statistics update lands in step i's row.
                tensors[f"{name}.running_mean"] = getattr(self, f"bn_mean__{key}")[i]
                tensors[f"{name}.running_var"] = getattr(self, f"bn_var__{key}")[i]
                tensors[f"{name}.num_batches_tracked"] = getattr(self, f"bn_count__{key}")[i]
        return tensors

    def _use_msl(self) -> bool:
        return self.training and self.epoch < self.msl_epochs and self.steps > 1

    def graph_state(self) -> tuple[Any, ...]:
        # The epoch matters only through the derivative order and, while the multi-step loss is
        # on, its weights: after that phase one graph serves every epoch.
        weights = tuple(msl_weights(self.steps, self.epoch, self.msl_epochs).tolist()) if self._use_msl() else None
        return (*super().graph_state(), weights)

    def query_loss(
        self, trajectory: Sequence[Params], query_x: Tensor, query_y: Tensor, batched: bool = False
    ) -> tuple[Tensor, Tensor]:
        if not self._use_msl():
            return super().query_loss(trajectory, query_x, query_y, batched)
        weights = msl_weights(self.steps, self.epoch, self.msl_epochs).tolist()
        total: Tensor | float = 0.0
        for i, params in enumerate(trajectory):
            loss, out = self._query_at(params, query_x, query_y, i, batched)
            total = total + weights[i] * loss
        return total, out  # type: ignore[return-value]
