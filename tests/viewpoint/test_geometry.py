"""Geometry: rotations, errors, Procrustes and PnP against independent references."""

import numpy as np
import pytest
from dropgrad_viewpoint.data.records import load_cad
from dropgrad_viewpoint.geometry import (
    acc30,
    median_error,
    project_points,
    rotation_error_deg,
    rotation_from_pnp,
    summarize_runs,
    unproject_points,
    viewpoint_to_rotation,
    weighted_procrustes,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

angles = st.tuples(st.floats(-360, 360), st.floats(-90, 90), st.floats(-180, 180))


def pascal_project_reference(x3d, a, e, theta, d, focal, px, py, viewport):
    """Pascal3D+ toolbox's project_3d, written out step by step (camera centre, Rz, Rx, P)."""
    a, e, theta = np.deg2rad([a, e, theta])
    c = np.array([d * np.cos(e) * np.sin(a), -d * np.cos(e) * np.cos(a), d * np.sin(e)])
    az, el = -a, -(np.pi / 2 - e)
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(el), -np.sin(el)], [0, np.sin(el), np.cos(el)]])
    r = rx @ rz
    p = np.array([[viewport * focal, 0, 0], [0, viewport * focal, 0], [0, 0, -1]]) @ np.hstack([r, -r @ c[:, None]])
    x = p @ np.vstack([x3d.T, np.ones(len(x3d))])
    x = x[:2] / x[2]
    r2 = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    x = r2 @ x
    return np.stack([x[0] + px, -x[1] + py], axis=1)


@settings(max_examples=50, deadline=None)
@given(angles)
def test_rotation_is_orthonormal_with_det_one(a):
    r = viewpoint_to_rotation(*a)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)


def test_rotation_is_vectorised():
    a, e, t = np.array([10.0, 200.0]), np.array([5.0, -30.0]), np.array([0.0, 12.0])
    batch = viewpoint_to_rotation(a, e, t)
    assert batch.shape == (2, 3, 3)
    for i in range(2):
        assert np.allclose(batch[i], viewpoint_to_rotation(a[i], e[i], t[i]))


@settings(max_examples=50, deadline=None)
@given(angles, angles)
def test_error_zero_for_equal_and_symmetric(a, b):
    r1, r2 = viewpoint_to_rotation(*a), viewpoint_to_rotation(*b)
    assert rotation_error_deg(r1, r1) < 1e-5
    assert np.isclose(rotation_error_deg(r1, r2), rotation_error_deg(r2, r1))


@pytest.mark.parametrize("angle", [0.0, 1e-4, 5.0, 30.0, 90.0, 179.0, 180.0])
def test_error_equals_axis_angle(angle):
    rng = np.random.default_rng(int(angle * 10))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    r0 = Rotation.random(random_state=3).as_matrix()
    r1 = Rotation.from_rotvec(np.deg2rad(angle) * axis).as_matrix() @ r0
    assert np.isclose(rotation_error_deg(r0, r1), angle, atol=2e-5)
    assert np.isclose(rotation_error_deg(r0, r1), np.rad2deg(Rotation.from_matrix(r0.T @ r1).magnitude()), atol=2e-5)


def test_projection_matches_the_pascal3d_toolbox_formula():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.5, 0.5, (20, 3))
    for _ in range(10):
        cam = {"azimuth": rng.uniform(0, 360), "elevation": rng.uniform(-60, 60), "theta": rng.uniform(-30, 30),
               "distance": rng.uniform(2, 8), "focal": 1.0, "px": rng.uniform(100, 300), "py": rng.uniform(100, 300),
               "viewport": 2000.0}
        uv, _ = project_points(pts, **cam)
        ref = pascal_project_reference(pts, *[cam[k] for k in ("azimuth", "elevation", "theta", "distance", "focal", "px", "py", "viewport")])
        assert np.allclose(uv, ref, atol=1e-8)


def test_procrustes_recovers_similarity_and_ignores_zero_weight_outliers():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(12, 3))
    r0 = Rotation.random(random_state=5).as_matrix()
    dst = 0.7 * src @ r0.T + [1.0, -2.0, 0.5]
    dst[:3] += rng.normal(size=(3, 3)) * 5  # corrupted points ...
    w = np.ones(12)
    w[:3] = 0.0  # ... with zero weight
    r, s, t = weighted_procrustes(src, dst, w)
    assert np.allclose(r, r0, atol=1e-10) and np.isclose(s, 0.7) and np.allclose(t, [1.0, -2.0, 0.5])
    assert not np.allclose(weighted_procrustes(src, dst)[0], r0, atol=1e-3)


def test_procrustes_returns_a_proper_rotation_for_reflected_data():
    src = np.random.default_rng(2).normal(size=(8, 3))
    r, _, _ = weighted_procrustes(src, src * [1, 1, -1])
    assert np.isclose(np.linalg.det(r), 1.0)


def _cameras(n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"azimuth": rng.uniform(0, 360), "elevation": rng.uniform(-40, 70), "theta": rng.uniform(-20, 20),
               "distance": rng.uniform(3, 8), "focal": 1.0, "px": rng.uniform(150, 350), "py": rng.uniform(150, 350),
               "viewport": 2000.0}


def test_round_trip_projection_procrustes_on_real_cad_keypoints(shared_data):
    kps = load_cad(shared_data / "pascal3d" / "CAD" / "sofa.mat")[0].keypoints
    for cam in _cameras(20, 3):
        truth = viewpoint_to_rotation(cam["azimuth"], cam["elevation"], cam["theta"])
        uv, z = project_points(kps, **cam)
        cam_pts = unproject_points(uv, z, cam["focal"], cam["px"], cam["py"], cam["viewport"])
        r, s, _ = weighted_procrustes(kps, cam_pts)
        # arccos near 0 resolves ~1e-6 degrees; the matrices themselves agree to rounding.
        assert rotation_error_deg(r, truth) < 1e-4 and np.allclose(r, truth, atol=1e-10) and np.isclose(s, 1.0)


def test_round_trip_projection_solvepnp(shared_data):
    kps = load_cad(shared_data / "pascal3d" / "CAD" / "diningtable.mat")[0].keypoints
    kps = kps[np.isfinite(kps).all(1)]
    for cam in _cameras(10, 4):
        truth = viewpoint_to_rotation(cam["azimuth"], cam["elevation"], cam["theta"])
        uv, _ = project_points(kps, **cam)
        r = rotation_from_pnp(uv, kps, cam["focal"], cam["px"], cam["py"], cam["viewport"])
        assert rotation_error_deg(r, truth) < 1e-3


def test_acc30_mederr_and_runs():
    e = np.array([5.0, 29.9, 30.0, 100.0, 12.0])
    assert acc30(e) == 0.6 and median_error(e) == 29.9
    s = summarize_runs([e, np.array([1.0, 2.0, 3.0])])
    assert np.isclose(s.acc30, 80.0) and np.isclose(s.acc30_std, 20.0)
    assert np.isclose(s.mederr, (29.9 + 2.0) / 2) and s.runs == 2
    assert np.isclose(s.mederr_std, (29.9 - 2.0) / 2)  # population std over runs, as acc30_std


def test_procrustes_treats_a_negative_weight_as_zero():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(12, 3))
    r0 = Rotation.random(random_state=5).as_matrix()
    dst = 0.7 * src @ r0.T + [1.0, -2.0, 0.5]
    dst[:3] += rng.normal(size=(3, 3)) * 5
    w = np.ones(12)
    w[:3] = -2.0  # documented non-negative; clipped to 0, not a reward for the corrupted points
    r, s, t = weighted_procrustes(src, dst, w)
    assert np.allclose(r, r0, atol=1e-10) and np.isclose(s, 0.7) and np.allclose(t, [1.0, -2.0, 0.5])


def test_procrustes_on_reflected_data_is_the_best_proper_similarity():
    # A mirrored, noisy target: the best proper rotation (scipy's weighted Wahba solution on the
    # centred points), then the best scale for it, sum w d.(R s) / sum w |s|^2, and t = mu_d - s R mu_s.
    rng = np.random.default_rng(7)
    src = rng.normal(size=(15, 3)) * [3.0, 2.0, 1.0]
    dst = 0.8 * (src * [1.0, 1.0, -1.0]) @ Rotation.random(random_state=2).as_matrix().T + [0.5, 1.0, -1.0]
    dst += 0.05 * rng.normal(size=dst.shape)
    w = rng.uniform(0.2, 1.0, size=15)
    r, s, t = weighted_procrustes(src, dst, w)
    wn = w / w.sum()
    mu_s, mu_d = wn @ src, wn @ dst
    s0, d0 = src - mu_s, dst - mu_d
    r_ref = Rotation.align_vectors(d0, s0, weights=w)[0].as_matrix()
    s_ref = float(np.sum(w * np.einsum("ij,ij->i", d0, s0 @ r_ref.T)) / np.sum(w * (s0**2).sum(1)))
    assert np.isclose(np.linalg.det(r), 1.0) and np.allclose(r, r_ref, atol=1e-8)
    assert np.isclose(s, s_ref, rtol=1e-8) and np.allclose(t, mu_d - s_ref * r_ref @ mu_s, atol=1e-8)


def test_procrustes_without_a_positive_weight_is_the_unweighted_fit():
    # Weights are heatmap confidences; if none is positive (all clipped to 0) the fit falls back
    # to equal weights instead of dividing by a zero total (NaN rotation, scored as 180 degrees).
    rng = np.random.default_rng(3)
    src = rng.normal(size=(6, 3))
    r0 = Rotation.random(random_state=8).as_matrix()
    dst = 1.5 * src @ r0.T + [0.2, 0.0, -1.0]
    for w in (np.zeros(6), -np.ones(6)):
        r, s, t = weighted_procrustes(src, dst, w)
        assert np.allclose(r, r0, atol=1e-10) and np.isclose(s, 1.5) and np.allclose(t, [0.2, 0.0, -1.0])


def test_summarize_runs_of_no_runs_is_nan_not_an_error():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "mean of empty slice"
        s = summarize_runs([])
    assert s.runs == 0 and all(np.isnan(v) for v in (s.acc30, s.acc30_std, s.mederr, s.mederr_std))
