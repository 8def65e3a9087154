"""The ObjectNet3D layout: image sets, object filters, square crops, keypoint targets, category split.

Root layout (the official one; the synthetic set writes the same)::

    Annotations/<id>.mat    one ``record`` per image (see :mod:`.records`)
    Images/<filename>       the image named by ``record.filename``
    Image_sets/<set>.txt    image ids, one per line
    CAD/<class>.mat         CAD instances with anchor keypoints

Filters (as in StarMap/MetaView): training objects drop ``difficult`` ones and those without a
visible keypoint; test objects must also be neither truncated nor occluded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from ..geometry import viewpoint_to_rotation
from .mat import MatError
from .records import VISIBLE, CadModel, ObjectAnnotation, load_cad, parse_record

__all__ = [
    "STARMAP_NOVEL",
    "CategoryData",
    "CategorySplit",
    "ObjectItem",
    "ObjectNet3D",
    "crop_object",
    "make_split",
    "read_image_set",
]

STARMAP_NOVEL = (
    "bed", "bookshelf", "calculator", "cellphone", "computer", "door", "filing_cabinet", "guitar", "iron",
    "knife", "microwave", "pen", "pot", "rifle", "shoe", "slipper", "stove", "toilet", "tub", "wheelchair",
)
"""The 20 novel ObjectNet3D categories of StarMap's category-agnostic split."""

CONTEXT = 1.5  # crop side = 1.5 x the longer box side, as in StarMap/MetaView
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def read_image_set(root: str | os.PathLike[str], name: str) -> list[str]:
    """Image ids listed in ``Image_sets/<name>.txt`` (blank lines ignored).

    Raises:
        FileNotFoundError: the file is missing (names it and the sets present).
        ValueError: the file is not UTF-8 text or lists an image id twice (names the file and line).
    """
    path = Path(root) / "Image_sets" / f"{name}.txt"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"image set {path} not found (present: {', '.join(present) or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"image set {path}: byte {err.start} is not UTF-8; expected one image id per line") from None
    ids: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in first:
            # The same image twice would put one object in a task's support and its query.
            raise ValueError(f"image set {path}, line {number}: {image_id} again (already on line {first[image_id]}); expected each image id once")
        first[image_id] = number
        ids.append(image_id)
    return ids


@dataclass
class ObjectItem:
    """One annotated object and where it comes from."""

    record_path: Path
    image_path: Path
    index: int  # position in record.objects (0-based)
    ann: ObjectAnnotation


class ObjectNet3D:
    """All objects of the given image sets of an ObjectNet3D-layout folder.

    Records are parsed and checked (image present, ``cad_index`` within the class's CAD file) at
    construction, so bad data fails before any training.

    Args:
        root: the data folder.
        image_sets: names of ``Image_sets/*.txt`` files to read.
        categories: keep only these classes (``None``: all).
    """

    def __init__(self, root: str | os.PathLike[str], image_sets: Sequence[str], categories: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {self.root} not found")
        self._cad: dict[str, list[CadModel]] = {}
        keep = None if categories is None else set(categories)
        self.items: list[ObjectItem] = []
        self.unposed: dict[str, int] = {}
        """Objects of the kept classes left out for an empty ``viewpoint`` (no pose), per class."""
        for set_name in image_sets:
            for image_id in read_image_set(self.root, set_name):
                rec_path = self.root / "Annotations" / f"{image_id}.mat"
                record = parse_record(rec_path)
                image_path = self.root / "Images" / record.filename
                for cls in record.unposed:
                    if keep is None or cls in keep:
                        self.unposed[cls] = self.unposed.get(cls, 0) + 1
                for ann in record.objects:
                    if keep is not None and ann.cls not in keep:
                        continue
                    if not image_path.is_file():
                        raise FileNotFoundError(f"{rec_path}: record.filename names {image_path}, which does not exist")
                    n_cad = len(self.cad(ann.cls))
                    if ann.cad_index > n_cad:
                        raise MatError(
                            f"{rec_path}: field record.objects({ann.position + 1}).cad_index={ann.cad_index} is beyond "
                            f"{self.root / 'CAD' / (ann.cls + '.mat')}, which holds {n_cad} CAD model(s)"
                        )
                    self.items.append(ObjectItem(rec_path, image_path, ann.position, ann))

    def cad(self, cls: str) -> list[CadModel]:
        """The CAD models of ``cls`` (read once)."""
        if cls not in self._cad:
            path = self.root / "CAD" / f"{cls}.mat"
            if not path.is_file():
                raise FileNotFoundError(f"CAD file {path} for category {cls!r} not found")
            self._cad[cls] = load_cad(path, cls)
        return self._cad[cls]

    def keypoint_names(self, cls: str) -> list[str]:
        """The category's keypoint names (``pnames`` of its first CAD model)."""
        return self.cad(cls)[0].names

    @property
    def categories(self) -> list[str]:
        return sorted({it.ann.cls for it in self.items})

    def usable(self, cls: str, mode: Literal["train", "test"]) -> list[ObjectItem]:
        """Objects of ``cls`` passing the training or test filter (see module docstring)."""
        names = set(self.keypoint_names(cls))
        out = []
        for it in self.items:
            a = it.ann
            if a.cls != cls or a.difficult or not any(k in names for k in a.visible_keypoints):
                continue
            if mode == "test" and (a.truncated or a.occluded):
                continue
            out.append(it)
        return out


def crop_object(image: np.ndarray, bbox: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Square crop of side 1.5 x the longer box side around the box centre, resized to ``size``.

    Args:
        image: ``(H, W, 3)`` uint8.
        bbox: x1, y1, x2, y2 in 1-based pixels.

    Returns:
        ``(crop of shape (size, size, 3), centre (2,) in 1-based pixels, side in pixels)``.
        Outside the image the crop repeats the border. A point ``uv`` maps to normalised crop
        coordinates ``(uv - centre) / side`` in [-0.5, 0.5].
    """
    center = np.array([(bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0])
    side = CONTEXT * max(bbox[2] - bbox[0], bbox[3] - bbox[1], 1.0)
    s = side / size
    origin = center - 1.0 - side / 2.0 + 0.5 * s  # array position of crop pixel (0, 0)'s centre
    m = np.array([[s, 0.0, origin[0]], [0.0, s, origin[1]]])
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return crop, center, float(side)


@dataclass
class CategoryData:
    """Crops and targets of objects of one category, as tensors (K keypoints, N objects).

    Attributes:
        images: of shape ``(N, 3, S, S)``, ImageNet-normalised.
        kp2d: of shape ``(N, K, 2)``: keypoints in normalised crop coordinates (x right, y down).
        visible: of shape ``(N, K)``: annotated visible, inside the crop and defined on the object's CAD model.
        depth: of shape ``(N, K)``: ``(R X)_z`` in the crop's units (weak perspective scale).
        depth_valid: of shape ``(N, K)``: the depth is known (false for all of an object whose
            annotation has no distance and too few keypoints to fit the scale).
        canon: of shape ``(N, K, 3)``: CAD keypoints of the object's CAD model (0 where missing).
        canon_valid: of shape ``(N, K)``: the CAD model has that keypoint.
        rotation: of shape ``(N, 3, 3)``: the annotated rotation.
    """

    cls: str
    names: list[str]
    images: torch.Tensor
    kp2d: torch.Tensor
    visible: torch.Tensor
    depth: torch.Tensor
    depth_valid: torch.Tensor
    canon: torch.Tensor
    canon_valid: torch.Tensor
    rotation: torch.Tensor
    raw_crops: np.ndarray  # (N, S, S, 3) uint8 BGR, for figures

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_keypoints(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """The tensors of the objects at ``index`` (a dict of tensors with leading dim len(index))."""
        idx = torch.from_numpy(np.array(index, dtype=np.int64))
        return {k: getattr(self, k)[idx] for k in ("images", "kp2d", "visible", "depth", "depth_valid", "canon", "canon_valid", "rotation")}

    @classmethod
    def build(cls, dataset: ObjectNet3D, category: str, items: Sequence[ObjectItem], size: int) -> CategoryData:
        """Crop every object of ``items`` (all of class ``category``) and compute its targets."""
        names = dataset.keypoint_names(category)
        cads = dataset.cad(category)
        k = len(names)
        n = len(items)
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
        kp2d = np.zeros((n, k, 2), dtype=np.float32)
        visible = np.zeros((n, k), dtype=bool)
        depth = np.zeros((n, k), dtype=np.float32)
        depth_valid = np.zeros((n, k), dtype=bool)
        canon = np.zeros((n, k, 3), dtype=np.float32)
        valid = np.zeros((n, k), dtype=bool)
        rots = np.zeros((n, 3, 3), dtype=np.float32)
        cache: dict[Path, np.ndarray] = {}
        for i, it in enumerate(items):
            a = it.ann
            if it.image_path not in cache:
                # Pixels as stored: the annotation tools (MATLAB's imread) ignore EXIF orientation.
                img = cv2.imread(str(it.image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if img is None:
                    raise ValueError(f"{it.image_path}: unreadable image (named by {it.record_path})")
                cache = {it.image_path: img}
            images[i], center, side = crop_object(cache[it.image_path], a.bbox, size)
            vp = a.viewpoint
            rot = viewpoint_to_rotation(vp.azimuth, vp.elevation, vp.theta)
            rots[i] = rot
            cad = cads[a.cad_index - 1]
            pts = np.array([cad.keypoints[cad.names.index(nm)] if nm in cad.names else [np.nan] * 3 for nm in names])
            valid[i] = np.isfinite(pts).all(1)
            canon[i] = np.nan_to_num(pts)
            for j, nm in enumerate(names):
                if nm in a.anchors and a.anchors[nm][1] == VISIBLE:
                    q = (a.anchors[nm][0] - center) / side
                    if np.all(np.abs(q) < 0.5):
                        kp2d[i, j], visible[i, j] = q, True
            rotated = np.nan_to_num(pts) @ rot.T
            scale = _pixel_scale(vp, rotated, kp2d[i], visible[i] & valid[i], side)
            if scale is not None:
                depth[i], depth_valid[i] = rotated[:, 2] * scale, True
        norm = (images[..., ::-1].astype(np.float32) / 255.0 - _MEAN) / _STD
        return cls(
            category, list(names), torch.from_numpy(np.ascontiguousarray(norm.transpose(0, 3, 1, 2))),
            torch.from_numpy(kp2d), torch.from_numpy(visible & valid), torch.from_numpy(depth), torch.from_numpy(depth_valid),
            torch.from_numpy(canon), torch.from_numpy(valid), torch.from_numpy(rots), images,
        )


def _pixel_scale(vp, rotated: np.ndarray, kp2d: np.ndarray, mask: np.ndarray, side: float) -> float | None:
    """Crop units per CAD unit at the object: ``M f / d / side``; fitted to the 2D keypoints when
    d = 0; ``None`` (unknown) when d = 0 and fewer than two keypoints can be used."""
    if vp.distance > 0:
        return vp.viewport * vp.focal / vp.distance / side
    if mask.sum() < 2:
        return None
    # Coarse annotations carry no distance: least-squares scale between centred 2D and (x, -y).
    a = rotated[mask][:, :2] * [1.0, -1.0]
    b = kp2d[mask]
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a * b).sum() / max((a * a).sum(), 1e-12))


@dataclass
class CategorySplit:
    """Which categories meta-train, validate and test (written to a run's ``split.json``)."""

    train: list[str]
    val: list[str]
    test: list[str]
    excluded: dict[str, str]

    def as_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "test": self.test, "excluded": self.excluded}


def make_split(
    base: ObjectNet3D, novel_set: ObjectNet3D, novel: Sequence[str], n_val: int, shots: int, seed: int,
) -> CategorySplit:
    """Split categories: ``novel`` ones test; of the others, ``n_val`` (seeded) validate, the rest train.

    Base categories with fewer than ``shots + 1`` training-usable objects are excluded (and
    listed, with the reason, in ``excluded``). A novel category with fewer than ``shots + 1``
    test-usable objects is an error: the few-shot protocol cannot run on it.

    Raises:
        ValueError: no novel category, one absent from the data, or one with too few usable objects.
    """
    novel = list(novel)
    if not novel:
        raise ValueError("no novel (test) category given: name at least one with --novel-categories")
    excluded: dict[str, str] = {}
    for c in novel:
        if c not in novel_set.categories:
            raise ValueError(f"novel category {c!r} has no object in the test image sets of {novel_set.root}")
        n = len(novel_set.usable(c, "test"))
        if n < shots + 1:
            raise ValueError(
                f"novel category {c!r} has {n} usable test object(s) in {novel_set.root} (non-truncated, "
                f"non-occluded, with keypoints); {shots}-shot evaluation needs at least {shots + 1}; "
                f"leave it out with --novel-categories or lower --shots"
            )
    candidates = []
    for c in base.categories:
        if c in novel:
            continue
        n = len(base.usable(c, "train"))
        if n < shots + 1:
            excluded[c] = f"{n} usable training object(s), fewer than shots + 1 = {shots + 1}"
        else:
            candidates.append(c)
    if len(candidates) < n_val + 1:
        raise ValueError(f"{len(candidates)} usable base categories: too few for {n_val} validation categories and training")
    rng = np.random.default_rng(seed)
    val = sorted(rng.choice(candidates, size=n_val, replace=False).tolist()) if n_val else []
    return CategorySplit([c for c in candidates if c not in val], val, novel, excluded)
