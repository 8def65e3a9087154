"""One rank of the distributed tests, started by ``python -m torch.distributed.run`` (or plainly, as 1 process).

Usage: ``torchrun --standalone --nproc_per_node=2 _distributed_worker.py OUT`` (one launch, as
process start-up dominates the test time):

1. :func:`reduce` exercises the collectives of :class:`dropgrad.DistributedContext` and saves
   what each rank got to ``OUT/reduce.rank{r}.pt``;
2. :func:`train` runs a tiny :class:`dropgrad.MetaTrainer` in ``OUT/run`` for 2 of 3 epochs, then,
   with a fresh model and scrambled RNGs (as a restarted process would have), resumes it to 3
   epochs; final parameters, RNG state and summary go to ``OUT/run.rank{r}.pt``.

The test runs :func:`train` in its own process (single-process context) as the reference.
"""

from __future__ import annotations

import sys

import torch
from dropgrad import DistributedContext, DistributedError, MetaTrainer, TrainConfig
from torch import nn

N_TASKS = 5


def model_and_tasks() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    # BatchNorm with running statistics: a floating buffer and an integer one to keep in sync.
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_TASKS, 6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(N_TASKS, 6, 2, generator=g, dtype=torch.float64)
    return model, x, y


def meta_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tasks: range) -> None:
    """Mean over ``tasks`` of per-task losses, backpropagated task by task (like MAML's loop)."""
    for t in tasks:
        loss = ((model(x[t]) - y[t]) ** 2).mean()
        (loss / len(tasks)).backward()


def reduce(ctx: DistributedContext, out: str) -> None:
    model, x, y = model_and_tasks()
    part = ctx.meta_batch_shard(N_TASKS)  # 3 + 2 tasks: weights 0.6 / 0.4
    meta_grads(model, x, y, part.indices)
    unused = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # nobody's gradient: must stay None
    if ctx.rank == 1:
        model[3].bias.grad = None  # a gradient present on rank 0 only counts as zero on rank 1
    metrics = ctx.all_reduce_gradients(
        [*model.parameters(), unused], metrics={"loss": float(ctx.rank + 1)}, buffers=list(model.buffers())
    )
    # A module each rank initialised differently (its seed, a buffer): broadcast_module gives
    # every rank rank 0's parameters and buffers.
    torch.manual_seed(ctx.rank_seed(0))
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    other[1].running_mean.add_(ctx.rank + 1)
    extra = torch.full((2,), float(ctx.rank))  # a tensor outside the module (e.g. a learned step size)
    ctx.broadcast_module(other, extra=[extra])
    # No meta_batch_shard since the last reduction: weight 1 / world_size. float64 gradients
    # that float32 would round to 1, and no integer buffer to make the buffer float64 anyway.
    fine = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    fine.grad = torch.full((3,), 1 + 1e-10 * (ctx.rank + 1), dtype=torch.float64)
    plain = ctx.all_reduce_gradients([fine], metrics={"m": float(ctx.rank)})
    # Explicit weights; a rank with weight 0 (no tasks) may hold NaN metrics, which count as 0.
    explicit = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    # Rank 1 (weight 0, no tasks) holds a NaN gradient: weight 0 means it adds nothing, not NaN * 0.
    explicit.grad = torch.full((2,), float("nan") if ctx.rank else 1.0, dtype=torch.float64)
    weighted = ctx.all_reduce_gradients(
        [explicit], metrics={"loss": float("nan") if ctx.rank else 2.0}, weight=0.0 if ctx.rank else 1.0
    )
    # float32 gradients beside an integer buffer: the buffer is reduced in float64, so a count
    # past 2**24 stays exact, and a float32 parameter with a gradient on rank 0 only gets a float32 one.
    single = nn.Parameter(torch.zeros(3))
    single.grad = None if ctx.rank else torch.full((3,), 0.25)
    count = torch.tensor(2**24 + 1 if ctx.rank == 0 else 7, dtype=torch.int64)
    ctx.all_reduce_gradients([single], buffers=[count], weight=0.5)
    votes = ctx.all_gather_object(ctx.rank * 10)
    value = ctx.broadcast_object({"v": ctx.rank})
    ctx.barrier()
    try:
        ctx.agree(ValueError("bad input on rank 1") if ctx.rank == 1 else None)
        agreed = "none"
    except DistributedError as err:
        agreed = str(err)
    except ValueError as err:
        agreed = f"own: {err}"
    torch.save(
        {
            "grads": {n: p.grad for n, p in model.named_parameters()},
            "unused": unused.grad,
            "buffers": dict(model.named_buffers()),
            "metrics": metrics,
            "votes": votes,
            "value": value,
            "agreed": agreed,
            "broadcast": {**dict(other.named_parameters()), **dict(other.named_buffers())},
            "extra": extra,
            "single": single.grad,
            "count": count,
            "fine": fine.grad,
            "plain": plain,
            "explicit": explicit.grad,
            "weighted": weighted,
        },
        f"{out}.rank{ctx.rank}.pt",
    )


def train(ctx: DistributedContext, run_dir: str, epochs: int, resume: bool = False) -> None:
    """Meta-train a small regression model on 4 fixed tasks per step (this rank's shard of them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(ctx.rank_seed(0))
    w_true = torch.randn(3, 1, generator=torch.Generator().manual_seed(3))

    def step_fn(step: int) -> dict[str, float]:
        x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(step))  # same tasks on every rank
        torch.randn(())  # a draw from this rank's global RNG stream, which last.pt must resume
        part = ctx.meta_batch_shard(4)
        loss = torch.stack([((model(x[t]) - x[t] @ w_true) ** 2).mean() for t in part.indices]).mean()
        loss.backward()
        return {"loss": loss.item()}

    def validate_fn(epoch: int) -> dict[str, float]:
        x = torch.randn(20, 3, generator=torch.Generator().manual_seed(99))
        with torch.no_grad():
            return {"val_loss": ((model(x) - x @ w_true) ** 2).mean().item()}

    cfg = TrainConfig(epochs=epochs, steps_per_epoch=3, progress=False, patience=2)
    trainer = MetaTrainer(run_dir, cfg, model, opt, step_fn=step_fn, validate_fn=validate_fn,
                          logger=lambda line: None, distributed=ctx)
    summary = trainer.fit(resume=resume)
    torch.save({"params": [p.detach() for p in model.parameters()], "rng": torch.get_rng_state(),
                "summary": summary}, f"{run_dir}.rank{ctx.rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    context = DistributedContext.from_env()
    context.init("cpu")
    reduce(context, f"{out}/reduce")
    train(context, f"{out}/run", 2)
    torch.manual_seed(12345)  # a restarted process: its RNG state must come from last.pt
    train(context, f"{out}/run", 3, resume=True)
    context.destroy()
