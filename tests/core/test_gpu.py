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
