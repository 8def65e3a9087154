"""A tiny meta-learned tracker for the tests of track-train / track-eval plumbing (not a real tracker).

Crops of 8x8 pixels around jittered boxes, a 2-layer MLP that scores them (target or not), the
head adapted by one MetaSGD step. Registered once per process as ``toy`` in both registries.
Load it with ``load_toy()`` from a test module (pytest's importlib mode has no package imports).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from dropgrad import Task
from dropgrad_tracking.meta import BACKBONE_RANDOM, MetaTrackerDef, available_meta_trackers, register_meta
from dropgrad_tracking.trackers import Tracker, as_array
from torch import nn

NAME = "toy"
SIZE = 8
N_POS = N_NEG = 4


def _visible(box) -> bool:
    return bool(np.isfinite(box).all() and box[2] > 0 and box[3] > 0)


def crops(image: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """(n, 3, SIZE, SIZE) float crops of ``boxes`` (clipped to the frame)."""
    h, w = image.shape[:2]
    out = []
    for x, y, bw, bh in boxes:
        x0, y0 = int(np.clip(round(x), 0, w - 2)), int(np.clip(round(y), 0, h - 2))
        x1, y1 = int(np.clip(round(x + bw), x0 + 1, w)), int(np.clip(round(y + bh), y0 + 1, h))
        patch = cv2.resize(image[y0:y1, x0:x1], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(patch).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


def samples(box: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """N_POS boxes shifted by < 10% of the size (label 1), N_NEG shifted by 1-2 sizes (label 0)."""
    wh = box[2:]
    pos = box + np.concatenate([rng.uniform(-0.1, 0.1, (N_POS, 2)) * wh, np.zeros((N_POS, 2))], axis=1)
    sign = rng.choice([-1.0, 1.0], size=(N_NEG, 2))
    neg = box + np.concatenate([sign * rng.uniform(1.0, 2.0, (N_NEG, 2)) * wh, np.zeros((N_NEG, 2))], axis=1)
    return np.concatenate([pos, neg]), np.array([1] * N_POS + [0] * N_NEG)


class ToyDef(MetaTrackerDef):
    name = NAME
    inner_lr = 0.1
    adapt = ("3.*",)
    default_horizon = 3

    def build_model(self, backbone_weights: Path | None):
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 16), nn.ReLU(), nn.Linear(16, 2))
        if backbone_weights is None:
            return model, BACKBONE_RANDOM
        state = torch.load(backbone_weights, weights_only=True)
        model[1].load_state_dict(state)
        return model, Path(backbone_weights).name

    def loss_fn(self, output, target):
        return F.cross_entropy(output, target)

    def sample_task(self, model, sequence, t, horizon, rng):
        boxes, labels = samples(sequence.boxes[t], rng)
        sx, sy = crops(sequence.image(t), boxes), torch.from_numpy(labels)
        later = [k for k in range(t + 1, min(t + horizon, len(sequence) - 1) + 1) if _visible(sequence.boxes[k])]
        k = later[int(rng.integers(len(later)))]
        boxes, labels = samples(sequence.boxes[k], rng)
        return Task(sx, sy, crops(sequence.image(k), boxes), torch.from_numpy(labels))

    def make_tracker(self, learner, metadata, seed):
        return ToyTracker(learner, metadata, seed)


class ToyTracker(Tracker):
    """Adapts on the first frame, then picks the best-scored of 32 boxes around the last one."""

    def __init__(self, learner, metadata, seed):
        super().__init__(NAME, is_deterministic=True, metadata=metadata)
        self.learner, self.seed = learner, seed
        self.device = next(learner.parameters()).device

    def init(self, image, box):
        self.rng = np.random.default_rng(self.seed)
        self.box = np.asarray(box, dtype=np.float64)
        boxes, labels = samples(self.box, self.rng)
        x = crops(as_array(image), boxes).to(self.device)
        self.params = self.learner.adapt(x, torch.from_numpy(labels).to(self.device))[-1]

    def update(self, image):
        wh = self.box[2:]
        shifts = np.concatenate([self.rng.normal(0, 0.3, (32, 2)) * wh, np.zeros((32, 2))], axis=1)
        shifts[0] = 0
        candidates = self.box + shifts
        with torch.no_grad():
            scores = self.learner(crops(as_array(image), candidates).to(self.device), self.params)
        self.box = candidates[int((scores[:, 1] - scores[:, 0]).argmax())]
        return self.box.copy()


if NAME not in available_meta_trackers():
    register_meta(ToyDef(), "test-only toy meta-learned tracker")
