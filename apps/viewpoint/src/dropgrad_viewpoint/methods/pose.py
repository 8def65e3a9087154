"""Rotation from MetaView's per-keypoint predictions by weighted Procrustes."""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import weighted_procrustes

__all__ = ["camera_points", "rotations_from_prediction"]


def camera_points(kp2d: torch.Tensor | np.ndarray, depth: torch.Tensor | np.ndarray) -> np.ndarray:
    """Weak-perspective camera-frame points ``(..., K, 3)``: ``(x, -y, depth)`` in crop units.

    ``kp2d`` ``(..., K, 2)`` has y pointing down; the camera frame has y up (see geometry).
    """
    kp = np.asarray(kp2d, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64)
    return np.concatenate([kp[..., :1], -kp[..., 1:2], d[..., None]], axis=-1)


def rotations_from_prediction(
    kp2d: torch.Tensor | np.ndarray, depth: torch.Tensor | np.ndarray,
    canon: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray,
) -> np.ndarray:
    """One rotation per object, ``(N, 3, 3)``, aligning predicted canonical keypoints to the camera.

    Args:
        kp2d: of shape ``(N, K, 2)``; depth: ``(N, K)``; canon: ``(N, K, 3)``; weights: ``(N, K)``.

    >>> from dropgrad_viewpoint.geometry import viewpoint_to_rotation
    >>> canon = np.random.default_rng(0).normal(size=(1, 6, 3))
    >>> cam = canon @ viewpoint_to_rotation(30, 20, 5).T * 0.4
    >>> r = rotations_from_prediction(cam[..., :2] * [1, -1], cam[..., 2], canon, np.ones((1, 6)))
    >>> bool(np.allclose(r[0], viewpoint_to_rotation(30, 20, 5)))
    True
    """
    cams = camera_points(kp2d, depth)
    canon = np.asarray(canon, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    out = np.full((len(cams), 3, 3), np.nan)
    for i in range(len(cams)):
        # A diverged model predicts non-finite values: its rotation is NaN, scored as 180 degrees.
        if np.isfinite(cams[i]).all() and np.isfinite(canon[i]).all() and np.isfinite(w[i]).all():
            out[i] = weighted_procrustes(canon[i], cams[i], w[i])[0]
    return out
