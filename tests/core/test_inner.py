"""Functional inner loops: exactness, finite differences, first vs second order, batching."""

import pytest
import torch
import torch.nn.functional as F
from dropgrad.dropout import ConsistentDropout
from dropgrad.inner import MAML, MAMLPlusPlus, MetaOutput, MetaSGD, Task, msl_weights, sgd_step
from dropgrad.noise import DropGrad
from torch import nn

pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp(norm: str | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(3, 5)]
    if norm == "bn":
        layers.append(nn.BatchNorm1d(5, track_running_stats=False))
    elif norm == "bn-tracked":
        layers.append(nn.BatchNorm1d(5))
    elif norm == "gn":
        layers.append(nn.GroupNorm(1, 5))
    elif norm == "ln":
        layers.append(nn.LayerNorm(5))
    layers += [nn.Tanh(), nn.Linear(5, 4)]
    return nn.Sequential(*layers)


def tasks(n_tasks: int = 3, seed: int = 1, way: int = 4, shot: int = 2, query: int = 3) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(
        torch.randn(n_tasks, way * shot, 3, generator=g),
        torch.arange(way).repeat_interleave(shot).repeat(n_tasks, 1),
        torch.randn(n_tasks, way * query, 3, generator=g),
        torch.arange(way).repeat_interleave(query).repeat(n_tasks, 1),
    )


def meta_grads(learner: nn.Module, batch: Task, batched: bool = False) -> tuple[torch.Tensor, list]:
    out = learner.meta_loss(batch, batched=batched)
    params = [p for p in learner.parameters()]
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    return out.loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# --------------------------------------------------------------- reference
def naive_maml(model: nn.Sequential, batch: Task, lr: float, steps: int, first_order: bool) -> torch.Tensor:
    """Plain MAML written out by hand: explicit matmuls, a Python loop over parameters."""
    w1, b1, w2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias

    def f(p, x):
        return torch.tanh(x @ p[0].T + p[1]) @ p[2].T + p[3]

    total = 0.0
    for t in range(batch.n_tasks):
        p = [w1, b1, w2, b2]
        for _ in range(steps):
            loss = F.cross_entropy(f(p, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, p, create_graph=not first_order)
            p = [pi - lr * gi for pi, gi in zip(p, grads)]
        total = total + F.cross_entropy(f(p, batch.query_x[t]), batch.query_y[t])
    return total / batch.n_tasks


@pytest.mark.parametrize("first_order", [False, True])
def test_p0_equals_plain_maml(first_order):
    batch = tasks()
    plain = MAML(mlp(), inner_lr=0.3, steps=3, first_order=first_order)
    loss_plain, g_plain = meta_grads(plain, batch)
    for dg in (DropGrad(0.0, "gaussian"), DropGrad(0.0, "binary"), DropGrad(0.7, "none")):
        learner = MAML(mlp(), inner_lr=0.3, steps=3, first_order=first_order, dropgrad=dg)
        loss, g = meta_grads(learner, batch)
        assert torch.equal(loss, loss_plain)
        assert all(torch.equal(a, b) for a, b in zip(g, g_plain))
    # ... and plain MAML equals an independent hand-written implementation.
    model = mlp()
    ref = naive_maml(model, batch, 0.3, 3, first_order)
    g_ref = torch.autograd.grad(ref, list(model.parameters()))
    assert torch.allclose(ref, loss_plain, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g_ref, g_plain))


def _flat_params(learner):
    return [p for p in learner.parameters()]


def _directional_fd(learner, batch, seed_noise, direction, eps=1e-6):
    params = _flat_params(learner)

    def value(sign):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        seed_noise()
        v = learner.meta_loss(batch).loss.item()
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return v

    return (value(1) - value(-1)) / (2 * eps)


@pytest.mark.parametrize("method", ["maml", "metasgd", "mamlpp"])
@pytest.mark.parametrize("kind", ["none", "gaussian", "binary"])
def test_second_order_meta_gradient_matches_finite_differences(method, kind):
    gen = torch.Generator().manual_seed(0)
    dg = DropGrad(0.3, kind, generator=gen)

    def seed_noise():
        gen.manual_seed(123)  # the same noise in every evaluation makes the loss a function

    norm = "bn-tracked" if method == "mamlpp" else "bn"
    model = mlp(norm)
    kwargs = dict(inner_lr=0.2, steps=2, dropgrad=dg)
    learner = {
        "maml": lambda: MAML(model, **kwargs),
        "metasgd": lambda: MetaSGD(model, **kwargs),
        "mamlpp": lambda: MAMLPlusPlus(model, msl_epochs=5, **kwargs),
    }[method]()
    batch = tasks(n_tasks=2)
    seed_noise()
    _, grads = meta_grads(learner, batch)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g) for p in _flat_params(learner)]
        analytic = sum((gr * d).sum() for gr, d in zip(grads, direction)).item()
        fd = _directional_fd(learner, batch, seed_noise, direction)
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_first_order_is_second_order_without_second_order_terms():
    batch = tasks(n_tasks=1)
    gen = torch.Generator()
    so = MAML(mlp(), inner_lr=0.3, steps=3, dropgrad=DropGrad(0.2, generator=gen))
    fo = MAML(mlp(), inner_lr=0.3, steps=3, first_order=True, dropgrad=DropGrad(0.2, generator=gen))
    gen.manual_seed(0)
    _, g_fo = meta_grads(fo, batch)
    gen.manual_seed(0)
    _, g_so = meta_grads(so, batch)
    # Dropping the second-order terms leaves the query gradient at the adapted parameters.
    gen.manual_seed(0)
    adapted = so.adapt(batch.support_x[0], batch.support_y[0])[-1]
    leaves = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    q = F.cross_entropy(so.functional_forward(leaves, batch.query_x[0]), batch.query_y[0])
    expected = torch.autograd.grad(q, list(leaves.values()))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-13) for a, b in zip(g_fo, expected))
    assert not all(torch.allclose(a, b) for a, b in zip(g_fo, g_so))


def test_metasgd_and_mamlpp_step_sizes_receive_gradients():
    batch = tasks()
    for learner in (MetaSGD(mlp(), steps=2), MAMLPlusPlus(mlp("bn-tracked"), steps=2)):
        learner.meta_loss(batch).loss.backward()
        for name, lr in learner.lrs.items():
            assert lr.grad is not None and lr.grad.abs().sum() > 0, name
        assert learner.model[0].weight.grad.abs().sum() > 0
    assert learner.bn_weight["1"].grad.abs().sum() > 0
    assert learner.bn_weight["1"].shape == (2, 5)


@pytest.mark.parametrize("cls", [MetaSGD, MAMLPlusPlus])
def test_dropgrad_noise_reaches_the_updates_of_learned_step_sizes(cls):
    # MetaSGD's and MAML++'s rates are tensors (sgd_step's other branch than MAML's float): the
    # first step must be theta - rate * g * n with the noise n of the same draw, not theta - rate * g.
    # (The finite-difference test cannot see noise that is dropped: the loss stays a function.)
    batch = tasks(n_tasks=1)
    x, y = batch.support_x[0], batch.support_y[0]
    learner = cls(mlp(), inner_lr=0.05, steps=1,
                  dropgrad=DropGrad(0.5, "binary", generator=torch.Generator().manual_seed(3)))
    theta = dict(learner.model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(learner.model(x), y), list(theta.values()))
    noise = DropGrad(0.5, "binary", generator=torch.Generator().manual_seed(3)).draw(theta)
    assert all(n is not None and (n == 0).any() for n in noise)
    first = learner.adapt(x, y)[0]
    for (name, p), g, n in zip(theta.items(), grads, noise):
        torch.testing.assert_close(first[name], p - 0.05 * g * n, rtol=0, atol=1e-14)


def test_metasgd_per_element_step_sizes_are_used():
    learner = MetaSGD(nn.Linear(2, 1, bias=False), inner_lr=0.1, steps=1, loss_fn=lambda o, y: ((o - y) ** 2).sum())
    with torch.no_grad():
        learner.model.weight.copy_(torch.tensor([[1.0, 1.0]]))
        learner.lrs["weight"].copy_(torch.tensor([[0.5, 0.0]]))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])
    new = learner.adapt(x, y)[0]["weight"]
    # grad = 2 * (w.x - y) * x = 2 * 3 * [1, 2]
    assert torch.allclose(new, torch.tensor([[1.0 - 0.5 * 6.0, 1.0]]))


@pytest.mark.parametrize(
    "make",
    [
        lambda: MAML(mlp(), inner_lr=0.3, steps=3),
        lambda: MAML(mlp("gn"), inner_lr=0.3, steps=3),
        lambda: MAML(mlp("bn"), inner_lr=0.3, steps=3, first_order=True),
        lambda: MetaSGD(mlp("gn"), inner_lr=0.3, steps=2),
        lambda: MAMLPlusPlus(mlp("gn"), inner_lr=0.3, steps=3, msl_epochs=4),
    ],
)
def test_batched_tasks_equal_the_per_task_loop(make):
    batch = tasks(n_tasks=4)
    learner = make()
    loss_loop, g_loop = meta_grads(learner, batch, batched=False)
    loss_vmap, g_vmap = meta_grads(learner, batch, batched=True)
    assert torch.allclose(loss_loop, loss_vmap, rtol=0, atol=1e-12)
    for a, b in zip(g_loop, g_vmap):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    loop, vmap = learner.meta_loss(batch), learner.meta_loss(batch, batched=True)
    assert torch.allclose(loop.query_output, vmap.query_output, atol=1e-12)
    assert torch.allclose(loop.task_losses, vmap.task_losses, atol=1e-12)


def test_batched_refuses_what_vmap_gets_wrong():
    batch = tasks()
    with pytest.raises(ValueError, match="running statistics"):
        MAML(mlp("bn-tracked")).meta_loss(batch, batched=True)
    model = nn.Sequential(nn.Linear(3, 5), ConsistentDropout(0.3), nn.Linear(5, 4))
    with pytest.raises(ValueError, match="ConsistentDropout"):
        MAML(model).meta_loss(batch, batched=True)


@pytest.mark.parametrize("norm", ["ln", "bn"])
@pytest.mark.parametrize("vmap_norms", ["native", "decomposed"])
def test_batched_second_order_through_norm_layers_is_exact(norm, vmap_norms):
    # Only the forward is vmapped; the inner gradients come from plain autograd, which is exact
    # where torch.func.grad-inside-vmap is not (see tests/core/test_batched_equivalence.py).
    learner = MAML(mlp(norm), inner_lr=0.3, steps=2, vmap_norms=vmap_norms)
    batch = tasks()
    _, g_loop = meta_grads(learner, batch)
    _, g_vmap = meta_grads(learner, batch, batched=True)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g_loop, g_vmap))


@pytest.mark.parametrize("norm", ["ln", "bn"])
@pytest.mark.parametrize("method", [MAML, MetaSGD])
@pytest.mark.parametrize("first_order", [True, False])
def test_loop_with_decomposed_norms_equals_torchs_norm_layers(norm, method, first_order):
    # torch's own batch_norm/layer_norm (and their double backward) are the reference.
    batch = tasks()
    native = method(mlp(norm), inner_lr=0.3, steps=2, first_order=first_order)
    decomposed = method(mlp(norm), inner_lr=0.3, steps=2, first_order=first_order, loop_norms="decomposed")
    loss_a, g_a = meta_grads(native, batch)
    loss_b, g_b = meta_grads(decomposed, batch)
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g_a, g_b))
    assert any(g.abs().max() > 1e-6 for g in g_b[:2]), "the norm layer's side of the net gets gradients"


def test_decomposed_loop_norms_refuse_running_statistics_and_unknown_names():
    with pytest.raises(ValueError, match=r"loop_norms='decomposed' cannot update the running statistics of BatchNorm '1'"):
        MAML(mlp("bn-tracked"), loop_norms="decomposed")
    with pytest.raises(ValueError, match="loop_norms must be one of native, decomposed"):
        MAML(mlp("bn"), loop_norms="auto")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (MAML, {"steps": True}, "steps must be an integer >= 1"),
        (MAML, {"steps": 0}, "steps must be an integer >= 1"),
        (MAML, {"inner_lr": float("nan")}, "inner_lr must be a finite number > 0"),
        (MAML, {"inner_lr": -5.0}, "inner_lr must be a finite number > 0"),
        (MAML, {"inner_lr": "0.1"}, "inner_lr must be a finite number > 0"),
        (MetaSGD, {"inner_lr": 0.0}, "inner_lr must be a finite number > 0"),
        (MAMLPlusPlus, {"msl_epochs": -1}, "msl_epochs must be an integer >= 0"),
        (MAMLPlusPlus, {"first_order_epochs": 1.5}, "first_order_epochs must be an integer >= 0"),
    ],
)
def test_bad_learner_arguments_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(mlp(), **kwargs)


def test_mamlpp_refuses_an_adapt_selection_of_per_step_batch_norm_only():
    # Per-step BatchNorm parameters are meta-learned, never adapted: adapting only them left
    # nothing to adapt, and the first inner step failed in autograd.grad ("inputs ... empty").
    with pytest.raises(ValueError, match="selects only BatchNorm parameters"):
        MAMLPlusPlus(mlp("bn"), steps=2, adapt="1.*")
    MAMLPlusPlus(mlp("bn"), steps=2, adapt="1.*", per_step_bn=False)  # then they are adapted


def test_dropgrad_is_off_at_evaluation():
    batch = tasks(n_tasks=1)
    learner = MAML(mlp(), inner_lr=0.3, steps=3, dropgrad=DropGrad(0.5, "binary"))
    learner.eval()
    a = learner.adapt(batch.support_x[0], batch.support_y[0])[-1]
    b = learner.adapt(batch.support_x[0], batch.support_y[0])[-1]
    clean = MAML(mlp(), inner_lr=0.3, steps=3).eval().adapt(batch.support_x[0], batch.support_y[0])[-1]
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], clean[k]) for k in a)
    learner.train()
    c = learner.adapt(batch.support_x[0], batch.support_y[0])[-1]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_eval_adaptation_keeps_no_graph_to_theta():
    batch = tasks(n_tasks=1)
    learner = MAML(mlp(), steps=2).eval()
    with torch.no_grad():
        params = learner.adapt(batch.support_x[0], batch.support_y[0])[-1]
        out = learner(batch.query_x[0], params)
    assert out.grad_fn is None
    assert all(not torch.equal(params[k], v) for k, v in learner.initial_params().items())
    # Gradients enabled (as adapt enables them itself): each step still starts from detached
    # tensors, so nothing an evaluation keeps reaches theta (no graph held across the steps).
    params = learner.adapt(batch.support_x[0], batch.support_y[0])[-1]
    theta = list(learner.initial_params().values())
    reach = torch.autograd.grad(sum(p.sum() for p in params.values()), theta, allow_unused=True)
    assert all(g is None for g in reach)


def test_adapt_selection():
    learner = MAML(mlp(), adapt="2.*")
    assert learner.fast_names == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="'head.\\*' matches no parameter"):
        MAML(mlp(), adapt="head.*")
    with pytest.raises(ValueError, match="steps"):
        MAML(mlp(), steps=0)


def test_a_dropgrad_selection_outside_adapt_names_the_adapt_selection():
    # ANIL with noise on the body: "0.*" matches the model, but adapt= leaves it out of the inner loop.
    with pytest.raises(ValueError, match=r"'0\.\*' matches no parameter.*adapt='2\.\*'"):
        MAML(mlp(), adapt="2.*", dropgrad=DropGrad(0.2, params="0.*"))
    with pytest.raises(ValueError, match="matches no parameter") as info:
        MAML(mlp(), dropgrad=DropGrad(0.2, params="head.*"))
    assert "adapt=" not in str(info.value)  # without adapt= the names listed are the model's own
    MAML(mlp(), adapt="2.*", dropgrad=DropGrad(0.2, params="2.*"))


@pytest.mark.parametrize("batch_with", ["vmap", "fold"])
def test_a_subclass_overriding_the_loop_only_is_refused_batched(batch_with):
    # The batched path never calls adapt(): batching would silently train plain MAML instead.
    class HeadOnly(MAML):
        def adapt(self, support_x, support_y):
            return super().adapt(support_x, support_y)

    learner = HeadOnly(mlp(), steps=1, batch_with=batch_with)
    with pytest.raises(ValueError, match="HeadOnly overrides adapt, which only the per-task loop calls"):
        learner.meta_backward(tasks(), batched=True)
    learner.meta_backward(tasks(), batched=False)  # the loop runs it

    class Scaled(MAML):  # a logit temperature: vmap and fold call the model themselves
        def functional_forward(self, params, x, step=None):
            return 10.0 * super().functional_forward(params, x, step)

    with pytest.raises(ValueError, match="Scaled overrides functional_forward"):
        Scaled(mlp(), steps=1, batch_with=batch_with).meta_backward(tasks(), batched=True)
    MetaSGD(mlp(), steps=1, batch_with=batch_with).meta_backward(tasks(), batched=True)  # core's own variants pass

    class Both(Scaled):  # ... and a subclass that overrides a batched method as well is its own business
        def _vmapped(self, params, x, y, step):
            losses, out = super()._vmapped(params, x, y, step)
            return losses, 10.0 * out

    Both(mlp(), steps=1, batch_with=batch_with).meta_backward(tasks(), batched=True)


def test_consistent_dropout_mask_is_per_task():
    model = nn.Sequential(nn.Linear(3, 64), ConsistentDropout(0.5), nn.Tanh(), nn.Linear(64, 4))
    learner = MAML(model, steps=2)
    t = tasks(n_tasks=1).task(0)
    torch.manual_seed(0)
    a, _ = learner.task_loss(t)
    b, _ = learner.task_loss(t)
    assert a.item() != b.item()  # a new mask for every task
    learner.eval()
    assert learner.task_loss(t)[0].item() == learner.task_loss(t)[0].item()


# ------------------------------------------------------------------ MAML++
def naive_msl(n, epoch, msl_epochs):
    w = [1.0 / n] * n
    decay = 1.0 / n / msl_epochs
    floor = 0.03 / n
    for i in range(n - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return w


@pytest.mark.parametrize("epoch", [0, 1, 3, 10, 50])
def test_msl_weights(epoch):
    w = msl_weights(5, epoch, 10)
    assert w.tolist() == pytest.approx(naive_msl(5, epoch, 10))
    if epoch == 0:
        assert w.sum().item() == pytest.approx(1.0)
    if epoch >= 10:
        assert w[-1].item() == pytest.approx(1 - 4 * 0.03 / 5)


def test_mamlpp_derivative_order_annealing_and_msl():
    batch = tasks(n_tasks=2)
    learner = MAMLPlusPlus(mlp("bn-tracked"), steps=3, first_order_epochs=2, msl_epochs=4)
    fo = MAMLPlusPlus(mlp("bn-tracked"), steps=3, first_order=True, msl_epochs=4)
    learner.set_epoch(0)
    fo.set_epoch(0)
    assert not learner.second_order
    _, g_anneal = meta_grads(learner, batch)
    _, g_fo = meta_grads(fo, batch)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_anneal, g_fo))
    learner.set_epoch(2)
    assert learner.second_order
    # Multi-step loss: while active, the query loss is the weighted sum over steps.
    learner.set_epoch(1)
    traj = learner.adapt(batch.support_x[0], batch.support_y[0])
    loss, _ = learner.query_loss(traj, batch.query_x[0], batch.query_y[0])
    w = msl_weights(3, 1, 4)
    parts = [F.cross_entropy(learner.functional_forward(p, batch.query_x[0], i), batch.query_y[0]) for i, p in enumerate(traj)]
    assert torch.allclose(loss, sum(wi * pi for wi, pi in zip(w, parts)))
    learner.set_epoch(4)
    loss, _ = learner.query_loss(traj, batch.query_x[0], batch.query_y[0])
    assert torch.allclose(loss, F.cross_entropy(learner.functional_forward(traj[-1], batch.query_x[0], 2), batch.query_y[0]))


def _distinct_bn_rows(learner: MAMLPlusPlus) -> None:
    # Every row starts as a copy of the model's BatchNorm: make them differ, or using the wrong
    # step's row would go unnoticed.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key in learner.bn_weight:
            for t in (learner.bn_weight[key], learner.bn_bias[key], getattr(learner, f"bn_mean__{key}")):
                t.copy_(torch.randn(t.shape, generator=g))
            getattr(learner, f"bn_var__{key}").uniform_(0.5, 2.0, generator=g)


def test_mamlpp_steps_use_their_own_step_sizes_and_batchnorm_rows():
    batch = tasks(n_tasks=1)
    learner = MAMLPlusPlus(mlp("bn-tracked"), steps=3, msl_epochs=4)
    _distinct_bn_rows(learner)
    theta = learner.initial_params()
    with torch.no_grad():
        for lr in learner.lrs.values():
            lr[1] = 0.0  # step 1 stands still; steps 0 and 2 move
    traj = learner.adapt(batch.support_x[0], batch.support_y[0])
    # (0.bias feeds a BatchNorm in training mode, which removes it: its gradient is 0.)
    for n in (n for n in learner.fast_names if n != "0.bias"):
        assert not torch.equal(traj[0][n], theta[n]) and torch.equal(traj[1][n], traj[0][n]), n
        assert not torch.equal(traj[2][n], traj[1][n]), n
    # Multi-step loss: step i's query is scored with step i's BatchNorm row.
    learner.set_epoch(1)
    loss, _ = learner.query_loss(traj, batch.query_x[0], batch.query_y[0])
    parts = [F.cross_entropy(learner.functional_forward(p, batch.query_x[0], i), batch.query_y[0]) for i, p in enumerate(traj)]
    assert torch.allclose(loss, sum(w * part for w, part in zip(msl_weights(3, 1, 4), parts)))
    assert not torch.allclose(parts[0], F.cross_entropy(learner.functional_forward(traj[0], batch.query_x[0], 2), batch.query_y[0]))
    # A prediction without a step (meta-test) uses the last step's row, in eval mode too.
    learner.eval()
    x = batch.query_x[0]
    assert torch.equal(learner(x, traj[-1]), learner.functional_forward(traj[-1], x, 2))
    assert not torch.allclose(learner(x, traj[-1]), learner.functional_forward(traj[-1], x, 0))


def test_mamlpp_every_steps_size_gets_its_own_gradient():
    learner = MAMLPlusPlus(mlp("bn-tracked"), steps=3)
    learner.meta_loss(tasks()).loss.backward()
    for name, lr in learner.lrs.items():
        if name != "0__bias":  # the bias a BatchNorm removes: its step sizes have no effect
            assert (lr.grad != 0).all(), name


def test_mamlpp_per_step_batchnorm():
    learner = MAMLPlusPlus(mlp("bn-tracked"), steps=3)
    assert "1.weight" not in learner.fast_names and "0.weight" in learner.fast_names
    before = learner.bn_mean__1.clone()
    own = learner.model[1].running_mean.clone()
    learner.meta_loss(tasks(n_tasks=1))
    after = learner.bn_mean__1
    assert all(not torch.equal(before[i], after[i]) for i in range(3))
    assert not torch.equal(after[0], after[1])
    assert torch.equal(learner.model[1].running_mean, own)  # the model's own buffer is untouched
    # The step's BatchNorm weights are the ones used in that step's forward.
    with torch.no_grad():
        learner.bn_weight["1"][2].zero_()
        learner.bn_bias["1"][2].zero_()
    x = torch.randn(4, 3)
    out = learner.functional_forward(learner.initial_params(), x, step=2)
    head = learner.model[3]
    assert torch.allclose(out, head(torch.zeros(4, 5)))


@pytest.mark.parametrize("cls", [MAML, MetaSGD, MAMLPlusPlus])
def test_the_first_inner_step_is_theta_minus_inner_lr_times_the_support_gradient(cls):
    # MetaSGD's per-element and MAML++'s per-step rates start at inner_lr: the first step of
    # each learner is plain SGD with it, checked against autograd on the model itself.
    batch = tasks(n_tasks=1)
    learner = cls(mlp(), inner_lr=0.05, steps=2)
    x, y = batch.support_x[0], batch.support_y[0]
    theta = dict(learner.model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(learner.model(x), y), list(theta.values()))
    first = learner.adapt(x, y)[0]
    for (name, p), g in zip(theta.items(), grads):
        torch.testing.assert_close(first[name], p - 0.05 * g, rtol=0, atol=1e-14)


def test_mamlpp_after_the_multi_step_loss_scores_the_query_with_the_last_steps_batchnorm_row():
    # Past msl_epochs only the final step's query loss counts, and it runs with step 2's row
    # (weights, biases, running statistics), not step 0's: the rows are made to differ.
    batch = tasks(n_tasks=2)
    learner = MAMLPlusPlus(mlp("bn-tracked"), steps=3, msl_epochs=1)
    _distinct_bn_rows(learner)
    learner.set_epoch(1)
    assert not learner._use_msl()
    traj = learner.adapt(batch.support_x[0], batch.support_y[0])
    last = F.cross_entropy(learner.functional_forward(traj[-1], batch.query_x[0], 2), batch.query_y[0])
    first_row = F.cross_entropy(learner.functional_forward(traj[-1], batch.query_x[0], 0), batch.query_y[0])
    loss, _ = learner.query_loss(traj, batch.query_x[0], batch.query_y[0])
    torch.testing.assert_close(loss, last, rtol=0, atol=1e-14)
    assert not torch.allclose(loss, first_row)


@pytest.mark.parametrize("options", [{"vmap_norms": "native"}, {"vmap_norms": "decomposed"}, {"batch_with": "fold"}])
def test_batched_evaluation_with_running_statistics_equals_the_loop(options):
    # In eval mode BatchNorm reads its running statistics (no update): batched evaluation is
    # allowed and normalises with them, mean and variance each in its place.
    batch = tasks(n_tasks=3)
    learner = MAML(mlp("bn-tracked"), inner_lr=0.3, steps=2, **options)
    bn = learner.model[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5]))
        bn.running_var.copy_(torch.tensor([0.3, 2.0, 0.8, 1.2, 4.0]))
    learner.eval()
    loop, together = learner.meta_loss(batch), learner.meta_loss(batch, batched=True)
    torch.testing.assert_close(together.query_output, loop.query_output, rtol=0, atol=1e-12)
    torch.testing.assert_close(together.task_losses, loop.task_losses, rtol=0, atol=1e-12)


def test_meta_output_accuracy_is_per_task():
    out = MetaOutput(torch.tensor(0.0), torch.zeros(2), torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
                                                                     [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]))
    acc = out.accuracy(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert acc.shape == (2,) and acc.tolist() == pytest.approx([2 / 3, 1.0])


def test_sgd_step_scalar_and_tensor_rates():
    p = {"a": torch.ones(2, 3), "b": torch.ones(3)}
    g = {"a": torch.full((2, 3), 2.0), "b": torch.full((3,), 4.0)}
    assert torch.equal(sgd_step(p, g, 0.25)["b"], torch.zeros(3))
    out = sgd_step(p, g, {"a": torch.tensor(0.5), "b": torch.tensor([0.0, 0.25, 0.5])})
    assert torch.equal(out["a"], torch.zeros(2, 3))
    assert torch.equal(out["b"], torch.tensor([1.0, 0.0, -1.0]))
