"""ObjectNet3D / Pascal3D+ annotation records and CAD files, parsed into typed objects.

``Annotations/<id>.mat`` holds one ``record`` struct: ``filename``, ``size`` and ``objects`` (a
struct array) with ``class``, ``bbox`` (x1, y1, x2, y2, 1-based pixels), ``viewpoint`` (azimuth,
elevation, theta, distance, focal, px, py, viewport, and ``azimuth_coarse``/``elevation_coarse``;
empty for an object without a pose), ``cad_index`` (1-based), ``anchors`` (one field per
keypoint name with ``location`` and ``status``; empty when the object has no keypoints),
``truncated``, ``occluded``, ``difficult``. ``CAD/<class>.mat`` holds one variable named after
the class: a struct array of CAD instances with ``vertices``, ``faces``, ``pnames`` and one
3-vector field per keypoint name (empty where the instance lacks that keypoint).

Gaps are read as the datasets' own tools read them: the coarse angles where the fine ones are
missing or empty, or where ``distance`` is 0 (Pascal3D+'s mark of a coarse-only annotation);
an empty theta, distance, focal, viewport, px or py takes the ObjectNet3D toolbox's default
(0, 5, 1, 2000 and the box centre); an object with an empty ``viewpoint`` has no pose and is
left out of ``objects``, and counted in ``ImageRecord.unposed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .mat import MatError, load_mat

__all__ = ["VISIBLE", "CadModel", "ImageRecord", "ObjectAnnotation", "Viewpoint", "load_cad", "parse_record"]

VISIBLE = 1
"""Anchor ``status`` of a keypoint annotated as visible (the one status whose location we use)."""


@dataclass(frozen=True)
class Viewpoint:
    """Camera of one object: angles in degrees, distance in CAD units, principal point in pixels."""

    azimuth: float
    elevation: float
    theta: float
    distance: float
    focal: float
    px: float
    py: float
    viewport: float


@dataclass
class ObjectAnnotation:
    """One annotated object.

    Attributes:
        cls: category name.
        bbox: of shape ``(4,)``: x1, y1, x2, y2 in 1-based pixels.
        anchors: keypoint name -> ``(location of shape (2,), status)``; only annotated ones.
    """

    cls: str
    bbox: np.ndarray
    viewpoint: Viewpoint
    cad_index: int
    anchors: dict[str, tuple[np.ndarray, int]]
    truncated: bool
    occluded: bool
    difficult: bool
    position: int = 0
    """Index of the object in the file's ``record.objects`` (0-based)."""

    @property
    def visible_keypoints(self) -> list[str]:
        """Names of keypoints annotated as visible."""
        return [k for k, (_, s) in self.anchors.items() if s == VISIBLE]


@dataclass
class ImageRecord:
    """One ``Annotations/<id>.mat`` file."""

    path: Path
    filename: str
    objects: list[ObjectAnnotation] = field(default_factory=list)
    unposed: list[str] = field(default_factory=list)
    """The classes of the objects left out for an empty ``viewpoint``, one entry per object."""


@dataclass
class CadModel:
    """One CAD instance of a category.

    Attributes:
        vertices: of shape ``(V, 3)``.
        faces: 0-based vertex indices, of shape ``(F, 3)``.
        names: keypoint names (``pnames``), length K.
        keypoints: of shape ``(K, 3)``; NaN rows where the instance lacks that keypoint.
    """

    vertices: np.ndarray
    faces: np.ndarray
    names: list[str]
    keypoints: np.ndarray


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    if isinstance(value, np.ndarray) and value.size == 0:
        return []
    raise TypeError(type(value).__name__)


def _get(d: Any, name: str, where: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise MatError(f"{path}: {where} is not a struct")
    if name not in d:
        raise MatError(f"{path}: missing field {where}.{name} (present: {', '.join(sorted(d))})")
    return d[name]


def _empty(value: Any) -> bool:
    return np.asarray(value, dtype=object if isinstance(value, str) else None).size == 0


def _number(d: Any, name: str, where: str, path: Path, fallback: str | None = None) -> float:
    value = _get(d, name, where, path)
    if _empty(value) and fallback is not None and fallback in d:
        return _number(d, fallback, where, path)
    try:
        arr = np.asarray(value, dtype=np.float64)
        num = float(arr.reshape(-1)[0]) if arr.size == 1 else None
    except (TypeError, ValueError):
        num = None
    if num is None or not np.isfinite(num):
        alt = f" (nor {where}.{fallback})" if fallback else ""
        raise MatError(f"{path}: field {where}.{name}{alt} must be one finite number, got {value!r}")
    return num


# The ObjectNet3D toolbox's values for empty camera fields (show_pose_annotations.m).
_CAMERA_DEFAULTS = {"theta": 0.0, "distance": 5.0, "focal": 1.0, "viewport": 2000.0}


def _viewpoint(vp: Any, bbox: np.ndarray, where: str, path: Path) -> Viewpoint:
    def field_or(name: str, default: float) -> float:
        return default if _empty(_get(vp, name, where, path)) else _number(vp, name, where, path)

    def angle(name: str, coarse_only: bool) -> float:
        coarse = f"{name}_coarse"
        has_coarse = coarse in vp and not _empty(vp[coarse])
        if has_coarse and (coarse_only or name not in vp or _empty(vp[name])):
            return _number(vp, coarse, where, path)
        return _number(vp, name, where, path, fallback=coarse)

    distance = field_or("distance", _CAMERA_DEFAULTS["distance"])
    coarse_only = distance == 0  # Pascal3D+: no fine viewpoint was annotated
    return Viewpoint(
        azimuth=angle("azimuth", coarse_only),
        elevation=angle("elevation", coarse_only),
        theta=field_or("theta", _CAMERA_DEFAULTS["theta"]),
        distance=distance,
        focal=field_or("focal", _CAMERA_DEFAULTS["focal"]),
        px=field_or("px", float(bbox[0] + bbox[2]) / 2),
        py=field_or("py", float(bbox[1] + bbox[3]) / 2),
        viewport=field_or("viewport", _CAMERA_DEFAULTS["viewport"]),
    )


def parse_record(path: str | os.PathLike[str]) -> ImageRecord:
    """Parse one ObjectNet3D/Pascal3D+ annotation file (v5 or v7.3).

    Raises:
        MatError: unreadable file, or a missing/malformed field (names the file and the field).

    >>> import tempfile
    >>> from .mat import save_mat
    >>> vp = dict(azimuth=30.0, elevation=10.0, theta=0.0, distance=5.0, focal=1.0, px=50.0,
    ...           py=40.0, viewport=2000.0)
    >>> obj = {"class": "mug", "bbox": np.array([1.0, 2, 60, 70]), "viewpoint": vp,
    ...        "cad_index": 1.0, "anchors": {"handle": {"location": np.array([9.0, 8]), "status": 1.0}},
    ...        "truncated": 0.0, "occluded": 0.0, "difficult": 0.0}
    >>> p = save_mat(Path(tempfile.mkdtemp()) / "a.mat", {"record": {"filename": "a.JPEG", "objects": [obj]}})
    >>> rec = parse_record(p)
    >>> rec.objects[0].cls, rec.objects[0].viewpoint.azimuth, rec.objects[0].visible_keypoints
    ('mug', 30.0, ['handle'])
    """
    path = Path(path)
    data = load_mat(path)
    record = _get(data, "record", "file", path)
    filename = _get(record, "filename", "record", path)
    if not isinstance(filename, str) or not filename:
        raise MatError(f"{path}: field record.filename must be a file name, got {filename!r}")
    try:
        raw_objects = _as_list(_get(record, "objects", "record", path))
    except TypeError as exc:
        raise MatError(f"{path}: field record.objects must be a struct array, got {exc}") from None
    objects = []
    unposed = []
    for i, obj in enumerate(raw_objects):
        where = f"record.objects({i + 1})"
        cls = _get(obj, "class", where, path)
        if not isinstance(cls, str) or not cls:
            raise MatError(f"{path}: field {where}.class must be a category name, got {cls!r}")
        bbox = np.asarray(_get(obj, "bbox", where, path), dtype=np.float64).reshape(-1)
        if bbox.shape != (4,) or not np.all(np.isfinite(bbox)) or bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
            raise MatError(f"{path}: field {where}.bbox must be [x1 y1 x2 y2] with x2 > x1, y2 > y1, got {bbox.tolist()}")
        vp = _get(obj, "viewpoint", where, path)
        if not isinstance(vp, dict) and _empty(vp):
            unposed.append(cls)  # as the toolboxes do: an object without a pose is not drawn or scored
            continue
        viewpoint = _viewpoint(vp, bbox, f"{where}.viewpoint", path)
        cad_index = _number(obj, "cad_index", where, path)
        if cad_index < 1 or cad_index != int(cad_index):
            raise MatError(f"{path}: field {where}.cad_index must be a 1-based integer, got {cad_index}")
        anchors: dict[str, tuple[np.ndarray, int]] = {}
        raw_anchors = _get(obj, "anchors", where, path)
        if isinstance(raw_anchors, dict):
            for name, a in raw_anchors.items():
                aw = f"{where}.anchors.{name}"
                loc = np.asarray(_get(a, "location", aw, path), dtype=np.float64).reshape(-1)
                status_raw = np.asarray(_get(a, "status", aw, path), dtype=np.float64).reshape(-1)
                if loc.size == 0:
                    continue  # keypoint not annotated on this object
                if loc.shape != (2,) or status_raw.size != 1:
                    raise MatError(f"{path}: field {aw} must have location [x y] and one status, got {loc.tolist()}, {status_raw.tolist()}")
                anchors[name] = (loc, int(status_raw[0]))
        elif not (isinstance(raw_anchors, np.ndarray) and raw_anchors.size == 0):
            raise MatError(f"{path}: field {where}.anchors must be a struct or empty, got {type(raw_anchors).__name__}")
        flags = {k: bool(_number(obj, k, where, path)) for k in ("truncated", "occluded", "difficult")}
        objects.append(ObjectAnnotation(cls, bbox, viewpoint, int(cad_index), anchors, **flags, position=i))
    return ImageRecord(path, filename, objects, unposed)


def load_cad(path: str | os.PathLike[str], cls: str | None = None) -> list[CadModel]:
    """Read ``CAD/<class>.mat`` (Pascal3D+ or ObjectNet3D, v5 or v7.3): the list of CAD instances.

    Args:
        path: the CAD file.
        cls: the variable to read (default: the file's stem, e.g. ``sofa`` for ``sofa.mat``).

    Raises:
        MatError: unreadable file, missing variable/field, or a keypoint that is not a 3-vector.
    """
    path = Path(path)
    name = cls or path.stem
    data = load_mat(path)
    if name not in data:
        raise MatError(f"{path}: no variable {name!r} (present: {', '.join(sorted(data)) or 'none'})")
    try:
        instances = _as_list(data[name])
    except TypeError as exc:
        raise MatError(f"{path}: variable {name} must be a struct array of CAD models, got {exc}") from None
    if not instances:
        raise MatError(f"{path}: variable {name} holds no CAD model")
    models = []
    for i, inst in enumerate(instances):
        where = f"{name}({i + 1})"
        arrays = {}
        for key, dtype in (("vertices", np.float64), ("faces", np.int64)):
            value = np.asarray(_get(inst, key, where, path), dtype=dtype)
            # One row (a single face) arrives squeezed to shape (3,).
            if value.shape != (3,) and (value.ndim != 2 or value.shape[1] != 3):
                raise MatError(f"{path}: field {where}.{key} must be an N x 3 array, got shape {value.shape}")
            arrays[key] = value.reshape(-1, 3)
        vertices, faces = arrays["vertices"], arrays["faces"] - 1
        pnames = _get(inst, "pnames", where, path)
        names = [pnames] if isinstance(pnames, str) else list(pnames)
        if not all(isinstance(n, str) for n in names):
            raise MatError(f"{path}: field {where}.pnames must be a cell array of names")
        kps = np.full((len(names), 3), np.nan)
        for k, kp in enumerate(names):
            value = np.asarray(_get(inst, kp, where, path), dtype=np.float64).reshape(-1)
            if value.size == 0:
                continue
            if value.shape != (3,):
                raise MatError(f"{path}: field {where}.{kp} must be a 3-vector, got shape {value.shape}")
            kps[k] = value
        models.append(CadModel(vertices, faces, names, kps))
    return models
