"""Folded tasks (dropgrad.folded, MAML(batch_with="fold")): each layer rule against the layer run task by
task, and meta-steps against the per-task loop, in float64.

The reference for a layer is torch's own function called once per task with that task's rows and
parameters; for a meta-step, ``meta_backward(batched=False)``. The conv-net meta-steps of MAML and
MetaSGD (first and second order, checkpointing, chunks, channels_last, bf16) are in
tests/core/test_batched_equivalence.py with the vmap variants.
"""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from dropgrad import MAML, MAMLPlusPlus, MetaSGD
from dropgrad.folded import compiled_forms, folded_tasks
from dropgrad.inner import Task
from torch import nn

from .conftest import lowered_graphs

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


@pytest.mark.parametrize("weight,bias", [
    ("per-task", "per-task"), ("per-task", "none"), ("shared", "per-task"), ("per-task", "shared"),
])
@pytest.mark.parametrize("out_features", [3, 2 * N])  # 2 * N: as many as a task's rows, N * 2
def test_linear_layers(weight, bias, out_features):
    # A shared bias with per-task weights (adapt="*.weight") was once broadcast as a column:
    # an error, or silently wrong numbers where out_features equalled the rows per task.
    torch.manual_seed(0)
    x = torch.randn(T * N, 2, 6)  # extra dimensions between the rows and the features
    w = torch.randn(T, out_features, 6) if weight == "per-task" else shared(torch.randn(out_features, 6))
    b = {"per-task": torch.randn(T, out_features), "shared": shared(torch.randn(out_features)), "none": None}[bias]
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


@pytest.mark.parametrize("offset", [0.0, 30.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_batch_norm_in_bf16_is_as_exact_as_atens(offset, compiled):
    # Against float64: eager no worse than ATen's own batch_norm on the same bf16 values;
    # compiled (float32 throughout, rounded once) within one bf16 rounding of values below 8
    # (2**-6). Also where the activations' mean is 30x their deviation: there a bf16 shift,
    # bias - mean * scale, cancelled against x * scale and left errors 4x ATen's.
    torch.manual_seed(0)
    x = (torch.randn(T * N, 8, 9, 9) + offset).bfloat16().to(memory_format=torch.channels_last)
    w, b = torch.rand(T, 8) + 0.5, torch.randn(T, 8)
    want = per_task(F.batch_norm, x.double(), None, None, w.double(), b.double(), training=True)
    aten = per_task(F.batch_norm, x, None, None, w.bfloat16(), b.bfloat16(), training=True)
    rule = lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)
    torch._dynamo.reset()
    try:
        with folded_tasks(T, [w, b]):
            got = (torch.compile(rule, dynamic=False) if compiled else rule)(x, w, b)
    finally:
        torch._dynamo.reset()
    assert got.dtype == torch.bfloat16 and (compiled or got.is_contiguous(memory_format=torch.channels_last))
    bound = 2**-6 if compiled else 1.25 * float((aten.double() - want).abs().max())
    assert float((got.double() - want).abs().max()) <= bound


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_batch_norm_in_bf16_normalises_with_float32_running_statistics(offset):
    # Evaluation reads the running statistics, float32 buffers, against bf16 activations (as
    # under autocast). Rounded to bf16 first, a mean near 30 moves by up to 1/16 before it is
    # subtracted: 6x ATen's error here, where the float32 statistics keep it within 2.5x.
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(T * N, 8, 5, 5, generator=g) * 2 + offset).bfloat16()
    mean = torch.randn(8, generator=g, dtype=torch.float32) * 2 + offset + 0.123456
    var = torch.rand(8, generator=g, dtype=torch.float32) * 3 + 0.5
    w = torch.rand(T, 8, generator=g, dtype=torch.float32) + 0.5
    b = torch.randn(T, 8, generator=g, dtype=torch.float32)
    want = per_task(F.batch_norm, x.double(), shared(mean.double()), shared(var.double()), w.double(), b.double())
    aten = per_task(F.batch_norm, x, shared(mean), shared(var), w, b)
    with folded_tasks(T, [w, b]):
        got = F.batch_norm(x, mean, var, w, b)
    assert got.dtype == torch.bfloat16
    assert float((got.double() - want).abs().max()) <= 2.5 * float((aten.double() - want).abs().max())


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


@pytest.mark.parametrize("adapt", ["3.*", "*.bias", "*.weight"])
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


def test_ignored_labels_leave_each_task_mean_as_cross_entropys():
    # The folded loss is one cross_entropy(reduction="none") for all tasks; each task's mean
    # must still be over its labels not ignored (-100), as F.cross_entropy's own mean is.
    tasks = mlp_tasks()
    support_y, query_y = tasks.support_y.clone(), tasks.query_y.clone()
    support_y[0, :3] = -100
    query_y[1, 5:] = -100
    tasks = Task(tasks.support_x, support_y, tasks.query_x, query_y)

    def make(batch_with):
        return MAML(norm_net("bn"), inner_lr=0.3, steps=2, batch_with=batch_with)

    assert_fold_equals_loop(make, tasks)


def test_class_probability_targets_keep_each_task_mean_as_cross_entropys():
    # Soft targets (T, n, classes): F.cross_entropy's mean is over the n samples; counting the
    # targets "not ignored" as for class indices divided by n * classes instead.
    tasks = mlp_tasks()
    g = torch.Generator().manual_seed(3)
    tasks = Task(tasks.support_x, torch.softmax(torch.randn(T, 8, 4, generator=g), -1),
                 tasks.query_x, torch.softmax(torch.randn(T, 8, 4, generator=g), -1))

    def make(batch_with):
        return MAML(norm_net("bn"), inner_lr=0.3, steps=2, batch_with=batch_with)

    assert_fold_equals_loop(make, tasks)


def test_reversing_a_per_task_parameter_with_dot_t_raises():
    # p.T of a per-task (T, in, out) parameter reverses the task dimension too; with T == in ==
    # out the shapes fit and the folded tasks gave wrong numbers without a word.
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(T, T))  # stored (in, out)

        def forward(self, x):
            return F.linear(x, self.w.T)

    learner = MAML(Head(), batch_with="fold", steps=1)
    y = torch.zeros(T, N, dtype=torch.long)
    tasks = Task(torch.randn(T, N, T), y, torch.randn(T, N, T), y)
    with pytest.raises(NotImplementedError, match="folded tasks: Tensor.T on a per-task parameter"):
        learner.meta_loss(tasks, batched=True)


def test_grouped_channels_last_convolutions_with_one_image_per_task_equal_the_loop():
    # One image per task: a slice of the folded batch's (T, 1, C, H, W) view has a batch stride
    # of its own, and torch 2.14's CPU grouped convolution then gave channels_last weights a
    # wrong gradient; the slices keep the batch's strides now.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 25, 2))
    net = net.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, 1, 4, 7, 7, generator=g).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    y = torch.randint(0, 2, (T, 1), generator=g)
    tasks = Task(x, y, x, y)

    def make(batch_with):
        return MAML(copy.deepcopy(net), inner_lr=0.3, steps=1, batch_with=batch_with)

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


# compiled_forms: compiled folded tasks run max pooling and few-channel convolutions in other
# forms (dropgrad.folded._window_max, _padded_channels); eager calls keep ATen's kernels.


POOL_AND_PAD = {"pointwise_max_pool": True, "channel_multiple": 8, "unfold_depth": 0}


def graphs_of(fn, *args, forms=POOL_AND_PAD):
    """``fn(*args)`` compiled under FoldedTasks(T) (within ``compiled_forms(**forms)`` for a dict,
    ``compiled_forms()`` for True), with the FX graphs Dynamo captured."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    torch._dynamo.reset()
    try:
        chosen = compiled_forms(**forms) if isinstance(forms, dict) else compiled_forms() if forms else None
        with folded_tasks(T), chosen or contextlib.nullcontext():
            out = torch.compile(fn, backend=backend, dynamic=False)(*args)
    finally:
        torch._dynamo.reset()
    return out, "\n".join(graphs)


@pytest.mark.parametrize(("shape", "kernel"), [
    ((6, 3, 8, 8), 2), ((6, 3, 9, 7), 2), ((6, 2, 9, 9), 3), ((6, 2, 8, 9), (2, 3)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_window_max_is_aten_max_pooling_value_and_gradient_ties_and_nans_included(shape, kernel, dtype):
    from dropgrad.folded import _window_max

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)  # small integers: ties in most windows
    x[0, 0, 0, :2] = float("nan")  # two NaNs in one window: ATen routes the gradient to the last
    x[1, 1, 2, 2] = float("-inf")
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    want = F.max_pool2d(x, kernel)
    grad_out = torch.randn(want.shape, generator=g).to(dtype)
    (want_grad,) = torch.autograd.grad(want, x, grad_out)
    got = _window_max(x, *((kernel, kernel) if isinstance(kernel, int) else kernel))
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    assert torch.equal(got_grad, want_grad)


def test_compiled_folded_max_pooling_is_pointwise_and_equal():
    torch.manual_seed(0)
    x = torch.randint(-3, 4, (T * N, 3, 8, 8)).double().requires_grad_()

    def f(x):
        return (F.max_pool2d(torch.relu(x), 2) * torch.arange(16.0).view(4, 4)).sum()

    got, graph = graphs_of(f, x)
    assert "max_pool" not in graph and "maximum" in graph
    assert torch.equal(got, f(x))
    (got_grad,) = torch.autograd.grad(graphs_of(f, x)[0], x)
    (want_grad,) = torch.autograd.grad(f(x), x)
    assert torch.equal(got_grad, want_grad)
    assert "max_pool" in graphs_of(f, x, forms=False)[1]  # off by default


@pytest.mark.parametrize(("shape", "kernel"), [
    ((6, 3, 8, 8), 2), ((6, 3, 9, 7), 2), ((6, 2, 9, 9), 3), ((6, 2, 8, 9), (2, 3)), ((6, 1, 5, 4), 2),
])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_indexed_max_pooling_is_aten_max_pooling_value_and_gradient_ties_and_nans_included(shape, kernel, layout, dtype):
    from dropgrad.folded import _indexed_max_pool

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)  # small integers: ties in most windows
    x[0, 0, 0, :2] = float("nan")
    x[1, 0, 2, 2] = float("-inf")
    x = x.to(memory_format=layout).requires_grad_()
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    want = F.max_pool2d(x, kernel)
    grad_out = torch.randn(want.shape, generator=g).to(dtype).to(memory_format=layout)
    (want_grad,) = torch.autograd.grad(want, x, grad_out)
    got = _indexed_max_pool(x, kh, kw)
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)) and got.isnan().any()
    assert torch.equal(got_grad, want_grad)  # ATen's own indices choose the element: bit for bit
    assert got_grad.is_contiguous(memory_format=layout)


@pytest.mark.torch_at_least(2, 14, "torch 2.6 traces the indexed pooling without its autograd.Function, and "
                              "torch 2.11's inductor writes CPU code for its bounds check that does not compile")
def test_compiled_folded_max_pooling_backward_selects_at_the_saved_indices():
    torch.manual_seed(0)
    x = torch.randint(-3, 4, (T * N, 3, 9, 8)).double().to(memory_format=torch.channels_last).requires_grad_()

    def f(x):
        return (F.max_pool2d(torch.relu(x), 2) * torch.arange(16.0).view(4, 4)).sum()

    forms = {"indexed_pool_backward": True, "unfold_depth": 0}
    got, graph = graphs_of(f, x, forms=forms)
    assert "autograd_function_apply" in graph  # ATen's forward and our backward, as one function
    assert torch.equal(got, f(x))
    (want_grad,) = torch.autograd.grad(f(x), x)
    (got_grad,) = torch.autograd.grad(graphs_of(f, x, forms=forms)[0], x)
    assert torch.equal(got_grad, want_grad)
    # Through inductor: the same gradient, and no max-pool backward left in the graphs it lowers
    # (which hold one without the form).
    for on in (True, False):
        grad, graphs = _inductor_grad_and_graphs(f, x, forms if on else {"unfold_depth": 0})
        torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
        assert len(graphs) == 2 and any("max_pool2d_with_indices_backward" in g for g in graphs) != on
    with pytest.raises(ValueError, match="forms of the same pooling"), \
            compiled_forms(pointwise_max_pool=True, indexed_pool_backward=True):
        pass


def _inductor_grad_and_graphs(f, x, forms):
    """``d f(x) / dx`` with ``f`` compiled by :func:`inductor_backend` under folded tasks and
    ``compiled_forms(**forms)``, and the post-grad graphs inductor lowered (forward, backward)."""
    from dropgrad.compiling import inductor_backend

    torch._dynamo.reset()
    try:
        with folded_tasks(T), compiled_forms(**forms), lowered_graphs() as graphs:
            (grad,) = torch.autograd.grad(torch.compile(f, backend=inductor_backend(), dynamic=False)(x), x)
    finally:
        torch._dynamo.reset()
    return grad, graphs


def test_changing_the_forms_recompiles():
    x = torch.randn(T * N, 3, 8, 8)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    torch._dynamo.reset()
    step = torch.compile(lambda x: F.max_pool2d(x, 2), backend=backend, dynamic=False)
    try:
        with folded_tasks(T):
            step(x)
            with compiled_forms(pointwise_max_pool=True):
                step(x)
            step(x)  # the first graph again, from the cache
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 2 and "max_pool" in graphs[0] and "max_pool" not in graphs[1]


def test_compiled_forms_defaults_are_the_forms_that_paid_on_a_gpu():
    # the unfolded 3-channel convolution (1.17x on an H200), not the pointwise pooling (0.36x)
    x, w = torch.randn(T * N, 3, 6, 6), torch.randn(T, 5, 3, 3, 3)
    assert "bmm" in graphs_of(lambda x, w: F.conv2d(x, w, None, 1, 1), x, w, forms=True)[1]
    assert "max_pool" in graphs_of(lambda x: F.max_pool2d(x, 2), x, forms=True)[1]


def test_a_channel_multiple_below_one_or_a_negative_unfold_depth_is_refused():
    with pytest.raises(ValueError, match="channel_multiple must be >= 1, got 0"), compiled_forms(channel_multiple=0):
        pass
    with pytest.raises(ValueError, match="unfold_depth must be >= 0, got -1"), compiled_forms(unfold_depth=-1):
        pass


UNFOLD = {"unfold_depth": 27}


@pytest.mark.parametrize("options", [
    {"padding": 1}, {"stride": 2}, {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)}, {},
])
@pytest.mark.parametrize("bias", ["none", "shared", "per task"])
@pytest.mark.parametrize("input_grad", [True, False], ids=["stacked", "gathered"])
def test_compiled_shallow_convolutions_run_as_one_matmul_over_the_unfolded_input(options, bias, input_grad):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T * N, 3, 9, 8, generator=g, requires_grad=input_grad)
    w = torch.randn(T, 5, 3, 3, 3, generator=g, requires_grad=True)
    b = {"none": None, "shared": shared(torch.randn(5, generator=g)), "per task": torch.randn(T, 5, generator=g)}[bias]
    if b is not None:
        b.requires_grad_()
    params = [p for p in (x, w, b) if p is not None and p.requires_grad]

    def f(x, w, b):
        return F.conv2d(x, w, b, **options)

    want = per_task(f, x, w, b)
    got, graph = graphs_of(f, x, w, b, forms=UNFOLD)
    assert "conv2d" not in graph and "bmm" in graph, graph
    # an input with a gradient is unfolded as stacked slices, images as one indexed read
    assert ("stack" in graph) == input_grad and ("arange" in graph) != input_grad, graph
    grad_out = torch.randn(want.shape, generator=g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad(got, params, grad_out)
    want_grads = torch.autograd.grad(want, params, grad_out)
    for a, e in zip(got_grads, want_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the matmul's own layout


GROUPED = {"grouped_tasks": True, "pointwise_max_pool": False}


@pytest.mark.parametrize(("conv", "space", "options", "layout"), [
    (F.conv2d, (7, 6), {"padding": 1}, "channels_last"),
    (F.conv2d, (7, 6), {"padding": 1}, "contiguous"),
    (F.conv2d, (7, 6), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}, "channels_last"),
    (F.conv2d, (7, 6), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}, "contiguous"),
    (F.conv2d, (7, 6), {"padding": "same"}, "channels_last"),
    (F.conv1d, (9,), {"stride": 2}, "contiguous"),
    (F.conv3d, (4, 5, 3), {"padding": 1}, "channels_last"),
    (F.conv3d, (4, 5, 3), {"padding": 1}, "contiguous"),
])
@pytest.mark.parametrize("bias", ["none", "shared", "per task"])
def test_compiled_per_task_convolutions_run_as_one_grouped_convolution(conv, space, options, layout, bias):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T * N, 4, *space, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    x.requires_grad_()
    w = torch.randn(T, 6, 4 // options.get("groups", 1), *(3,) * len(space), generator=g, requires_grad=True)
    b = {"none": None, "shared": shared(torch.randn(6, generator=g)), "per task": torch.randn(T, 6, generator=g)}[bias]
    if b is not None:
        b.requires_grad_()
    params = [p for p in (x, w, b) if p is not None]

    def f(x, w, b):
        return conv(x, w, b, **options)

    want = per_task(f, x, w, b)
    got, graph = graphs_of(f, x, w, b, forms=GROUPED)
    assert graph.count(f"target=torch.{conv.__name__}]") == 1, graph  # one convolution for all tasks, not T
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(want.shape, generator=g)
    for a, e in zip(torch.autograd.grad(got, params, grad_out), torch.autograd.grad(want, params, grad_out)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    if layout == "channels_last":  # what cuDNN's NHWC kernels want of the next layer
        assert got.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def test_grouped_tasks_are_off_by_default_and_leave_shared_weights_alone():
    x, w = torch.randn(T * N, 4, 6, 6), torch.randn(T, 6, 4, 3, 3)
    _, graph = graphs_of(lambda x, w: F.conv2d(x, w), x, w, forms=True)  # compiled_forms()'s defaults
    assert graph.count("target=torch.conv2d]") == T
    shared_w = shared(torch.randn(6, 4, 3, 3))
    got, graph = graphs_of(lambda x, w: F.conv2d(x, w), x, shared_w, forms=GROUPED)
    assert graph.count("target=torch.conv2d]") == 1 and "unflatten" not in graph  # the plain convolution
    torch.testing.assert_close(got, F.conv2d(x, shared_w), rtol=0, atol=0)


@pytest.mark.parametrize(("channels", "options", "forms"), [
    (4, {"padding": 1}, UNFOLD),  # 4 x 3 x 3 = 36 > 27
    (3, {"padding": "same"}, UNFOLD),
    (3, {"groups": 3}, UNFOLD),
    (3, {"padding": 1}, POOL_AND_PAD),
    (3, {"padding": 1}, False),
])
def test_deeper_grouped_or_string_padded_convolutions_keep_atens(channels, options, forms):
    x = torch.randn(T * N, channels, 6, 6)
    w = torch.randn(T, 6, channels // options.get("groups", 1), 3, 3)
    got, graph = graphs_of(lambda x, w: F.conv2d(x, w, None, **options), x, w, forms=forms)
    assert "conv2d" in graph and "bmm" not in graph
    torch.testing.assert_close(got, per_task(lambda x, w: F.conv2d(x, w, None, **options), x, w))


def test_unfolded_convolutions_refuse_rows_that_do_not_split_into_the_tasks_or_a_kernel_too_large():
    with pytest.raises(ValueError, match="a batch of 10 rows does not split into 3 tasks"):
        graphs_of(lambda x, w: F.conv2d(x, w), torch.randn(10, 3, 5, 5), torch.randn(T, 2, 3, 3, 3), forms=UNFOLD)
    with pytest.raises(ValueError, match="a 3x3 kernel .dilation 2, 2. does not fit the padded 4x4 input"):
        graphs_of(lambda x, w: F.conv2d(x, w, dilation=2), torch.randn(T * N, 1, 4, 4), torch.randn(T, 2, 1, 3, 3),
                  forms=UNFOLD)


@pytest.mark.parametrize("options", [
    {"stride": 1}, {"padding": 1}, {"ceil_mode": True}, {"dilation": 2}, {"kernel_size": 5},
])
def test_overlapping_padded_or_large_windows_keep_atens_max_pooling(options):
    x = torch.randn(T * N, 3, 10, 10)
    options = {"kernel_size": 2, **options}
    got, graph = graphs_of(lambda x: F.max_pool2d(x, **options), x)
    assert "max_pool" in graph
    torch.testing.assert_close(got, F.max_pool2d(x, **options), rtol=0, atol=0)


def test_compiled_few_channel_convolutions_get_zero_channels_up_to_eight(monkeypatch):
    from dropgrad import folded

    monkeypatch.setattr(folded, "_PAD_DEVICES", ("cpu",))  # a CUDA-only form, checked here on the CPU
    torch.manual_seed(0)
    x = torch.randn(T * N, 3, 6, 6, dtype=torch.bfloat16)
    w = torch.randn(T, 4, 3, 3, 3, dtype=torch.bfloat16, requires_grad=True)

    def f(x, w):
        return F.conv2d(x, w, None, 1, 1)

    with folded_tasks(T, [w]):
        want = f(x, w)
    (want_grad,) = torch.autograd.grad(want.float().square().sum(), w)
    got, graph = graphs_of(f, x, w)
    assert graph.count("pad") == 2, graph  # the images and the weights
    (got_grad,) = torch.autograd.grad(got.float().square().sum(), w)
    assert got_grad.shape == w.shape
    # bf16 outputs of fp32 sums: the zero channels add nothing, the kernel may sum in another order
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got_grad, want_grad, rtol=2e-2, atol=2e-2)
    assert "pad" not in graphs_of(f, x, w, forms=False)[1]  # off by default
    assert "pad" not in graphs_of(f, x.float(), w.detach().float())[1]  # full precision: as it comes
    got, graph = graphs_of(f, x, w, forms={"grouped_tasks": True, "unfold_depth": 0})  # padded, then grouped
    assert graph.count("pad") == 2 and graph.count("target=torch.conv2d]") == 1, graph
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    monkeypatch.setattr(folded, "_PAD_DEVICES", ())
    assert "pad" not in graphs_of(f, x, w)[1]


@pytest.mark.parametrize(("channels", "padded"), [(3, 8), (10, 16), (17, 24), (16, 16)])
def test_channel_padding_rounds_up_to_the_next_multiple_and_keeps_every_channel(monkeypatch, channels, padded):
    # The padding rule itself, eagerly (the compiled test above sees 3 -> 8 only): channels past
    # a multiple go up to the next one, never cut down (a negative pad would drop real channels).
    from dropgrad import folded

    monkeypatch.setattr(folded, "_PAD_DEVICES", ("cpu",))
    monkeypatch.setattr(folded, "_compiling", lambda: True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T * N, channels, 5, 5, generator=g).bfloat16()
    w = torch.randn(T, 4, channels, 3, 3, generator=g).bfloat16()
    with compiled_forms(channel_multiple=8):
        px, pw = folded._padded_channels(x, w, groups=1)
    assert px.shape[1] == pw.shape[2] == padded
    assert torch.equal(px[:, :channels], x) and torch.equal(pw[:, :, :channels], w)
    assert not px[:, channels:].any() and not pw[:, :, channels:].any()
