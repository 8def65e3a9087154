"""The fast meta-step paths give the numbers of the plain per-task loop.

Reference: ``meta_backward(tasks, batched=False)`` with default options (one task at a time,
torch's own BatchNorm). Checked against it: vmap over tasks (native and decomposed norms),
activation checkpointing, task chunks, channels_last, bf16 autocast; MAML first and second
order and MetaSGD, on a conv net with batch-statistics BatchNorm.

Tolerances: float64 1e-10 absolute on the loss and every meta-gradient (observed ~1e-16);
float32 2e-4 relative to the largest gradient entry of each tensor (observed ~1e-6); bf16
autocast against float32: loss within 2%, all meta-gradients together cosine similarity >= 0.99
and each tensor's >= 0.98 (tensors whose gradient is not ~0). DropGrad on the batched path: one independent draw per task and element,
mean 1 and variance p/(1-p) within 5 standard errors.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from dropgrad import fast
from dropgrad.inner import MAML, MAMLPlusPlus, MetaSGD, Task
from dropgrad.noise import DropGrad
from torch import nn


def convnet(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8, track_running_stats=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    )
    return net.to(dtype)


def make_tasks(dtype: torch.dtype, n_tasks: int = 4, seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    way, shot, query = 3, 2, 2
    return Task(
        torch.randn(n_tasks, way * shot, 3, 8, 8, generator=g).to(dtype),
        torch.arange(way).repeat_interleave(shot).repeat(n_tasks, 1),
        torch.randn(n_tasks, way * query, 3, 8, 8, generator=g).to(dtype),
        torch.arange(way).repeat_interleave(query).repeat(n_tasks, 1),
    )


def learner(method: str, order: str, dtype: torch.dtype, **options) -> MAML:
    cls = MetaSGD if method == "metasgd" else MAML
    return cls(convnet(dtype), inner_lr=0.1, steps=3, first_order=order == "first", **options)


def run(lrn: MAML, tasks: Task, batched: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    lrn.zero_grad(set_to_none=True)
    out = lrn.meta_backward(tasks, batched=batched)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in lrn.parameters()]
    return out.loss, grads


VARIANTS = {
    "vmap": (True, {}),
    "vmap-native": (True, {"vmap_norms": "native"}),
    "vmap-decomposed": (True, {"vmap_norms": "decomposed"}),
    "vmap-checkpoint": (True, {"checkpoint": True}),
    "vmap-chunk3": (True, {"task_chunk": 3}),
    "vmap-chunk1-checkpoint": (True, {"task_chunk": 1, "checkpoint": True}),
    "loop-checkpoint": (False, {"checkpoint": True}),
    "fold": (True, {"batch_with": "fold"}),
    "fold-checkpoint": (True, {"batch_with": "fold", "checkpoint": True}),
    "fold-chunk3": (True, {"batch_with": "fold", "task_chunk": 3}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method,order", [("maml", "first"), ("maml", "second"), ("metasgd", "first"), ("metasgd", "second")])
def test_float64_fast_paths_equal_the_per_task_loop(variant, method, order):
    tasks = make_tasks(torch.float64)
    ref_loss, ref_grads = run(learner(method, order, torch.float64), tasks, batched=False)
    batched, options = VARIANTS[variant]
    loss, grads = run(learner(method, order, torch.float64, **options), tasks, batched=batched)
    assert abs(loss.item() - ref_loss.item()) < 1e-10
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max().item() < 1e-10
    # the meta-gradient is not trivially zero (a test that can fail)
    assert max(g.abs().max().item() for g in ref_grads) > 1e-3


def _nested_func_grad_meta_grads(model: nn.Module, tasks: Task) -> list[torch.Tensor]:
    """Second-order MAML written with torch.func.grad nested inside vmap (not what MAML does)."""
    from torch.func import functional_call

    theta = dict(model.named_parameters())

    def support_loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def task_loss(p, sx, sy, qx, qy):
        for _ in range(2):
            g = torch.func.grad(support_loss)(p, sx, sy)
            p = {k: p[k] - 0.1 * g[k] for k in p}
        return support_loss(p, qx, qy)

    losses = torch.func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(theta, *tasks)
    return list(torch.autograd.grad(losses.mean(), list(theta.values())))


def test_decomposed_norms_fix_nested_func_grad_second_order():
    """Why fast.decomposed_norms exists besides channels_last: torch.func.grad inside vmap is
    off in the second derivative through batch_norm; MAML avoids that construction."""
    tasks = make_tasks(torch.float64)
    lrn = MAML(convnet(torch.float64), inner_lr=0.1, steps=2)
    lrn.zero_grad(set_to_none=True)
    lrn.meta_loss(tasks).loss.backward()
    ref = [p.grad for p in lrn.model.parameters()]
    wrong = _nested_func_grad_meta_grads(lrn.model, tasks)
    assert max((a - b).abs().max().item() for a, b in zip(wrong, ref)) > 1e-6
    with fast.decomposed_norms():
        fixed = _nested_func_grad_meta_grads(lrn.model, tasks)
    assert max((a - b).abs().max().item() for a, b in zip(fixed, ref)) < 1e-10


@pytest.mark.parametrize("batch_with", ["vmap", "fold"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_float32_batched_and_channels_last_match_the_loop(order, batch_with):
    tasks = make_tasks(torch.float32)
    ref_loss, ref_grads = run(learner("maml", order, torch.float32), tasks, batched=False)
    fast_learner = learner("maml", order, torch.float32, batch_with=batch_with).to(memory_format=torch.channels_last)
    assert fast.is_channels_last(fast_learner.model)
    cl_tasks = Task(fast.channels_last_tasks(tasks.support_x), tasks.support_y,
                    fast.channels_last_tasks(tasks.query_x), tasks.query_y)
    plain = learner("maml", order, torch.float32, batch_with=batch_with)
    for lrn, batch in ((plain, tasks), (fast_learner, cl_tasks)):
        loss, grads = run(lrn, batch, batched=True)
        assert abs(loss.item() - ref_loss.item()) <= 2e-4 * abs(ref_loss.item())
        for a, b in zip(grads, ref_grads):
            assert (a - b).abs().max().item() <= 2e-4 * b.abs().max().item() + 1e-7


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("batched", [False, "vmap", "fold"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_bf16_autocast_is_close_to_float32(batched, order):
    """The inner loop's autograd.grad / torch.func.grad run under bf16 autocast (what MetaTrainer's bf16 does)."""
    tasks = make_tasks(torch.float32)
    ref_loss, ref_grads = run(learner("maml", order, torch.float32), tasks, batched=False)
    lrn = learner("maml", order, torch.float32, batch_with=batched or "vmap")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = run(lrn, tasks, batched=bool(batched))
    assert all(g.dtype == torch.float32 for g in grads)  # parameters and their grads stay float32
    assert abs(loss.item() - ref_loss.item()) <= 0.02 * abs(ref_loss.item())
    assert _cosine(torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in ref_grads])) >= 0.99
    # (a conv bias before BatchNorm has a true gradient of ~0, pure rounding noise in either precision)
    largest = max(g.norm().item() for g in ref_grads)
    for a, b in zip(grads, ref_grads):
        if b.norm().item() >= 1e-3 * largest:
            assert _cosine(a, b) >= 0.98


def _adapted_noise(kind: str, p: float, n_tasks: int, m: int, batched: bool, batch_with: str = "vmap") -> torch.Tensor:
    """Per-task noise of one inner step, read off a model whose every inner gradient is 1.

    Linear(1, m) without bias, input 1, loss = sum of outputs: the gradient of every weight is 1,
    so the adapted weight is ``w - lr * n`` and the query output (input 1) is that weight.
    """
    torch.manual_seed(0)
    model = nn.Linear(1, m, bias=False)
    lr = 0.5
    lrn = MAML(model, inner_lr=lr, steps=1, first_order=True, dropgrad=DropGrad(p, kind),
               loss_fn=lambda out, y: out.sum(), batch_with=batch_with)
    ones = torch.ones(n_tasks, 1, 1)
    out = lrn.meta_loss(Task(ones, torch.zeros(n_tasks, 1), ones, torch.zeros(n_tasks, 1)), batched=batched)
    w = model.weight.detach()[:, 0]
    return (w - out.query_output.detach()[:, 0, :]) / lr  # (n_tasks, m)


@pytest.mark.parametrize("batch_with", ["vmap", "fold"])
@pytest.mark.parametrize("kind", ["gaussian", "binary"])
def test_batched_dropgrad_draws_independent_noise_per_task(kind, batch_with):
    p, n_tasks, m = 0.2, 4, 20000
    noise = _adapted_noise(kind, p, n_tasks, m, batched=True, batch_with=batch_with)
    var = p / (1 - p)
    se_mean = math.sqrt(var / m)
    for t in range(n_tasks):
        assert abs(noise[t].mean().item() - 1.0) < 5 * se_mean
        # the sample variance's standard error: sqrt((mu4 - var^2) / m); mu4 <= 3 var^2 (gaussian), larger for binary
        assert abs(noise[t].var().item() - var) < 5 * var * math.sqrt(10.0 / m)
    if kind == "binary":
        assert set(torch.unique(noise.round(decimals=5)).tolist()) <= {0.0, round(1 / (1 - p), 5)}
    centred = noise - 1.0
    for a in range(n_tasks):
        for b in range(a + 1, n_tasks):
            corr = (centred[a] * centred[b]).mean().item() / var
            assert abs(corr) < 5 / math.sqrt(m)  # independent draws: correlation ~ N(0, 1/m)


def test_batched_and_loop_noise_have_the_same_law():
    loop = _adapted_noise("gaussian", 0.1, 2, 20000, batched=False)
    vmap = _adapted_noise("gaussian", 0.1, 2, 20000, batched=True)
    assert abs(loop.std().item() - vmap.std().item()) < 0.02 * math.sqrt(0.1 / 0.9) * 5


def test_checkpointed_step_reuses_its_noise():
    """With DropGrad on, the recomputed step must see the same noise: gradients equal the unchecked ones."""
    tasks = make_tasks(torch.float64)
    results = []
    for ckpt in (False, True):
        lrn = learner("maml", "second", torch.float64, checkpoint=ckpt)
        lrn.dropgrad = DropGrad(0.3, "gaussian", generator=torch.Generator().manual_seed(3))
        results.append(run(lrn, tasks, batched=True))
    (l0, g0), (l1, g1) = results
    assert abs(l0.item() - l1.item()) < 1e-12
    assert all((a - b).abs().max().item() < 1e-10 for a, b in zip(g0, g1))


@pytest.mark.parametrize("cls", [MAML, MAMLPlusPlus])
def test_checkpointed_loop_steps_count_each_batch_once_in_the_running_statistics(cls):
    """The recomputed support forward must not update BatchNorm running statistics again (MAML++'s
    per-step rows included): the buffers and meta-gradients equal the unchecked step's."""
    tasks = make_tasks(torch.float64, n_tasks=2)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 64, 3)).double()
        lrn = cls(net, inner_lr=0.1, steps=2, checkpoint=ckpt)
        loss, grads = run(lrn, tasks, batched=False)
        results.append((loss, grads, [b.clone() for b in lrn.buffers()]))
    (l0, g0, b0), (l1, g1, b1) = results
    assert abs(l0.item() - l1.item()) < 1e-12
    assert all((a - b).abs().max().item() < 1e-10 for a, b in zip(g0, g1))
    assert len(b0) == len(b1) > 0
    for a, b in zip(b0, b1):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="task_chunk"):
        MAML(nn.Linear(2, 2), task_chunk=0)
    with pytest.raises(ValueError, match="vmap_norms"):
        MAML(nn.Linear(2, 2), vmap_norms="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="running statistics"):
        fast.batch_norm(torch.randn(4, 2), torch.zeros(2), torch.ones(2), training=True)


@pytest.mark.parametrize("offset", [0.0, 30.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_decomposed_batch_norm_in_bf16_is_as_exact_as_atens(offset, compiled):
    # Against float64: eager no worse than ATen's batch_norm on the same bf16 values; compiled
    # (float32 throughout) within one bf16 rounding of values below 8. Also where the mean is
    # 30x the deviation, where a bf16 shift cancelled against x * scale (errors 4x ATen's).
    torch.manual_seed(0)
    x = (torch.randn(24, 8, 9, 9) + offset).bfloat16().to(memory_format=torch.channels_last)
    w, b = torch.rand(8) + 0.5, torch.randn(8)
    want = F.batch_norm(x.double(), None, None, w.double(), b.double(), training=True)
    aten = F.batch_norm(x, None, None, w.bfloat16(), b.bfloat16(), training=True)
    norm = fast.batch_norm
    torch._dynamo.reset()
    try:
        if compiled:
            norm = torch.compile(fast.batch_norm, dynamic=False)
        got = norm(x, None, None, w, b, training=True)
    finally:
        torch._dynamo.reset()
    assert got.dtype == torch.bfloat16
    bound = 2**-6 if compiled else 1.25 * float((aten.double() - want).abs().max())
    assert float((got.double() - want).abs().max()) <= bound


@pytest.mark.parametrize("module", ["dropgrad.fast", "dropgrad.folded", "dropgrad.inner", "dropgrad.noise", "dropgrad.streams"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("selection", [None, "0.*"])
def test_fused_noisy_update_equals_multiply_then_step(selection):
    """sgd_step's fused theta - lr * g * n (one _foreach_addcmul) against g * n then theta - lr * g'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = Task(torch.randn(1, 6, 3, dtype=torch.float64), torch.tensor([[0, 1, 0, 1, 0, 1]]),
                 torch.randn(1, 4, 3, dtype=torch.float64), torch.tensor([[0, 1, 0, 1]]))
    lrn = MAML(model, inner_lr=0.2, steps=3,
               dropgrad=DropGrad(0.4, "gaussian", params=selection, generator=torch.Generator().manual_seed(5)))
    adapted = lrn.adapt(batch.support_x[0], batch.support_y[0])
    replay = DropGrad(0.4, "gaussian", params=selection, generator=torch.Generator().manual_seed(5))
    params = dict(model.named_parameters())
    for step in range(3):
        noise = replay.draw(params)
        loss = F.cross_entropy(torch.func.functional_call(model, params, (batch.support_x[0],)), batch.support_y[0])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        noisy = [g if n is None else g * n for g, n in zip(grads, noise)]
        params = {k: p - 0.2 * g for (k, p), g in zip(params.items(), noisy)}
        for k in params:
            assert (adapted[step][k] - params[k]).abs().max().item() < 1e-14
    assert (noise[-1] is None) == (selection is not None)  # "0.*" leaves the last layer noiseless
    # and the meta-gradient flows through the fused update like through the plain one
    g_fused = torch.autograd.grad(adapted[-1]["2.weight"].sum(), model[0].weight)[0]
    g_plain = torch.autograd.grad(params["2.weight"].sum(), model[0].weight)[0]
    assert torch.allclose(g_fused, g_plain, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("order", ["first", "second"])
def test_cuda_batched_channels_last_and_bf16_match_the_loop(order):
    """On CUDA (torch 2.11) channels_last batch_norm under vmap is NYI; the batched path swaps in
    the decomposed norms and must still equal the per-task loop (float64, cuDNN)."""
    dev = torch.device("cuda")
    tasks = make_tasks(torch.float64).to(dev)
    ref = learner("maml", order, torch.float64).to(dev)
    ref_loss, ref_grads = run(ref, tasks, batched=False)
    lrn = learner("maml", order, torch.float64).to(dev).to(memory_format=torch.channels_last)
    cl = Task(fast.channels_last_tasks(tasks.support_x), tasks.support_y,
              fast.channels_last_tasks(tasks.query_x), tasks.query_y)
    loss, grads = run(lrn, cl, batched=True)
    assert abs(loss.item() - ref_loss.item()) < 1e-9
    assert all((a - b).abs().max().item() < 1e-9 for a, b in zip(grads, ref_grads))
    lrn32 = learner("maml", order, torch.float32).to(dev).to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = lrn32.meta_backward(Task(*(t.float() if t.is_floating_point() else t for t in cl)), batched=True)
    assert torch.isfinite(out.task_losses).all()
    assert all(torch.isfinite(p.grad).all() for p in lrn32.parameters())
