"""MAML(compile_forward=..., compile_second_order=...): meta-steps through torch.compile give the eager numbers.

Most tests use the ``aot_eager`` backend (the same Dynamo capture and AOTAutograd forward/backward
split as inductor, compiled in a second); ``test_inductor_*`` run inductor's generated kernels.
The ``gpu`` test also replays the compiled step from a CUDA graph.
"""

import pytest
import torch
import torch.nn.functional as F
from dropgrad import (
    MAML,
    CapturedMetaStep,
    ConsistentDropout,
    DropGrad,
    MAMLPlusPlus,
    MetaSGD,
    Task,
)
from dropgrad.fast import channels_last_tasks
from dropgrad.folded import compiled_forms
from torch import nn

from .conftest import make_tasks, tiny_net

# What older torch does differently (seen on torch 2.6 and 2.11; README, "Supported versions").
FOLDED_SECOND_ORDER_SPLITS = pytest.mark.torch_at_least(
    2, 14, "older Dynamo breaks the folded second-order step's graph at a super() call (Tensor.unflatten): "
    "the graph counts differ and the folded forms are not traced into the step")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Compiled graphs are cached per code object with a recompile limit; start every test clean so
    # one test's shapes cannot push another's past it (and into silent eager fallback).
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pair(cls, *, compile_forward="aot_eager", running_stats=False, dtype=torch.float64, **kwargs):
    """(eager, compiled) learners with equal parameters; ``compile_second_order`` and ``folded_forms`` go
    to the compiled one."""
    out = []
    for flag in (False, compile_forward):
        torch.manual_seed(0)
        own = kwargs if flag else {k: v for k, v in kwargs.items() if k not in ("compile_second_order", "folded_forms")}
        out.append(cls(tiny_net(running_stats=running_stats).to(dtype), compile_forward=flag, **own))
    return out


def meta_step(learner, tasks, seed=1, batched=False):
    """Loss, query outputs, meta-gradients and buffers after one meta_backward (noise seeded)."""
    learner.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = learner.meta_backward(tasks, batched=batched)
    grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    buffers = [b.clone() for b in learner.buffers()]
    return out, grads, buffers


def assert_equal_steps(a, b, tol=1e-10):
    (out_a, g_a, b_a), (out_b, g_b, b_b) = a, b
    assert len(g_a) == len(g_b) > 0
    torch.testing.assert_close(out_b.task_losses, out_a.task_losses, rtol=tol, atol=tol)
    torch.testing.assert_close(out_b.query_output, out_a.query_output, rtol=tol, atol=tol)
    for x, y in zip(g_a, g_b):
        torch.testing.assert_close(y, x, rtol=tol, atol=tol)
    for x, y in zip(b_a, b_b):
        torch.testing.assert_close(y, x, rtol=tol, atol=tol)


def compiled_output(learner, x) -> bool:
    """Whether the learner's training forward came out of a compiled graph (buffers left as they were)."""
    saved = [b.clone() for b in learner.buffers()]
    name = type(learner(x).grad_fn).__name__
    for b, old in zip(learner.buffers(), saved):
        b.copy_(old)
    return name == "CompiledFunctionBackward"


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_first_order_meta_step_equals_eager_with_dropgrad(cls):
    eager, comp = pair(cls, inner_lr=0.1, steps=3, first_order=True, dropgrad=DropGrad(0.3, "gaussian"))
    tasks = make_tasks(0, "cpu", query=3)
    assert comp.compiled and not eager.compiled
    for seed in (1, 2):  # the second step reuses the compiled graphs with new noise and data
        assert_equal_steps(meta_step(eager, tasks, seed), meta_step(comp, tasks, seed))
        tasks = make_tasks(seed + 10, "cpu", query=3)
    assert compiled_output(comp, tasks.query_x[0]) and not compiled_output(eager, tasks.query_x[0])


def test_fast_weight_gradients_survive_theta_first():
    # The first compiled call sees theta itself; later calls see fast weights (other tensors with
    # the same shapes). Both must get their own gradients (see dropgrad.inner._forward_with).
    _, comp = pair(MAML, inner_lr=0.1, steps=1, first_order=True)
    x, y = make_tasks(0, "cpu", query=3).support_x[0], torch.arange(3).repeat_interleave(2)
    theta = comp.initial_params()
    loss = nn.functional.cross_entropy(comp.functional_forward(theta, x), y)
    g_theta = torch.autograd.grad(loss, list(theta.values()))
    fast = {n: p * 1.0 for n, p in theta.items()}
    loss = nn.functional.cross_entropy(comp.functional_forward(fast, x), y)
    g_fast = torch.autograd.grad(loss, list(fast.values()), allow_unused=True)
    assert all(g is not None for g in g_fast)
    for a, b in zip(g_theta, g_fast):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_mamlpp_per_step_batchnorm_statistics_and_epoch_switch():
    eager, comp = pair(MAMLPlusPlus, running_stats=True, inner_lr=0.1, steps=2, first_order_epochs=1, msl_epochs=2)
    tasks = make_tasks(3, "cpu", query=3)
    assert not comp.second_order  # epoch 0: first order, compiled
    assert_equal_steps(meta_step(eager, tasks), meta_step(comp, tasks))
    assert compiled_output(comp, tasks.query_x[0])
    for learner in (eager, comp):
        learner.set_epoch(1)  # second order from here: eager, still the same numbers
    assert_equal_steps(meta_step(eager, tasks, 2), meta_step(comp, tasks, 2))
    assert not compiled_output(comp, tasks.query_x[0])


def test_second_order_and_evaluation_run_eagerly_with_the_same_numbers():
    eager, comp = pair(MAML, inner_lr=0.1, steps=2)
    tasks = make_tasks(4, "cpu", query=3)
    assert_equal_steps(meta_step(eager, tasks), meta_step(comp, tasks))
    assert not compiled_output(comp, tasks.query_x[0])
    for learner in (eager, comp):
        learner.first_order = True
        learner.eval()
    outs = [learner.meta_loss(tasks) for learner in (eager, comp)]
    torch.testing.assert_close(outs[1].query_output, outs[0].query_output, rtol=1e-12, atol=1e-12)
    assert type(comp(tasks.query_x[0]).grad_fn).__name__ != "CompiledFunctionBackward"


@pytest.mark.parametrize("batch_with", ["vmap", pytest.param("fold", marks=pytest.mark.torch_at_least(
    2, 14, "older Dynamo compiles the folded first-order step as 4 graphs, not one per input shape"))])
def test_batched_first_order_equals_eager(batch_with):
    eager, comp = pair(MAML, inner_lr=0.1, steps=2, first_order=True, dropgrad=DropGrad(0.2, "binary"),
                       batch_with=batch_with)
    for learner in (eager, comp):  # with the decomposed BatchNorm that channels_last selects (vmap)
        learner.model.to(memory_format=torch.channels_last)
    tasks = make_tasks(5, "cpu", query=3)
    a = meta_step(eager, tasks, batched=True)
    torch._dynamo.utils.counters.clear()
    b = meta_step(comp, tasks, batched=True)
    # support and query shapes; theta's first step passes the later steps' guards (its per-task
    # copies keep channels_last), so it does not compile a graph of its own
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert not torch._dynamo.utils.counters["graph_break"], "one graph per shape, all tasks in it"
    assert_equal_steps(a, b)


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=FOLDED_SECOND_ORDER_SPLITS)])
def test_folded_steps_with_unfolded_convolutions_equal_eager(order, monkeypatch):
    # compiled_forms(unfold_depth=27): the 3-channel 3x3 convolution as a matmul over its
    # unfolded input, in the compiled forward (first order) or whole compiled step (second).
    from dropgrad import folded

    calls = []
    unfolded = folded._unfolded_conv
    monkeypatch.setattr(folded, "_unfolded_conv", lambda *a, **k: calls.append(1) or unfolded(*a, **k))
    options = {"first_order": True} if order == "first" else {"compile_second_order": True}
    eager, comp = pair(MAML, inner_lr=0.1, steps=2, batch_with="fold", dropgrad=None, **options)
    tasks = make_tasks(7, "cpu", query=3)
    want = meta_step(eager, tasks, batched=True)
    with compiled_forms(unfold_depth=27):
        got = meta_step(comp, tasks, batched=True)
    assert calls, "the compiled step did not unfold the convolution"
    assert_equal_steps(want, got)


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=FOLDED_SECOND_ORDER_SPLITS)])
def test_folded_forms_of_the_learner_apply_to_its_compiled_steps_only(order, monkeypatch):
    # MAML(folded_forms=...) enters compiled_forms around its compiled folded steps itself: the
    # step unfolds the convolution and pools pointwise with no block around the call, gives the
    # eager numbers, and evaluation (eager) keeps the plain layers.
    from dropgrad import folded

    calls = {"unfold": 0, "pool": 0}
    unfolded, pooled = folded._unfolded_conv, folded._window_max
    monkeypatch.setattr(folded, "_unfolded_conv", lambda *a, **k: calls.update(unfold=calls["unfold"] + 1) or unfolded(*a, **k))
    monkeypatch.setattr(folded, "_window_max",
                        lambda *a, **k: calls.update(pool=calls["pool"] + 1) or pooled(*a, **k))
    options = {"first_order": True} if order == "first" else {"compile_second_order": True}
    eager, comp = pair(MAML, inner_lr=0.1, steps=2, batch_with="fold", dropgrad=DropGrad(0.2),
                       folded_forms={"unfold_depth": 27, "pointwise_max_pool": True, "channel_multiple": 1}, **options)
    assert comp.folded_forms == {"unfold_depth": 27, "pointwise_max_pool": True}
    tasks = make_tasks(7, "cpu", query=3)
    want = meta_step(eager, tasks, batched=True)
    got = meta_step(comp, tasks, batched=True)
    assert calls["unfold"] and calls["pool"], f"the compiled step did not use the forms: {calls}"
    assert_equal_steps(want, got)
    assert (folded._UNFOLD_DEPTH, folded._POINTWISE_MAX_POOL) == (0, False), "the settings leaked out of the step"
    calls.update(unfold=0, pool=0)
    comp.eval()
    torch.testing.assert_close(comp.meta_loss(tasks, batched=True).loss, eager.eval().meta_loss(tasks, batched=True).loss,
                               rtol=1e-12, atol=1e-12)
    assert calls == {"unfold": 0, "pool": 0}


def two_conv_net() -> nn.Module:
    """tiny_net with a second, 6-channel convolution: the unfold form takes the first, not it."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=FOLDED_SECOND_ORDER_SPLITS)])
def test_folded_steps_with_grouped_task_convolutions_and_indexed_pooling_equal_eager(order, monkeypatch):
    # MAML(folded_forms={"grouped_tasks": True, "unfold_depth": 27, "indexed_pool_backward": True}):
    # the second convolution's per-task convolutions run as one grouped convolution in the
    # compiled steps, the first as a matmul, the pooling's backward as a select at its indices
    # (differentiated again for second order); channels_last, which the grouped form keeps.
    from dropgrad import folded

    calls = {"grouped": 0, "unfold": 0, "pool": 0}
    grouped, unfolded, pooled = folded._grouped_conv, folded._unfolded_conv, folded._indexed_max_pool
    monkeypatch.setattr(folded, "_grouped_conv",
                        lambda *a, **k: calls.update(grouped=calls["grouped"] + 1) or grouped(*a, **k))
    monkeypatch.setattr(folded, "_unfolded_conv",
                        lambda *a, **k: calls.update(unfold=calls["unfold"] + 1) or unfolded(*a, **k))
    monkeypatch.setattr(folded, "_indexed_max_pool", lambda *a: calls.update(pool=calls["pool"] + 1) or pooled(*a))
    options = {"first_order": True} if order == "first" else {"compile_second_order": True}
    learners = []
    for compiled in (False, True):
        torch.manual_seed(0)
        forms = {"grouped_tasks": True, "unfold_depth": 27, "indexed_pool_backward": True}
        own = {"compile_forward": "aot_eager", "folded_forms": forms, **options}
        learners.append(MAML(two_conv_net().double().to(memory_format=torch.channels_last), inner_lr=0.1, steps=2,
                             batch_with="fold", dropgrad=DropGrad(0.2),
                             **(own if compiled else {"first_order": order == "first"})))
    eager, comp = learners
    tasks = make_tasks(9, "cpu", query=3)
    want = meta_step(eager, tasks, batched=True)
    got = meta_step(comp, tasks, batched=True)
    # (second order: in the query's forward; its inner steps leave it out, see the next test)
    assert calls["grouped"] and calls["unfold"] and calls["pool"], f"the compiled step did not use the forms: {calls}"
    assert_equal_steps(want, got)
    assert not folded._GROUPED_TASKS and not folded._INDEXED_POOL_BACKWARD, "the settings leaked out of the step"


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=FOLDED_SECOND_ORDER_SPLITS)])
def test_folded_steps_with_the_triton_pooling_op_equal_eager(order, monkeypatch):
    # MAML(folded_forms={"triton_pool": True, ...}): max pooling through dropgrad.poolkernels' op
    # (here on a CPU, its ATen path: the op, its registered backward and their tracing are
    # what this checks; the kernels are checked in tests/core/test_poolkernels.py), inductor
    # compiling the step. Second order: the query's forward uses it, the inner steps do not.
    from dropgrad import folded, poolkernels

    calls = []
    pool = poolkernels.window_max_pool
    monkeypatch.setattr(poolkernels, "window_max_pool", lambda *a: calls.append(a[1:]) or pool(*a))
    options = {"first_order": True} if order == "first" else {"compile_second_order": True}
    learners = []
    for compiled in (False, True):
        torch.manual_seed(0)
        own = {"compile_forward": True, "folded_forms": {"grouped_tasks": True, "triton_pool": True}, **options}
        learners.append(MAML(two_conv_net().double().to(memory_format=torch.channels_last), inner_lr=0.1, steps=2,
                             batch_with="fold", dropgrad=DropGrad(0.2),
                             **(own if compiled else {"first_order": order == "first"})))
    eager, comp = learners
    tasks = make_tasks(9, "cpu", query=3)
    want = meta_step(eager, tasks, batched=True)
    torch._dynamo.reset()
    try:
        got = meta_step(comp, tasks, batched=True)
    finally:
        torch._dynamo.reset()
    assert calls and set(calls) == {(2, 2)}, f"the compiled step did not use the op: {calls}"
    assert_equal_steps(want, got)
    assert not folded._TRITON_POOL, "the setting leaked out of the step"


@pytest.mark.torch_at_least(2, 11, "torch 2.6's Dynamo fails to trace torch.func.grad over the custom backward at all")
def test_torch_compile_misdifferentiates_a_custom_backward_under_func_grad():
    # Why MAML's compiled second-order steps leave out the indexed pooling backward: traced by
    # torch.compile (torch 2.14, even backend="eager"), the derivative of a custom
    # autograd.Function's backward taken by torch.func.grad is wrong, while torch.func.grad
    # alone gives ATen's numbers. If this fails, torch has fixed it and the guard in
    # MAML.__init__ can go.
    from dropgrad.folded import _indexed_max_pool

    torch.manual_seed(0)
    x, v = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    w = torch.randn(3, 1, 1, requires_grad=True)

    def meta_grad(pool):
        g = torch.func.grad(lambda x, w: (pool(x * w) ** 2).sum())(x, w)
        return torch.autograd.grad((g * v).sum(), w)[0]

    want = meta_grad(lambda t: F.max_pool2d(t, 2))
    torch.testing.assert_close(meta_grad(lambda t: _indexed_max_pool(t, 2, 2)), want, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
    try:
        got = torch.compile(lambda: meta_grad(lambda t: _indexed_max_pool(t, 2, 2)), backend="eager")()
    finally:
        torch._dynamo.reset()
    assert not torch.allclose(got, want, rtol=1e-3, atol=1e-3)


def test_folded_forms_refusals():
    fold = {"compile_forward": "aot_eager", "batch_with": "fold"}
    with pytest.raises(ValueError, match="keys must be among pointwise_max_pool, channel_multiple, unfold_depth, "
                                         "grouped_tasks, indexed_pool_backward, triton_pool, got pad"):
        MAML(tiny_net(), folded_forms={"pad": 8}, **fold)
    with pytest.raises(ValueError, match=r"folded_forms\['unfold_depth'\] must be a int, got True"):
        MAML(tiny_net(), folded_forms={"unfold_depth": True}, **fold)
    with pytest.raises(ValueError, match=r"folded_forms\['pointwise_max_pool'\] must be a bool, got 1"):
        MAML(tiny_net(), folded_forms={"pointwise_max_pool": 1}, **fold)
    with pytest.raises(ValueError, match=r"folded_forms\['grouped_tasks'\] must be a bool, got 'yes'"):
        MAML(tiny_net(), folded_forms={"grouped_tasks": "yes"}, **fold)
    with pytest.raises(ValueError, match="channel_multiple must be >= 1, got 0"):
        MAML(tiny_net(), folded_forms={"channel_multiple": 0}, **fold)
    with pytest.raises(ValueError, match="forms of the same pooling"):
        MAML(tiny_net(), folded_forms={"pointwise_max_pool": True, "indexed_pool_backward": True}, **fold)
    with pytest.raises(ValueError, match="must be None or a mapping"):
        MAML(tiny_net(), folded_forms=["unfold_depth"], **fold)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need compile_forward and batch_with='fold', got compile_forward=False"):
        MAML(tiny_net(), folded_forms={"unfold_depth": 27}, batch_with="fold")
    with pytest.raises(ValueError, match="batch_with='vmap'"):
        MAML(tiny_net(), folded_forms={"pointwise_max_pool": True}, compile_forward="aot_eager")
    # settings left off need nothing
    assert MAML(tiny_net(), folded_forms={"channel_multiple": 1, "unfold_depth": 0}).folded_forms == {}


def adapted_by_compiled_steps(learner, tasks) -> bool:
    """Whether the learner's inner steps (second order, meta-training) came out of a compiled graph."""
    saved = [b.clone() for b in learner.buffers()]
    last = learner.adapt(tasks.support_x[0], tasks.support_y[0])[-1]
    for b, old in zip(learner.buffers(), saved):
        b.copy_(old)
    return all(type(t.grad_fn).__name__ == "CompiledFunctionBackward" for t in last.values())


@pytest.mark.parametrize(("cls", "options"), [
    (MAML, {}),
    (MetaSGD, {}),
    (MAML, {"loop_norms": "decomposed"}),
    (MetaSGD, {"adapt": ["5.*", "0.weight"]}),  # parameters not adapted are captured, and get their gradients
])
def test_second_order_compiled_whole_steps_equal_eager(cls, options):
    eager, comp = pair(cls, compile_second_order=True, inner_lr=0.1, steps=3, dropgrad=DropGrad(0.3, "gaussian"),
                       **options)
    assert comp.compiled_second_order and not eager.compiled_second_order and comp.second_order
    tasks = make_tasks(11, "cpu", query=3)
    torch._dynamo.utils.counters.clear()
    for seed in (1, 2):  # the second step reuses the compiled graphs with new noise and data
        assert_equal_steps(meta_step(eager, tasks, seed), meta_step(comp, tasks, seed))
        tasks = make_tasks(seed + 20, "cpu", query=3)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert adapted_by_compiled_steps(comp, tasks) and not adapted_by_compiled_steps(eager, tasks)
    assert compiled_output(comp, tasks.query_x[0])  # the query forward compiles as in first order


def test_second_order_compiled_steps_under_bf16_autocast_and_channels_last():
    eager, comp = pair(MAML, compile_second_order=True, dtype=torch.float32, inner_lr=0.1, steps=2)
    tasks = make_tasks(15, "cpu", dtype=torch.float32, query=3)
    results = []
    for learner in (eager, comp):
        learner.model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads, _ = meta_step(learner, tasks)
        results.append((out.loss, torch.cat([g.flatten() for g in grads])))
    (loss_e, grad_e), (loss_c, grad_c) = results
    # bf16 rounding, not a different function: the float64 tests above hold the numbers to 1e-10.
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-2, atol=0)
    assert (grad_c - grad_e).norm() < 3e-2 * grad_e.norm()


def test_second_order_compiled_steps_mamlpp_running_statistics_across_the_order_switch():
    # Per-step BatchNorm rows whose running statistics the compiled steps update in place; the
    # multi-step loss; first order in epoch 0, second order (whole compiled steps) from epoch 1.
    eager, comp = pair(MAMLPlusPlus, compile_second_order=True, running_stats=True, inner_lr=0.1, steps=3,
                       first_order_epochs=1, msl_epochs=3, dropgrad=DropGrad(0.2, "binary"))
    tasks = make_tasks(12, "cpu", query=3)
    for epoch in (0, 1, 2):
        for learner in (eager, comp):
            learner.set_epoch(epoch)
        assert_equal_steps(meta_step(eager, tasks, epoch), meta_step(comp, tasks, epoch))
        assert adapted_by_compiled_steps(comp, tasks) == (epoch >= 1)


@FOLDED_SECOND_ORDER_SPLITS
@pytest.mark.parametrize("noise", [None, DropGrad(0.2, "gaussian")])
def test_second_order_compiled_folded_steps_equal_eager(noise):
    # Against the eager loop without noise (the batched draw lays the noise out per task stack,
    # so with noise the reference is the eager folded step).
    eager, comp = pair(MetaSGD, compile_second_order=True, inner_lr=0.1, steps=2, batch_with="fold", dropgrad=noise)
    tasks = make_tasks(13, "cpu", query=3)
    torch._dynamo.utils.counters.clear()
    reference = meta_step(eager, tasks, 3, batched=noise is not None)
    assert_equal_steps(reference, meta_step(comp, tasks, 3, batched=True))
    assert not torch._dynamo.utils.counters["graph_break"]


def test_second_order_compiled_steps_refusals():
    with pytest.raises(ValueError, match="compile_second_order=True needs compile_forward"):
        MAML(tiny_net(), compile_second_order=True)
    with pytest.raises(ValueError, match="compile_second_order must be True or False, got 1"):
        MAML(tiny_net(), compile_forward="aot_eager", compile_second_order=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot checkpoint its steps"):
        MAML(tiny_net(), compile_forward="aot_eager", compile_second_order=True, checkpoint=True)
    learner = MAML(tiny_net().double(), compile_forward="aot_eager", compile_second_order=True, steps=1)
    with pytest.raises(ValueError, match="not under vmap"):
        learner.meta_backward(make_tasks(0, "cpu"), batched=True)
    learner.first_order = True  # first order batched with vmap compiles as before
    learner.meta_backward(make_tasks(0, "cpu"), batched=True)


@pytest.mark.parametrize("order", ["first", "second"])
def test_compiled_folded_steps_refuse_a_layer_folded_tasks_cannot_run(order):
    # A compiled region traces through the folding rules unchecked: x * t with a per-task scalar
    # t broadcast (T,) against the logits (2 classes, 2 tasks) and gave wrong numbers silently,
    # where the eager folded step raises. The learner runs the check once, eagerly, first.
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.t = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return self.fc(x) * self.t

    torch.manual_seed(0)
    y = torch.randint(0, 2, (2, 4))
    tasks = Task(torch.randn(2, 4, 3, dtype=torch.float64), y, torch.randn(2, 4, 3, dtype=torch.float64), y)
    learner = MAML(Scaled().double(), steps=1, first_order=order == "first", batch_with="fold",
                   compile_forward="aot_eager", compile_second_order=order == "second")
    with pytest.raises(NotImplementedError, match="folded tasks: .*mul.* on a per-task parameter"):
        learner.meta_backward(tasks, batched=True)
    assert all(p.grad is None for p in learner.parameters())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="compile_forward must be"):
        MAML(tiny_net(), compile_forward="")
    with pytest.raises(ValueError, match="compile_forward must be"):
        MAML(tiny_net(), compile_forward=1)
    with pytest.raises(ValueError, match="keys must be among backend, mode, options, got fullgraph"):
        MAML(tiny_net(), compile_forward={"fullgraph": True})
    with pytest.raises(ValueError, match="mode must be one of default, max-autotune-no-cudagraphs, got 'reduce-overhead'"):
        MAML(tiny_net(), compile_forward={"mode": "reduce-overhead"})
    with pytest.raises(ValueError, match="without 'triton.cudagraphs'"):
        MAML(tiny_net(), compile_forward={"options": {"triton.cudagraphs": True}})
    with pytest.raises(ValueError, match="ConsistentDropout"):
        MAML(nn.Sequential(nn.Linear(3, 3), ConsistentDropout(0.2)), compile_forward=True)


def test_compile_keywords_reach_torch_compile():
    from dropgrad.inner import _compile_kwargs

    assert _compile_kwargs(True) == {"backend": "inductor"}
    assert _compile_kwargs({"mode": "max-autotune-no-cudagraphs"}) == {
        "backend": "inductor", "mode": "max-autotune-no-cudagraphs"}
    # torch.compile refuses a mode together with options: the mode's own options are merged in.
    merged = _compile_kwargs({"mode": "max-autotune-no-cudagraphs", "options": {"combo_kernels": True}})
    assert "mode" not in merged and merged["options"]["max_autotune"] and merged["options"]["combo_kernels"]
    # An option given explicitly wins over the same option of the mode.
    mine = _compile_kwargs({"mode": "max-autotune-no-cudagraphs", "options": {"coordinate_descent_tuning": False}})
    assert mine["options"] == {"max_autotune": True, "coordinate_descent_tuning": False}
    eager, comp = pair(MAML, compile_forward={"backend": "aot_eager"}, inner_lr=0.1, steps=2, first_order=True)
    tasks = make_tasks(4, "cpu")
    assert_equal_steps(meta_step(eager, tasks), meta_step(comp, tasks))
    assert compiled_output(comp, tasks.query_x[0])


def test_inductor_first_order_meta_step_equals_eager():
    # inductor's own kernels (C++ on a CPU), channels_last included
    eager, comp = pair(MAML, compile_forward=True, inner_lr=0.1, steps=2, first_order=True,
                       dropgrad=DropGrad(0.1, "gaussian"))
    for learner in (eager, comp):
        learner.model.to(memory_format=torch.channels_last)
    tasks = make_tasks(6, "cpu", query=3)
    assert_equal_steps(meta_step(eager, tasks), meta_step(comp, tasks), tol=1e-9)
    assert compiled_output(comp, tasks.query_x[0])


def test_inductor_second_order_meta_step_equals_eager():
    # inductor's kernels for the step's forward (support forward and backward) and its backward
    # (the double backward)
    eager, comp = pair(MAML, compile_forward=True, compile_second_order=True, inner_lr=0.1, steps=2,
                       dropgrad=DropGrad(0.1, "gaussian"))
    tasks = make_tasks(14, "cpu", query=3)
    assert_equal_steps(meta_step(eager, tasks), meta_step(comp, tasks), tol=1e-9)
    assert adapted_by_compiled_steps(comp, tasks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("batch_with", "order", "layout"), [
    (None, "first", "nchw"), ("fold", "first", "nchw"), (None, "second", "nchw"), ("fold", "second", "nchw"),
    (None, "second", "channels_last"),
])  # the per-task loop; folded tasks; second order as the ResNet-18 target's row runs it (channels_last)
def test_inductor_step_replayed_from_a_cuda_graph_equals_eager(no_tf32, batch_with, order, layout):
    cuda = torch.device("cuda")
    # No DropGrad: the graph draws its noise from the CUDA generator at replay, the eager step
    # at call time (tests/core/test_graphs.py compares the two streams).
    options = {} if batch_with is None else {"batch_with": batch_with}
    if order == "second":
        options["compile_second_order"] = True
    eager, comp = pair(MAML, compile_forward=True, inner_lr=0.1, steps=3, first_order=order == "first", **options)
    eager.to(cuda)
    comp.to(cuda)
    if layout == "channels_last":
        comp.model.to(memory_format=torch.channels_last)
    step = CapturedMetaStep(comp, batched=batch_with is not None)
    for seed in (7, 8, 9):
        tasks = make_tasks(seed, cuda, query=3)
        eager.zero_grad(set_to_none=True)
        comp.zero_grad(set_to_none=True)
        out_e = eager.meta_backward(tasks)  # the eager per-task NCHW loop is the reference either way
        if layout == "channels_last":
            tasks = Task(channels_last_tasks(tasks.support_x), tasks.support_y,
                         channels_last_tasks(tasks.query_x), tasks.query_y)
        out_c = step(tasks)
        torch.testing.assert_close(out_c.task_losses, out_e.task_losses, rtol=1e-9, atol=1e-9)
        for a, b in zip(eager.parameters(), comp.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_second_order_mamlpp_replayed_from_a_cuda_graph_equals_eager(no_tf32):
    # MAML++'s per-step running statistics, updated in place inside the compiled steps, under replay.
    cuda = torch.device("cuda")
    eager, comp = pair(MAMLPlusPlus, compile_forward=True, compile_second_order=True, running_stats=True,
                       inner_lr=0.1, steps=3, msl_epochs=2)
    eager.to(cuda)
    comp.to(cuda)
    step = CapturedMetaStep(comp, batched=False)
    for seed in (7, 8, 9):
        tasks = make_tasks(seed, cuda, query=3)
        eager.zero_grad(set_to_none=True)
        comp.zero_grad(set_to_none=True)
        out_e = eager.meta_backward(tasks)
        out_c = step(tasks)
        torch.testing.assert_close(out_c.task_losses, out_e.task_losses, rtol=1e-9, atol=1e-9)
        for a, b in zip(eager.parameters(), comp.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-9)
        for a, b in zip(eager.buffers(), comp.buffers()):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("batch_with", [None, pytest.param("fold", marks=FOLDED_SECOND_ORDER_SPLITS)])
def test_one_compiled_second_order_step_serves_every_inner_step(batch_with):
    # MAML++'s step sizes and BatchNorm rows of step i are views at offsets that differ per step:
    # graph inputs, so five steps do not compile five graphs.
    options = {} if batch_with is None else {"batch_with": batch_with}
    eager, comp = pair(MAMLPlusPlus, compile_second_order=True, inner_lr=0.1, steps=5, msl_epochs=2, **options)
    tasks = make_tasks(16, "cpu", query=3)
    torch._dynamo.utils.counters.clear()
    for seed in (1, 2):
        assert_equal_steps(meta_step(eager, tasks, seed, batch_with is not None),
                           meta_step(comp, tasks, seed, batch_with is not None))
    # the inner steps (theta's first one included), the query
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("batched", [False, True])
def test_one_compiled_graph_serves_every_inner_step(batched):
    # Step-dependent tensors (MAML++'s per-step BatchNorm rows) are graph inputs, not constants,
    # so the number of graphs does not grow with the steps (torch.compile stops compiling past 8).
    eager, comp = pair(MAMLPlusPlus, inner_lr=0.1, steps=5, first_order_epochs=1, msl_epochs=2)
    tasks = make_tasks(8, "cpu", query=3)
    torch._dynamo.utils.counters.clear()
    for seed in (1, 2):
        assert_equal_steps(meta_step(eager, tasks, seed, batched), meta_step(comp, tasks, seed, batched))
    # the inner steps (theta's first one included), the query (its own shape)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def check_bf16_forms_against_float32(device: torch.device, forms: dict, net) -> dict[str, int]:
    """The folded first-order step compiled with inductor in bf16 with ``forms``, and the same step
    run eagerly in bf16, each held against the eager float32 step. Returns how often each form
    was traced."""
    import dropgrad.folded as folded

    import dropgrad.poolkernels as poolkernels

    names = {"grouped": "_grouped_conv", "unfold": "_unfolded_conv", "idxpool": "_indexed_max_pool",
             "tpool": "window_max_pool"}
    modules = {"tpool": poolkernels}
    plain = {form: getattr(modules.get(form, folded), name) for form, name in names.items()}
    traced = dict.fromkeys(names, 0)

    def counting(form):
        def call(*args, **kwargs):
            traced[form] += 1
            return plain[form](*args, **kwargs)
        return call

    for form, name in names.items():
        setattr(modules.get(form, folded), name, counting(form))
    try:
        tasks = make_tasks(17, device, dtype=torch.float32, query=3)
        results = []
        for compile_forward, bf16 in ((False, False), (False, True), (True, True)):
            torch.manual_seed(0)
            learner = MAML(net().float(), compile_forward=compile_forward, inner_lr=0.1, steps=2, first_order=True,
                           batch_with="fold")
            learner.to(device).model.to(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), compiled_forms(**forms):
                out, grads, _ = meta_step(learner, tasks, batched=True)
            results.append((out.loss.float(), torch.cat([g.flatten() for g in grads]).float()))
    finally:
        for form, name in names.items():
            setattr(modules.get(form, folded), name, plain[form])
    (loss_ref, grad_ref), (loss_e, grad_e), (loss_c, grad_c) = results
    # bf16 alone moves each side about 3% from float32 (more on some seeds), in different
    # directions: hold both to the float32 step rather than to each other.
    err_e, err_c = ((g - grad_ref).norm() / grad_ref.norm() for g in (grad_e, grad_c))
    assert err_c <= 1.5 * err_e + 1e-2, f"compiled bf16 {err_c:.4f} from float32, eager bf16 {err_e:.4f}"
    torch.testing.assert_close(loss_c, loss_ref, rtol=3e-2, atol=0)
    return traced


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("forms, net", [
    ({"pointwise_max_pool": True, "unfold_depth": 0}, tiny_net), ({"pointwise_max_pool": True}, tiny_net),
    ({"pointwise_max_pool": True, "unfold_depth": 0, "grouped_tasks": True}, two_conv_net),
    ({"indexed_pool_backward": True, "grouped_tasks": True}, two_conv_net),
    ({"triton_pool": True, "grouped_tasks": True}, two_conv_net),
], ids=["pad8", "unfold", "pad8-grouped", "unfold-grouped-idxpool", "unfold-grouped-tpool"])
def test_inductor_folded_bf16_step_with_its_gpu_kernel_forms_equals_eager(no_tf32, forms, net):
    # dropgrad.folded.compiled_forms on a GPU in bf16: max pooling as pointwise operators or with
    # its backward at the saved indices, the 3-channel convolution padded to 8 channels or run as
    # a matmul over its unfolded input, the others grouped, compiled with inductor.
    traced = check_bf16_forms_against_float32(torch.device("cuda"), forms, net)
    assert (traced["grouped"] > 0) == bool(forms.get("grouped_tasks"))
    assert (traced["unfold"] > 0) == (forms.get("unfold_depth", 27) > 0)
    assert (traced["idxpool"] > 0) == bool(forms.get("indexed_pool_backward"))
    assert (traced["tpool"] > 0) == bool(forms.get("triton_pool"))
