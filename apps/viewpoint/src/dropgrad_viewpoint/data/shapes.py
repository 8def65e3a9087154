"""Procedural part-based 3D shape categories (boxes, cylinders, legs, handles, wheels) with keypoints.

A category is a template drawn from a seed: a body (box or upright cylinder) and optional legs,
a handle, wheels and a top part, with ranges for every dimension. An instance (a "CAD model")
draws the dimensions from those ranges. Keypoints are named points of the parts (body corners,
leg feet, handle tip, wheel hubs, ...) whose names are shared by all instances of a category.
Every instance is scaled so that its vertices fit in a ball of radius 0.5, as Pascal3D+ CAD
models roughly are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["N_PARTS", "Mesh", "ShapeTemplate", "make_instance", "make_template"]

# Part ids (colour slots): 0 body bottom, 1 legs, 2 wheels, 3 handle, 4 top part, 5 body top,
# 6-9 the body's four sides (box faces -y, +y, -x, +x; cylinder quarters). Each side has its own
# colour because a body of one colour is symmetric: a box with four legs looks the same after a
# 90 or 180 degree turn, a plain cylinder after any turn, so neither its keypoints' identities
# nor its viewpoint can be told from the image (real objects have a front: a door, a screen).
N_PARTS = 10
_BOX_QUAD_PART = np.array([0, 5, 6, 7, 8, 9])  # quads of _box: -z, +z, -y, +y, -x, +x


@dataclass
class Mesh:
    """Triangle mesh with per-face part ids and named keypoints.

    Attributes:
        vertices: of shape ``(V, 3)``.
        faces: 0-based, of shape ``(F, 3)``, counter-clockwise seen from outside.
        face_part: of shape ``(F,)``: the part index of each face (for colouring).
        names: keypoint names, length K.
        keypoints: of shape ``(K, 3)``.
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_part: np.ndarray
    names: list[str]
    keypoints: np.ndarray


@dataclass
class ShapeTemplate:
    """A category: which parts it has and the dimension ranges its instances draw from."""

    name: str
    body: str  # "box" or "cylinder"
    body_size: np.ndarray  # (3,) nominal (x, y, z) extents
    legs: int  # 0 or 4
    leg_length: float
    handle: bool
    wheels: int  # 0 or 4
    top: bool
    n_parts: int


def _box(center: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy, sz = np.asarray(size) / 2.0
    corners = np.array([[x, y, z] for z in (-sz, sz) for y in (-sy, sy) for x in (-sx, sx)]) + center
    # Quads (outward normals) split into triangles.
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    faces = [(a, b, c) for a, b, c, d in quads] + [(a, c, d) for a, b, c, d in quads]
    return corners, np.array(faces)


def _cylinder(center: np.ndarray, radius: float, height: float, axis: int, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1)
    pts = []
    for h in (-height / 2, height / 2):
        p = np.zeros((n, 3))
        others = [i for i in range(3) if i != axis]
        p[:, others[0]], p[:, others[1]], p[:, axis] = ring[:, 0], ring[:, 1], h
        pts.append(p)
    caps = np.zeros((2, 3))
    caps[0, axis], caps[1, axis] = -height / 2, height / 2
    verts = np.concatenate(pts + [caps]) + center
    faces = []
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, n + j), (i, n + j, n + i), (2 * n, j, i), (2 * n + 1, n + i, n + j)]
    faces_arr = np.array(faces)
    # The ring orientation depends on the axis permutation: flip faces to keep normals outward.
    v = verts[faces_arr]
    normal = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    outward = (normal * (v.mean(1) - center)).sum(1) < 0
    faces_arr[outward] = faces_arr[outward][:, ::-1]
    return verts, faces_arr


_CYL_SEGMENTS = 12


def make_template(rng: np.random.Generator, name: str) -> ShapeTemplate:
    """Draw a category template; every category gets 5 to 24 keypoints.

    >>> t = make_template(np.random.default_rng(0), "c00")
    >>> k = len(make_instance(t, np.random.default_rng(1)).names)
    >>> 5 <= k <= 24
    True
    """
    body = str(rng.choice(["box", "box", "cylinder"]))
    size = rng.uniform([0.5, 0.5, 0.25], [1.2, 1.0, 0.9])
    legs = int(rng.choice([0, 4]))
    wheels = 0 if legs else int(rng.choice([0, 4]))
    return ShapeTemplate(
        name=name, body=body, body_size=size, legs=legs, leg_length=float(rng.uniform(0.3, 0.7)),
        handle=bool(rng.random() < 0.6), wheels=wheels, top=bool(rng.random() < 0.5), n_parts=N_PARTS,
    )


def make_instance(template: ShapeTemplate, rng: np.random.Generator) -> Mesh:
    """One CAD instance of ``template`` (dimensions jittered by up to 20%), normalised to radius 0.5."""
    verts: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    names: list[str] = []
    kps: list[np.ndarray] = []

    def add(v: np.ndarray, f: np.ndarray, part: int) -> None:
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v)
        parts.append(np.full(len(f), part))

    size = template.body_size * rng.uniform(0.8, 1.2, 3)
    sx, sy, sz = size / 2
    base_z = template.leg_length * rng.uniform(0.8, 1.2) if template.legs else (0.12 if template.wheels else 0.0)
    center = np.array([0.0, 0.0, base_z + sz])
    if template.body == "box":
        v, f = _box(center, size)
        add(v, f, 0)
        parts[-1] = _BOX_QUAD_PART[np.arange(len(f)) % 6]
        for i, c in enumerate(v):
            names.append(f"body_{'lr'[i % 2]}{'fb'[(i // 2) % 2]}{'bt'[i // 4]}")
            kps.append(c)
    else:
        r = min(sx, sy)
        v, f = _cylinder(center, r, size[2], axis=2, n=_CYL_SEGMENTS)
        add(v, f, 0)
        # Faces come as (side, side, bottom cap, top cap) per segment; sides by quarter turn.
        kind, seg = np.arange(len(f)) % 4, np.arange(len(f)) // 4
        parts[-1] = np.select([kind == 2, kind == 3], [0, 5], 6 + seg * 4 // _CYL_SEGMENTS)
        for side, z in (("bottom", -sz), ("top", sz)):
            for a, tag in ((0, "right"), (np.pi / 2, "back"), (np.pi, "left"), (1.5 * np.pi, "front")):
                names.append(f"body_{side}_{tag}")
                kps.append(center + [r * np.cos(a), r * np.sin(a), z])
    if template.legs:
        leg_len = base_z
        thick = 0.06
        for i, (x, y) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
            c = np.array([x * (sx - thick), y * (sy - thick), leg_len / 2])
            v, f = _box(c, np.array([thick, thick, leg_len]))
            add(v, f, 1)
            names.append(f"leg{i}_foot")
            kps.append(np.array([c[0], c[1], 0.0]))
    if template.wheels:
        for i, (x, y) in enumerate([(-1, -1), (1, -1), (-1, 1), (1, 1)]):
            c = np.array([x * (sx + 0.04), y * sy * 0.7, 0.12])
            v, f = _cylinder(c, 0.12, 0.08, axis=0)
            add(v, f, 2)
            names.append(f"wheel{i}_hub")
            kps.append(c + [x * 0.04, 0, 0])
    if template.handle:
        hl = 0.25 * rng.uniform(0.8, 1.2)
        c = np.array([sx + hl / 2, 0.0, center[2] + sz * 0.3])
        v, f = _box(c, np.array([hl, 0.08, 0.08]))
        add(v, f, 3)
        names += ["handle_root", "handle_tip"]
        kps += [c - [hl / 2, 0, 0], c + [hl / 2, 0, 0]]
    if template.top:
        h = 0.2 * rng.uniform(0.8, 1.2)
        c = np.array([0.0, -sy * 0.4, center[2] + sz + h / 2])
        v, f = _cylinder(c, 0.08, h, axis=2)
        add(v, f, 4)
        names.append("top_tip")
        kps.append(c + [0, 0, h / 2])
    vertices = np.concatenate(verts)
    keypoints = np.stack(kps)
    mid = (vertices.max(0) + vertices.min(0)) / 2
    scale = 0.5 / np.linalg.norm(vertices - mid, axis=1).max()
    return Mesh((vertices - mid) * scale, np.concatenate(faces), np.concatenate(parts), names, (keypoints - mid) * scale)
