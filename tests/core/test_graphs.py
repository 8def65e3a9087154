"""CapturedMetaStep and CapturedEvaluation: steps replayed from a CUDA graph give the eager numbers
(meta_backward's while meta-training, meta_loss's in eval mode).

The CPU tests cover the eager fallback; the ``gpu`` tests record and replay (skipped without CUDA).
"""

import copy

import pytest
import torch
from dropgrad import (
    MAML,
    CapturedEvaluation,
    CapturedMetaStep,
    DropGrad,
    MAMLPlusPlus,
    MetaSGD,
    Task,
)
from torch import nn

from .conftest import make_tasks, tiny_net


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


def eager_and_graphed(learner, step, tasks, batched):
    """(eager, graphed) meta-gradients and losses at the learner's current parameters."""
    learner.zero_grad(set_to_none=True)
    eager = learner.meta_backward(tasks, batched=batched)
    g_eager = grads_of(learner)
    learner.zero_grad(set_to_none=True)
    graphed = step(tasks)
    return (eager, g_eager), (graphed, grads_of(learner))


def assert_same(a, b, tol):
    (out_a, g_a), (out_b, g_b) = a, b
    assert len(g_a) == len(g_b) > 0
    torch.testing.assert_close(out_b.task_losses, out_a.task_losses, rtol=tol, atol=tol)
    torch.testing.assert_close(out_b.query_output, out_a.query_output, rtol=tol, atol=tol)
    for x, y in zip(g_a, g_b):
        torch.testing.assert_close(y, x, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- CPU
def test_cpu_steps_run_eagerly_with_meta_backwards_numbers():
    torch.manual_seed(0)
    learner = MAML(tiny_net().double(), inner_lr=0.1, steps=2)
    step = CapturedMetaStep(learner)
    tasks = make_tasks(0, "cpu")
    a, b = eager_and_graphed(learner, step, tasks, batched=False)
    assert_same(a, b, tol=0)
    assert step.captures == 0


def test_gradients_accumulate_like_meta_backward():
    torch.manual_seed(0)
    learner = MAML(tiny_net().double(), inner_lr=0.1, steps=2)
    tasks = make_tasks(1, "cpu")
    learner.meta_backward(tasks)
    once = grads_of(learner)
    CapturedMetaStep(learner)(tasks)
    for g, p in zip(once, (p for p in learner.parameters() if p.grad is not None)):
        torch.testing.assert_close(p.grad, 2 * g)


def eager_and_replayed_evaluation(learner, evaluation, tasks, tol):
    """Eval-mode scores of ``tasks``, eager and through ``evaluation``, agree; no .grad appears."""
    assert not learner.training
    eager = learner.meta_loss(tasks, batched=evaluation.batched)
    out = evaluation(tasks)
    assert not out.loss.requires_grad and out.task_losses.shape == (tasks.n_tasks,)
    assert not out.task_losses.requires_grad and not out.query_output.requires_grad  # no graph kept
    torch.testing.assert_close(out.task_losses, eager.task_losses.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(out.query_output, eager.query_output.detach(), rtol=tol, atol=tol)
    assert all(p.grad is None for p in learner.parameters())


@pytest.mark.parametrize("batched", [False, True])
def test_cpu_evaluation_runs_eagerly_with_meta_losss_numbers(batched):
    torch.manual_seed(0)
    learner = MAML(tiny_net().double(), inner_lr=0.1, steps=2, dropgrad=DropGrad(0.5)).eval()
    evaluation = CapturedEvaluation(learner, batched=batched)
    eager_and_replayed_evaluation(learner, evaluation, make_tasks(0, "cpu"), tol=0)
    assert evaluation.captures == 0


def test_graph_state_changes_exactly_when_the_step_it_builds_does():
    learner = MAMLPlusPlus(tiny_net(), steps=3, msl_epochs=2, first_order_epochs=3)

    def states(training):
        learner.train(training)
        out = []
        for epoch in range(6):
            learner.set_epoch(epoch)
            out.append(learner.graph_state())
        return out

    train = states(True)
    # Epochs 0, 1: multi-step loss weights change; 2: last step only; 3 on: second order.
    assert len({train[0], train[1], train[2], train[3]}) == 4
    assert train[3] == train[4] == train[5]
    assert len(set(states(False))) == 1, "evaluation adapts the same way in every epoch"
    plain = MAML(tiny_net(), steps=2, first_order=True)
    assert plain.graph_state() != plain.eval().graph_state()
    assert MAML(tiny_net(), steps=2).eval().graph_state() == plain.graph_state(), "order: training only"


def test_the_graph_key_holds_what_the_recorded_step_reads_in_python():
    # The key is plain Python and checked here on the CPU: a graph is reused only while the
    # inputs' shapes and layouts, DropGrad's drawn strength, the learner's graph_state(), the
    # batching and the meta-parameters stay the same (the GPU tests replay against it).
    learner = MAMLPlusPlus(tiny_net(), steps=2, msl_epochs=2, dropgrad=DropGrad(0.2))
    step = CapturedMetaStep(learner)
    tasks = make_tasks(0, "cpu")
    key = step._key(tasks)
    assert step._key(make_tasks(1, "cpu")) == key, "new values in the same tensors: same graph"
    cl = Task(tasks.support_x.contiguous(memory_format=torch.channels_last_3d), *tasks[1:])
    assert cl.support_x.shape == tasks.support_x.shape and step._key(cl) != key, "layout"
    assert step._key(make_tasks(0, "cpu", query=3)) != key, "shape"
    learner.set_epoch(1)
    assert step._key(tasks) != key, "multi-step loss weights (graph_state)"
    learner.set_epoch(0)
    learner.dropgrad.p = 0.3
    assert step._key(tasks) != key, "DropGrad's constant strength"
    learner.dropgrad.p = 0.2
    assert step._key(tasks) == key
    assert CapturedMetaStep(learner, batched=True)._key(tasks) != key, "batching"


@pytest.mark.parametrize("cls", [CapturedMetaStep, CapturedEvaluation])
def test_cpu_fallback_keeps_the_batched_setting(cls, monkeypatch):
    learner = MAML(tiny_net().double(), steps=1)
    if cls is CapturedEvaluation:
        learner.eval()
    seen = []
    name = "meta_loss" if cls is CapturedEvaluation else "meta_backward"
    real = getattr(learner, name)
    monkeypatch.setattr(learner, name, lambda tasks, batched=False: seen.append(batched) or real(tasks, batched=batched))
    for batched in (True, False):
        cls(learner, batched=batched)(make_tasks(0, "cpu"))
    assert seen == [True, False]


def test_warmup_must_be_positive():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        CapturedMetaStep(MAML(tiny_net()), warmup=0)


# ----------------------------------------------------------------------------- GPU
gpu = pytest.mark.gpu
CUDA = torch.device("cuda")  # these tests are about CUDA graphs: no other device will do


@gpu
@pytest.mark.parametrize(
    "learner_cls, first_order, batched, batch_with",
    [(MAML, True, False, "vmap"), (MAML, False, False, "vmap"), (MAML, True, True, "vmap"),
     (MetaSGD, False, True, "vmap"), (MAML, True, True, "fold"), (MetaSGD, False, True, "fold")],
)
def test_replays_equal_eager_steps_as_parameters_and_data_change(learner_cls, first_order, batched, batch_with):
    torch.manual_seed(0)
    learner = learner_cls(tiny_net(), inner_lr=0.1, steps=3, first_order=first_order,
                          batch_with=batch_with).double().to(CUDA)
    step = CapturedMetaStep(learner, batched=batched)
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    for k in range(3):
        # New data and parameters each step: the graph reads both afresh at every replay.
        a, b = eager_and_graphed(learner, step, make_tasks(k, "cuda"), batched)
        assert_same(a, b, tol=1e-10)
        opt.step()
    assert step.captures == 1


@gpu
def test_running_statistics_see_one_update_per_step_and_warmup_leaves_no_trace():
    torch.manual_seed(0)
    eager = MAML(tiny_net(running_stats=True), inner_lr=0.1, steps=2).double().to(CUDA)
    graphed = copy.deepcopy(eager)
    step = CapturedMetaStep(graphed)
    for k in range(2):
        tasks = make_tasks(k, "cuda")
        eager.meta_backward(tasks)
        step(tasks)
        for (name, x), y in zip(eager.named_buffers(), graphed.buffers()):
            torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-10, msg=name)


@gpu
def test_noise_is_fresh_per_replay_and_the_stream_ignores_when_graphs_were_recorded(no_tf32):
    torch.manual_seed(0)
    learner = MAML(tiny_net(), inner_lr=0.1, steps=2, dropgrad=DropGrad(0.5, "gaussian")).to(CUDA)
    tasks = make_tasks(0, "cuda", torch.float32)

    def run(step, reset_between):
        torch.cuda.manual_seed(123)
        out = []
        for _ in range(2):
            learner.zero_grad(set_to_none=True)
            step(tasks)
            out.append(grads_of(learner))
            if reset_between:
                step.reset()
        return out

    first, second = run(CapturedMetaStep(learner), reset_between=False)
    assert max((a - b).abs().max().item() for a, b in zip(first, second)) > 1e-3, "same noise twice"
    again = CapturedMetaStep(learner)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(first + second, sum(run(again, True), [])))
    assert again.captures == 2
    learner.zero_grad(set_to_none=True)
    learner.dropgrad.p = 0.0  # noise off: the step must differ from the noisy ones
    learner.meta_backward(tasks)
    assert max((a - b).abs().max().item() for a, b in zip(grads_of(learner), first)) > 1e-3


@gpu
def test_bf16_replays_use_the_updated_parameters_not_warmup_casts():
    torch.manual_seed(0)
    learner = MAML(tiny_net(), inner_lr=0.1, steps=2, first_order=True).to(CUDA)
    step = CapturedMetaStep(learner, batched=True)
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    for k in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a, b = eager_and_graphed(learner, step, make_tasks(k, "cuda", torch.float32), True)
        assert_same(a, b, tol=1e-3)
        opt.step()


@gpu
def test_two_steps_share_memory_and_a_new_shape_records_a_new_graph():
    torch.manual_seed(0)
    learner = MAML(tiny_net(), inner_lr=0.1, steps=2).double().to(CUDA)
    noisy = MAML(learner.model, inner_lr=0.1, steps=2, dropgrad=DropGrad(0.3)).to(CUDA)
    plain, other = CapturedMetaStep(learner), CapturedMetaStep(noisy)
    for k in range(3):
        other(make_tasks(10 + k, "cuda"))  # replays between, sharing the memory pool
        tasks = make_tasks(k, "cuda", query=2 if k < 2 else 3)
        assert_same(*eager_and_graphed(learner, plain, tasks, False), tol=1e-10)
    assert plain.captures == 2 and other.captures == 1


@gpu
def test_mamlpp_records_a_new_graph_when_the_epoch_changes_its_losses():
    torch.manual_seed(0)
    learner = MAMLPlusPlus(tiny_net(), inner_lr=0.1, steps=3, msl_epochs=1, first_order_epochs=1).double().to(CUDA)
    step = CapturedMetaStep(learner)
    # epoch 0: first order, multi-step loss; epochs 1 and 2: second order, last step only (one graph)
    for epoch in (0, 1, 2):
        learner.set_epoch(epoch)
        assert_same(*eager_and_graphed(learner, step, make_tasks(epoch, "cuda"), False), tol=1e-10)
    assert step.captures == 2


@gpu
@pytest.mark.parametrize("kind", ["binary", "gaussian"])
def test_one_graph_follows_a_linear_dropgrad_ramp(kind):
    torch.manual_seed(0)
    dropgrad = DropGrad(0.5, kind, schedule="linear")
    learner = MAML(tiny_net(), inner_lr=0.1, steps=2, dropgrad=dropgrad).double().to(CUDA)
    step = CapturedMetaStep(learner)
    tasks = make_tasks(0, "cuda")
    for k, fraction in enumerate((0.2, 0.6, 1.0)):
        dropgrad.set_progress(fraction)
        # The same CUDA random numbers for the eager step and the replay: equal only if the
        # replay draws at this epoch's strength, not at the strength it was recorded with.
        torch.cuda.manual_seed(100 + k)
        learner.zero_grad(set_to_none=True)
        eager = learner.meta_backward(tasks)
        want = grads_of(learner)
        torch.cuda.manual_seed(100 + k)
        learner.zero_grad(set_to_none=True)
        got = step(tasks)
        torch.testing.assert_close(got.task_losses, eager.task_losses, rtol=1e-10, atol=1e-10)
        for x, y in zip(want, grads_of(learner)):
            torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-10)
    assert step.captures == 1


@gpu
def test_a_dropgrad_generator_is_refused():
    learner = MAML(tiny_net(), dropgrad=DropGrad(0.3, generator=torch.Generator(device="cuda"))).to(CUDA)
    with pytest.raises(ValueError, match="own generator"):
        CapturedMetaStep(learner)(make_tasks(0, "cuda", torch.float32))


@gpu
@pytest.mark.parametrize("learner_cls, batched", [(MAML, False), (MAML, True), (MetaSGD, False)])
def test_evaluation_replays_equal_eager_evaluation_as_parameters_and_data_change(learner_cls, batched):
    torch.manual_seed(0)
    learner = learner_cls(tiny_net(), inner_lr=0.1, steps=3, dropgrad=DropGrad(0.5)).double().to(CUDA)
    evaluation = CapturedEvaluation(learner, batched=batched)
    with torch.no_grad():
        for k in range(3):
            learner.eval()
            eager_and_replayed_evaluation(learner, evaluation, make_tasks(k, "cuda", T=3), tol=1e-10)
            for p in learner.parameters():  # in place, as an optimiser's step between validations
                p.add_(0.05 * torch.randn_like(p))
    assert evaluation.captures == 1


@gpu
def test_evaluation_and_training_graphs_interleave_on_a_shared_pool():
    torch.manual_seed(0)
    learner = MAMLPlusPlus(tiny_net(running_stats=True), inner_lr=0.1, steps=2, msl_epochs=0).double().to(CUDA)
    eager = copy.deepcopy(learner)
    step, evaluation = CapturedMetaStep(learner), CapturedEvaluation(learner)
    opt, eager_opt = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (learner, eager))
    for k in range(3):
        for model, optimiser, run in ((eager, eager_opt, eager.meta_backward), (learner, opt, step)):
            model.train()
            model.zero_grad(set_to_none=True)
            run(make_tasks(k, "cuda"))
            optimiser.step()
            model.eval()
            model.zero_grad(set_to_none=True)
        # The per-step running statistics the training steps just updated are read by the replay.
        for (name, x), y in zip(eager.named_buffers(), learner.buffers()):
            torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-10, msg=name)
        tasks = make_tasks(20 + k, "cuda")
        want = eager.meta_loss(tasks)
        got = evaluation(tasks)
        torch.testing.assert_close(got.task_losses, want.task_losses.detach(), rtol=1e-10, atol=1e-10)
    assert step.captures == 1 and evaluation.captures == 1


@gpu
def test_bf16_evaluation_replays_use_the_updated_parameters(no_tf32):
    torch.manual_seed(0)
    learner = MAML(tiny_net(), inner_lr=0.1, steps=2).to(CUDA).eval()
    evaluation = CapturedEvaluation(learner)
    for k in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager_and_replayed_evaluation(learner, evaluation, make_tasks(k, "cuda", torch.float32), tol=1e-3)
        with torch.no_grad():
            for p in learner.parameters():
                p.mul_(1.5)
    assert evaluation.captures == 1


def test_own_generators_of_a_training_step_are_refused_before_a_capture():
    # A capture would copy a CPU generator's draw to the GPU (refused mid-capture, leaving CUDA's
    # RNG unusable) or draw from an unregistered CUDA generator; checked on the CPU.
    from dropgrad import ConsistentDropout
    from dropgrad.graphs import _refuse_own_generators

    _refuse_own_generators(MAML(nn.Sequential(nn.Linear(3, 4), ConsistentDropout(0.3), nn.Linear(4, 2))))
    with pytest.raises(ValueError, match="DropGrad operator draws from its own generator"):
        _refuse_own_generators(MAML(tiny_net(), dropgrad=DropGrad(0.3, generator=torch.Generator())))
    net = nn.Sequential(nn.Linear(3, 4), ConsistentDropout(0.3, generator=torch.Generator()), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="ConsistentDropout model.1 draws its masks from its own generator"):
        _refuse_own_generators(MAML(net))
    # Only a draw the step makes is refused: an inactive DropGrad, a zero-rate or evaluation-mode
    # ConsistentDropout draw nothing (a graph keyed on DropGrad's state recaptures once it turns on).
    _refuse_own_generators(MAML(tiny_net(), dropgrad=DropGrad(0.3, generator=torch.Generator(), schedule="linear")))
    net = nn.Sequential(nn.Linear(3, 4), ConsistentDropout(0.0, generator=torch.Generator()),
                        ConsistentDropout(0.3, generator=torch.Generator()).eval(), nn.Linear(4, 2))
    _refuse_own_generators(MAML(net))


def test_one_capture_stream_per_gpu_on_the_device_of_the_learner(monkeypatch):
    # Graphs sharing a memory pool must share its stream; "cuda" without an index is the current GPU.
    from dropgrad import graphs

    class FakeStream:
        def __init__(self, device):
            self.device = device

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(graphs, "_CAPTURE_STREAMS", {})
    one = graphs._capture_stream(torch.device("cuda", 1))
    assert one.device == torch.device("cuda", 1) and graphs._capture_stream(torch.device("cuda", 1)) is one
    three = graphs._capture_stream(torch.device("cuda"))
    assert three.device == torch.device("cuda", 3) and graphs._capture_stream(torch.device("cuda", 3)) is three


@gpu
def test_a_capture_records_on_the_learners_gpu_with_a_stream_of_that_gpu(monkeypatch):
    # A single-process run on --device cuda:N never calls torch.cuda.set_device; torch.cuda.graph's
    # default capture stream lives on the current device (cuda:0), so a learner on cuda:1 ran
    # eagerly beside an empty graph ("The CUDA Graph is empty" warning) whose replays changed
    # nothing. One GPU cannot show that; the capture's stream and current device can be checked.
    real = torch.cuda.graph
    seen = []

    def spy(graph, *args, stream=None, **kwargs):
        seen.append((stream, torch.cuda.current_device()))
        return real(graph, *args, stream=stream, **kwargs)

    monkeypatch.setattr(torch.cuda, "graph", spy)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    learner = MAML(tiny_net(), inner_lr=0.1, steps=1).to(device)
    CapturedMetaStep(learner)(make_tasks(0, device, torch.float32))
    (stream, current), = seen
    assert stream is not None and stream.device == device and current == device.index
