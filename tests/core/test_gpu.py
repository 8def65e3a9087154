"""The same numbers on the GPU: DropGrad and the inner loop on CUDA (skipped without CUDA)."""

import math

import pytest
import torch
from torch import nn

from dropgrad import MAML, DropGrad, Task, select_device

pytestmark = pytest.mark.gpu


def test_auto_device_is_cuda():
    assert select_device("auto").type == "cuda"


@pytest.mark.parametrize("kind", ["binary", "gaussian"])
def test_noise_moments_on_cuda(kind):
    p = 0.2
    n = DropGrad(p, kind)([torch.ones(1_000_000, device="cuda", dtype=torch.float64)])[0]
    assert n.device.type == "cuda"
    assert abs(n.mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / 1e6)
    assert n.var().item() == pytest.approx(p / (1 - p), rel=0.02)


def test_cpu_generator_with_cuda_gradients():
    g = torch.Generator().manual_seed(0)
    out = DropGrad(0.3, generator=g)([torch.ones(10, device="cuda")])[0]
    assert out.device.type == "cuda"


def test_meta_gradients_match_cpu():
    torch.manual_seed(0)
    cpu = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    gpu = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4)).double().to(select_device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(1)
    tasks = Task(torch.randn(2, 8, 3, generator=g, dtype=torch.float64), torch.arange(4).repeat(2, 2),
                 torch.randn(2, 12, 3, generator=g, dtype=torch.float64), torch.arange(4).repeat(2, 3))
    grads = []
    for model, batch, batched in ((cpu, tasks, False), (gpu, tasks.to("cuda"), False), (gpu, tasks.to("cuda"), True)):
        learner = MAML(model, inner_lr=0.3, steps=2)
        loss = learner.meta_loss(batch, batched=batched).loss
        grads.append([x.cpu() for x in torch.autograd.grad(loss, list(model.parameters()))])
    for other in grads[1:]:
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads[0], other))


def test_meta_training_steps_do_not_wait_for_the_gpu(tmp_path):
    # The trainer reads the step metrics (0-d CUDA tensors here) only when it logs, so after the
    # first step (set-up) no step may synchronise: torch raises on any operation that would.
    from dropgrad.training import MetaTrainer, TrainConfig

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(cuda)
    learner = MAML(model, inner_lr=0.1, steps=2, first_order=True, dropgrad=DropGrad(0.1, "gaussian"))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    g = torch.Generator(cuda).manual_seed(0)
    support_y = torch.arange(4, device=cuda).repeat_interleave(2).repeat(2, 1)
    query_y = torch.arange(4, device=cuda).repeat_interleave(3).repeat(2, 1)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        tasks = Task(torch.randn(2, 8, 12, device=cuda, generator=g), support_y,
                     torch.randn(2, 12, 12, device=cuda, generator=g), query_y)
        out = learner.meta_backward(tasks)
        return {"loss": out.loss.detach(), "acc": out.accuracy(query_y).mean().double() * 100}

    cfg = TrainConfig(epochs=1, steps_per_epoch=6, log_every_steps=6, grad_clip=1.0, monitor="train_loss",
                      progress=False)
    trainer = MetaTrainer(tmp_path, cfg, learner, optimizer, step_fn=step_fn, logger=lambda line: None)
    train_step, checked = trainer._train_step, []

    def no_sync_step(check_grads: bool) -> dict:
        if trainer.global_step == 0:
            return train_step(check_grads)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return train_step(check_grads)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            checked.append(trainer.global_step)

    trainer._train_step = no_sync_step
    trainer.fit()
    assert checked == [1, 2, 3, 4, 5]
