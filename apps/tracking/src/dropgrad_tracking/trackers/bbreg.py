"""Bounding-box regression (MDNet, after R-CNN), fitted once on the first frame.

Features ``phi`` of boxes ``b`` near the ground truth ``g`` predict the offsets

    t = ((g_c - b_c) / b_wh, log(g_wh / b_wh))          (4 numbers: dx, dy, dw, dh)

by ridge regression ``min ||Phi W + 1 c - T||^2 + lambda ||W||^2`` with an unpenalised
intercept ``c`` (MDNet: lambda 1000; training boxes with IoU in [0.6, 1] and area ratio in
[1, 2]). Closed form on centred data, primal ``(X'X + lambda I)^-1 X'T`` or dual
``X'(XX' + lambda I)^-1 T``, whichever system is smaller, in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..evaluation.iou import box_iou

__all__ = ["BBoxRegressor", "box_targets", "ridge_fit"]


def box_targets(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Regression targets of shape (n, 4) that move ``boxes`` (n, 4) onto ``gt`` (4,).

    >>> box_targets(np.array([[0., 0, 10, 20]]), np.array([5., 0, 10, 40])).round(4).tolist()
    [[0.5, 0.5, 0.0, 0.6931]]
    """
    b = np.asarray(boxes, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    bc = b[:, :2] + b[:, 2:] / 2
    gc = g[:2] + g[2:] / 2
    return np.concatenate([(gc - bc) / b[:, 2:], np.log(g[2:] / b[:, 2:])], axis=1)


def apply_targets(boxes: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Inverse of :func:`box_targets`: boxes (n, 4) moved by offsets ``t`` (n, 4)."""
    b = np.asarray(boxes, dtype=np.float64)
    wh = b[:, 2:] * np.exp(t[:, 2:])
    c = b[:, :2] + b[:, 2:] / 2 + t[:, :2] * b[:, 2:]
    return np.concatenate([c - wh / 2, wh], axis=1)


def ridge_fit(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with an unpenalised intercept.

    Args:
        x: features of shape (n, d).
        y: targets of shape (n, k).
        lam: the ridge penalty on the weights.

    Returns:
        ``(W, c)`` of shapes (d, k) and (k,), float64 on ``x``'s device, minimising
        ``||x W + c - y||^2 + lam ||W||^2``.

    >>> x = torch.tensor([[0.], [1.], [2.]]); y = 2 * x + 1
    >>> w, c = ridge_fit(x, y, 0.0); round(float(w), 6), round(float(c), 6)
    (2.0, 1.0)
    """
    x = x.double()
    y = y.double()
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    n, d = xc.shape
    if n < d:
        gram = xc @ xc.T + lam * torch.eye(n, dtype=x.dtype, device=x.device)
        w = xc.T @ torch.linalg.solve(gram, yc)
    else:
        gram = xc.T @ xc + lam * torch.eye(d, dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(gram, xc.T @ yc)
    return w, ym - xm @ w


class BBoxRegressor:
    """MDNet's box regressor on conv features.

    Args:
        image_size: ``(width, height)`` of the frames (predictions are kept inside).
        lam: ridge penalty (MDNet: 1000).
        overlap_range: IoU range of training boxes and of accepted predictions.
        scale_range: area-ratio range of training boxes and of accepted predictions.

    >>> rng = np.random.default_rng(0)
    >>> gt = np.array([50., 40, 30, 20])
    >>> boxes = gt + rng.normal(0, 2, (200, 4))
    >>> feats = torch.from_numpy(box_targets(boxes, gt)).float()  # perfectly informative features
    >>> reg = BBoxRegressor((200, 100), lam=1e-6, overlap_range=(0, 1), scale_range=(0, 10)).fit(feats, boxes, gt)
    >>> bool(np.abs(reg.predict(feats[:3], boxes[:3]) - gt).max() < 1e-3)
    True
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        lam: float = 1000.0,
        overlap_range: tuple[float, float] = (0.6, 1.0),
        scale_range: tuple[float, float] = (1.0, 2.0),
    ) -> None:
        self.image_size = np.asarray(image_size, dtype=np.float64)
        self.lam = float(lam)
        self.overlap_range = overlap_range
        self.scale_range = scale_range
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def _in_range(self, boxes: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Rows of ``boxes`` (n, 4) whose IoU with, and area ratio to, ``ref`` ((4,) or (n, 4)) are in range."""
        ref = np.broadcast_to(ref, boxes.shape)
        r = box_iou(boxes, ref)
        a = boxes[:, 2] * boxes[:, 3] / (ref[:, 2] * ref[:, 3])
        return ((r >= self.overlap_range[0]) & (r <= self.overlap_range[1])
                & (a >= self.scale_range[0]) & (a <= self.scale_range[1]))

    def fit(self, features: Tensor, boxes: np.ndarray, gt: np.ndarray) -> BBoxRegressor:
        """Fit on ``features`` (n, d) of ``boxes`` (n, 4) around the ground truth ``gt`` (4,).

        Boxes outside the IoU/area ranges are left out; if none remain, all are used.
        """
        boxes = np.asarray(boxes, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
        keep = self._in_range(boxes, gt)
        if not keep.any():
            keep[:] = True
        idx = torch.as_tensor(np.flatnonzero(keep), device=features.device)
        y = torch.as_tensor(box_targets(boxes[keep], gt), device=features.device)
        self.weight, self.bias = ridge_fit(features.index_select(0, idx), y, self.lam)
        self.weight, self.bias = self.weight.float(), self.bias.float()
        return self

    def predict(self, features: Tensor, boxes: np.ndarray) -> np.ndarray:
        """Regressed boxes (n, 4) for ``boxes`` (n, 4) with ``features`` (n, d).

        A prediction that moves its box out of the IoU/area ranges is replaced by the box
        itself (MDNet's safeguard); boxes are kept inside the image.
        """
        if self.weight is None or self.bias is None:
            raise RuntimeError("BBoxRegressor.predict before fit")
        boxes = np.asarray(boxes, dtype=np.float64)
        t = (features.float() @ self.weight + self.bias).double().cpu().numpy()
        out = apply_targets(boxes, t)
        # MDNet measures the area ratio the other way round here: input over prediction.
        ok = self._in_range(boxes, out)
        out[~ok] = boxes[~ok]
        out[:, :2] = np.maximum(out[:, :2], 0)
        out[:, 2:] = np.minimum(out[:, 2:], self.image_size - out[:, :2])
        return out
