"""Backbones: shapes, parameter names and groups, functional_call / vmap, BatchNorm modes,
consistent dropout, channels_last and bf16."""

import fnmatch

import dropgrad
import pytest
import torch
import torchvision
from dropgrad_fewshot.models import (
    BACKBONES,
    build_model,
    count_parameters,
    dropgrad_groups,
)
from torch import nn
from torch.func import functional_call, vmap


def _images(batch, channels, size, seed=0):
    return torch.randn(
        batch, channels, size, size, generator=torch.Generator().manual_seed(seed)
    )


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("size,channels", [(28, 1), (84, 3)])
def test_output_and_feature_shapes(backbone, size, channels):
    torch.manual_seed(0)
    net = build_model(backbone, 7, in_channels=channels, image_size=size)
    x = _images(3, channels, size)
    logits, fmap = net(x, return_features=True)
    assert logits.shape == (3, 7)
    assert torch.equal(net.features(x), fmap)
    assert net.pool(fmap).shape == (3, net.feature_dim) == (3, net.fc.in_features)
    width = 48 if backbone == "conv4-48" else 64
    if backbone.startswith("conv4"):
        side = {28: 1, 84: 5}[
            size
        ]  # 28 -> 14 -> 7 -> 3 -> 1; 84 -> 42 -> 21 -> 10 -> 5
        assert fmap.shape == (3, width, side, side)
        assert net.feature_dim == width * side * side
    elif backbone.startswith("resnet"):
        side = {28: 1, 84: 3}[size]
        assert fmap.shape == (3, 512, side, side) and net.feature_dim == 512
    # A backbone added by a user gets the interface checks above (README "Extending").
    assert net.classifier is net.fc


@pytest.mark.parametrize("backbone", ["conv4", "resnet18"])
def test_224_pixels_shape(backbone):
    net = build_model(backbone, 5, image_size=224)
    with torch.no_grad():
        logits, fmap = net(torch.randn(1, 3, 224, 224), return_features=True)
    assert logits.shape == (1, 5)
    assert fmap.shape[-2:] == ((14, 14) if backbone == "conv4" else (7, 7))


def test_conv4_parameter_count_by_hand():
    # conv: k*k*cin*cout + cout (bias); BN: 2*cout; head: feature_dim*n_way + n_way.
    def conv4(cin, width, side, n_way):
        first = 9 * cin * width + width + 2 * width
        rest = 3 * (9 * width * width + width + 2 * width)
        return first + rest + width * side * side * n_way + n_way

    assert count_parameters(
        build_model("conv4", 5, in_channels=1, image_size=28)
    ) == conv4(1, 64, 1, 5)
    assert count_parameters(build_model("conv4", 5, image_size=84)) == conv4(
        3, 64, 5, 5
    )
    assert count_parameters(build_model("conv4-48", 5, image_size=84)) == conv4(
        3, 48, 5, 5
    )


@pytest.mark.parametrize(
    "backbone,layers", [("resnet10", [1, 1, 1, 1]), ("resnet18", [2, 2, 2, 2])]
)
def test_resnet_matches_torchvision_layout_and_function(backbone, layers):
    """Same parameter names and shapes as torchvision's ResNet with BasicBlocks, and with the same
    weights the same function (train-mode BatchNorm uses batch statistics in both)."""
    torch.manual_seed(0)
    ours = build_model(backbone, 5, image_size=64)
    ref = torchvision.models.resnet.ResNet(
        torchvision.models.resnet.BasicBlock, layers, num_classes=5
    )
    ours_shapes = {n: p.shape for n, p in ours.named_parameters()}
    ref_shapes = {n: p.shape for n, p in ref.named_parameters()}
    assert ours_shapes == ref_shapes
    ours.load_state_dict({n: p for n, p in ref.named_parameters()})
    ref.train()
    x = _images(4, 3, 64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- groups
@pytest.mark.parametrize("backbone", BACKBONES)
def test_groups_cover_every_parameter_exactly_once(backbone):
    groups = dropgrad_groups(backbone)
    names = [
        n
        for n, _ in build_model(
            backbone, 5, in_channels=1, image_size=28
        ).named_parameters()
    ]
    for name in names:
        hits = [
            g
            for g, pats in groups.items()
            if any(fnmatch.fnmatchcase(name, p) for p in pats)
        ]
        assert len(hits) == 1, (name, hits)
    for g, pats in groups.items():
        assert any(fnmatch.fnmatchcase(n, p) for n in names for p in pats), (
            f"group {g} is empty"
        )


def test_resnet_groups_are_the_papers():
    assert dropgrad_groups("resnet18") == dropgrad.RESNET_GROUPS
    assert set(dropgrad_groups("conv4")) == {"conv1", "conv2", "conv3", "conv4", "fc"}


@pytest.mark.parametrize(
    "backbone,group,expected",
    [
        ("resnet18", "block4", "layer4."),
        ("resnet10", "conv", ("conv1.", "bn1.")),
        ("conv4", "conv2", "block2."),
    ],
)
def test_dropgrad_selects_a_group(backbone, group, expected):
    net = build_model(backbone, 5, in_channels=1, image_size=28)
    names = [n for n, _ in net.named_parameters()]
    dg = dropgrad.DropGrad(
        p=0.5, kind="binary", params=group, groups=dropgrad_groups(backbone)
    )
    flags = dg.selected(names)
    assert [n for n, f in zip(names, flags) if f] == [
        n for n in names if n.startswith(expected)
    ]


# ------------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("backbone", ["conv4", "conv4-48", "resnet10", "resnet18"])
def test_vmap_over_tasks_equals_a_loop(backbone):
    # float64: in float32 vmap's grouped convolutions and the loop's plain ones round differently
    # (ResNet-18 on torch 2.6-2.11's CPU kernels: 2e-5 apart on outputs near 0.02).
    torch.manual_seed(0)
    net = build_model(backbone, 5, in_channels=1, image_size=28).double()
    T = 3
    params = {
        n: p.detach() + 0.05 * torch.randn(T, *p.shape, dtype=torch.float64)
        for n, p in net.named_parameters()
    }
    x = torch.randn(T, 10, 1, 28, 28, dtype=torch.float64)

    def f(p, xx):
        return functional_call(net, p, (xx,))

    batched = vmap(f)(params, x)
    looped = torch.stack(
        [f({n: v[t] for n, v in params.items()}, x[t]) for t in range(T)]
    )
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    # And the tasks really differ (the perturbed parameters are used, not the module's own).
    assert not torch.allclose(
        looped[0], f({n: p for n, p in net.named_parameters()}, x[0])
    )


@pytest.mark.parametrize("batch_with", ["vmap", "fold"])
@pytest.mark.parametrize("backbone", ["conv4", "resnet10", "resnet18"])
def test_core_maml_batched_equals_per_task(backbone, batch_with):
    # float64: ResNet-18's last BatchNorm sees 5 support images at 1x1, where float32 rounding
    # of the variance alone moves outputs by ~1e-4 between any two implementations.
    torch.manual_seed(0)
    net = build_model(backbone, 5, in_channels=1, image_size=28).double()
    learner = dropgrad.MAML(net, inner_lr=0.05, steps=2, first_order=True, batch_with=batch_with)
    learner.check_batchable()  # batch-statistics BN: accepted
    T = 2
    tasks = dropgrad.Task(
        torch.randn(T, 5, 1, 28, 28, dtype=torch.float64),
        torch.arange(5).repeat(T, 1),
        torch.randn(T, 10, 1, 28, 28, dtype=torch.float64),
        torch.arange(5).repeat(T, 2),
    )
    a = learner.meta_loss(tasks, batched=True)
    b = learner.meta_loss(tasks, batched=False)
    torch.testing.assert_close(a.task_losses, b.task_losses, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(a.query_output, b.query_output, rtol=1e-9, atol=1e-9)


def test_second_order_maml_runs_per_task_through_resnet():
    torch.manual_seed(0)
    net = build_model("resnet10", 3, in_channels=1, image_size=28)
    learner = dropgrad.MAML(net, inner_lr=0.05, steps=1, first_order=False)
    task = dropgrad.Task(
        torch.randn(1, 3, 1, 28, 28),
        torch.arange(3)[None],
        torch.randn(1, 6, 1, 28, 28),
        torch.arange(3).repeat(2)[None],
    )
    learner.meta_backward(task)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters()
    )


# ------------------------------------------------------------------------ BatchNorm modes
def test_batchnorm_conventions():
    plain = build_model("conv4", 5, in_channels=1, image_size=28)
    assert not list(plain.buffers())  # batch statistics, nothing to carry per task
    x = _images(6, 1, 28)
    train_out = plain(x)
    plain.eval()
    # Eval normalises with the batch too: the same function as in training, and an image's
    # logits depend on the batch it comes with.
    torch.testing.assert_close(plain(x), train_out)
    assert not torch.allclose(plain(x)[:2], plain(x[:2]))

    tracked = build_model(
        "resnet10", 5, in_channels=1, image_size=28, bn_running_stats=True
    )
    assert any(n.endswith("running_mean") for n, _ in tracked.named_buffers())
    with pytest.raises(ValueError, match="running statistics"):
        dropgrad.MAML(tracked, steps=1, first_order=True).check_batchable()


def test_mamlpp_per_step_batchnorm_uses_running_stats():
    torch.manual_seed(0)
    net = build_model("conv4", 5, in_channels=1, image_size=28, bn_running_stats=True)
    learner = dropgrad.MAMLPlusPlus(net, inner_lr=0.05, steps=2, first_order=True)
    tasks = dropgrad.Task(
        torch.randn(1, 5, 1, 28, 28),
        torch.arange(5)[None],
        torch.randn(1, 10, 1, 28, 28),
        torch.arange(5).repeat(2)[None],
    )
    before = learner.bn_mean__block1__bn.clone()
    learner.meta_backward(tasks)
    after = learner.bn_mean__block1__bn
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])


# ------------------------------------------------------------------------ consistent dropout
def _drops(net):
    return [m for m in net.modules() if isinstance(m, dropgrad.ConsistentDropout)]


@pytest.mark.parametrize(
    "backbone,n_blocks", [("conv4", 4), ("resnet10", 4), ("resnet18", 8)]
)
@pytest.mark.parametrize("regularizer", ["dropout", "spatialdropout"])
def test_one_regulariser_after_every_block(backbone, n_blocks, regularizer):
    net = build_model(backbone, 5, regularizer=regularizer, dropout_p=0.2)
    drops = _drops(net)
    assert len(drops) == n_blocks
    assert all(
        d.p == 0.2 and d.spatial == (regularizer == "spatialdropout") for d in drops
    )
    assert not _drops(build_model(backbone, 5))


@pytest.mark.parametrize("regularizer", ["dropout", "spatialdropout"])
def test_dropout_mask_shared_within_a_task_and_fresh_across_tasks(regularizer):
    """Record the masks every forward of the core inner loop uses: all forwards of a task
    (support at each step, query after adaptation) share them; the next task draws new ones."""
    torch.manual_seed(0)
    net = build_model(
        "conv4",
        5,
        in_channels=1,
        image_size=28,
        regularizer=regularizer,
        dropout_p=0.5,
        generator=torch.Generator().manual_seed(1),
    )
    seen: list[list[torch.Tensor]] = []
    for d in _drops(net):
        record: list[torch.Tensor] = []
        seen.append(record)
        d.register_forward_hook(
            lambda mod, inp, out, record=record: record.append(mod.mask.clone())
        )
    learner = dropgrad.MAML(net, inner_lr=0.05, steps=3, first_order=True)
    T = 2
    tasks = dropgrad.Task(
        torch.randn(T, 5, 1, 28, 28),
        torch.arange(5).repeat(T, 1),
        torch.randn(T, 15, 1, 28, 28),
        torch.arange(5).repeat(T, 3),
    )
    learner.meta_loss(tasks)
    per_task = learner.steps + 1  # support forward per step, then the query forward
    for record in seen:
        assert len(record) == T * per_task
        first, second = record[:per_task], record[per_task:]
        assert all(torch.equal(m, first[0]) for m in first)
        assert all(torch.equal(m, second[0]) for m in second)
        assert not torch.equal(first[0], second[0])
        if regularizer == "spatialdropout":
            assert first[0].shape[1:] == (1, 1)  # whole channels
        assert set(first[0].unique().tolist()) <= {0.0, 2.0}


def test_spatial_dropout_zeroes_whole_channels_of_block_outputs():
    torch.manual_seed(0)
    net = build_model(
        "conv4",
        5,
        in_channels=1,
        image_size=28,
        regularizer="spatialdropout",
        dropout_p=0.5,
    )
    dropgrad.resample_dropout_masks(net)
    out = net.block1(_images(4, 1, 28))
    dropped = net.block1.drop.mask.flatten() == 0
    assert dropped.any() and (~dropped).any()
    assert (out[:, dropped] == 0).all()
    assert (out[:, ~dropped].abs().sum(dim=(0, 2, 3)) > 0).all()


@pytest.mark.parametrize(
    "backbone,regularizer", [("conv4", "dropout"), ("resnet10", "spatialdropout")]
)
def test_dropout_is_identity_in_eval(backbone, regularizer):
    torch.manual_seed(0)
    net = build_model(
        backbone,
        5,
        in_channels=1,
        image_size=28,
        regularizer=regularizer,
        dropout_p=0.5,
    )
    plain = build_model(backbone, 5, in_channels=1, image_size=28)
    plain.load_state_dict(net.state_dict())
    x = _images(4, 1, 28)
    net.eval(), plain.eval()
    torch.testing.assert_close(net(x), plain(x))
    net.train()
    assert not torch.allclose(net(x), plain(x))


def test_vmap_path_refuses_dropout_while_training():
    net = build_model("conv4", 5, in_channels=1, image_size=28, regularizer="dropout")
    with pytest.raises(ValueError, match="ConsistentDropout"):
        dropgrad.MAML(net, steps=1, first_order=True).check_batchable()


# ---------------------------------------------------------------- channels_last and bf16
@pytest.mark.parametrize("backbone", ["conv4", "resnet10"])
def test_channels_last_and_bf16_autocast(backbone):
    torch.manual_seed(0)
    net = build_model(backbone, 5, image_size=84)
    x = _images(4, 3, 84)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        net_cl(x.contiguous(memory_format=torch.channels_last)),
        ref,
        rtol=1e-4,
        atol=1e-4,
    )
    with dropgrad.autocast("cpu", enabled=True):
        low = net(x)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low.float()).all()
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    low.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("backbone", ["conv4", "resnet10"])
def test_dropout_masks_come_from_the_given_generator(backbone):
    """``generator`` draws every regulariser's masks: nets built with equally seeded generators
    drop the same units whatever torch's global RNG holds (the documented reproducible masks)."""
    masks = []
    for global_seed in (0, 1):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(7)
        net = build_model(backbone, 5, in_channels=1, image_size=28, regularizer="dropout", dropout_p=0.5, generator=g)
        assert all(d.generator is g for d in _drops(net))
        torch.manual_seed(global_seed)
        dropgrad.resample_dropout_masks(net)
        net(_images(2, 1, 28))
        masks.append([d.mask.clone() for d in _drops(net)])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


def test_count_parameters_counts_only_trainable_elements():
    net = build_model("conv4", 5, in_channels=1, image_size=28)
    total = count_parameters(net)
    assert total == sum(p.numel() for p in net.parameters())
    net.fc.requires_grad_(False)
    assert count_parameters(net) == total - net.fc.weight.numel() - net.fc.bias.numel()


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"backbone": "vgg"},
            "--backbone must be one of " + ", ".join(BACKBONES),
        ),
        (
            {"regularizer": "dropblock"},
            "--regularizer must be one of none, dropout, spatialdropout",
        ),
        ({"dropout_p": 1.0}, "0 <= p < 1"),
        ({"n_way": 0}, "n_way must be an integer >= 1"),
        ({"image_size": 12}, "image_size must be at least 16"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1"),
        ({"n_way": True}, "n_way must be an integer >= 1"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    args = {"backbone": "conv4", "n_way": 5} | kwargs
    with pytest.raises(ValueError, match=match):
        build_model(args.pop("backbone"), args.pop("n_way"), **args)
    if "backbone" in kwargs:
        with pytest.raises(ValueError, match="--backbone"):
            dropgrad_groups(kwargs["backbone"])


def test_option_bounds_are_inclusive_where_documented():
    # 0 <= p < 1: p = 0 (a dropout layer that keeps everything) is a valid sweep point.
    net = build_model("conv4", 5, in_channels=1, image_size=28, regularizer="dropout", dropout_p=0.0)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    # ResNets accept any input size, but not a size below one pixel.
    with pytest.raises(ValueError, match="image_size must be an integer >= 1"):
        build_model("resnet10", 5, image_size=0)


def test_conv4_names_a_size_mismatch():
    net = build_model("conv4", 5, image_size=84)
    with pytest.raises(ValueError, match="built for 84 px"):
        net(torch.zeros(1, 3, 28, 28))


def test_reset_classifier():
    net = build_model("resnet10", 5, image_size=32)
    trunk = {
        k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")
    }
    net.reset_classifier(64)
    assert (
        net.fc.weight.shape == (64, 512)
        and net.n_way == 64
        and (net.fc.bias == 0).all()
    )
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in trunk.items())
    assert isinstance(net.classifier, nn.Linear)


@pytest.mark.parametrize("backbone, method", [
    ("conv4", "maml"), ("conv4-48", "maml"), ("resnet10", "maml"), ("resnet18", "maml"), ("conv4", "mamlpp"),
    ("resnet18", "mamlpp"),
])
def test_backbones_compile_without_graph_breaks(backbone, method):
    # fewshot-train --compile: a graph break would split the fused forward and backward and add
    # launches; more than a few graphs per run would mean a recompilation per step.
    torch._dynamo.reset()
    model = build_model(backbone, 3, in_channels=1, image_size=32, bn_running_stats=method == "mamlpp")
    if method == "mamlpp":  # per-step BatchNorm with running statistics, first-order epoch
        learner = dropgrad.MAMLPlusPlus(model, inner_lr=0.1, steps=2, first_order_epochs=1, compile_forward="aot_eager")
    else:
        learner = dropgrad.MAML(model, inner_lr=0.1, steps=2, first_order=True, compile_forward="aot_eager")
    g = torch.Generator().manual_seed(0)
    tasks = dropgrad.Task(torch.randn(2, 3, 1, 32, 32, generator=g), torch.arange(3).repeat(2, 1),
                          torch.randn(2, 6, 1, 32, 32, generator=g), torch.arange(3).repeat_interleave(2).repeat(2, 1))
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        learner.meta_backward(tasks)
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # support and query shapes
    torch._dynamo.reset()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_heads_start_with_a_zero_bias(backbone):
    # MAML's and CloserLook's classifiers start from a zero bias (nn.Linear's default is uniform).
    torch.manual_seed(0)
    net = build_model(backbone, 5, in_channels=1, image_size=28)
    assert (net.fc.bias == 0).all()


def test_conv4_dropout_masks_the_pooled_block_output():
    # conv -> BN -> ReLU -> max-pool -> dropout: the mask has the pooled map's shape and multiplies it.
    torch.manual_seed(0)
    net = build_model("conv4", 5, in_channels=1, image_size=28, regularizer="dropout", dropout_p=0.5)
    dropgrad.resample_dropout_masks(net)
    block, x = net.block1, _images(4, 1, 28)
    out = block(x)
    pooled = nn.functional.max_pool2d(torch.relu(block.bn(block.conv(x))), 2)
    mask = block.drop.mask
    assert mask.shape == pooled.shape[1:] and (mask == 0).any()
    torch.testing.assert_close(out, pooled * mask, rtol=0, atol=0)


def test_reset_classifier_draws_nn_linears_default_range():
    net = build_model("conv4", 5, in_channels=1, image_size=28)  # feature_dim 64: bound 1/8
    net.reset_classifier(200, generator=torch.Generator().manual_seed(0))
    w = net.fc.weight.detach()
    assert 0.95 / 8 < w.abs().max() <= 1 / 8
    assert w.std().item() == pytest.approx(1 / 8 / 3**0.5, rel=0.03)  # std of U(-b, b) is b / sqrt(3)


def test_each_backbone_entry_gives_the_papers_input_size_and_its_fixed_head():
    # CloserLook / MAML: Conv4 at 84 px, the ResNets at 224 px on RGB sets; 28 px for Omniglot.
    import typing

    from dropgrad_fewshot.config import FewShotConfig
    from dropgrad_fewshot.models.build import Backbone

    assert set(typing.get_args(Backbone)) == set(BACKBONES)
    # A new backbone states its RGB input side and fixed_input_size here (README "Extending").
    expected = {"conv4": (84, True), "conv4-48": (84, True), "resnet10": (224, False), "resnet18": (224, False)}
    assert set(expected) == set(BACKBONES), "add the new backbone's (rgb_image_size, fixed_input_size) to expected"
    for name, (size, fixed) in expected.items():
        assert FewShotConfig(dataset="cub", data_root="x", backbone=name).image_size_resolved == size
        assert FewShotConfig(dataset="glyphs", backbone=name).image_size_resolved == 28
        net = build_model(name, 5, image_size=32)
        assert net.backbone == name and net.fixed_input_size is fixed


# ------------------------------------------------------------------ mutation round 5 (m5k)


def test_resnet_init_is_closerlooks():
    # CloserLook's init_layer: conv weights N(0, 2 / (k * k * out_channels)), BatchNorm weight 1 and bias 0.
    torch.manual_seed(0)
    net = build_model("resnet18", 5, image_size=64)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 1 + 16 + 3
    for name in ("conv1", "layer1.0.conv1", "layer3.1.conv2", "layer2.0.downsample.0", "layer4.0.downsample.0"):
        w = convs[name].weight.detach()
        k, out = w.shape[-1], w.shape[0]
        assert w.std().item() == pytest.approx((2.0 / (k * k * out)) ** 0.5, rel=0.05), name
        assert abs(w.mean().item()) < 0.1 * (2.0 / (k * k * out)) ** 0.5, name
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
