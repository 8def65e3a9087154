"""MetaView's parts one at a time: where DropGrad acts, the adaptation's step count, the loss
weights and masks, and how a prediction is read off the heatmaps."""

import pytest
import torch
from dropgrad_viewpoint.methods.metaview import MetaView
from dropgrad_viewpoint.models import KeypointHead, build_trunk


def _batch(n, k, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(n, 3, size, size, generator=g), "kp2d": torch.rand(n, k, 2, generator=g) - 0.5,
            "visible": torch.ones(n, k, dtype=torch.bool), "depth": torch.randn(n, k, generator=g) * 0.2,
            "canon": torch.randn(n, k, 3, generator=g) * 0.3, "canon_valid": torch.ones(n, k, dtype=torch.bool)}


def _model(steps=1):
    torch.manual_seed(0)
    return MetaView(build_trunk("small"), KeypointHead(64, 4), inner_lr=0.05, inner_lr_3d=0.01, steps=steps)


def test_dropgrad_acts_on_the_inner_gradient_only():
    m = _model().train()
    seen = []

    class ZeroGrads(torch.nn.Module):
        # DropGrad's place: it must see the inner gradients, and only them.
        def forward(self, grads):
            seen.append(grads)
            return {n: torch.zeros_like(g) for n, g in grads.items()}

    m.dropgrad = ZeroGrads()
    b = _batch(4, 3)
    out = m.adapt(m.trunk(b["images"]), b)
    init = m.initial_params(3)
    assert seen and all(torch.equal(out[n], init[n]) for n in init)  # zeroed gradients: no step


def test_adapt_honours_the_steps_argument():
    m = _model(steps=1).eval()
    b = _batch(4, 3)
    f = m.trunk(b["images"]).detach()
    one, three = m.adapt(f, b, steps=1), m.adapt(f, b, steps=3)
    assert any(not torch.allclose(one[n], three[n]) for n in one)


def test_weight_3d_scales_depth_and_canon_terms():
    m = _model().double()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch(4, 3).items()}
    maps = torch.randn(3, 4, 5, 8, 8, dtype=torch.float64)
    m.weight_3d = 0.0
    base = m.keypoint_losses(maps, b)
    m.weight_3d = 1.0
    one = m.keypoint_losses(maps, b)
    m.weight_3d = 10.0
    ten = m.keypoint_losses(maps, b)
    assert torch.allclose(ten - base, 10 * (one - base))
    # Weight 0: the 3D targets do not matter at all.
    m.weight_3d = 0.0
    far = {**b, "depth": b["depth"] + 5.0, "canon": b["canon"] + 5.0}
    assert torch.equal(m.keypoint_losses(maps, far), base)


def test_hidden_keypoints_do_not_train_the_canonical_output():
    m = _model().double()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch(4, 3).items()}
    b["visible"][:, 0] = False
    maps = torch.randn(3, 4, 5, 8, 8, dtype=torch.float64)
    wild = {**b, "canon": b["canon"].clone()}
    wild["canon"][:, 0] = 100.0
    assert torch.equal(m.keypoint_losses(maps, b), m.keypoint_losses(maps, wild))


@pytest.mark.parametrize("h", [8, 6])  # 6: a non-square map, x the column's centre over w, y the row's over h
def test_predict_reads_the_keypoint_depth_and_canon_at_the_heatmap_peak(h):
    m = _model().eval()
    maps = torch.randn(2, 3, 5, h, 8)
    m.head_forward = lambda p, f: maps
    p = m.predict(torch.zeros(3, 3, 32, 32), {})
    for k in range(2):
        for i in range(3):
            r, c = divmod(int(maps[k, i, 0].flatten().argmax()), 8)
            assert torch.allclose(p.kp2d[i, k], torch.tensor([(c + 0.5) / 8 - 0.5, (r + 0.5) / h - 0.5]))
            assert torch.allclose(p.depth[i, k], maps[k, i, 1, r, c])
            assert torch.allclose(p.canon[i, k], maps[k, i, 2:, r, c])


def test_adaptation_outside_meta_training_returns_params_cut_from_the_meta_parameters():
    # At evaluation (eval mode, or under no_grad) adapt's result is plain data: no graph kept
    # alive per adapted category, and nothing a later backward could push into theta, the trunk
    # or the (learned) step sizes.
    torch.manual_seed(0)
    m = MetaView(build_trunk("small"), KeypointHead(64, 4), inner_lr=0.05, inner_lr_3d=0.01, steps=1, learn_inner_lr=True)
    b = _batch(4, 3)
    for mode, context in (("eval", torch.enable_grad), ("train", torch.no_grad)):
        m.train(mode == "train")
        with context():
            feats = m.trunk(b["images"])
            adapted = m.adapt(feats, b, steps=2)
        plain = [not p.requires_grad and p.grad_fn is None for p in adapted.values()]
        m.zero_grad(set_to_none=True)
        with torch.enable_grad():
            # A caller's loss on the adapted copies' output (e.g. a training loop's meta-step that
            # also scores an evaluation): with cut params it has nothing to backpropagate into.
            out = m.head_forward(adapted, feats.detach())
            if out.requires_grad:
                out.square().sum().backward()
        leaked = [n for n, p in m.named_parameters() if p.grad is not None]
        assert leaked == [], (mode, leaked)  # theta, trunk and step sizes untouched
        assert all(plain), mode  # and no graph is kept alive with the result


def test_every_trunk_choice_builds_and_reports_its_channels():
    import typing

    import pytest

    from dropgrad_viewpoint.config import ViewpointConfig
    from dropgrad_viewpoint.models import TRUNKS

    assert typing.get_args(typing.get_type_hints(ViewpointConfig)["trunk"]) == TRUNKS
    for name in TRUNKS:
        trunk = build_trunk(name).eval()
        with torch.no_grad():
            out = trunk(torch.zeros(1, 3, 32, 32))
        assert out.ndim == 4 and out.shape[1] == trunk.out_channels, name
    with pytest.raises(ValueError, match="trunk must be one of small, resnet18, got 'big'"):
        build_trunk("big")


def _naive_keypoint_losses(maps, b, sigma, w3, wh):
    """keypoint_losses written as a loop over keypoints and objects, 3D values read with grid_sample."""
    import math

    import torch.nn.functional as F

    k_, n_, _, h, w = maps.shape
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w - 0.5
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h - 0.5
    out = []
    for k in range(k_):
        ce, nv, dep, nd, can, nc, hid, nh = 0.0, 0, 0.0, 0, 0.0, 0, 0.0, 0
        for i in range(n_):
            x, y = (float(v) for v in b["kp2d"][i, k])
            d2 = ((xs[None, :] - x) * w) ** 2 + ((ys[:, None] - y) * h) ** 2  # in feature-map cells
            target = torch.exp(-d2 / (2 * sigma**2))
            target = (target / target.sum()).flatten()
            logp = torch.log_softmax(maps[k, i, 0].flatten(), 0)
            grid = torch.tensor([[[[2 * x, 2 * y]]]], dtype=torch.float64)
            at = F.grid_sample(maps[k, i, 1:][None], grid, align_corners=False).flatten()
            if b["visible"][i, k]:
                ce, nv = ce - float((target * logp).sum()), nv + 1
                if b["depth_valid"][i, k]:
                    dep, nd = dep + float(at[0] - b["depth"][i, k]) ** 2, nd + 1
                if b["canon_valid"][i, k]:
                    can, nc = can + float(((at[1:] - b["canon"][i, k]) ** 2).sum()), nc + 1
            else:
                hid, nh = hid + float(-logp.mean() - math.log(h * w)), nh + 1
        out.append(ce / max(nv, 1) + w3 * dep / max(nd, 1) + w3 * can / max(nc, 1) + wh * hid / max(nh, 1))
    return torch.tensor(out, dtype=torch.float64)


def test_keypoint_losses_match_a_per_object_loop():
    torch.manual_seed(3)
    m = MetaView(build_trunk("small"), KeypointHead(64, 4), sigma=1.5, weight_3d=2.0, weight_hidden=0.3).double()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch(5, 4, seed=3).items()}
    g = torch.Generator().manual_seed(4)
    b["visible"] = torch.rand(5, 4, generator=g) < 0.7
    b["visible"][:, 3] = False  # a keypoint hidden everywhere: 0 in its visible terms
    b["canon_valid"] = torch.rand(5, 4, generator=g) < 0.7
    b["depth_valid"] = torch.rand(5, 4, generator=g) < 0.7
    maps = torch.randn(4, 5, 5, 6, 8, dtype=torch.float64)  # a non-square map: rows h=6, columns w=8
    torch.testing.assert_close(m.keypoint_losses(maps, b), _naive_keypoint_losses(maps, b, 1.5, 2.0, 0.3))


def test_task_loss_is_the_mean_over_keypoints_of_the_adapted_query_loss():
    m = _model().eval()
    s, q = _batch(4, 3, seed=1), _batch(3, 3, seed=2)
    with torch.no_grad():
        loss = m.task_loss(s, q)
    params = m.adapt(m.trunk(s["images"]), s)
    per_kp = m.keypoint_losses(m.head_forward(params, m.trunk(q["images"])), q)
    assert per_kp.shape == (3,)
    torch.testing.assert_close(loss, per_kp.mean().detach())


def test_step_sizes_are_inner_lr_3d_for_the_depth_and_canon_branch_and_inner_lr_for_the_heatmap():
    # One explicit SGD step, checked against p - alpha * g with the step sizes written out here
    # (the per-keypoint loop test reads them back from step_size(), so it cannot see a swap).
    m = _model().double().eval()
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch(4, 2).items()}
    feats = m.trunk(b["images"]).detach()
    adapted = m.adapt(feats, b, steps=1)
    params = {n: p.detach().unsqueeze(0).expand(2, *p.shape).clone().requires_grad_() for n, p in m.head.named_parameters()}
    loss = m.keypoint_losses(m.head_forward(params, feats), b).sum()
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    assert {n.split(".")[0] for n in params} == {"heat", "geo"}
    for n, p in params.items():
        alpha = 0.01 if n.startswith("geo.") else 0.05  # inner_lr_3d for depth/canonical maps, inner_lr otherwise
        torch.testing.assert_close(adapted[n], p.detach() - alpha * grads[n], rtol=1e-6, atol=1e-9, msg=n)  # alpha was a float32
    # inner_lr_3d left out: the depth/canonical branch steps with inner_lr too.
    plain = MetaView(build_trunk("small"), KeypointHead(64, 4), inner_lr=0.05)
    assert all(abs(float(a) - 0.05) < 1e-8 for a in plain.step_size().values())


def test_fixed_step_sizes_get_no_gradient_and_stay_fixed():
    # learn_inner_lr=False (viewpoint-train --no-learn-inner-lr): the outer Adam step, over all
    # of model.parameters(), must not move alpha.
    m = _model()
    assert not m.learn_inner_lr
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    before = {n: v.detach().clone() for n, v in m.inner_lrs.items()}
    m.train()
    m.task_loss(_batch(4, 3, seed=1), _batch(3, 3, seed=2)).backward()
    assert all(v.grad is None and not v.requires_grad for v in m.inner_lrs.values())
    opt.step()
    assert all(torch.equal(m.inner_lrs[n], before[n]) for n in before)
