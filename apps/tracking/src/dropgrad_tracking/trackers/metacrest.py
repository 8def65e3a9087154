"""MetaCREST: CREST's correlation-filter head on VGG-16 conv4_3, meta-learned with MetaSGD.

Meta-Tracker's CREST variant (Park & Berg, ECCV 2018; DropGrad paper Sec. 4.3). The network
(:class:`MetaCRESTNet`) is

- a frozen backbone: VGG-16 conv1_1 .. conv4_3 + ReLU (stride 8, 512 channels), its output
  centred per channel and divided by its root mean square per patch, so the head sees features
  of a fixed scale whatever the weights (pretrained or random);
- the learned head (:class:`CorrelationHead`): a 1x1 convolution 512 -> 64 (CREST reduces
  channels with PCA; here it is learned), bilinear interpolation to stride 4 (CREST's cell size),
  and the correlation filter: one single-output convolution whose kernel covers the target
  (``kernel_size`` cells, odd), giving a response map of shape ``(N, 1, n, n)``.

Everything is square and scale-normalised so shapes are fixed: a search patch covers
``context * sqrt(w * h)`` image pixels around the target centre, resized to ``patch_size``
pixels; the target then spans about ``patch_size / context`` pixels, i.e.
``patch_size / (4 * context)`` cells. The regression target is CREST's Gaussian label (peak 1,
sigma = ``sigma_factor`` x the target's width/height in cells) and the loss is the mean squared
error. MetaSGD (``steps=1``) meta-learns the head's initialisation and one step size per element;
``learner.model(features)`` runs the head only, on backbone features from :meth:`MetaCRESTNet.extract`.

Tracking (:class:`MetaCRESTTracker`): one meta-learned step on the first frame's patch (the
learner is in eval mode, so DropGrad is off), then per frame the patches at the scales
``{0.95, 1, 1.05}`` of the current size in ONE batched forward, a Hann window on the responses,
one argmax (the only device -> host transfer of the frame), and every ``update_interval``
frames ``update_steps`` steps with the meta-learned step sizes on the first frame's and the
recent frames' cached features (never re-running the backbone on them).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dropgrad import MetaSGD, Task, sgd_step
from torch import Tensor, nn

from ..data.sequence import Sequence
from ..meta import BACKBONE_RANDOM, MetaTrackerDef, register_meta
from ..models.vgg16 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STRIDE,
    VGG16Conv4,
    build_vgg16_conv4,
)
from .base import Tracker, as_array, first_box
from .correlation import (
    crop_patches,
    gaussian_labels,
    hann_window,
    image_to_cells,
    peak_displacement,
    windowed_peak,
)

__all__ = [
    "CELL",
    "DEFINITION",
    "CorrelationHead",
    "MetaCRESTConfig",
    "MetaCRESTDef",
    "MetaCRESTNet",
    "MetaCRESTTracker",
]

CELL = 4
"""Stride of the response grid in patch pixels (CREST's cell size)."""


@dataclass(frozen=True)
class MetaCRESTConfig:
    """MetaCREST's geometry and online schedule (defaults: the tracker; tests shrink ``patch_size``).

    Attributes:
        patch_size: search patch side in pixels, a multiple of 8 (224: conv4_3 is 28x28, the
            response 55x55 cells).
        context: the patch covers ``context * sqrt(w * h)`` image pixels.
        reduced_channels: output channels of the 1x1 reduction (CREST: 64 PCA components).
        sigma_factor: Gaussian label sigma per axis = this x target width/height in cells (CREST: 0.1).
        scales: scale factors searched per frame (one batched forward).
        scale_penalty: the responses of the non-unit scales are multiplied by this.
        scale_damping: the size moves this share of the way to the winning scale.
        update_interval: online update every this many frames (0: never).
        update_steps: gradient steps per online update, with the meta-learned step sizes.
        memory: recent frames whose features are kept for the updates (plus the first frame).
        inner_lr: initial per-element step size of the meta-learned head.
    """

    patch_size: int = 224
    context: float = 4.0
    reduced_channels: int = 64
    sigma_factor: float = 0.1
    scales: tuple[float, ...] = (0.95, 1.0, 1.05)
    scale_penalty: float = 0.99
    scale_damping: float = 0.6
    update_interval: int = 10
    update_steps: int = 2
    memory: int = 10
    inner_lr: float = 0.5

    def __post_init__(self) -> None:
        if self.patch_size < 32 or self.patch_size % STRIDE:
            raise ValueError(f"MetaCREST: patch_size must be a multiple of {STRIDE} and >= 32, got {self.patch_size}")
        if not self.context > 1.0:
            raise ValueError(f"MetaCREST: context must be > 1 (the patch must hold the target), got {self.context}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"MetaCREST: scales must be positive factors, got {self.scales}")
        if self.update_steps < 0 or self.update_interval < 0 or self.memory < 0:
            raise ValueError("MetaCREST: update_steps, update_interval and memory must be >= 0")

    @property
    def feature_size(self) -> int:
        """Side of the conv4_3 map (stride 8)."""
        return self.patch_size // STRIDE

    @property
    def response_size(self) -> int:
        """Side of the response map at stride 4: ``2 * feature_size - 1`` cells (odd)."""
        return 2 * self.feature_size - 1

    @property
    def target_cells(self) -> float:
        """The target's side in response cells (scale-normalised)."""
        return self.patch_size / self.context / CELL

    @property
    def kernel_size(self) -> int:
        """The correlation filter's side: the target's size in cells, made odd."""
        return 2 * int(self.target_cells // 2) + 1

    @property
    def cell_offset(self) -> float:
        """Patch point of cell 0's centre: conv4_3 cell 0 is centred on patch pixel 4 (``[0, 8)``)."""
        return STRIDE / 2


class CorrelationHead(nn.Module):
    """The learned head: 1x1 reduction, interpolation to stride 4, correlation-filter convolution.

    ``forward(x)``: features of shape ``(N, C, m, m)`` (stride 8) -> responses ``(N, 1, 2m-1, 2m-1)``.
    The ``2m - 1`` cells with ``align_corners=True`` put a cell between every two conv4_3 cells,
    i.e. exactly stride 4, and a cell on the patch centre.

    >>> head = CorrelationHead(512, 64, 5)
    >>> head(torch.zeros(2, 512, 8, 8)).shape
    torch.Size([2, 1, 15, 15])
    """

    def __init__(self, in_channels: int, reduced_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CorrelationHead: kernel_size must be odd, got {kernel_size}")
        self.reduce = nn.Conv2d(in_channels, reduced_channels, kernel_size=1)
        self.filter = nn.Conv2d(reduced_channels, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        # The response is the filter's correlation times 1/sqrt(c * k * k): with unit-RMS features
        # the curvature of the loss in the filter is then O(1) whatever the patch and filter
        # sizes, so one inner step size (and Adam's outer steps) suit every geometry. Unscaled,
        # the k*k*c coherent terms made a step of 0.01 diverge (measured: loss 0.02 -> 860).
        self.scale = 1.0 / math.sqrt(reduced_channels * kernel_size * kernel_size)
        # Unit-variance reduced features for unit-RMS inputs; a zero filter, so the untrained
        # one-step adaptation is exactly a matched filter (the label-weighted target features).
        nn.init.normal_(self.reduce.weight, std=1.0 / math.sqrt(in_channels))
        nn.init.zeros_(self.reduce.bias)
        nn.init.zeros_(self.filter.weight)
        nn.init.zeros_(self.filter.bias)

    def correlate(self, z: Tensor) -> Tensor:
        """The correlation filter on reduced stride-4 features ``(N, c, n, n)`` -> ``(N, 1, n, n)``."""
        k = self.filter.kernel_size[0]
        return F.conv2d(z, self.filter.weight, padding=k // 2) * self.scale + self.filter.bias.view(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        # 1x1 conv and bilinear interpolation commute (the weights sum to one): reduce first, 8x fewer channels.
        z = self.reduce(x)
        z = F.interpolate(z, size=(2 * z.shape[-2] - 1, 2 * z.shape[-1] - 1), mode="bilinear", align_corners=True)
        return self.correlate(z)


class MetaCRESTNet(nn.Module):
    """Frozen VGG-16 conv4_3 backbone + :class:`CorrelationHead`.

    :meth:`extract` runs the backbone on patches ``(N, 3, P, P)`` (ImageNet-normalised) and
    returns RMS-normalised features ``(N, 512, P/8, P/8)``; :meth:`forward` runs the head on
    them: ``(N, 512, P/8, P/8) -> (N, 1, P/4 - 1, P/4 - 1)``. The learner adapts ``head.*``.

    >>> net = MetaCRESTNet(VGG16Conv4(), MetaCRESTConfig(patch_size=64))
    >>> feats = net.extract(torch.zeros(1, 3, 64, 64))
    >>> feats.shape, net(feats).shape
    (torch.Size([1, 512, 8, 8]), torch.Size([1, 1, 15, 15]))
    """

    def __init__(self, backbone: VGG16Conv4, config: MetaCRESTConfig) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.head = CorrelationHead(backbone.out_channels, config.reduced_channels, config.kernel_size)

    def train(self, mode: bool = True) -> MetaCRESTNet:
        super().train(mode)
        self.backbone.eval()  # frozen: never in train mode
        return self

    @torch.no_grad()
    def extract(self, patches: Tensor) -> Tensor:
        feats = self.backbone(patches)
        # ReLU features are all positive: without centring, a matched filter mostly measures
        # their mean and responds everywhere (CREST's PCA centres them too).
        feats = feats - feats.mean(dim=(2, 3), keepdim=True)
        rms = feats.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        return feats / (rms + 1e-6)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)


def _valid(boxes: np.ndarray) -> np.ndarray:
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def _normalise_frame(image: np.ndarray, device: torch.device) -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 ImageNet-normalised, on ``device`` (uploaded once)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
    x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class MetaCRESTDef(MetaTrackerDef):
    """The MetaCREST definition for ``track-train`` / ``track-eval`` (registered as ``metacrest``).

    A task: support = the patch of frame ``t`` centred on its box, with its centred Gaussian
    label; query = ``horizon`` patches of frames ``t+1 .. t+horizon`` centred on the PREVIOUS
    frame's box (sized from it, as when tracking), labelled with the Gaussian at the true box.
    Frames without a visible target are skipped; the visible ones are repeated in order to fill
    ``horizon`` (fixed shapes). Inputs are backbone features (float32, CPU):

    - ``support_x`` ``(1, 512, m, m)``, ``support_y`` ``(1, 1, n, n)``;
    - ``query_x`` ``(horizon, 512, m, m)``, ``query_y`` ``(horizon, 1, n, n)``;

    with ``m = patch_size / 8`` and ``n = 2m - 1``.

    >>> d = MetaCRESTDef(MetaCRESTConfig(patch_size=64))
    >>> model, source = d.build_model(None)
    >>> d.name, source, tuple(model.head.filter.weight.shape)
    ('metacrest', 'random-init', (1, 64, 5, 5))
    """

    name = "metacrest"
    adapt = ("head.*",)
    default_horizon = 10

    def __init__(self, config: MetaCRESTConfig | None = None) -> None:
        self.config = config or MetaCRESTConfig()
        self.inner_lr = self.config.inner_lr

    def build_model(self, backbone_weights: Path | None) -> tuple[nn.Module, str]:
        backbone, source = build_vgg16_conv4(backbone_weights)
        return MetaCRESTNet(backbone, self.config), source

    def loss_fn(self, output: Tensor, target: Tensor) -> Tensor:
        """CREST's regression loss: mean squared error of response ``(N, 1, n, n)`` and label."""
        return F.mse_loss(output, target)

    # ------------------------------------------------------------------ tasks
    def patch_geometry(self, box: np.ndarray) -> tuple[np.ndarray, float]:
        """Search patch centre ``(cx, cy)`` and image side for a box ``(x, y, w, h)``."""
        x, y, w, h = (float(v) for v in box)
        return np.array([x + w / 2, y + h / 2]), self.config.context * math.sqrt(w * h)

    def labels_for(self, boxes: np.ndarray, centres: np.ndarray, sides: np.ndarray) -> Tensor:
        """Gaussian labels ``(b, 1, n, n)`` of target ``boxes`` ``(b, 4)`` in patches ``(centres, sides)``."""
        cfg = self.config
        b = torch.as_tensor(boxes, dtype=torch.float64)
        c = torch.as_tensor(centres, dtype=torch.float64)
        s = torch.as_tensor(sides, dtype=torch.float64)
        target = b[:, :2] + b[:, 2:] / 2
        cells = image_to_cells(target, c, s, cfg.patch_size, CELL, cfg.cell_offset)
        size_cells = b[:, 2:] * (cfg.patch_size / s.view(-1, 1)) / CELL
        sigma = (cfg.sigma_factor * size_cells).clamp(min=0.25)
        return gaussian_labels(cells, sigma, cfg.response_size).float()

    def sample_task(
        self, model: nn.Module, sequence: Sequence, t: int, horizon: int, rng: np.random.Generator
    ) -> Task:
        cfg = self.config
        boxes = sequence.boxes
        valid = _valid(boxes)
        if not 0 <= t < len(boxes) or not valid[t]:
            raise ValueError(f"{sequence.name}: frame {t + 1} has no visible target; it cannot be a support frame")
        later = [j for j in range(t + 1, min(t + horizon, len(boxes) - 1) + 1) if valid[j]]
        if not later:
            raise ValueError(f"{sequence.name}: no visible target in frames {t + 2}..{t + horizon + 1} after support frame {t + 1}")
        query = [later[i % len(later)] for i in range(horizon)]
        # Each query patch is placed where a tracker would look: at the last visible box before it.
        previous = []
        for j in query:
            k = j - 1
            while not valid[k]:
                k -= 1
            previous.append(k)
        frames = [t] + query
        geometry = [self.patch_geometry(boxes[k]) for k in [t] + previous]
        centres = np.stack([g[0] for g in geometry])
        sides = np.array([g[1] for g in geometry])
        device = next(model.parameters()).device
        patches = []
        for i, j in enumerate(frames):
            image = _normalise_frame(sequence.image(j), device)
            patches.append(
                crop_patches(image, torch.as_tensor(centres[i : i + 1]).float(), torch.tensor([sides[i]]), cfg.patch_size)
            )
        with torch.no_grad():
            feats = model.extract(torch.cat(patches)).float()  # stays on the model's device, as the patches
        labels = self.labels_for(boxes[frames], centres, sides).to(device)
        return Task(feats[:1], labels[:1], feats[1:], labels[1:])

    def make_tracker(self, learner: MetaSGD, metadata: dict[str, Any], seed: int) -> Tracker:
        return MetaCRESTTracker(learner, self.config, metadata=metadata, seed=seed)


class MetaCRESTTracker(Tracker):
    """got10k-interface MetaCREST tracker (see the module docstring for the algorithm).

    Args:
        learner: the meta-learned ``MetaSGD`` over a :class:`MetaCRESTNet` (put in eval mode
            here: DropGrad is never applied while tracking).
        config: the geometry and update schedule (must match the learner's kernel size).
        metadata: copied into result files (backbone source, checkpoint, ...).
        seed: recorded; the tracker itself draws no random numbers.

    >>> d = MetaCRESTDef(MetaCRESTConfig(patch_size=64))
    >>> from dropgrad_tracking.meta import build_learner
    >>> learner, source = build_learner(d, None)
    >>> tracker = d.make_tracker(learner.eval(), {"backbone": source}, seed=0)
    >>> frame = np.zeros((48, 64, 3), np.uint8)
    >>> tracker.init(frame, [20, 10, 12, 16])
    >>> tracker.update(frame).shape
    (4,)
    """

    def __init__(self, learner: MetaSGD, config: MetaCRESTConfig, metadata: dict[str, Any] | None = None, seed: int = 0) -> None:
        meta = {"backbone": BACKBONE_RANDOM, **(metadata or {})}
        meta.update(dropgrad_while_tracking="off", metacrest=asdict(config))
        super().__init__(name="metacrest", is_deterministic=True, metadata=meta)
        model = learner.model
        if not isinstance(model, MetaCRESTNet):
            raise TypeError(f"MetaCRESTTracker needs a learner over MetaCRESTNet, got {type(model).__name__}")
        if model.head.filter.kernel_size[0] != config.kernel_size:
            raise ValueError(
                f"MetaCREST: the learner's filter is {model.head.filter.kernel_size[0]} cells wide but the "
                f"config gives {config.kernel_size}; build both from the same MetaCRESTConfig"
            )
        self.learner = learner.eval()
        self.config = config
        self.seed = seed
        self.device = next(learner.parameters()).device
        n = config.response_size
        self._window = hann_window(n, self.device)
        penalty = torch.tensor([1.0 if s == 1.0 else config.scale_penalty for s in config.scales], device=self.device)
        self._penalty = penalty
        self._definition = MetaCRESTDef(config)
        self.params: dict[str, Tensor] = {}

    # --------------------------------------------------------------- helpers
    def _features(self, image: np.ndarray, centre: np.ndarray, sides: np.ndarray) -> Tensor:
        frame = _normalise_frame(image, self.device)
        k = len(sides)
        centres = torch.as_tensor(np.repeat(centre[None], k, axis=0), dtype=torch.float32)
        patches = crop_patches(frame, centres, torch.as_tensor(sides, dtype=torch.float32), self.config.patch_size)
        return self.learner.model.extract(patches)

    def _labels(self, box: np.ndarray, centre: np.ndarray, side: float) -> Tensor:
        return self._definition.labels_for(box[None], centre[None], np.array([side])).to(self.device)

    def _train(self, feats: Tensor, labels: Tensor, steps: int) -> None:
        """``steps`` plain steps ``theta - alpha * grad`` with the meta-learned alpha (no DropGrad)."""
        lrs = {k: v.detach() for k, v in self.learner.step_size(0).items()}
        params = self.params
        for _ in range(steps):
            params = {k: v.detach().requires_grad_() for k, v in params.items()}
            with torch.enable_grad():
                loss = self.learner.loss_fn(self.learner.functional_forward(params, feats), labels)
                grads = torch.autograd.grad(loss, list(params.values()))
            params = sgd_step(params, dict(zip(params, grads)), lrs)
        self.params = {k: v.detach() for k, v in params.items()}

    # ------------------------------------------------------------- interface
    def init(self, image: Any, box: Any) -> None:
        frame = as_array(image)
        box = first_box(box, "MetaCRESTTracker.init")
        self.learner.eval()
        self._box = box.copy()
        self._image_size = np.array(frame.shape[1::-1], dtype=np.float64)  # (W, H)
        centre, side = self._definition.patch_geometry(box)
        feats = self._features(frame, centre, np.array([side]))
        labels = self._labels(box, centre, side)
        # The meta-learned first-frame step: MetaSGD in eval mode -> DropGrad off, no graph kept.
        self.params = {k: v.detach() for k, v in self.learner.adapt(feats, labels)[-1].items()}
        self._first = (feats, labels)
        self._recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=self.config.memory)
        self._frame = 0

    def update(self, image: Any) -> np.ndarray:
        cfg = self.config
        frame = as_array(image)
        self._frame += 1
        centre, side = self._definition.patch_geometry(self._box)
        sides = side * np.asarray(cfg.scales, dtype=np.float64)
        feats = self._features(frame, centre, sides)
        with torch.no_grad():
            response = self.learner.functional_forward(self.params, feats)[:, 0]  # (k, n, n)
            index = int(windowed_peak(response, self._window, self._penalty))  # the frame's one device -> host sync
        m, dx, dy = peak_displacement(index, cfg.response_size, CELL, sides.tolist(), cfg.patch_size)
        new_centre = centre + np.array([dx, dy])
        factor = 1.0 + cfg.scale_damping * (cfg.scales[m] - 1.0)
        size = self._box[2:] * factor
        size = np.clip(size, 4.0, self._image_size)
        new_centre = np.clip(new_centre, 0.0, self._image_size)
        self._box = np.concatenate([new_centre - size / 2, size])
        if cfg.update_interval and cfg.update_steps:
            # The winning patch, labelled at the new estimate: cached for updates, no new backbone pass.
            self._recent.append((feats[m : m + 1], self._labels(self._box, centre, float(sides[m]))))
            if self._frame % cfg.update_interval == 0:
                stored = [self._first, *self._recent]
                self._train(torch.cat([f for f, _ in stored]), torch.cat([y for _, y in stored]), cfg.update_steps)
        return self._box.copy()


DEFINITION = register_meta(
    MetaCRESTDef(), "MetaCREST: VGG-16 conv4_3 + meta-learned correlation-filter head (Meta-Tracker)"
)
