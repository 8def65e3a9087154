"""The embedded default: procedural shape categories rendered with OpenCV, written as ObjectNet3D.

:func:`generate_synthetic` writes, under ``root``::

    Images/<id>.png            rendered images (one object each, random background)
    Annotations/<id>.mat       ObjectNet3D ``record`` structs (class, bbox, viewpoint, cad_index,
                               anchors with location and status, truncated/occluded/difficult)
    CAD/<class>.mat            CAD instances (vertices, faces, pnames, one field per keypoint);
                               every third category is written as a v7.3 (HDF5) file
    Image_sets/train.txt       images of the base (training + validation) categories
    Image_sets/val.txt         images of the novel (test) categories
    Image_sets/novel_categories.txt
    synthetic.json             the generator's options (a run checks them before reusing a folder)

so the one ObjectNet3D loader reads it. Everything is a pure function of the options and seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..geometry import project_points
from .mat import save_mat
from .render import keypoint_visibility, render_mesh, textured_background
from .shapes import make_instance, make_template

__all__ = ["SyntheticSpec", "ensure_synthetic", "generate_synthetic"]

MARKER = "synthetic.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of the procedural data set (all categories have the same number of images)."""

    n_train: int = 32
    n_val: int = 3
    n_novel: int = 5
    cad_per_category: int = 4
    images_per_category: int = 40
    image_size: int = 96
    seed: int = 0
    # 2: the body's sides have their own colours (see shapes.N_PARTS); a folder written by
    # version 1 (one body colour) is refused rather than silently reused.
    version: int = 2

    def category_names(self) -> list[str]:
        return [f"shape{i:02d}" for i in range(self.n_train + self.n_val + self.n_novel)]

    def novel_names(self) -> list[str]:
        return self.category_names()[self.n_train + self.n_val :]


def _camera(rng: np.random.Generator, size: int) -> dict:
    distance = float(rng.uniform(4.0, 6.0))
    return {
        "azimuth": float(rng.uniform(0.0, 360.0)),
        "elevation": float(rng.uniform(-15.0, 45.0)),
        "theta": float(rng.uniform(-10.0, 10.0)),
        "distance": distance,
        "focal": 1.0,
        "px": float(size / 2 + 0.5 + rng.uniform(-6, 6)),
        "py": float(size / 2 + 0.5 + rng.uniform(-6, 6)),
        "viewport": float(distance * size * rng.uniform(0.55, 0.7)),
    }


def generate_synthetic(root: str | os.PathLike[str], spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the procedural data set in the ObjectNet3D layout (see the module docstring).

    The folder is built under a temporary name and renamed, so it is never half-written.

    >>> import tempfile
    >>> root = generate_synthetic(Path(tempfile.mkdtemp()) / "s", SyntheticSpec(
    ...     n_train=1, n_val=0, n_novel=1, cad_per_category=1, images_per_category=2, image_size=48))
    >>> sorted(p.name for p in (root / "Annotations").iterdir())
    ['shape00_0000.mat', 'shape00_0001.mat', 'shape01_0000.mat', 'shape01_0001.mat']
    """
    root = Path(root)
    tmp = root.with_name(f".{root.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("Images", "Annotations", "CAD", "Image_sets"):
        (tmp / sub).mkdir(parents=True)
    names = spec.category_names()
    novel = set(spec.novel_names())
    sets: dict[str, list[str]] = {"train": [], "val": []}
    for c, cls in enumerate(names):
        template = make_template(np.random.default_rng([spec.seed, c]), cls)
        meshes = [make_instance(template, np.random.default_rng([spec.seed, c, 1000 + m])) for m in range(spec.cad_per_category)]
        cad = [
            {"vertices": m.vertices, "faces": (m.faces + 1).astype(np.float64), "pnames": list(m.names),
             **{n: m.keypoints[k] for k, n in enumerate(m.names)}}
            for m in meshes
        ]
        save_mat(tmp / "CAD" / f"{cls}.mat", {cls: cad}, version="7.3" if c % 3 == 2 else "5")
        colors = np.random.default_rng([spec.seed, c, 2000]).uniform(30, 255, (template.n_parts, 3))
        for i in range(spec.images_per_category):
            rng = np.random.default_rng([spec.seed, c, 3000 + i])
            image_id = f"{cls}_{i:04d}"
            cad_index = int(rng.integers(len(meshes)))
            mesh = meshes[cad_index]
            camera = _camera(rng, spec.image_size)
            image = textured_background(rng, spec.image_size)
            part_colors = np.clip(colors * rng.uniform(0.8, 1.2, colors.shape), 0, 255)
            image, mask = render_mesh(image, mesh, part_colors, camera, rng)
            cv2.imwrite(str(tmp / "Images" / f"{image_id}.png"), image)
            ys, xs = np.nonzero(mask)
            bbox = np.array([xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1], dtype=np.float64)
            uv, _ = project_points(mesh.keypoints, **camera)
            visible = keypoint_visibility(mesh, camera, spec.image_size)
            anchors = {n: {"location": uv[k], "status": 1.0 if visible[k] else 2.0} for k, n in enumerate(mesh.names)}
            truncated = bool(bbox[0] <= 1 or bbox[1] <= 1 or bbox[2] >= spec.image_size or bbox[3] >= spec.image_size)
            viewpoint = {**camera, "azimuth_coarse": round(camera["azimuth"]), "elevation_coarse": round(camera["elevation"])}
            record = {
                "filename": f"{image_id}.png",
                "database": "dropgrad-synthetic",
                "imgsize": np.array([spec.image_size, spec.image_size, 3], dtype=np.float64),
                "objects": [{
                    "class": cls, "bbox": bbox, "anchors": anchors, "viewpoint": viewpoint,
                    "cad_index": float(cad_index + 1), "truncated": float(truncated),
                    "occluded": 0.0, "difficult": 0.0,
                }],
            }
            save_mat(tmp / "Annotations" / f"{image_id}.mat", {"record": record})
            sets["val" if cls in novel else "train"].append(image_id)
    for name, ids in sets.items():
        (tmp / "Image_sets" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    (tmp / "Image_sets" / "novel_categories.txt").write_text("".join(f"{n}\n" for n in spec.novel_names()))
    (tmp / MARKER).write_text(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True) + "\n")
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def ensure_synthetic(root: str | os.PathLike[str], spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Generate the data set into ``root`` unless it already holds one made with ``spec``.

    Raises:
        ValueError: ``root`` exists but is not this generator's output, or was made with other options.
    """
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved != dataclasses.asdict(spec):
            raise ValueError(
                f"--data-root {root} holds a synthetic set made with other options ({marker}: {saved}); "
                f"expected {dataclasses.asdict(spec)}; delete it or choose another --data-root"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"--data-root {root} exists but holds no {MARKER}: not a synthetic set; choose another --data-root")
    return generate_synthetic(root, spec)
