"""Sampling, crops and box regression of MetaSDNet against independent references."""

import doctest

import cv2
import numpy as np
import pytest
import torch
from dropgrad_tracking.trackers import bbreg, sampling
from dropgrad_tracking.trackers.bbreg import (
    BBoxRegressor,
    apply_targets,
    box_targets,
    ridge_fit,
)
from dropgrad_tracking.trackers.sampling import (
    SampleGenerator,
    clamp_box,
    crop_regions,
    draw_samples,
    frame_tensor,
    inside_frame,
    overlap,
)


@pytest.mark.parametrize("module", [sampling, bbreg])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _naive_crop(image, box, size, padding):
    """Float64 bilinear crop by loops: pixel k's centre at k + 0.5, 128 outside the frame."""
    h, w, _ = image.shape
    x, y, bw, bh = box
    grow = 1 + 2 * padding / size
    x0 = x + bw / 2 - bw * grow / 2
    y0 = y + bh / 2 - bh * grow / 2
    out = np.zeros((size, size, 3))

    def pixel(r, c):
        return image[r, c].astype(np.float64) if 0 <= r < h and 0 <= c < w else np.full(3, 128.0)

    for i in range(size):
        v = y0 + (i + 0.5) * bh * grow / size - 0.5
        for j in range(size):
            u = x0 + (j + 0.5) * bw * grow / size - 0.5
            c0, r0 = int(np.floor(u)), int(np.floor(v))
            a, b = u - c0, v - r0
            out[i, j] = ((1 - a) * (1 - b) * pixel(r0, c0) + a * (1 - b) * pixel(r0, c0 + 1)
                         + (1 - a) * b * pixel(r0 + 1, c0) + a * b * pixel(r0 + 1, c0 + 1))
    return out


def test_crop_matches_naive_bilinear_loop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    boxes = np.array([[3.2, 4.7, 10.5, 8.0], [-5.0, 15.0, 12.0, 14.0], [20.0, -3.0, 30.0, 9.5]])
    crops = crop_regions(frame_tensor(image), boxes, size=9, padding=1.5).numpy() + 128
    for crop, box in zip(crops, boxes):
        ref = _naive_crop(image, box, 9, 1.5)
        np.testing.assert_allclose(crop.transpose(1, 2, 0), ref, atol=2e-3)


def test_crop_matches_cv2_warp_affine():
    # cv2 quantises sample positions to 1/32 px, so compare on a smooth image.
    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([127 + 100 * np.sin(xx / 17.0), 127 + 100 * np.cos(yy / 13.0), (xx + yy) % 256 * 0 + 90
                      + 60 * np.sin((xx + yy) / 23.0)], -1).astype(np.uint8)
    rng = np.random.default_rng(1)
    boxes = np.column_stack([rng.uniform(-40, 300, 12), rng.uniform(-40, 220, 12),
                             rng.uniform(15, 150, 12), rng.uniform(15, 150, 12)])
    crops = crop_regions(frame_tensor(image), boxes, size=107, padding=16).numpy() + 128
    for crop, (x, y, w, h) in zip(crops, boxes):
        grow = 1 + 2 * 16 / 107
        sx, sy = w * grow / 107, h * grow / 107
        x0, y0 = x + w / 2 - w * grow / 2, y + h / 2 - h * grow / 2
        m = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]])
        ref = cv2.warpAffine(image.astype(np.float32), m, (107, 107), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))
        assert np.abs(crop.transpose(1, 2, 0) - ref).max() < 1.5


def test_crops_are_batched_in_one_call_and_keep_device_and_count():
    f = frame_tensor(np.zeros((50, 60, 3), np.uint8))
    assert crop_regions(f, np.zeros((0, 4))).shape == (0, 3, 107, 107)
    out = crop_regions(f, torch.tensor([[0.0, 0, 10, 10]] * 5))
    assert out.shape == (5, 3, 107, 107) and out.dtype == torch.float32 and out.device == f.device


def test_gaussian_sampler_follows_mdnet_factors():
    rng = np.random.default_rng(0)
    box = np.array([100.0, 80.0, 40.0, 20.0])
    s = SampleGenerator("gaussian", (640, 480), trans=0.6, scale=1.05)(box, 20000, rng)
    d = (s[:, :2] + s[:, 2:] / 2) - (box[:2] + box[2:] / 2)
    # centre shift = 0.6 * mean side * clip(0.5 N, -1, 1): bounded by 18 px, std just under 9 px
    assert np.abs(d).max() <= 0.6 * 30 + 1e-9
    assert 8.0 < d[:, 0].std() < 9.0
    ratio = s[:, 2] / box[2]
    np.testing.assert_allclose(s[:, 3] / box[3], ratio)  # one scale factor for w and h
    assert ratio.min() >= 1 / 1.05 - 1e-12 and ratio.max() <= 1.05 + 1e-12
    # the exponent is clip(0.5 N, -1, 1): its std is just under 0.5
    assert 0.45 < np.log(ratio).std() / np.log(1.05) < 0.5


def test_uniform_whole_aspect_and_clamps():
    rng = np.random.default_rng(0)
    box = np.array([10.0, 10.0, 30.0, 30.0])
    u = SampleGenerator("uniform", (200, 100), trans=1.0, scale=2.0, aspect=1.1)(box, 5000, rng)
    ar = (u[:, 2] / u[:, 3])
    assert 1 / 1.1**2 - 1e-9 <= ar.min() and ar.max() <= 1.1**2 + 1e-9
    c = u[:, :2] + u[:, 2:] / 2
    assert c.min() >= 0 and (c <= [200, 100]).all()
    assert u[:, 2:].min() >= 10 and (u[:, 2:] <= [190, 90]).all()
    whole = SampleGenerator("whole", (200, 100), 0, 1.2)(box, 400, rng)
    wc = whole[:, :2] + whole[:, 2:] / 2
    assert wc[:, 0].max() - wc[:, 0].min() > 150  # spread over the whole image
    valid = SampleGenerator("gaussian", (200, 100), 3.0, 1.5, valid=True)(np.array([170.0, 70, 40, 40]), 500, rng)
    assert (valid[:, :2] >= -1e-9).all() and (valid[:, :2] + valid[:, 2:] <= np.array([200, 100]) - 1 + 1e-9).all()


def test_draw_samples_exact_counts_and_ranges():
    rng = np.random.default_rng(3)
    box = np.array([100.0, 80.0, 40.0, 30.0])
    pos = draw_samples(SampleGenerator("gaussian", (320, 240), 0.1, 1.2), box, 50, rng, (0.7, 1.0))
    neg = draw_samples(SampleGenerator("uniform", (320, 240), 1.5, 1.2), box, 200, rng, (0.0, 0.3))
    assert pos.shape == (50, 4) and neg.shape == (200, 4)
    assert (overlap(pos, box) >= 0.7).all() and (overlap(neg, box) <= 0.3).all()
    bb = draw_samples(SampleGenerator("uniform", (320, 240), 0.3, 1.5, 1.1), box, 100, rng, (0.6, 1), (1, 2))
    area = bb[:, 2] * bb[:, 3] / (40 * 30)
    assert bb.shape == (100, 4) and (area >= 1).all() and (area <= 2).all()
    # impossible range (a box filling the frame has no IoU <= 0.3 neighbour): still n, nearest first
    big = np.array([0.0, 0.0, 60.0, 50.0])
    out = draw_samples(SampleGenerator("gaussian", (60, 50), 0.1, 1.1), big, 10, rng, (0.0, 0.3))
    assert out.shape == (10, 4) and np.isfinite(out).all()


def test_clamp_box_keeps_box_in_frame():
    out = clamp_box(np.array([-50.0, 10.0, 1000.0, 2.0]), (200, 100))
    assert out[2] == 190 and out[3] == 10 and 0 <= out[0] + out[2] / 2 <= 200


def test_ridge_fit_matches_lstsq_primal_and_dual():
    rng = np.random.default_rng(0)
    for n, d in ((200, 7), (15, 40)):
        x = rng.normal(size=(n, d))
        y = x @ rng.normal(size=(d, 4)) + rng.normal(size=4) + 0.1 * rng.normal(size=(n, 4))
        lam = 3.0
        w, c = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), lam)
        # reference: unpenalised intercept by centring, ridge as an augmented least-squares problem
        xm, ym = x.mean(0), y.mean(0)
        a = np.vstack([x - xm, np.sqrt(lam) * np.eye(d)])
        b = np.vstack([y - ym, np.zeros((d, 4))])
        w_ref = np.linalg.lstsq(a, b, rcond=None)[0]
        np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-9)
        np.testing.assert_allclose(c.numpy(), ym - xm @ w_ref, atol=1e-9)
        # and the intercept is truly unpenalised: the full objective's gradient w.r.t. c is 0
        resid = x @ w.numpy() + c.numpy() - y
        np.testing.assert_allclose(resid.sum(0), 0, atol=1e-8)


def test_box_targets_round_trip():
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 100, (20, 2)), rng.uniform(5, 50, (20, 2))])
    gt = np.array([40.0, 30.0, 25.0, 35.0])
    np.testing.assert_allclose(apply_targets(boxes, box_targets(boxes, gt)), np.tile(gt, (20, 1)), atol=1e-9)


def test_bbox_regressor_learns_and_keeps_safeguards():
    rng = np.random.default_rng(1)
    gt = np.array([60.0, 50.0, 40.0, 30.0])
    gen = SampleGenerator("uniform", (320, 240), 0.3, 1.5, 1.1)
    boxes = draw_samples(gen, gt, 300, rng, (0.6, 1.0), (1.0, 2.0))
    t = box_targets(boxes, gt)
    feats = torch.from_numpy(np.hstack([t, rng.normal(size=(300, 20))])).float()
    reg = BBoxRegressor((320, 240), lam=1e-3).fit(feats, boxes, gt)
    pred = reg.predict(feats[:10], boxes[:10])
    assert overlap(pred, gt).min() > overlap(boxes[:10], gt).min()
    assert overlap(pred, gt).mean() > 0.95
    # a prediction that would leave the IoU/area ranges falls back to the box itself
    wild = feats[:1].clone()
    wild[0, 2:4] = 5.0
    np.testing.assert_allclose(reg.predict(wild, boxes[:1]), boxes[:1])


def test_uniform_and_whole_scale_exponents_span_minus_one_to_one():
    # size *= scale ** U(-1, 1): the exponent is symmetric, so boxes shrink as often as they grow
    rng = np.random.default_rng(0)
    box = np.array([250.0, 200.0, 40.0, 30.0])
    for kind in ("uniform", "whole"):
        s = SampleGenerator(kind, (640, 480), trans=0.5, scale=1.5)(box, 4000, rng)
        e = np.log(s[:, 2] / box[2]) / np.log(1.5)
        np.testing.assert_allclose(np.log(s[:, 3] / box[3]) / np.log(1.5), e, atol=1e-12)
        assert e.min() < -0.95 and e.max() > 0.95 and abs(e.mean()) < 0.05, kind


def test_whole_sampler_centres_lie_on_mdnets_grid():
    # MDNet: centre = wh / 2 + g * (image - wh / 2 - 1), g on an m x m grid of linspace(0, 1, m), m = int(2 sqrt n)
    box = np.array([7.0, 3.0, 40.0, 30.0])
    s = SampleGenerator("whole", (200, 100), trans=0.0, scale=1.0)(box, 16, np.random.default_rng(0))
    g = np.linspace(0, 1, 8)
    xs, ys = 20 + g * (200 - 20 - 1), 15 + g * (100 - 15 - 1)
    c = s[:, :2] + s[:, 2:] / 2
    assert np.abs(c[:, :1] - xs[None, :]).min(1).max() < 1e-9
    assert np.abs(c[:, 1:] - ys[None, :]).min(1).max() < 1e-9
    assert len({tuple(p) for p in c.round(6)}) == 16  # distinct grid points


def test_sample_sizes_are_clamped_to_ten_pixels_inside_the_image_border():
    rng = np.random.default_rng(0)
    big = SampleGenerator("uniform", (100, 80), trans=0.0, scale=1.5)(np.array([5.0, 5, 85, 75]), 2000, rng)
    assert big[:, 2].max() == 90 and big[:, 3].max() == 70  # image - 10, reached
    small = SampleGenerator("uniform", (100, 80), trans=0.0, scale=1.5)(np.array([40.0, 40, 6, 5]), 2000, rng)
    assert small[:, 2].max() == 10 and small[:, 3].max() == 10  # at least 10


def test_inside_frame_clips_x_to_the_width_and_y_to_the_height():
    # a tall image: the width (100) bounds x, the height (300) bounds y
    np.testing.assert_array_equal(inside_frame(np.array([-20.0, 250, 300, 80]), (100, 300)), [0, 250, 100, 50])
    np.testing.assert_array_equal(inside_frame(np.array([50.0, -5, 10, 20]), (100, 300)), [50, 0, 10, 15])


def test_clamp_box_keeps_the_centre_of_the_unclamped_box():
    # a 4 x 6 box at centre (42, 53) grows to 10 x 10 about the same centre, by hand
    np.testing.assert_allclose(clamp_box(np.array([40.0, 50, 4, 6]), (200, 100)), [37, 48, 10, 10])
    # a 1000 x 2 box centred at (450, 11): size (190, 10), centre clipped to (200, 11)
    np.testing.assert_allclose(clamp_box(np.array([-50.0, 10, 1000, 2]), (200, 100)), [105, 6, 190, 10])


def test_bbox_regressor_uses_its_intercept():
    # features = targets - 0.05: W = I and intercept 0.05 reproduce the targets exactly
    rng = np.random.default_rng(2)
    gt = np.array([60.0, 50.0, 40.0, 30.0])
    boxes = draw_samples(SampleGenerator("uniform", (320, 240), 0.3, 1.5, 1.1), gt, 200, rng, (0.6, 1.0), (1.0, 2.0))
    feats = torch.from_numpy(box_targets(boxes, gt) - 0.05).float()
    reg = BBoxRegressor((320, 240), lam=1e-6).fit(feats, boxes, gt)
    np.testing.assert_allclose(reg.predict(feats[:20], boxes[:20]), np.tile(gt, (20, 1)), atol=5e-3)


def test_bbox_regressor_fits_only_boxes_in_range_and_keeps_predictions_in_the_image():
    rng = np.random.default_rng(3)
    gt = np.array([60.0, 50.0, 40.0, 30.0])
    good = draw_samples(SampleGenerator("uniform", (320, 240), 0.3, 1.5, 1.1), gt, 100, rng, (0.6, 1.0), (1.0, 2.0))
    bad = draw_samples(SampleGenerator("uniform", (320, 240), 2.0, 1.5), gt, 40, rng, (0.0, 0.3))
    feats = torch.from_numpy(rng.normal(size=(140, 6))).float()
    both = BBoxRegressor((320, 240), lam=1.0).fit(feats, np.vstack([good, bad]), gt)
    only = BBoxRegressor((320, 240), lam=1.0).fit(feats[:100], good, gt)
    torch.testing.assert_close(both.weight, only.weight)
    torch.testing.assert_close(both.bias, only.bias)
    # a zero regression returns the box; a box over the right edge is cut at the edge (w = 320 - 300)
    only.weight.zero_()
    only.bias.zero_()
    np.testing.assert_allclose(only.predict(feats[:1], np.array([[300.0, 200, 40, 30]])), [[300, 200, 20, 30]])


# ------------------------------------------------------------------ mutation round 5 (m5k)


def test_centres_are_clipped_to_the_image_itself_not_one_pixel_inside():
    # MDNet (valid=False): centres clip to [0, image]; a box centred on the right/bottom edge stays there.
    box = np.array([180.0, 80.0, 40.0, 40.0])  # centre (200, 100) of a 200 x 100 image
    s = SampleGenerator("uniform", (200, 100), trans=0.0, scale=1.0)(box, 3, np.random.default_rng(0))
    np.testing.assert_allclose(s, np.tile(box, (3, 1)))


def test_inside_frame_returns_a_box_that_only_touches_the_frame_as_it_is():
    # x2 == x1 (the box starts at the right edge): nothing of it is inside
    np.testing.assert_array_equal(inside_frame(np.array([100.0, 10, 20, 20]), (100, 80)), [100, 10, 20, 20])
    np.testing.assert_array_equal(inside_frame(np.array([10.0, -20, 20, 20]), (100, 80)), [10, -20, 20, 20])


def test_bbox_regressor_leaves_out_boxes_outside_the_area_ratio_range_in_any_order():
    # Boxes with IoU >= 0.6 but smaller than the target (area ratio < 1) are not training boxes
    # (MDNet: scale range [1, 2]); the kept rows' features and targets stay paired whatever the order.
    rng = np.random.default_rng(4)
    gt = np.array([60.0, 50.0, 40.0, 30.0])
    good = draw_samples(SampleGenerator("uniform", (320, 240), 0.3, 1.5, 1.1), gt, 60, rng, (0.6, 1.0), (1.0, 2.0))
    small = draw_samples(SampleGenerator("uniform", (320, 240), 0.1, 1.5, 1.1), gt, 30, rng, (0.6, 1.0), (0.6, 0.95))
    assert (overlap(small, gt) >= 0.6).all()
    order = rng.permutation(90)  # interleave them
    boxes = np.vstack([good, small])[order]
    feats = torch.from_numpy(rng.normal(size=(90, 5)))
    both = BBoxRegressor((320, 240), lam=1.0).fit(feats.float(), boxes, gt)
    area = boxes[:, 2] * boxes[:, 3] / (gt[2] * gt[3])
    kept = (overlap(boxes, gt) >= 0.6) & (area >= 1.0) & (area <= 2.0)  # draw_samples may fill a few from outside
    assert 50 <= kept.sum() <= 60 and not kept[order >= 60].any()
    only = BBoxRegressor((320, 240), lam=1.0).fit(feats[kept].float(), boxes[kept], gt)
    torch.testing.assert_close(both.weight, only.weight)
    torch.testing.assert_close(both.bias, only.bias)
    # Independent reference for the kept rows: ridge by numpy in float64.
    x, y = feats[kept].numpy(), box_targets(boxes[kept], gt)
    xm, ym = x.mean(0), y.mean(0)
    w = np.linalg.solve((x - xm).T @ (x - xm) + 1.0 * np.eye(5), (x - xm).T @ (y - ym))
    np.testing.assert_allclose(both.weight.double().numpy(), w, atol=1e-5)


def test_bbox_regressor_refuses_a_prediction_that_grows_the_box_and_clips_at_the_left_and_top():
    reg = BBoxRegressor((320, 240))
    reg.weight, reg.bias = torch.zeros(3, 4), torch.tensor([0.0, 0.0, np.log(1.05), np.log(1.05)]).float()
    box = np.array([[100.0, 80, 40, 30]])
    # 5% wider and taller: IoU 0.91 is in range, but input / prediction area = 1 / 1.1025 < 1: refused
    np.testing.assert_allclose(reg.predict(torch.zeros(1, 3), box), box)
    reg.bias = torch.tensor([0.0, 0.0, -np.log(1.05), -np.log(1.05)]).float()  # 5% smaller: accepted
    np.testing.assert_allclose(reg.predict(torch.zeros(1, 3), box), [[120 - 20 / 1.05, 95 - 15 / 1.05, 40 / 1.05, 30 / 1.05]], atol=1e-4)
    # a zero regression of a box over the left/top edges: kept inside the image (x, y >= 0)
    reg.bias = torch.zeros(4)
    out = reg.predict(torch.zeros(1, 3), np.array([[-5.0, -3, 40, 30]]))
    np.testing.assert_allclose(out[0, :2], [0, 0])
    assert (out[0, :2] + out[0, 2:] <= [320, 240]).all() and (out[0, 2:] > 0).all()


def test_bbox_regressor_uses_every_box_when_none_is_in_range():
    rng = np.random.default_rng(5)
    gt = np.array([60.0, 50.0, 40.0, 30.0])
    far = draw_samples(SampleGenerator("uniform", (320, 240), 2.0, 1.5), gt, 40, rng, (0.0, 0.3))
    feats = torch.from_numpy(rng.normal(size=(40, 6))).float()
    reg = BBoxRegressor((320, 240), lam=1.0).fit(feats, far, gt)
    w, c = ridge_fit(feats, torch.from_numpy(box_targets(far, gt)), 1.0)
    assert torch.isfinite(reg.weight).all()
    torch.testing.assert_close(reg.weight, w.float())
    torch.testing.assert_close(reg.bias, c.float())
