"""MAML's sinusoid regression (Finn et al. 2017), meta-trained with DropGrad: ``dropgrad-sinusoid``.

Each task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]`` and
``x ~ U[-5, 5]``; the learner sees K support points and is scored by the query MSE after
adaptation. The run is a real one of the core library's training loop (run directory,
checkpoints, exact resume) on data generated from a seed, so it needs no files. At the end it
compares, on held-out test tasks, the adapted meta-learned model with the unadapted one and with
a network trained from scratch on each support set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import write_json
from ..config import add_dataclass_arguments, namespace_values
from ..inner import MAML, Task
from ..metrics import MeanCI, summarize
from ..noise import DropGrad, check_p, check_schedule
from ..rundir import run_config, start_run
from ..runtime import seed_everything, select_device
from ..training import MetaTrainer, TrainConfig, load_best_model, plot_metrics

# Task streams are separated by seed offsets so test tasks are never trained or validated on.
_VAL_STREAM, _TEST_STREAM = 1_000_003, 2_000_003


def sinusoid_tasks(seed: int, index: int, n_tasks: int, k_shot: int, n_query: int) -> Task:
    """A stack of sinusoid tasks, a pure function of ``(seed, index)``.

    Returns a :class:`~dropgrad.inner.Task` with ``support_x``/``support_y`` of shape
    ``(n_tasks, k_shot, 1)`` and ``query_x``/``query_y`` of shape ``(n_tasks, n_query, 1)``.

    >>> t = sinusoid_tasks(seed=0, index=3, n_tasks=2, k_shot=5, n_query=7)
    >>> tuple(t.support_x.shape), tuple(t.query_y.shape)
    ((2, 5, 1), (2, 7, 1))
    >>> torch.equal(t.query_x, sinusoid_tasks(0, 3, 2, 5, 7).query_x)
    True
    """
    rng = np.random.default_rng([seed, index])
    amp = rng.uniform(0.1, 5.0, size=(n_tasks, 1, 1))
    phase = rng.uniform(0.0, math.pi, size=(n_tasks, 1, 1))
    x = rng.uniform(-5.0, 5.0, size=(n_tasks, k_shot + n_query, 1))
    y = amp * np.sin(x - phase)
    x_t = torch.from_numpy(x).float()
    y_t = torch.from_numpy(y).float()
    return Task(x_t[:, :k_shot], y_t[:, :k_shot], x_t[:, k_shot:], y_t[:, k_shot:])


def sinusoid_net(hidden: int = 40) -> nn.Module:
    """Finn et al.'s regressor: 1 -> hidden -> hidden -> 1 with ReLUs."""
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@dataclass
class SinusoidConfig:
    """Options of ``dropgrad-sinusoid`` (every field is a command-line option)."""

    k_shot: int = field(default=10, metadata={"help": "support points per task (K)"})
    n_query: int = field(default=10, metadata={"help": "query points per training task"})
    meta_batch: int = field(default=25, metadata={"help": "tasks per meta-batch"})
    inner_steps: int = field(default=1, metadata={"help": "inner-loop steps while meta-training"})
    eval_steps: int = field(default=10, metadata={"help": "inner-loop steps when adapting at validation/test time"})
    inner_lr: float = field(default=0.01, metadata={"help": "inner-loop step size alpha"})
    outer_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the meta-update"})
    first_order: bool = field(default=False, metadata={"help": "first-order MAML (drop second-order terms)"})
    dropgrad: Literal["none", "binary", "gaussian"] = field(default="gaussian", metadata={"help": "DropGrad noise kind"})
    p: float = field(default=0.1, metadata={"help": "DropGrad rate p (noise variance p/(1-p)), 0 <= p < 1"})
    schedule: Literal["constant", "linear"] = field(
        default="constant", metadata={"help": "DropGrad strength schedule (linear: ramp from 0 to full)"}
    )
    epochs: int = field(default=10, metadata={"help": "meta-training epochs"})
    steps_per_epoch: int = field(default=200, metadata={"help": "meta-batches per epoch"})
    val_tasks: int = field(default=100, metadata={"help": "validation tasks per epoch"})
    test_tasks: int = field(default=500, metadata={"help": "held-out test tasks for the final results"})
    eval_query: int = field(default=100, metadata={"help": "query points per validation/test task"})
    scratch_steps: int = field(default=200, metadata={"help": "Adam steps of the from-scratch baseline on each support set"})
    patience: int | None = field(default=None, metadata={"help": "early stopping patience in epochs (none: off)"})
    batched: bool = field(default=True, metadata={"help": "adapt the tasks of a meta-batch together with vmap"})
    bf16: bool = field(default=False, metadata={"help": "meta-train and validate under bfloat16 autocast"})
    seed: int = field(default=0, metadata={"help": "seed of the task streams, initialisation and noise"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        at_least = {"k_shot": 1, "n_query": 1, "meta_batch": 1, "inner_steps": 1, "eval_steps": 0, "epochs": 1,
                    "steps_per_epoch": 1, "val_tasks": 1, "test_tasks": 1, "eval_query": 1, "scratch_steps": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        for name in ("inner_lr", "outer_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"--patience must be >= 1 (or none), got {self.patience}")
        check_p(self.p, "--p")
        check_schedule(self.schedule, self.epochs, "--schedule", "--epochs")


def make_learner(model: nn.Module, cfg: SinusoidConfig, steps: int, dropgrad: DropGrad | None) -> MAML:
    return MAML(model, inner_lr=cfg.inner_lr, steps=steps, first_order=cfg.first_order, dropgrad=dropgrad, loss_fn=F.mse_loss)


def evaluate(learner: MAML, tasks: Task, batched: bool = True) -> dict[str, Tensor]:
    """Per-task query MSE after and before adaptation (eval mode: no DropGrad), each ``(T,)``."""
    learner.eval()
    adapted = learner.meta_loss(tasks, batched=batched).task_losses.detach()
    with torch.no_grad():
        unadapted = ((learner(tasks.query_x) - tasks.query_y) ** 2).mean(dim=(1, 2))
    return {"adapted": adapted, "unadapted": unadapted}


def scratch_baseline(tasks: Task, steps: int, seed: int, lr: float = 1e-2) -> Tensor:
    """Query MSE of a fresh network trained with Adam on each task's support set alone, ``(T,)``.

    All tasks are trained at once as independent networks (stacked parameters under vmap);
    Adam is elementwise, so this equals training each network separately on its own loss.
    """
    torch.manual_seed(seed)
    nets = [sinusoid_net() for _ in range(tasks.n_tasks)]
    stacked = {
        name: torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).to(tasks.support_x.device).requires_grad_()
        for name, _ in nets[0].named_parameters()
    }
    base = nets[0].to(tasks.support_x.device)

    def predict(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(base, params, (x,))

    batched = torch.func.vmap(predict)
    opt = torch.optim.Adam(list(stacked.values()), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        # Sum over tasks: each network's gradient is its own task's mean-MSE gradient.
        ((batched(stacked, tasks.support_x) - tasks.support_y) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
    with torch.no_grad():
        return ((batched(stacked, tasks.query_x) - tasks.query_y) ** 2).mean(dim=(1, 2))


def run(cfg: SinusoidConfig, out: Path, resume: bool = False) -> dict:
    """Meta-train, select on validation, test on held-out tasks; returns (and writes) the results."""
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    model = sinusoid_net().to(device)
    dropgrad = DropGrad(cfg.p, cfg.dropgrad, cfg.schedule)  # type: ignore[arg-type]
    learner = make_learner(model, cfg, cfg.inner_steps, dropgrad)
    evaluator = make_learner(model, cfg, cfg.eval_steps, None)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.outer_lr)

    def step_fn(global_step: int) -> dict[str, float]:
        batch = sinusoid_tasks(cfg.seed, global_step, cfg.meta_batch, cfg.k_shot, cfg.n_query).to(device)
        result = learner.meta_backward(batch, batched=cfg.batched)
        return {"loss": result.loss.item()}

    val_tasks = sinusoid_tasks(cfg.seed + _VAL_STREAM, 0, cfg.val_tasks, cfg.k_shot, cfg.eval_query).to(device)

    def validate_fn(epoch: int) -> dict[str, float]:
        return {"val_mse": evaluate(evaluator, val_tasks, cfg.batched)["adapted"].mean().item()}

    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        steps_per_epoch=cfg.steps_per_epoch,
        monitor="val_mse",
        monitor_mode="min",
        patience=cfg.patience,
        bf16=cfg.bf16,
        progress=cfg.progress,
    )
    trainer = MetaTrainer(
        out, train_cfg, learner, optimizer, step_fn=step_fn, validate_fn=validate_fn, dropgrad=dropgrad, device=device
    )
    summary = trainer.fit(resume=resume)

    # Test the best checkpoint on tasks from a stream never used in training or validation.
    load_best_model(out, learner, map_location=device)
    test = sinusoid_tasks(cfg.seed + _TEST_STREAM, 0, cfg.test_tasks, cfg.k_shot, cfg.eval_query).to(device)
    scores = evaluate(evaluator, test, cfg.batched)
    scratch = scratch_baseline(test, cfg.scratch_steps, cfg.seed + _TEST_STREAM)
    adapted, unadapted, scratch = (v.cpu().numpy() for v in (scores["adapted"], scores["unadapted"], scratch))
    parts: dict[str, MeanCI] = {
        "test_mse_adapted": summarize(adapted),
        "test_mse_unadapted": summarize(unadapted),
        "test_mse_scratch": summarize(scratch),
        # Paired over the same test tasks: baseline MSE minus adapted MSE (> 0: adaptation wins).
        "test_gain_vs_unadapted": summarize(unadapted - adapted),
        "test_gain_vs_scratch": summarize(scratch - adapted),
    }
    results = {
        **{k: v.mean for k, v in parts.items()},
        **{f"{k}_ci95": v.ci95 for k, v in parts.items()},
        "test_tasks": cfg.test_tasks,
        "eval_steps": cfg.eval_steps,
        "best_epoch": summary["best_epoch"],
        "device": str(device),
    }
    write_json(out / "results.json", results, sort_keys=True)
    plot_metrics(out / "metrics.jsonl", out / "val_mse.png", ["val_mse"])
    _plot_example(evaluator, test.task(0), out / "example.png")
    for k, v in parts.items():
        trainer.log(f"{k}: {v}")
    return results


def _plot_example(learner: MAML, task: Task, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learner.eval()
    params = learner.adapt(task.support_x, task.support_y)[-1]
    grid = torch.linspace(-5, 5, 200, device=task.support_x.device).unsqueeze(1)
    order = task.query_x[:, 0].argsort()
    with torch.no_grad():
        before, after = learner(grid), learner(grid, params)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(task.query_x[order, 0].cpu(), task.query_y[order, 0].cpu(), "k-", label="true function")
    ax.plot(grid[:, 0].cpu(), before[:, 0].cpu(), "--", label="meta-learned init")
    ax.plot(grid[:, 0].cpu(), after[:, 0].cpu(), "-", label=f"after {learner.steps} steps")
    ax.plot(task.support_x[:, 0].cpu(), task.support_y[:, 0].cpu(), "o", label="support points")
    ax.legend()
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dropgrad-sinusoid``."""
    parser = argparse.ArgumentParser(
        prog="dropgrad-sinusoid",
        description="Meta-train MAML with DropGrad on sinusoid regression (Finn et al. 2017) and test it.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/sinusoid"), help="run directory (default: runs/sinusoid)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of options; command-line options override it")
    add_dataclass_arguments(parser, SinusoidConfig)
    args = parser.parse_args(argv)
    given = namespace_values(args, SinusoidConfig)
    try:
        cfg = run_config(SinusoidConfig, args.out, given, resume=args.resume, config_file=args.config)
        select_device(cfg.device)  # a bad --device is an error before the run directory exists
        if not args.resume:
            start_run(args.out, cfg)
    except ValueError as err:
        parser.error(str(err))
    results = run(cfg, args.out, resume=args.resume)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
