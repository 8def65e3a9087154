"""Rotations of the Pascal3D+/ObjectNet3D camera model, rotation errors and pose from keypoints.

Conventions (those of the Pascal3D+ toolbox, which ObjectNet3D shares): a viewpoint is
(azimuth a, elevation e, in-plane rotation theta) in degrees, plus distance d, focal f, a
viewport M and a principal point (px, py). The rotation from CAD (canonical) coordinates to the
camera frame is ``R = Rz(theta) @ Rx(-(pi/2 - e)) @ Rz(-a)``; the camera sits at ``(0, 0, d)``
in that rotated frame and looks down its -z axis, so a canonical point X has camera coordinates
``Xc = R X - (0, 0, d)`` and projects to ``u = px + M f Xc_x / (-Xc_z)``,
``v = py - M f Xc_y / (-Xc_z)`` (image rows grow downwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PoseScores",
    "acc30",
    "median_error",
    "project_points",
    "rotation_error_deg",
    "rotation_from_pnp",
    "score_errors",
    "summarize_runs",
    "unproject_points",
    "viewpoint_to_rotation",
    "weighted_procrustes",
]


def _rz(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _rx(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    z, o = np.zeros_like(angle), np.ones_like(angle)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def viewpoint_to_rotation(azimuth, elevation, theta) -> np.ndarray:
    """Rotation matrices ``Rz(theta) Rx(-(pi/2 - e)) Rz(-a)`` from angles in degrees.

    Args:
        azimuth, elevation, theta: scalars or arrays of one broadcastable shape ``S``.

    Returns:
        Array of shape ``S + (3, 3)`` (float64).

    >>> R = viewpoint_to_rotation(0.0, 90.0, 0.0)  # looking straight down: identity
    >>> np.allclose(R, np.eye(3))
    True
    >>> viewpoint_to_rotation([0, 30], [10, 20], [0, 5]).shape
    (2, 3, 3)
    """
    a, e, t = np.broadcast_arrays(*(np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (azimuth, elevation, theta)))
    return _rz(t) @ _rx(-(np.pi / 2 - e)) @ _rz(-a)


def rotation_error_deg(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Geodesic distance ``||log(R1^T R2)||_F / sqrt(2)`` in degrees, of shape ``broadcast(S1, S2)``.

    Computed as ``arccos((tr(R1^T R2) - 1) / 2)`` with the cosine clipped to [-1, 1], so rounding
    never produces NaN. ``r1``, ``r2``: arrays of shape ``S + (3, 3)``.

    >>> round(float(rotation_error_deg(np.eye(3), viewpoint_to_rotation(0, 90, 30))), 6)
    30.0
    """
    r1, r2 = np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64)
    trace = np.einsum("...ij,...ij->...", r1, r2)  # tr(R1^T R2)
    return np.rad2deg(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def project_points(
    points: np.ndarray, azimuth: float, elevation: float, theta: float, distance: float,
    focal: float, px: float, py: float, viewport: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Project canonical points with a Pascal3D+/ObjectNet3D camera.

    Args:
        points: of shape ``(n, 3)`` in CAD coordinates.

    Returns:
        ``(uv, z)``: pixel coordinates of shape ``(n, 2)`` (x right, y down, in the annotation's
        1-based pixel frame) and camera-frame ``Xc_z`` of shape ``(n,)`` (negative in front).

    >>> uv, z = project_points(np.zeros((1, 3)), 10, 20, 0, 5.0, 1.0, 100.0, 80.0, 2000)
    >>> uv.tolist(), z.tolist()
    ([[100.0, 80.0]], [-5.0])
    """
    rot = viewpoint_to_rotation(azimuth, elevation, theta)
    cam = np.asarray(points, dtype=np.float64) @ rot.T
    cam[:, 2] -= distance
    scale = viewport * focal / -cam[:, 2]
    uv = np.stack([px + scale * cam[:, 0], py - scale * cam[:, 1]], axis=1)
    return uv, cam[:, 2]


def unproject_points(uv: np.ndarray, cam_z: np.ndarray, focal: float, px: float, py: float, viewport: float) -> np.ndarray:
    """Camera-frame points of shape ``(n, 3)`` from pixels ``uv`` ``(n, 2)`` and ``Xc_z`` ``(n,)``.

    The exact inverse of :func:`project_points` (perspective lifting with known intrinsics).
    """
    uv = np.asarray(uv, dtype=np.float64)
    z = np.asarray(cam_z, dtype=np.float64)
    depth = -z / (viewport * focal)
    return np.stack([(uv[:, 0] - px) * depth, -(uv[:, 1] - py) * depth, z], axis=1)


def weighted_procrustes(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted similarity alignment (Umeyama 1991): ``target ~ s R source + t``.

    Minimises ``sum_i w_i ||target_i - (s R source_i + t)||^2`` over a proper rotation
    (``det R = +1``), a scale ``s >= 0`` and a translation.

    Args:
        source: of shape ``(n, 3)``, e.g. canonical keypoints.
        target: of shape ``(n, 3)``, e.g. camera-frame keypoints.
        weights: of shape ``(n,)``, non-negative (default all 1).

    Returns:
        ``(R, s, t)``: ``R`` of shape ``(3, 3)``, the scale, ``t`` of shape ``(3,)``.

    >>> X = np.array([[0., 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]])
    >>> R0 = viewpoint_to_rotation(40, 10, -20)
    >>> R, s, t = weighted_procrustes(X, 2.0 * X @ R0.T + 1.0)
    >>> bool(np.allclose(R, R0)), round(s, 6)
    (True, 2.0)
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or w.shape != (len(src),):
        raise ValueError(f"weighted_procrustes: expected (n, 3), (n, 3), (n,); got {src.shape}, {dst.shape}, {w.shape}")
    total = w.sum()
    if total <= 0:
        w, total = np.ones(len(src)), float(len(src))
    w = w / total
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    u, sing, vt = np.linalg.svd(cov)
    flip = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[2] = -1.0  # reflection -> nearest proper rotation
    rot = u @ np.diag(flip) @ vt
    var_s = float(w @ (s0**2).sum(1))
    scale = float((sing * flip).sum() / var_s) if var_s > 0 else 1.0
    return rot, scale, mu_d - scale * rot @ mu_s


# OpenCV's camera looks down +z with y down; ours looks down -z with y up.
_CV_FROM_PASCAL = np.diag([1.0, -1.0, -1.0])


def rotation_from_pnp(
    uv: np.ndarray, points: np.ndarray, focal: float, px: float, py: float, viewport: float
) -> np.ndarray:
    """Rotation (our convention, shape ``(3, 3)``) from 2D-3D matches with OpenCV ``solvePnP``.

    Args:
        uv: pixel coordinates, of shape ``(n, 2)``, n >= 4.
        points: canonical 3D points, of shape ``(n, 3)``.
    """
    import cv2

    uv = np.ascontiguousarray(uv, dtype=np.float64).reshape(-1, 1, 2)
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 1, 3)
    if len(pts) < 4:
        raise ValueError(f"rotation_from_pnp needs at least 4 points, got {len(pts)}")
    k = np.array([[viewport * focal, 0.0, px], [0.0, viewport * focal, py], [0.0, 0.0, 1.0]])
    flag = cv2.SOLVEPNP_ITERATIVE if len(pts) >= 6 else cv2.SOLVEPNP_EPNP
    ok, rvec, _ = cv2.solvePnP(pts, uv, k, None, flags=flag)
    if not ok:
        raise ValueError("solvePnP found no pose for these points")
    r_cv, _ = cv2.Rodrigues(rvec)
    return _CV_FROM_PASCAL @ r_cv


def acc30(errors: np.ndarray) -> float:
    """Share of rotation errors (degrees) below 30 degrees, in [0, 1].

    >>> acc30(np.array([10.0, 29.0, 31.0, 90.0]))
    0.5
    """
    errors = np.asarray(errors, dtype=np.float64)
    return float((errors < 30.0).mean()) if errors.size else float("nan")


def median_error(errors: np.ndarray) -> float:
    """Median rotation error in degrees.

    >>> median_error(np.array([10.0, 20.0, 90.0]))
    20.0
    """
    errors = np.asarray(errors, dtype=np.float64)
    return float(np.median(errors)) if errors.size else float("nan")


@dataclass(frozen=True)
class PoseScores:
    """Acc30 (in %) and MedErr (degrees), each as mean and std over repeated runs."""

    acc30: float
    acc30_std: float
    mederr: float
    mederr_std: float
    runs: int

    def as_dict(self) -> dict[str, float | int]:
        return {"acc30": self.acc30, "acc30_std": self.acc30_std, "mederr": self.mederr,
                "mederr_std": self.mederr_std, "runs": self.runs}

    def __str__(self) -> str:
        return f"Acc30 {self.acc30:.2f} ± {self.acc30_std:.2f}% | MedErr {self.mederr:.2f} ± {self.mederr_std:.2f}°"


def score_errors(errors: np.ndarray) -> tuple[float, float]:
    """``(Acc30 in %, MedErr in degrees)`` of one run's errors ``(n,)``."""
    return 100.0 * acc30(errors), median_error(errors)


def summarize_runs(runs: Sequence[np.ndarray]) -> PoseScores:
    """Mean ± std (population) of Acc30 and MedErr over repeated runs, each an error array.

    >>> s = summarize_runs([np.array([10.0, 50.0]), np.array([10.0, 20.0])])
    >>> s.acc30, s.acc30_std, s.mederr
    (75.0, 25.0, 22.5)
    """
    scores = np.array([score_errors(r) for r in runs], dtype=np.float64).reshape(-1, 2)
    return PoseScores(float(scores[:, 0].mean()), float(scores[:, 0].std()),
                      float(scores[:, 1].mean()), float(scores[:, 1].std()), len(scores))
