"""Vectorised overlap (IoU) and centre error of ``x,y,w,h`` boxes, frame by frame."""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "center_error", "is_empty_box"]


def box_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over union of corresponding boxes.

    The OTB toolkit computes the intersection on inclusive pixel indices (right = x + w - 1,
    width = right - left + 1); the +1 and -1 cancel, so this continuous formula gives the same
    numbers. A box with a non-positive width or height, or NaN, has IoU 0 with anything.

    Args:
        boxes: tracker boxes, float array of shape (n, 4).
        gt: ground-truth boxes, float array of shape (n, 4).

    Returns:
        float64 array of shape (n,), values in [0, 1].

    >>> box_iou(np.array([[0., 0, 10, 10], [0, 0, 10, 10]]), np.array([[5., 0, 10, 10], [0, 0, 10, 10]]))
    array([0.33333333, 1.        ])
    """
    a = np.asarray(boxes, dtype=np.float64)
    b = np.asarray(gt, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"box_iou needs two (n, 4) arrays of the same shape, got {a.shape} and {b.shape}")
    iw = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    ok = ~(is_empty_box(a) | is_empty_box(b)) & (union > 0)
    out = np.zeros(len(a))
    np.divide(inter, union, out=out, where=ok)
    return np.clip(out, 0.0, 1.0)


def center_error(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance in pixels between box centres, shape (n,); NaN boxes give ``inf``.

    The toolkit's centre is ``x + (w - 1) / 2``; the -1/2 cancels in the difference.

    >>> center_error(np.array([[0., 0, 10, 10]]), np.array([[3., 4, 10, 10]]))
    array([5.])
    """
    a = np.asarray(boxes, dtype=np.float64)
    b = np.asarray(gt, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"center_error needs two (n, 4) arrays of the same shape, got {a.shape} and {b.shape}")
    d = (a[:, :2] + a[:, 2:] / 2) - (b[:, :2] + b[:, 2:] / 2)
    err = np.hypot(d[:, 0], d[:, 1])
    return np.where(np.isnan(err), np.inf, err)


def is_empty_box(boxes: np.ndarray) -> np.ndarray:
    """True where a box has no area (w <= 0 or h <= 0) or is not finite; shape (n,).

    >>> is_empty_box(np.array([[0., 0, 0, 0], [1, 1, 5, 5], [np.nan, 1, 2, 2]]))
    array([ True, False,  True])
    """
    b = np.asarray(boxes, dtype=np.float64)
    return ~np.isfinite(b).all(axis=1) | (b[:, 2] <= 0) | (b[:, 3] <= 0)
