"""One ``track-train`` run: sequences, learner, the core training loop, results.

The run directory (``--out``) ends up holding::

    config.json          every option, resolved, with ``tracker``, ``dropgrad`` and
                         ``backbone_source`` (what ``track-eval --checkpoint`` reads)
    metrics.jsonl        train records (query loss) and one val record per epoch
    log.txt              every printed line
    checkpoints/         last.pt (full state, exact resume) and best.pt (the learner's
                         state_dict: theta and the per-element step sizes alpha)
    synthetic-data/      --source synthetic without --root: the generated training set
    val_loss.png         validation query loss (after and before adaptation) over epochs
    results.json         the best checkpoint's validation scores and the run's facts

Validation: the query loss after ONE inner step (DropGrad off) on fixed tasks of the held-out
sequences; ``val_loss_unadapted`` is the same tasks' query loss of theta itself, so the gap
between the two is what the first-frame adaptation buys.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from dropgrad import (
    DropGrad,
    MetaSGD,
    MetaTrainer,
    TrainConfig,
    check_new_run_dir,
    is_unstarted_run,
    load_best_model,
    plot_metrics,
    seed_everything,
    select_device,
    start_run,
    write_json,
)

from ..meta import BACKBONE_RANDOM, MetaTrackerDef, build_learner, meta_tracker
from .config import TrackTrainConfig
from .sources import discard_stale_synthetic, load_sources, split_sequences
from .tasks import VAL_STREAM, TaskSampler

__all__ = ["evaluate_tasks", "make_dropgrad", "train"]


def make_dropgrad(cfg: TrackTrainConfig) -> DropGrad:
    """The run's DropGrad operator (on every adapted parameter's inner gradient).

    >>> make_dropgrad(TrackTrainConfig(dropgrad="binary", dropgrad_p=0.3)).std
    0.6546536707079772
    """
    return DropGrad(cfg.dropgrad_p, cfg.dropgrad, cfg.dropgrad_schedule)  # type: ignore[arg-type]


def evaluate_tasks(
    learner: MetaSGD, sampler: TaskSampler, picks: list[tuple[str, int]], device: torch.device, chunk: int = 8
) -> dict[str, float]:
    """Mean query loss after adaptation (``val_loss``) and of theta itself (``val_loss_unadapted``).

    The learner is put in eval mode (no DropGrad) and restored afterwards. The tasks of
    ``picks`` are rebuilt here, pick ``k`` from rng stream ``[seed, 0, k + 1]`` of the sampler, so
    they are the same at every call for the same model, whatever ``chunk`` (tasks built and
    adapted together) is: runs with another ``--tasks-per-batch`` validate on the same tasks.
    """
    was_training = learner.training
    learner.eval()
    adapted: list[torch.Tensor] = []
    unadapted: list[torch.Tensor] = []
    try:
        for i in range(0, len(picks), chunk):
            tasks = sampler.build(picks[i : i + chunk], step=0, offset=i).to(device)
            adapted.append(learner.meta_loss(tasks, batched=False).task_losses.detach().float().cpu())
            with torch.no_grad():
                losses = [learner.loss_fn(learner(tasks.query_x[k]), tasks.query_y[k]) for k in range(tasks.n_tasks)]
            unadapted.append(torch.stack(losses).float().cpu())
    finally:
        learner.train(was_training)
    return {"val_loss": torch.cat(adapted).mean().item(), "val_loss_unadapted": torch.cat(unadapted).mean().item()}


def _check_run_dir(out: Path, resume: bool) -> bool:
    """Refuse a wrong ``out``; True when a new run takes over an unstarted one there."""
    if resume:
        if not (out / "config.json").is_file():
            raise ValueError(f"--resume: {out / 'config.json'} not found; {out} is not a track-train run directory")
        return False
    return check_new_run_dir(out)


def _random_backbone_warning(definition: MetaTrackerDef) -> str:
    return (
        f"{definition.name}: the backbone is RANDOMLY INITIALISED (no --backbone-weights); the meta-learned tracker "
        f"will not be comparable to the paper's. Its checkpoint records backbone_source={BACKBONE_RANDOM!r}"
    )


def train(cfg: TrackTrainConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Meta-train ``cfg.tracker`` (MetaSGD, one inner step) and write the run directory.

    Everything a user can get wrong (tracker name, data, run directory, weight file) fails
    before the first step. Without ``resume`` the run directory is created (``start_run``);
    with it, the run continues from ``checkpoints/last.pt`` exactly.

    Returns:
        the content of ``results.json``.
    """
    out = Path(out)
    definition = meta_tracker(cfg.tracker)
    horizon = cfg.horizon or definition.default_horizon
    device = select_device(cfg.device)
    # A --resume of a run stopped before its first checkpoint (maybe while writing its synthetic
    # set) starts it again, as a new run there would: set, log and metrics.
    restart = resume and is_unstarted_run(out)
    if _check_run_dir(out, resume) or restart:
        discard_stale_synthetic(cfg, out)
    # The default synthetic set lives inside the run directory, so it is made after start_run.
    inside = cfg.source == "synthetic" and cfg.root is None
    sequences = None if inside else load_sources(cfg, out)
    weights = Path(cfg.backbone_weights) if cfg.backbone_weights is not None else None
    if weights is not None and not weights.is_file():
        raise ValueError(f"--backbone-weights {weights}: file not found")

    seed_everything(cfg.seed)
    learner, source = build_learner(definition, weights, make_dropgrad(cfg), cfg.first_order)
    if resume and cfg.backbone_source not in (None, source):
        raise ValueError(
            f"--resume: {out / 'config.json'} says backbone_source={cfg.backbone_source!r}, but the backbone now "
            f"builds from {source!r}; resume with the same --backbone-weights"
        )
    cfg = dataclasses.replace(cfg, backbone_source=source)
    if not resume or restart:
        start_run(out, cfg, app="track-train")
    if sequences is None:
        sequences = load_sources(cfg, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = split_sequences(sequences, cfg.val_sequences, horizon)
    learner.to(device)
    train_sampler = TaskSampler(definition, learner.model, split.train, horizon, cfg.seed)
    val_sampler = TaskSampler(definition, learner.model, split.val, horizon, cfg.seed + VAL_STREAM)
    val_picks = val_sampler.fixed(cfg.val_tasks)
    optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=cfg.outer_lr)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        tasks = train_sampler.batch(step, cfg.tasks_per_batch).to(device)
        result = learner.meta_backward(tasks, batched=False)
        return {"loss": result.loss.detach()}  # read by the trainer when it logs, not every step

    def validate_fn(epoch: int) -> dict[str, float]:
        return evaluate_tasks(learner, val_sampler, val_picks, device, chunk=cfg.tasks_per_batch)

    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        monitor="val_loss",
        monitor_mode="min",
        patience=cfg.patience,
        grad_clip=cfg.grad_clip,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        progress=cfg.progress,
    )
    trainer = MetaTrainer(
        out, train_cfg, learner, optimizer, step_fn=step_fn, validate_fn=validate_fn,
        dropgrad=learner.dropgrad, device=device,
    )
    for w in caught:
        trainer.log(f"warning: {w.message}", echo=False)  # warnings.warn shows it
        warnings.warn(str(w.message), stacklevel=2)
    if source == BACKBONE_RANDOM:
        message = _random_backbone_warning(definition)
        trainer.log("WARNING: " + message, echo=False)
        warnings.warn(message, stacklevel=2)
    frames = sum(len(s) for s in split.train.values())
    trainer.log(
        f"{definition.name}: {len(split.train)} training sequences ({frames} frames, source {cfg.source}), "
        f"{len(split.val)} held out ({', '.join(split.val)}; {len(val_picks)} validation tasks); horizon {horizon}; "
        f"DropGrad {cfg.dropgrad_spec}; backbone {source}; {sum(p.numel() for p in learner.lrs.values())} step sizes; "
        f"device {device}"
    )
    summary = trainer.fit(resume=resume)

    load_best_model(out, learner, map_location=device)
    scores = evaluate_tasks(learner, val_sampler, val_picks, device, chunk=cfg.tasks_per_batch)
    alphas = torch.cat([a.detach().flatten().cpu() for a in learner.lrs.values()])
    results = {
        "tracker": definition.name,
        "source": cfg.source,
        "backbone_source": source,
        "dropgrad": cfg.dropgrad_spec,
        "best_epoch": summary["best_epoch"],
        "epochs_completed": summary["epochs_completed"],
        "global_step": summary["global_step"],
        "val_loss": scores["val_loss"],
        "val_loss_unadapted": scores["val_loss_unadapted"],
        "val_tasks": len(val_picks),
        "train_sequences": len(split.train),
        "val_sequences": list(split.val),
        "step_size_mean": float(alphas.mean()),
        "step_size_abs_max": float(alphas.abs().max()),
        "wall_time_s": summary["wall_time_s"],
        "device": str(device),
    }
    write_json(out / "results.json", results, sort_keys=True)
    plot_metrics(out / "metrics.jsonl", out / "val_loss.png", ["val_loss", "val_loss_unadapted"], title="held-out query loss")
    trainer.log(
        f"best epoch {results['best_epoch']}: held-out query loss {scores['val_loss']:.4f} after adaptation, "
        f"{scores['val_loss_unadapted']:.4f} before"
    )
    return results


