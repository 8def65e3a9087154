"""Box IoU and centre error against got10k's and pycocotools' implementations."""

import numpy as np
import pytest
from dropgrad_tracking.evaluation import box_iou, center_error, is_empty_box
from got10k.utils.metrics import center_error as got_center_error
from got10k.utils.metrics import rect_iou
from pycocotools import mask as coco_mask


def _random_boxes(rng, n):
    xy = rng.uniform(-20, 200, size=(n, 2))
    wh = rng.uniform(1, 80, size=(n, 2))
    return np.concatenate([xy, wh], axis=1)


@pytest.mark.parametrize("integer", [False, True])
def test_iou_matches_got10k_and_pycocotools(integer):
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 2000), _random_boxes(rng, 2000)
    b[:500] = a[:500] + rng.normal(0, 5, size=(500, 4)).clip(-0.5, 0.5)  # many overlapping pairs
    if integer:
        a, b = a.round(), b.round()
    ours = box_iou(a, b)
    assert (ours > 0).sum() > 400 and (ours == 0).sum() > 400
    np.testing.assert_allclose(ours, rect_iou(a.copy(), b.copy()), rtol=0, atol=1e-12)
    coco = np.array([coco_mask.iou([list(x)], [list(y)], [0])[0, 0] for x, y in zip(a[:300], b[:300])])
    np.testing.assert_allclose(ours[:300], coco, rtol=0, atol=1e-12)


def test_center_error_matches_got10k():
    rng = np.random.default_rng(1)
    a, b = _random_boxes(rng, 500), _random_boxes(rng, 500)
    np.testing.assert_allclose(center_error(a, b), got_center_error(a, b), rtol=1e-12, atol=1e-9)


def test_hand_computed_cases_and_empty_boxes():
    a = np.array([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0], [0, 0, 10, 10]])
    b = np.array([[0.0, 0, 10, 10], [5, 5, 10, 10], [10, 0, 10, 10], [0, 0, 10, 10], [np.nan, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [1.0, 25 / 175, 0.0, 0.0, 0.0])
    assert is_empty_box(a).tolist() == [False, False, False, True, False]
    err = center_error(a, b)
    assert err[1] == pytest.approx(np.hypot(5, 5)) and np.isinf(err[4])
    with pytest.raises(ValueError, match="same shape"):
        box_iou(a, b[:2])
