"""MetaView's meta-Siamese inner loop: per-keypoint copies, DropGrad placement, meta-gradients."""

import copy

import pytest
import torch
from dropgrad import DropGrad
from dropgrad_viewpoint.methods.metaview import MetaView
from dropgrad_viewpoint.models import KeypointHead, build_trunk
from torch.func import functional_call


def _batch(n, k, size=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(n, 3, size, size, generator=g, dtype=dtype),
        "kp2d": torch.rand(n, k, 2, generator=g, dtype=dtype) - 0.5,
        "visible": torch.rand(n, k, generator=g) < 0.8,
        "depth": torch.randn(n, k, generator=g, dtype=dtype) * 0.2,
        "canon": torch.randn(n, k, 3, generator=g, dtype=dtype) * 0.3,
        "canon_valid": torch.rand(n, k, generator=g) < 0.9,
    }


def _model(p=0.0, kind="none", steps=2, first_order=False, hidden=4, dtype=torch.float32):
    torch.manual_seed(0)
    m = MetaView(build_trunk("small"), KeypointHead(64, hidden), inner_lr=0.05, inner_lr_3d=0.01, steps=steps,
                 first_order=first_order, dropgrad=DropGrad(p, kind))
    return m.to(dtype)


def test_copies_adapt_independently_like_a_per_keypoint_loop():
    model = _model(steps=2).double()
    model.eval()
    batch = _batch(6, 4, dtype=torch.float64)
    feats = model.trunk(batch["images"]).detach()
    adapted = model.adapt(feats, batch)
    lrs = model.step_size()
    for k in range(4):
        # Reference: one unreplicated module trained on keypoint k alone.
        params = {n: p.detach().clone().requires_grad_() for n, p in model.head.named_parameters()}
        sub = {key: v[:, k : k + 1] for key, v in batch.items() if key != "images"}
        for _ in range(2):
            maps = functional_call(model.head, params, (feats,)).unsqueeze(0)
            loss = model.keypoint_losses(maps, sub).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - lrs[n] * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads)}
        for n in params:
            assert torch.allclose(adapted[n][k], params[n], atol=1e-12), (k, n)


def test_dropgrad_is_off_at_evaluation_and_on_while_training():
    noisy, clean = _model(p=0.5, kind="gaussian"), _model()
    batch = _batch(5, 3)
    for m in (noisy, clean):
        m.eval()
    feats = noisy.trunk(batch["images"]).detach()
    a, b, c = noisy.adapt(feats, batch), noisy.adapt(feats, batch), clean.adapt(feats, batch)
    assert all(torch.equal(a[n], b[n]) and torch.equal(a[n], c[n]) for n in a)
    noisy.train()
    torch.manual_seed(1)
    x = noisy.adapt(feats, batch)
    torch.manual_seed(2)
    y = noisy.adapt(feats, batch)
    assert any(not torch.allclose(x[n], y[n]) for n in x)
    assert any(not torch.allclose(x[n], a[n]) for n in x)


def test_second_order_meta_gradient_matches_finite_differences():
    model = _model(steps=2, hidden=3, dtype=torch.float64)
    model.train()
    for mod in model.trunk.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 0.0  # keep running statistics fixed between the evaluations
    support, query = _batch(4, 3, size=16, seed=1, dtype=torch.float64), _batch(3, 3, size=16, seed=2, dtype=torch.float64)
    loss = model.task_loss(support, query)
    targets = [model.head.heat[0].weight, model.head.geo[4].bias, model.trunk[0].weight]
    grads = torch.autograd.grad(loss, targets)
    eps = 1e-6
    for tensor, grad in zip(targets, grads):
        flat = tensor.data.view(-1)
        for idx in (0, flat.numel() // 2):
            old = flat[idx].item()
            flat[idx] = old + eps
            plus = model.task_loss(support, query).item()
            flat[idx] = old - eps
            minus = model.task_loss(support, query).item()
            flat[idx] = old
            assert abs((plus - minus) / (2 * eps) - grad.view(-1)[idx].item()) < 1e-6 * max(1.0, abs(grad.view(-1)[idx].item()))


def test_first_order_differs_from_second_order_and_learned_step_sizes_get_gradients():
    so, fo = _model(steps=1), _model(steps=1, first_order=True)
    lr = MetaView(copy.deepcopy(so.trunk), copy.deepcopy(so.head), inner_lr=0.05, steps=1, learn_inner_lr=True)
    support, query = _batch(4, 3, seed=3), _batch(4, 3, seed=4)
    g_so = torch.autograd.grad(so.task_loss(support, query), so.head.heat[0].weight)[0]
    g_fo = torch.autograd.grad(fo.task_loss(support, query), fo.head.heat[0].weight)[0]
    assert not torch.allclose(g_so, g_fo)
    lr.task_loss(support, query).backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in lr.inner_lrs.values())


def test_unadapted_prediction_is_the_same_for_every_keypoint():
    model = _model()
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    pred = model.predict(images, model.initial_params(5))
    assert pred.kp2d.shape == (2, 5, 2) and pred.canon.shape == (2, 5, 3)
    assert torch.allclose(pred.canon, pred.canon[:, :1].expand_as(pred.canon))


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        MetaView(build_trunk("small"), KeypointHead(64, 4), steps=0)


def test_hidden_keypoints_get_a_flat_heatmap_loss():
    model = _model().double()
    batch = _batch(5, 3, dtype=torch.float64)
    maps = torch.randn(3, 5, 5, 8, 8, dtype=torch.float64)
    base = model.keypoint_losses(maps, batch)
    model.weight_hidden = 0.5
    extra = model.keypoint_losses(maps, batch) - base
    # Reference: a naive loop of KL(uniform || softmax) over each keypoint's hidden images.
    for k in range(3):
        terms = []
        for i in range(5):
            if not batch["visible"][i, k]:
                logits = maps[k, i, 0].flatten()
                p = torch.exp(logits - torch.logsumexp(logits, 0))
                terms.append(sum(float(torch.log((1 / 64) / p[j])) for j in range(64)) / 64)
        expected = 0.5 * sum(terms) / max(len(terms), 1)
        assert abs(float(extra[k]) - expected) < 1e-10, k
    # A flat heatmap costs nothing.
    flat = maps.clone()
    flat[:, :, 0] = 3.0
    model.weight_hidden = 0.0
    zero = model.keypoint_losses(flat, batch)
    model.weight_hidden = 2.0
    assert torch.allclose(model.keypoint_losses(flat, batch), zero, atol=1e-12)


def test_depth_is_scored_only_where_it_is_known():
    model = _model().double()
    batch = _batch(6, 3, dtype=torch.float64)
    batch["visible"][:] = True
    with torch.no_grad():
        maps = model.head_forward(model.initial_params(3), model.trunk(batch["images"]))
    known = torch.ones(6, 3, dtype=torch.bool)
    known[2] = False
    masked = model.keypoint_losses(maps, {**batch, "depth_valid": known})
    wild = {**batch, "depth_valid": known, "depth": batch["depth"].masked_fill(~known, 100.0)}
    assert torch.equal(model.keypoint_losses(maps, wild), masked)
    everywhere = model.keypoint_losses(maps, {**batch, "depth_valid": torch.ones(6, 3, dtype=torch.bool)})
    assert torch.equal(everywhere, model.keypoint_losses(maps, batch)) and not torch.equal(masked, everywhere)
