"""MAML(task_streams=k): the per-task loop's tasks on concurrent CUDA streams, same meta-gradients.

On a CPU the stream logic runs with ``None`` streams (the round robin, the per-stream sums, the
accumulation into ``.grad``); the ``gpu`` tests run real streams, eagerly and recorded in a CUDA graph.
"""

import pytest
import torch
from dropgrad import MAML, CapturedMetaStep, DropGrad, MAMLPlusPlus, MetaSGD
from dropgrad.streams import accumulate_grads, backward_on_streams
from torch import nn

from .conftest import make_tasks, tiny_net

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def grads(learner) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in learner.parameters()]


def assert_same(a, b, tol):
    assert [x is None for x in a] == [y is None for y in b]
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(y, x, rtol=tol, atol=tol)


def sequential_and_streamed(learner, tasks, streams, seed=0):
    """(losses, grads) of meta_backward and of backward_on_streams, same noise."""
    learner.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = learner.meta_backward(tasks)
    want = (out.task_losses, grads(learner))
    learner.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    params = [p for p in learner.parameters() if p.requires_grad]
    losses, _ = backward_on_streams(tasks.n_tasks, lambda t: learner.task_loss(tasks.task(t)), params, streams)
    return want, (torch.stack(losses), grads(learner))


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
@pytest.mark.parametrize("k", [2, 3])
def test_round_robin_sums_equal_the_sequential_loop_on_a_cpu(cls, k):
    torch.manual_seed(0)
    learner = cls(tiny_net().double(), inner_lr=0.1, steps=2, dropgrad=DropGrad(0.2, "gaussian"))
    tasks = make_tasks(0, "cpu", T=5)
    (l_a, g_a), (l_b, g_b) = sequential_and_streamed(learner, tasks, [None] * k)
    torch.testing.assert_close(l_b, l_a, rtol=0, atol=0)  # same tasks, same noise: same losses
    assert_same(g_a, g_b, 1e-12)  # the sums differ only in the order of the additions


def test_unused_parameters_keep_no_gradient_and_existing_gradients_accumulate():
    torch.manual_seed(0)
    model = tiny_net().double()
    model.unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    learner = MAML(model, inner_lr=0.1, steps=1, adapt="0.*")
    tasks = make_tasks(1, "cpu")
    params = [p for p in learner.parameters() if p.requires_grad]
    backward_on_streams(2, lambda t: learner.task_loss(tasks.task(t)), params, [None, None])
    assert model.unused.grad is None
    once = grads(learner)
    backward_on_streams(2, lambda t: learner.task_loss(tasks.task(t)), params, [None, None])
    assert_same([None if g is None else 2 * g for g in once], grads(learner), 1e-12)


def test_accumulate_grads_copies_fresh_gradients():
    p = torch.zeros(2, requires_grad=True)
    g = torch.ones(2)
    accumulate_grads([p], [g])
    g.add_(5)  # the caller's tensor stays the caller's
    torch.testing.assert_close(p.grad, torch.ones(2))


def test_on_a_cpu_task_streams_is_the_sequential_loop():
    torch.manual_seed(0)
    a = MAML(tiny_net().double(), inner_lr=0.1, steps=2)
    torch.manual_seed(0)
    b = MAML(tiny_net().double(), inner_lr=0.1, steps=2, task_streams=4)
    tasks = make_tasks(2, "cpu")
    a.meta_backward(tasks)
    b.meta_backward(tasks)
    assert_same(grads(a), grads(b), 0.0)


def test_bad_settings_are_refused():
    for k in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="task_streams must be None or an integer >= 2"):
            MAML(tiny_net(), task_streams=k)
    with pytest.raises(ValueError, match="running statistics of BatchNorm '1'"):
        MAML(tiny_net(running_stats=True), task_streams=2)
    with pytest.raises(ValueError, match="running statistics"):
        MAMLPlusPlus(tiny_net(running_stats=True), task_streams=2)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cls", [MAML, MetaSGD])
@pytest.mark.parametrize("first_order", [True, False])
def test_streams_equal_the_sequential_loop_on_a_gpu(cls, first_order, no_tf32):
    torch.manual_seed(0)
    learner = cls(tiny_net().double(), inner_lr=0.1, steps=2, first_order=first_order,
                  dropgrad=DropGrad(0.2, "gaussian")).to(CUDA)
    tasks = make_tasks(3, CUDA, T=5)
    (l_a, g_a), (l_b, g_b) = sequential_and_streamed(learner, tasks, [torch.cuda.Stream() for _ in range(3)])
    torch.testing.assert_close(l_b, l_a, rtol=1e-12, atol=1e-12)
    assert_same(g_a, g_b, 1e-10)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("first_order", [True, False])
def test_streams_recorded_in_a_cuda_graph_equal_eager_steps(first_order, no_tf32):
    # No DropGrad: the graph draws its noise at replay, the eager step at call time.
    torch.manual_seed(0)
    eager = MAML(tiny_net().double(), inner_lr=0.1, steps=3, first_order=first_order).to(CUDA)
    torch.manual_seed(0)
    streamed = MAML(tiny_net().double(), inner_lr=0.1, steps=3, first_order=first_order, task_streams=2).to(CUDA)
    step = CapturedMetaStep(streamed)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05)
    opt_s = torch.optim.SGD(streamed.parameters(), lr=0.05)
    for seed in (4, 5, 6):  # new data and updated parameters at every replay
        tasks = make_tasks(seed, CUDA, T=4)
        for opt in (opt_e, opt_s):
            opt.zero_grad(set_to_none=True)
        out_e = eager.meta_backward(tasks)
        out_s = step(tasks)
        torch.testing.assert_close(out_s.task_losses, out_e.task_losses, rtol=1e-10, atol=1e-10)
        assert_same(grads(eager), grads(streamed), 1e-10)
        opt_e.step()
        opt_s.step()
    assert step.captures == 1

