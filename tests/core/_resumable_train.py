"""A small, killable meta-training run used by the kill-and-resume test.

Usage: ``python _resumable_train.py RUN_DIR [--resume]``. Trains a tiny MLP with a one-step
MAML inner update whose gradients go through DropGrad (linear schedule, own generator), on
random tasks drawn from torch's global RNG, with a StepLR scheduler stepped per step: so model,
optimiser, scheduler, DropGrad progress + generator and the global RNG all have to resume for
the final weights to match. Sleeps a little per step so a test can kill it mid-run. Writes the
final ``state_dict`` to ``RUN_DIR/final.pt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dropgrad.noise import DropGrad
from dropgrad.runtime import seed_everything
from dropgrad.training import MetaTrainer, TrainConfig

EPOCHS = 6
STEPS_PER_EPOCH = 20
CHECKPOINT_EVERY = 7
SLEEP_S = 0.01
INNER_LR = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    args = parser.parse_args()

    # One thread: bit-exact comparison across processes without depending on thread scheduling.
    torch.set_num_threads(1)
    seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=15, gamma=0.7)
    dropgrad = DropGrad(p=0.2, kind="gaussian", schedule="linear", generator=torch.Generator().manual_seed(1))

    def adapt_and_query(x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
        params = dict(model.named_parameters())
        inner = F.mse_loss(functional_call(model, params, (x[:5],)), y[:5])
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=create_graph)
        grads = dropgrad(list(grads))  # identity in eval mode (validation)
        fast = {name: p - INNER_LR * g for (name, p), g in zip(params.items(), grads)}
        return F.mse_loss(functional_call(model, fast, (x[5:],)), y[5:])

    def task(generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(4, 1, generator=generator)
        x = torch.randn(10, 4, generator=generator)
        return x, x @ w

    def step_fn(global_step: int) -> dict[str, float]:
        x, y = task()  # global RNG: its state must be restored on resume
        loss = adapt_and_query(x, y, create_graph=True)
        loss.backward()
        time.sleep(SLEEP_S)
        return {"loss": loss.item()}

    def validate_fn(epoch: int) -> dict[str, float]:
        g = torch.Generator().manual_seed(1234)  # fixed validation tasks
        losses = [adapt_and_query(*task(g), create_graph=False).item() for _ in range(4)]
        return {"val_loss": sum(losses) / len(losses)}

    config = TrainConfig(
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        checkpoint_every_steps=CHECKPOINT_EVERY,
        log_every_steps=2,
        progress=False,
    )
    trainer = MetaTrainer(
        args.run_dir,
        config,
        model,
        optimizer,
        step_fn=step_fn,
        validate_fn=validate_fn,
        scheduler=scheduler,
        scheduler_interval="step",
        dropgrad=dropgrad,
    )
    trainer.fit(resume=args.resume)
    torch.save(model.state_dict(), args.run_dir / "final.pt")


if __name__ == "__main__":
    main()
