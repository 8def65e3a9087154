"""The meta-learners of the paper's few-shot experiments, built on the core inner loop.

=================  =======================================================================
``maml``           MAML (first or second order), one scalar inner step size
``metasgd``        Meta-SGD: a learned step size per parameter element
``metasgd-star``   Meta-SGD started from a feature extractor pre-trained with cross-entropy
                   on all base classes (the paper's MetaSGD*)
``mamlpp``         MAML++: per-layer per-step step sizes, multi-step loss, per-step
                   BatchNorm with running statistics, derivative-order annealing (and,
                   in ``run.train``, cosine annealing of the meta-optimiser's rate)
=================  =======================================================================

DropGrad sits between each inner gradient and its update in all four (``dropgrad.DropGrad``);
it follows the learner's train/eval mode, so validation and test adapt without noise.
"""

from __future__ import annotations

from typing import Literal

import torch
from dropgrad import MAML, DropGrad, MAMLPlusPlus, MetaSGD

from .config import FewShotConfig, resolve_defaults
from .models import build_model, dropgrad_groups

__all__ = ["build_learner", "check_learner", "check_task_streams", "make_dropgrad", "use_batched", "use_cuda_graph"]

Method = Literal["maml", "metasgd", "metasgd-star", "mamlpp"]


def make_dropgrad(cfg: FewShotConfig, generator: torch.Generator | None = None) -> DropGrad:
    """The DropGrad operator of a run: kind, p, schedule and the selected layer groups.

    ``--dropgrad-layers all`` selects every parameter; otherwise a comma-separated list of the
    backbone's groups (e.g. ``block3,block4``) or parameter-name patterns.

    >>> cfg = FewShotConfig(backbone="resnet18", dropgrad_layers="block4,fc")
    >>> make_dropgrad(cfg).selected(["conv1.weight", "layer4.0.conv1.weight", "fc.bias"])
    (False, True, True)
    """
    layers = cfg.dropgrad_layers.strip()
    selection = None if layers.lower() in ("", "all", "full") else [s.strip() for s in layers.split(",") if s.strip()]
    return DropGrad(
        cfg.p,
        cfg.dropgrad,  # type: ignore[arg-type]
        cfg.dropgrad_schedule,  # type: ignore[arg-type]
        params=selection,
        groups=dropgrad_groups(cfg.backbone),
        generator=generator,
    )


def check_learner(cfg: FewShotConfig) -> None:
    """Build the run's learner on the meta device (no memory, no data): options only the learner
    can check, such as ``--dropgrad-layers`` against the backbone's parameter names, then fail
    before the run directory is written, not after the data is loaded."""
    with torch.device("meta"):
        build_learner(cfg)


def build_learner(cfg: FewShotConfig, n_way: int | None = None) -> MAML:
    """The run's meta-learner around a freshly initialised backbone (seed the RNG first).

    The learner is an ``nn.Module`` whose state dict holds everything meta-learned: the
    backbone (theta), learned step sizes (MetaSGD, MAML++), MAML++'s per-step BatchNorm and the
    DropGrad state. Its ``train()``/``eval()`` switches DropGrad and dropout on and off.

    >>> learner = build_learner(FewShotConfig(backbone="conv4", method="metasgd", dropgrad="binary", p=0.2))
    >>> type(learner).__name__, learner.steps, learner.dropgrad.kind, learner.dropgrad.p
    ('MetaSGD', 5, 'binary', 0.2)
    """
    mamlpp = cfg.method == "mamlpp"
    model = build_model(
        cfg.backbone,  # type: ignore[arg-type]
        n_way or cfg.way,
        in_channels=cfg.channels,
        image_size=cfg.image_size_resolved,
        regularizer=cfg.regularizer,  # type: ignore[arg-type]
        dropout_p=cfg.dropout_p,
        bn_running_stats=mamlpp,
    )
    if cfg.channels_last:
        # Inputs need no conversion: a convolution with channels_last weights outputs channels_last.
        model = model.to(memory_format=torch.channels_last)
    common = dict(
        inner_lr=cfg.inner_lr,
        steps=cfg.inner_steps,
        first_order=cfg.first_order,
        dropgrad=make_dropgrad(cfg),
        checkpoint=cfg.checkpoint,
        task_chunk=cfg.task_chunk,
        compile_forward={"options": {"combo_kernels": True}} if cfg.compile_combo else cfg.compile,
        compile_second_order=cfg.compile_second_order,
        folded_forms=cfg.folded_forms or None,
        task_streams=cfg.task_streams,
        batch_with="fold" if cfg.batched == "fold" else "vmap",
    )
    if cfg.method == "maml":
        return MAML(model, **common)
    if cfg.method in ("metasgd", "metasgd-star"):
        return MetaSGD(model, **common)
    if mamlpp:
        msl_epochs = resolve_defaults(cfg).msl_epochs  # as the run's config.json states it
        return MAMLPlusPlus(model, msl_epochs=msl_epochs, first_order_epochs=cfg.first_order_epochs, **common)
    raise ValueError(f"--method must be maml, metasgd, metasgd-star or mamlpp, got {cfg.method!r}")


def _on_gpu(learner: MAML) -> bool:
    return next(learner.parameters()).device.type == "cuda"


def use_cuda_graph(learner: MAML, setting: str) -> bool:
    """Whether meta-training steps and evaluation replay CUDA graphs (``dropgrad.CapturedMetaStep``,
    ``dropgrad.CapturedEvaluation``): ``on``/``off``, or ``auto`` (on a GPU).
    """
    if setting == "off":
        return False
    if not _on_gpu(learner):
        if setting == "on":
            raise ValueError("--cuda-graph on needs a CUDA device (--device cuda); use auto or off on a CPU")
        return False
    return True


def check_task_streams(learner: MAML, batched: bool) -> None:
    """Refuse ``--task-streams`` where it would do nothing: off a GPU, or with batched training."""
    if learner.task_streams is None:
        return
    if not _on_gpu(learner):
        raise ValueError("--task-streams needs a CUDA device (--device cuda); on a CPU the tasks run one after another")
    if batched:
        raise ValueError(
            "--task-streams spreads the per-task loop over streams, but training batches the tasks "
            f"({learner.batch_with}): add --batched off (or keep --batched auto with --cuda-graph, which loops)"
        )


def use_batched(learner: MAML, setting: str, training: bool = True, graphed: bool = False) -> bool:
    """Whether to adapt a meta-batch's tasks together: ``on`` (vmap), ``fold`` (folded into the
    batch dimension; the learner was built with ``batch_with="fold"``), ``off``, or ``auto``.

    ``on`` and ``fold`` insist, and raise when batching is not exact for the model. ``auto``
    batches on a GPU when vmap is exact for the model: models it cannot adapt (consistent
    dropout masks, BatchNorm running statistics while training) take the per-task loop, which
    gives the same numbers. Second-order meta-training also loops under ``auto``:
    batched it is exact but was slower and larger on an H200 (ResNet-18 224 px: 4.21 against
    4.58 tasks/s, 17.5 against 7.45 GiB; docs/performance.md); ``on`` still batches it. On a
    CPU the loop is as fast or faster (Conv4 evaluation: 0.08 s per task looped against 0.14 s
    batched), so ``auto`` loops there.
    ``training`` asks for meta-training or for evaluation, where adaptation is first order and
    dropout is off, so vmap is exact for more models. ``graphed``: the steps (training or
    evaluation) replay a CUDA graph, where the loop is the faster one (meta-training ResNet-18
    224 px first order with bf16 and channels_last: 44.6 against 25.0 tasks/s; Conv4 84 px: 152
    against 78; H200, docs/performance.md), so ``auto`` loops then too. Folded tasks beat the
    loop there for compiled Conv4 first order (306 against 242 tasks/s, H200), but have been
    measured for Conv4 only, so ``auto`` does not choose them.
    """
    if setting == "off":
        return False
    if setting == "auto" and not _on_gpu(learner):
        return False
    if setting == "auto" and (graphed or (training and not learner.first_order)):
        return False
    was_training = learner.training
    learner.train(training)
    try:
        learner.check_batchable()
        ok, reason = True, ""
    except ValueError as err:
        ok, reason = False, str(err)
    finally:
        learner.train(was_training)
    if setting in ("on", "fold") and not ok:
        # The core names its Python argument; here the way out is an option.
        raise ValueError(f"--batched {setting}: {reason.replace('use batched=False', 'use --batched off (or auto)')}")
    return ok

