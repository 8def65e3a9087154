"""Every tensor of a meta-step on the learner's device, checked on the CPU.

With the learner and its tasks on torch's ``meta`` device, a tensor made without ``device=``
(torch.zeros, arange, tensor, ...) lands on the CPU and meets a meta tensor, which raises as a
CPU tensor meeting a CUDA one does on a GPU (there, in the better case; in the worse, a copy per
step). The GPU-only failure, caught without a GPU.
"""

import sys

import pytest
import torch
from dropgrad import MAML, ConsistentDropout, DropGrad, MAMLPlusPlus, MetaSGD
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from .conftest import make_tasks, tiny_net

META = torch.device("meta")
# Host-side on purpose: MAML++'s loss weights are read in Python (tolist).
ON_PURPOSE = {"msl_weights"}


class ImplicitDevice(TorchFunctionMode):
    """Records factory calls (zeros, full, tensor, ...) without ``device=`` made by dropgrad's code.
    A 0-d CPU tensor passes the meta device's checks as it passes CUDA's, read on the host at
    every launch, and frozen into a CUDA graph; so the calls are listed, not only the failures."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and "/tests/" not in frame.f_code.co_filename:
                if "/dropgrad/" in frame.f_code.co_filename:  # the innermost of dropgrad's frames
                    if frame.f_code.co_name not in ON_PURPOSE:
                        where = frame.f_code.co_filename.split("/dropgrad/")[-1]
                        self.calls.append(f"{where}:{frame.f_lineno} {func.__name__}")
                    break
                frame = frame.f_back
        return func(*args, **kwargs)


@pytest.fixture
def meta_autocast(monkeypatch):
    # The folded layers ask autocast about the input's device type, which meta does not have.
    enabled, dtype = torch.is_autocast_enabled, torch.get_autocast_dtype
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: False if a and a[0] == "meta" else enabled(*a))
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda kind: torch.bfloat16 if kind == "meta" else dtype(kind))


def _step(learner: MAML, batched: bool) -> None:
    learner = learner.to(META)
    tasks = make_tasks(0, META, torch.float32)
    with ImplicitDevice() as implicit:
        learner.train()
        out = learner.meta_backward(tasks, batched=batched)
        learner.eval()
        evaluated = learner.meta_loss(tasks, batched=batched)
    assert out.loss.device == META and all(p.grad is None or p.grad.device == META for p in learner.parameters())
    assert evaluated.task_losses.device == META
    assert implicit.calls == []


@pytest.mark.parametrize("kind", ["binary", "gaussian"])
@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("generator", [False, True])
def test_dropgrad_draws_on_the_gradients_device(kind, schedule, generator):
    dg = DropGrad(0.3, kind, schedule, generator=torch.Generator().manual_seed(0) if generator else None)
    dg.set_progress(0.5)
    grads = [torch.ones(5, device=META), torch.ones(2, 3, device=META, dtype=torch.bfloat16)]
    with ImplicitDevice() as implicit:
        out = dg(grads)
    assert [(o.device, o.dtype) for o in out] == [(META, torch.float32), (META, torch.bfloat16)]
    assert implicit.calls == []


@pytest.mark.parametrize("learner_cls, first_order, batched, batch_with", [
    (MAML, False, False, "vmap"), (MAML, False, True, "vmap"), (MAML, True, True, "vmap"),
    (MAML, True, True, "fold"), (MAML, False, True, "fold"), (MetaSGD, False, True, "vmap"),
    (MetaSGD, False, False, "vmap"),
])
def test_meta_steps_make_their_tensors_on_the_learners_device(meta_autocast, learner_cls, first_order, batched, batch_with):
    dropgrad = DropGrad(0.3, "binary", "linear")
    dropgrad.set_progress(0.5)
    _step(learner_cls(tiny_net(), steps=2, first_order=first_order, dropgrad=dropgrad, batch_with=batch_with), batched)


def test_mamlpp_per_step_batchnorm_and_consistent_dropout_on_the_learners_device():
    _step(MAMLPlusPlus(tiny_net(running_stats=True), steps=2, msl_epochs=3, dropgrad=DropGrad(0.2)), False)
    net = nn.Sequential(*tiny_net()[:4], ConsistentDropout(0.3, generator=torch.Generator().manual_seed(1)), *tiny_net()[4:])
    _step(MAML(net, steps=2, dropgrad=DropGrad(0.2, generator=torch.Generator().manual_seed(2))), False)
