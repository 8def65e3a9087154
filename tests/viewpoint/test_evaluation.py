"""The few-shot evaluation's bookkeeping: support/query draws, pooling and means over draws, and
failed pose solves, checked against a hand computation with the adaptation stubbed out."""

import numpy as np
import pytest
import torch
from dropgrad_viewpoint import evaluation
from dropgrad_viewpoint.data.objectnet3d import ObjectNet3D
from dropgrad_viewpoint.data.sources import CategorySource
from dropgrad_viewpoint.geometry import acc30, median_error


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_evaluate_scores_every_other_object_per_draw_and_pools_draw_by_draw(monkeypatch):
    sizes, shots, draws = {"a": 7, "b": 5}, 2, 3
    calls = []

    def fake(model, source, support, query, steps, device, adapt=True):
        calls.append((source.n, list(support), list(query)))
        # Errors that depend on the category, the draw (via its support) and the object.
        base = 10.0 * len(calls)
        return {"errors": base + np.arange(len(query), dtype=np.float64) * (7.0 if source.n == 7 else 25.0)}

    monkeypatch.setattr(evaluation, "adapt_and_score", fake)
    sources = {c: _Sized(n) for c, n in sizes.items()}
    res = evaluation.evaluate(None, sources, shots, draws, steps=1, seed=3, device=torch.device("cpu"))

    errors = {c: [] for c in sizes}
    for n, support, query in calls:
        # Every object of the category is either a support or a query, exactly once.
        assert len(support) == shots and sorted(support + query) == list(range(n))
    for i, (n, _, query) in enumerate(calls):
        errors["a" if n == 7 else "b"].append(10.0 * (i + 1) + np.arange(len(query)) * (7.0 if n == 7 else 25.0))
    # Draws differ (else the std over draws would be 0 by construction).
    assert len({tuple(s) for n, s, _ in calls if n == 7}) == draws

    for c, n in sizes.items():
        cat = res["categories"][c]
        scores = np.array([[100 * acc30(e), median_error(e)] for e in errors[c]])
        assert cat["n_query"] == n - shots and cat["runs"] == draws
        assert np.allclose([cat["acc30"], cat["acc30_std"], cat["mederr"], cat["mederr_std"]],
                           [scores[:, 0].mean(), scores[:, 0].std(), scores[:, 1].mean(), scores[:, 1].std()])
    pooled = np.array([[100 * acc30(e), median_error(e)] for e in
                       (np.concatenate([errors["a"][d], errors["b"][d]]) for d in range(draws))])
    assert np.allclose([res["pooled"][k] for k in ("acc30", "acc30_std", "mederr", "mederr_std")],
                       [pooled[:, 0].mean(), pooled[:, 0].std(), pooled[:, 1].mean(), pooled[:, 1].std()])
    assert res["pooled"]["mederr_std"] > 0
    means = np.array([[np.mean([100 * acc30(errors[c][d]) for c in sizes]), np.mean([median_error(errors[c][d]) for c in sizes])]
                      for d in range(draws)])
    cm = res["category_mean"]
    assert np.allclose([cm["acc30"], cm["acc30_std"], cm["mederr"], cm["mederr_std"]],
                       [means[:, 0].mean(), means[:, 0].std(), means[:, 1].mean(), means[:, 1].std()])


def test_a_failed_pose_solve_counts_as_the_largest_error(small_synthetic, monkeypatch):
    from dropgrad import DropGrad
    from dropgrad_viewpoint.methods.metaview import MetaView
    from dropgrad_viewpoint.models import KeypointHead, build_trunk

    ds = ObjectNet3D(small_synthetic, ["val"])
    c = ds.categories[0]
    source = CategorySource(ds, c, ds.usable(c, "test"), size=32, preload=True)
    torch.manual_seed(0)
    model = MetaView(build_trunk("small"), KeypointHead(64, 4), inner_lr=0.05, steps=1, dropgrad=DropGrad(0.0, "none"))
    monkeypatch.setattr(evaluation, "rotations_from_prediction", lambda kp, depth, canon, conf: np.full((len(kp), 3, 3), np.nan))
    out = evaluation.adapt_and_score(model, source, np.arange(3), np.arange(3, 6), steps=1, device=torch.device("cpu"))
    assert np.array_equal(out["errors"], np.full(3, 180.0))
    assert acc30(out["errors"]) == 0 and median_error(out["errors"]) == 180


def test_adapt_and_score_in_small_chunks_scores_every_query_once_in_order(small_synthetic):
    # Real sets have more queries than one chunk (64): chunked prediction must score each query
    # object exactly once, in order, and agree with one whole-batch prediction.
    from dropgrad import DropGrad
    from dropgrad_viewpoint.methods.metaview import MetaView
    from dropgrad_viewpoint.models import KeypointHead, build_trunk

    ds = ObjectNet3D(small_synthetic, ["val"])
    c = ds.categories[0]
    source = CategorySource(ds, c, ds.usable(c, "test"), size=32, preload=True)
    torch.manual_seed(0)
    model = MetaView(build_trunk("small"), KeypointHead(64, 4), inner_lr=0.05, steps=1, dropgrad=DropGrad(0.0, "none"))
    query = np.arange(3, 8)
    kw = dict(steps=1, device=torch.device("cpu"))
    whole = evaluation.adapt_and_score(model, source, np.arange(3), query, **kw)
    for chunk in (1, 2, 3):
        part = evaluation.adapt_and_score(model, source, np.arange(3), query, chunk=chunk, **kw)
        assert len(part["errors"]) == len(query)
        assert np.array_equal(part["true"], source.batch(query)["rotation"].numpy())
        np.testing.assert_allclose(part["pred"], whole["pred"], atol=1e-5)
        np.testing.assert_allclose(part["errors"], whole["errors"], atol=1e-3)


def test_evaluate_refuses_a_category_with_no_query_left(monkeypatch):
    # shots objects leave nothing to score: an error naming the category, not a NaN score.
    monkeypatch.setattr(evaluation, "adapt_and_score", lambda *a, **k: {"errors": np.zeros(1)})
    with pytest.raises(ValueError, match="category 'b' has 2 usable objects; 2-shot evaluation needs 3"):
        evaluation.evaluate(None, {"a": _Sized(3), "b": _Sized(2)}, 2, 1, steps=1, seed=0, device=torch.device("cpu"))


def test_example_axes_point_right_for_x_and_up_for_y():
    # The figure draws object axes in image coordinates: camera x right, camera y up (image
    # rows grow downwards, so y is drawn with a minus sign), as the crops' keypoints are.
    img = np.zeros((100, 100, 3), np.uint8)
    evaluation._axes(img, np.eye(3), 1.0, 1, dashed=False)
    red = np.argwhere((img[..., 2] > 0) & (img[..., 1] == 0))  # x axis, BGR (0, 0, 255)
    green = np.argwhere((img[..., 1] > 0) & (img[..., 2] == 0))  # y axis, BGR (0, 200, 0)
    assert red[:, 1].max() >= 80 and red[:, 1].min() >= 48 and np.abs(red[:, 0] - 50).max() <= 1
    assert green[:, 0].min() <= 20 and green[:, 0].max() <= 52 and np.abs(green[:, 1] - 50).max() <= 1
