"""A small OpenCV renderer: painter's algorithm, Lambertian shading, keypoint visibility from depth.

Uses the Pascal3D+/ObjectNet3D camera of :mod:`dropgrad_viewpoint.geometry`. Image arrays are
indexed from 0 while annotation pixels are 1-based, so array position = annotation - 1.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..geometry import project_points, viewpoint_to_rotation
from .shapes import Mesh

__all__ = ["keypoint_visibility", "render_mesh", "textured_background"]

_SHIFT = 4  # sub-pixel bits for cv2 polygon filling


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random smooth-noise background with a few coloured blobs, ``(size, size, 3)`` uint8."""
    low = rng.uniform(40, 215, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(2, 6))):
        c = tuple(int(v) for v in rng.integers(0, size, 2))
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.circle(img, c, int(rng.integers(3, size // 5)), color, -1, lineType=cv2.LINE_AA)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_mesh(
    image: np.ndarray, mesh: Mesh, part_colors: np.ndarray, camera: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``mesh`` over ``image`` (in place) with the camera; return ``(image, object mask)``.

    Args:
        image: ``(H, W, 3)`` uint8.
        part_colors: ``(n_parts, 3)`` base colours in [0, 255].
        camera: azimuth, elevation, theta, distance, focal, px, py, viewport.
    """
    rot = viewpoint_to_rotation(camera["azimuth"], camera["elevation"], camera["theta"])
    uv, _ = project_points(mesh.vertices, **camera)
    cam = mesh.vertices @ rot.T
    tri = cam[mesh.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    centers = tri.mean(1)
    centers[:, 2] -= camera["distance"]
    facing = (normals * -centers).sum(1) > 0  # back-face culling
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 1.0  # light from the camera's side
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(normals @ light, 0.0, 1.0)
    # Per-face texture: each face's colour is jittered so the parts look textured, not flat.
    jitter = rng.uniform(0.85, 1.15, (len(mesh.faces), 1))
    colors = np.clip(part_colors[mesh.face_part] * shade[:, None] * jitter, 0, 255)
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    pts = np.round((uv - 1.0) * (1 << _SHIFT)).astype(np.int32)
    for f in np.argsort(centers[:, 2]):  # far (most negative z) first
        if not facing[f]:
            continue
        poly = pts[mesh.faces[f]]
        cv2.fillConvexPoly(image, poly, tuple(float(c) for c in colors[f]), lineType=cv2.LINE_AA, shift=_SHIFT)
        cv2.fillConvexPoly(mask, poly, 255, shift=_SHIFT)
    noise = rng.normal(1.0, 0.06, image.shape[:2]).astype(np.float32)
    obj = mask > 0
    image[obj] = np.clip(image[obj].astype(np.float32) * noise[obj, None], 0, 255).astype(np.uint8)
    return image, mask


def keypoint_visibility(mesh: Mesh, camera: dict, size: int, eps: float = 1e-3) -> np.ndarray:
    """Whether each keypoint is seen: inside the image and not behind any face, ``(K,)`` bool.

    Each keypoint's pixel is tested against every triangle covering it; the triangle's depth
    there is interpolated perspective-correctly (linear in 1/z), and a triangle more than
    ``eps`` (relative) nearer to the camera hides the keypoint.
    """
    uv_v, z_v = project_points(mesh.vertices, **camera)
    uv_k, z_k = project_points(mesh.keypoints, **camera)
    a, b, c = (uv_v[mesh.faces[:, i]] for i in range(3))
    inv = [1.0 / -z_v[mesh.faces[:, i]] for i in range(3)]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    visible = np.zeros(len(uv_k), dtype=bool)
    for k, (p, zk) in enumerate(zip(uv_k, z_k)):
        l1 = ((b[:, 1] - c[:, 1]) * (p[0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (p[1] - c[:, 1])) / den
        l2 = ((c[:, 1] - a[:, 1]) * (p[0] - c[:, 0]) + (a[:, 0] - c[:, 0]) * (p[1] - c[:, 1])) / den
        l3 = 1.0 - l1 - l2
        inside = ok & (l1 >= -1e-9) & (l2 >= -1e-9) & (l3 >= -1e-9)
        depth = 1.0 / (l1 * inv[0] + l2 * inv[1] + l3 * inv[2])  # distance along -z
        hidden = inside & (depth < -zk * (1.0 - eps))
        in_image = 0.5 <= p[0] <= size + 0.5 and 0.5 <= p[1] <= size + 0.5
        visible[k] = in_image and not hidden.any()
    return visible
