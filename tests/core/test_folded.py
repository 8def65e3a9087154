"""Folded tasks (dropgrad.folded, MAML(batch_with="fold")): each layer rule against the layer run task by
task, and meta-steps against the per-task loop, in float64.

The reference for a layer is torch's own function called once per task with that task's rows and
parameters; for a meta-step, ``meta_backward(batched=False)``. The conv-net meta-steps of MAML and
MetaSGD (first and second order, checkpointing, chunks, channels_last, bf16) are in
tests/core/test_batched_equivalence.py with the vmap variants.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from dropgrad import MAML, MAMLPlusPlus, MetaSGD
from dropgrad.folded import folded_tasks
from dropgrad.inner import Task
from torch import nn

T, N = 3, 4


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def per_task(func, x, *params, **kwargs):
    """``func`` task by task: rows ``t*N:(t+1)*N`` of ``x`` with ``p[t]`` of each per-task parameter."""
    outs = []
    for t in range(T):
        ps = [p[t] if isinstance(p, torch.Tensor) and not getattr(p, "shared", False) else p for p in params]
        outs.append(func(x[t * N:(t + 1) * N], *ps, **kwargs))
    return torch.cat(outs)


def shared(p):
    p.shared = True  # the reference passes it whole to every task
    return p


def assert_rule(func, x, *params, **kwargs):
    with folded_tasks(T, [p for p in params if isinstance(p, torch.Tensor) and not getattr(p, "shared", False)]):
        got = func(x, *params, **kwargs)
    want = per_task(func, x, *params, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", ["per-task", "shared", "none"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_convolutions_with_per_task_weights(dims, bias):
    torch.manual_seed(0)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    x = torch.randn(T * N, 4, *(6,) * dims)
    w = torch.randn(T, 6, 2, *(3,) * dims)  # groups=2: 4 input channels in 2 groups
    b = {"per-task": torch.randn(T, 6), "shared": shared(torch.randn(6)), "none": None}[bias]
    assert_rule(conv, x, w, b, stride=1, padding=1, groups=2)


def test_a_shared_convolution_with_per_task_biases():
    torch.manual_seed(0)
    x, w, b = torch.randn(T * N, 3, 5, 5), shared(torch.randn(4, 3, 3, 3)), torch.randn(T, 4)
    assert_rule(F.conv2d, x, w, b)


@pytest.mark.parametrize("weight,bias", [("per-task", "per-task"), ("per-task", "none"), ("shared", "per-task")])
def test_linear_layers(weight, bias):
    torch.manual_seed(0)
    x = torch.randn(T * N, 2, 6)  # extra dimensions between the rows and the features
    w = torch.randn(T, 3, 6) if weight == "per-task" else shared(torch.randn(3, 6))
    b = torch.randn(T, 3) if bias == "per-task" else None
    assert_rule(F.linear, x, w, b)


@pytest.mark.parametrize("affine", ["per-task", "shared", "mixed", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_uses_each_tasks_own_statistics(affine, training):
    torch.manual_seed(0)
    x = torch.randn(T * N, 5, 3, 3) * torch.arange(1.0, T * N + 1).view(-1, 1, 1, 1)  # tasks differ in scale
    stats = (None, None) if training else (shared(torch.randn(5)), shared(torch.rand(5) + 0.5))
    w, b = {"per-task": (torch.randn(T, 5), torch.randn(T, 5)),
            "shared": (shared(torch.randn(5)), shared(torch.randn(5))),
            "mixed": (shared(torch.randn(5)), torch.randn(T, 5)), "none": (None, None)}[affine]
    assert_rule(F.batch_norm, x, *stats, w, b, training=training, eps=1e-3)


def test_batch_norm_refuses_running_statistics_in_training():
    x = torch.randn(T * N, 5)
    with folded_tasks(T), pytest.raises(ValueError, match="running statistics"):
        F.batch_norm(x, torch.zeros(5), torch.ones(5), training=True)


@pytest.mark.parametrize("affine", ["per-task", "shared", "mixed"])
def test_layer_and_group_norm(affine):
    torch.manual_seed(0)
    x = torch.randn(T * N, 6, 4)
    w, b = {"per-task": (torch.randn(T, 6, 4), torch.randn(T, 6, 4)),
            "shared": (shared(torch.randn(6, 4)), shared(torch.randn(6, 4))),
            "mixed": (torch.randn(T, 6, 4), shared(torch.randn(6, 4)))}[affine]
    assert_rule(F.layer_norm, x, (6, 4), w, b)
    gw, gb = {"per-task": (torch.randn(T, 6), torch.randn(T, 6)), "shared": (shared(torch.randn(6)), None),
              "mixed": (shared(torch.randn(6)), torch.randn(T, 6))}[affine]
    assert_rule(F.group_norm, x, 3, gw, gb)


def test_an_unsupported_layer_on_a_per_task_parameter_raises_instead_of_broadcasting():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.scale  # (T, 4) against (T * N, 4) rows would broadcast wrongly

    learner = MAML(nn.Sequential(nn.Linear(3, 4), Scaled()), batch_with="fold", steps=1)
    tasks = Task(torch.randn(T, N, 3), torch.zeros(T, N, dtype=torch.long), torch.randn(T, N, 3),
                 torch.zeros(T, N, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="folded tasks: .*mul.* on a per-task parameter"):
        learner.meta_loss(tasks, batched=True)
    learner.meta_loss(tasks, batched=False)  # the loop runs it


def norm_net(norm: str) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(3, 6)]
    layers.append({"bn": nn.BatchNorm1d(6, track_running_stats=False), "ln": nn.LayerNorm(6),
                   "gn": nn.GroupNorm(2, 6)}[norm])
    return nn.Sequential(*layers, nn.Tanh(), nn.Linear(6, 4))


def mlp_tasks(seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat_interleave(2).repeat(T, 1)
    return Task(torch.randn(T, 8, 3, generator=g), y, torch.randn(T, 8, 3, generator=g), y)


def meta_step(learner, tasks, batched):
    learner.zero_grad(set_to_none=True)
    out = learner.meta_backward(tasks, batched=batched)
    return out, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in learner.parameters()]


def assert_fold_equals_loop(make, tasks, tol=1e-10):
    (ref, g_ref), (out, g) = meta_step(make("vmap"), tasks, False), meta_step(make("fold"), tasks, True)
    torch.testing.assert_close(out.task_losses, ref.task_losses, rtol=tol, atol=tol)
    torch.testing.assert_close(out.query_output, ref.query_output, rtol=tol, atol=tol)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert max(x.abs().max().item() for x in g_ref) > 1e-3


@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])
@pytest.mark.parametrize("cls", [MAML, MetaSGD])
@pytest.mark.parametrize("first_order", [True, False])
def test_meta_steps_through_norm_layers_equal_the_loop(norm, cls, first_order):
    def make(batch_with):
        return cls(norm_net(norm), inner_lr=0.3, steps=2, first_order=first_order, batch_with=batch_with)

    assert_fold_equals_loop(make, mlp_tasks())


@pytest.mark.parametrize("adapt", ["3.*", "*.bias"])
def test_parameters_the_inner_loop_leaves_alone_are_shared_by_every_task(adapt):
    def make(batch_with):
        return MAML(norm_net("bn"), inner_lr=0.3, steps=2, adapt=adapt, batch_with=batch_with)

    assert_fold_equals_loop(make, mlp_tasks())


def test_mamlpp_per_step_batch_norm_and_multi_step_loss():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    y = torch.arange(3).repeat_interleave(2).repeat(T, 1)
    tasks = Task(torch.randn(T, 6, 3, 5, 5, generator=g), y, torch.randn(T, 6, 3, 5, 5, generator=g), y)

    def make(batch_with):
        return MAMLPlusPlus(copy.deepcopy(net), inner_lr=0.1, steps=2, msl_epochs=2, batch_with=batch_with)

    assert_fold_equals_loop(make, tasks)


def test_evaluation_equals_the_loop():
    learner = MAML(norm_net("bn"), inner_lr=0.3, steps=3, batch_with="fold").eval()
    tasks = mlp_tasks()
    with torch.no_grad():
        folded = learner.meta_loss(tasks, batched=True)
    loop = learner.meta_loss(tasks, batched=False)
    torch.testing.assert_close(folded.task_losses, loop.task_losses.detach(), rtol=1e-12, atol=1e-12)


def test_a_bad_batch_with_is_refused():
    with pytest.raises(ValueError, match="batch_with must be one of vmap, fold, got 'grouped'"):
        MAML(nn.Linear(2, 2), batch_with="grouped")  # type: ignore[arg-type]
