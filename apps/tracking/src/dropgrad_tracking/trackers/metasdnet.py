"""MetaSDNet: Meta-Tracker's meta-learned MDNet (Park & Berg, ECCV 2018), with DropGrad.

The network is MDNet's (:class:`~dropgrad_tracking.models.vggm.VGGM`: VGG-M conv1-3 on 107x107
crops, fc4-fc6, two scores). Meta-Tracker replaces MDNet's first-frame training (tens of SGD
iterations) by ONE step with meta-learned initial parameters theta and per-element step sizes
alpha, i.e. core's ``MetaSGD(steps=1)``; DropGrad (the paper: Gaussian, p = 0.2) perturbs that
step's gradient during meta-training only. After the first frame it tracks as MDNet does.

What is adapted (the definition's ``adapt``): Meta-Tracker's released tracker meta-learns and
adapts ALL layers, conv1-3 and fc4-6, in the first-frame step (its meta-training first learns the
fc layers alone, then all); the later online updates train only fc4-6 on cached conv features.
``metasdnet`` does the same (``adapt_conv=True``). With ``adapt_conv=False`` only fc4-6 are
adapted, and training tasks then carry conv3 features (computed with the frozen conv layers
when the task is cut) instead of crops: far cheaper meta-training, used by ``metasdnet-tiny``.

Loss: cross-entropy of the two fc6 scores against labels ``y`` in {0 background, 1 target}
(MDNet's binary softmax loss, averaged over the samples).

Training task (:meth:`MetaSDNetDef.sample_task`, Meta-Tracker's sampling): support = 32 positive
(IoU >= 0.7) and 96 negative (IoU <= 0.5) boxes around the target in frame ``t``; query = as many
in ``query_frames`` random frames of ``t+1 .. t+horizon`` whose target is visible.

Tracking (:class:`MetaSDNetTracker`, MDNet's and Meta-Tracker's settings):

- first frame: the one meta-learned step on 32 positives and 96 negatives (the learner in eval
  mode, so DropGrad is off); a box regressor fitted on 1000 boxes' conv3 features;
- each frame: 256 Gaussian candidates (translation 0.6 x mean side, scale 1.05 ** N), all cropped
  with one ``grid_sample`` and scored in one batched pass; the target is the mean of the top 5;
  success if their mean score > 0 (else the search widens to translation 1.5 and box
  regression is skipped); box regression on the top 5's (already computed) features;
- on success: 50 positives and 200 negatives around the target, their conv3 features cached
  (positives of the last 100 successful frames, negatives of the last 20);
- updates of fc4-6 only, on cached features: long-term every 10 frames (all cached samples),
  short-term on failure (the last 20 frames); 15 SGD iterations (lr 1e-4 on MDNet's summed loss,
  fc6 x10, momentum 0.9, weight decay 5e-4, gradient norm clip 100), each with hard negative
  mining (the 96 highest-scoring of 1024 negatives).

Everything runs on the learner's device; per frame the only host sync is reading the top-5
scores and indices.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dropgrad import MetaSGD, Task
from torch import Tensor, nn

from ..data.sequence import Sequence
from ..evaluation.iou import is_empty_box
from ..meta import BACKBONE_RANDOM, MetaTrackerDef, register_meta
from ..models.matconvnet import load_vggm_mat
from ..models.vggm import CROP_SIZE, VGGM, build_vggm
from .base import Tracker, as_array, first_box
from .bbreg import BBoxRegressor
from .sampling import (
    SampleGenerator,
    clamp_box,
    crop_regions,
    draw_samples,
    frame_tensor,
    inside_frame,
)

__all__ = [
    "METASDNET",
    "METASDNET_TINY",
    "MetaSDNetDef",
    "MetaSDNetOptions",
    "MetaSDNetTracker",
    "register_metasdnet",
]

PADDING = 16.0  # context around each box, in pixels of the 107x107 crop (MDNet)
POS_OVERLAP = (0.7, 1.0)
NEG_OVERLAP_INIT = (0.0, 0.5)
NEG_OVERLAP_UPDATE = (0.0, 0.3)


@dataclass
class MetaSDNetOptions:
    """Tracking settings (defaults: MDNet / Meta-Tracker). Tests may shrink the counts.

    Attributes:
        n_candidates: candidate boxes scored per frame.
        top_k: the target is the mean of the ``top_k`` best candidates.
        trans, scale: candidate sampler (translation x mean side, scale base).
        trans_expand: translation after a failure.
        success_threshold: mean top-k score above which a frame counts as tracked.
        n_pos_init, n_neg_init: first-frame support samples (the meta-learned step).
        n_bbreg: boxes the regressor is fitted on (0: no box regression).
        n_pos_update, n_neg_update: samples cached per successful frame.
        n_frames_long, n_frames_short: frames of positives / negatives kept.
        long_interval: frames between long-term updates.
        update_iters: SGD iterations per online update.
        batch_pos, batch_neg, batch_neg_cand: per iteration: positives, hard negatives, and the
            negatives they are mined from.
        lr_update, fc6_lr_mult, momentum, weight_decay, grad_clip: the online SGD.
    """

    n_candidates: int = 256
    top_k: int = 5
    trans: float = 0.6
    scale: float = 1.05
    trans_expand: float = 1.5
    success_threshold: float = 0.0
    n_pos_init: int = 32
    n_neg_init: int = 96
    n_bbreg: int = 1000
    n_pos_update: int = 50
    n_neg_update: int = 200
    n_frames_long: int = 100
    n_frames_short: int = 20
    long_interval: int = 10
    update_iters: int = 15
    batch_pos: int = 32
    batch_neg: int = 96
    batch_neg_cand: int = 1024
    lr_update: float = 1e-4
    fc6_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 100.0

    def __post_init__(self) -> None:
        for name in ("n_candidates", "top_k", "n_pos_init", "n_neg_init", "n_pos_update", "n_neg_update",
                     "n_frames_long", "n_frames_short", "long_interval", "batch_pos", "batch_neg", "batch_neg_cand"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetaSDNetOptions.{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.n_candidates:
            raise ValueError(f"MetaSDNetOptions.top_k ({self.top_k}) exceeds n_candidates ({self.n_candidates})")
        if self.n_bbreg < 0 or self.update_iters < 0:
            raise ValueError("MetaSDNetOptions.n_bbreg and update_iters must be >= 0")


def binary_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of scores ``(N, 2)`` against labels ``(N,)`` in {0, 1}."""
    return F.cross_entropy(scores, labels)


def _adapts_conv(learner: MetaSGD) -> bool:
    return any(n.startswith("conv.") for n in learner.fast_names)


class MetaSDNetTracker(Tracker):
    """The got10k-interface MetaSDNet tracker (see the module docstring for the algorithm).

    Args:
        learner: the meta-learned ``MetaSGD`` over a :class:`VGGM` (from :func:`load_learner`).
            Its first-frame step always runs in eval mode, so it never applies DropGrad (a
            learner in training mode is switched back afterwards).
        metadata: copied into results (must carry ``backbone``; ``random-init`` if absent).
        seed: seed of the tracker's sampling (reset at every ``init``).
        options: tracking settings.
        name: the tracker's name in results.

    >>> from dropgrad_tracking.meta import build_learner
    >>> _ = torch.manual_seed(0)
    >>> learner, source = build_learner(METASDNET_TINY, None)
    >>> small = MetaSDNetOptions(n_candidates=16, n_bbreg=20, n_pos_update=4, n_neg_update=8, update_iters=1)
    >>> tracker = MetaSDNetTracker(learner.eval(), {"backbone": source}, seed=0, options=small)
    >>> frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    >>> tracker.init(frame, [20, 15, 30, 25])
    >>> tracker.update(frame).shape, tracker.metadata["backbone"]
    ((4,), 'random-init')
    """

    def __init__(
        self,
        learner: MetaSGD,
        metadata: dict[str, Any],
        seed: int = 0,
        options: MetaSDNetOptions | None = None,
        name: str = "metasdnet",
    ) -> None:
        self.options = options or MetaSDNetOptions()
        info = {"backbone": BACKBONE_RANDOM, **metadata, "adapted_in_first_frame": list(learner.fast_names),
                "dropgrad_while_tracking": "off", "tracker_options": asdict(self.options), "seed": seed}
        super().__init__(name=name, is_deterministic=True, metadata=info)
        if not isinstance(learner.model, VGGM):
            raise TypeError(f"MetaSDNetTracker needs a learner over a VGGM, got {type(learner.model).__name__}")
        self.learner = learner
        self.seed = seed
        self.device = next(learner.parameters()).device
        self.net: VGGM = copy.deepcopy(learner.model)
        self._rng = np.random.default_rng(seed)
        self._torch_rng: tuple[Tensor, Tensor | None] | None = None  # dropout's stream, see _own_dropout_stream

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _features(self, frame: Tensor, boxes: np.ndarray) -> Tensor:
        return self.net.features(crop_regions(frame, boxes, CROP_SIZE, PADDING))

    def _draw(self, generator: SampleGenerator, box: np.ndarray, n: int, overlap_range=None, scale_range=None):
        return draw_samples(generator, box, n, self._rng, overlap_range, scale_range)

    def adapt_first_frame(self, frame: Tensor, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The meta-learned step on the first frame; loads the adapted weights into ``self.net``.

        Returns the positive and negative boxes of the step's support set.
        """
        o, size = self.options, self._image_size
        pos = self._draw(SampleGenerator("gaussian", size, 0.1, 1.2), box, o.n_pos_init, POS_OVERLAP)
        half = o.n_neg_init // 2
        neg = np.concatenate([
            self._draw(SampleGenerator("uniform", size, 1.0, 2.0, 1.1), box, half, NEG_OVERLAP_INIT),
            self._draw(SampleGenerator("whole", size, 0.0, 1.2, 1.1), box, o.n_neg_init - half, NEG_OVERLAP_INIT),
        ])
        crops = crop_regions(frame, np.concatenate([pos, neg]), CROP_SIZE, PADDING)
        labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).long().to(self.device)
        self.net.load_state_dict(self.learner.model.state_dict())
        # Eval mode for the step (DropGrad and dropout off, so it is deterministic); a learner
        # still being meta-trained (validation by tracking) gets its mode back afterwards.
        was_training = self.learner.training
        self.learner.eval()
        try:
            x = crops
            if not _adapts_conv(self.learner):
                with torch.no_grad():
                    x = self.learner.model.features(crops)
            adapted = self.learner.adapt(x, labels)[-1]
        finally:
            self.learner.train(was_training)
        with torch.no_grad():
            own = dict(self.net.named_parameters())
            for name, value in adapted.items():
                own[name].copy_(value.detach())
        return pos, neg

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.options
        groups = [{"params": [p], "lr": o.lr_update * (o.fc6_lr_mult if n.startswith("fc.fc6") else 1.0)}
                  for n, p in self.net.named_parameters() if n.startswith("fc.")]
        return torch.optim.SGD(groups, lr=o.lr_update, momentum=o.momentum, weight_decay=o.weight_decay)

    # ---------------------------------------------------------------- interface
    def init(self, image: Any, box: Any) -> None:
        image = as_array(image)
        box = first_box(box, f"{self.name}.init")
        o = self.options
        self._rng = np.random.default_rng(self.seed)
        self._torch_rng = None
        self._image_size = (image.shape[1], image.shape[0])
        frame = frame_tensor(image, self.device)
        pos, neg = self.adapt_first_frame(frame, box)
        self.net.eval()
        feats = self._features(frame, np.concatenate([pos, neg]))
        self._pos_memory = [feats[: len(pos)]]
        self._neg_memory = [feats[len(pos):]]
        self._bbreg = None
        if o.n_bbreg > 0:
            boxes = self._draw(SampleGenerator("uniform", self._image_size, 0.3, 1.5, 1.1), box, o.n_bbreg,
                               (0.6, 1.0), (1.0, 2.0))
            self._bbreg = BBoxRegressor(self._image_size).fit(self._features(frame, boxes), boxes, box)
        for p in self.net.conv.parameters():
            p.requires_grad_(False)
        self._optimizer = self._make_optimizer()
        self._candidates = SampleGenerator("gaussian", self._image_size, o.trans, o.scale, valid=True)
        self._positive = SampleGenerator("gaussian", self._image_size, 0.1, 1.2)
        self._negative = SampleGenerator("uniform", self._image_size, 1.5, 1.2)
        self._target = box.copy()
        self._result = box.copy()
        self._frame = 0
        self.last_score = float("nan")

    def update(self, image: Any) -> np.ndarray:
        image = as_array(image)
        o = self.options
        self._frame += 1
        frame = frame_tensor(image, self.device)
        samples = self._candidates(self._target, o.n_candidates, self._rng)
        with torch.no_grad():
            feats = self._features(frame, samples)
            scores = self.net.head_without_dropout(feats)[:, 1]
            top_scores, top_idx = scores.topk(o.top_k)
            # The one host sync of the frame: the next candidates depend on this target.
            top = torch.cat([top_scores, top_idx.float()]).cpu().numpy()
        idx = top[o.top_k:].astype(np.int64)
        score = float(top[: o.top_k].mean())
        self.last_score = score
        success = score > o.success_threshold
        self._candidates.trans = o.trans if success else o.trans_expand
        # As MDNet: the target follows the top 5 even on a failure (holding the old box would turn a
        # tracker whose scores are merely biased negative into the static baseline); a failure
        # only skips box regression and sample collection, and widens the search.
        self._target = samples[idx].mean(axis=0)
        result = self._target
        if success:
            if self._bbreg is not None:
                chosen = feats.index_select(0, torch.as_tensor(idx, device=self.device))
                result = self._bbreg.predict(chosen, samples[idx]).mean(axis=0)
            self._collect(frame)
            if self._frame % o.long_interval == 0:
                self._train(torch.cat(self._pos_memory), torch.cat(self._neg_memory))
        else:
            n = min(o.n_frames_short, len(self._pos_memory))
            self._train(torch.cat(self._pos_memory[-n:]), torch.cat(self._neg_memory[-n:]))
        self._result = clamp_box(result, self._image_size, min_size=1.0)
        return self._result.copy()

    # ------------------------------------------------------------ online update
    def _collect(self, frame: Tensor) -> None:
        o = self.options
        pos = self._draw(self._positive, self._target, o.n_pos_update, POS_OVERLAP)
        neg = self._draw(self._negative, self._target, o.n_neg_update, NEG_OVERLAP_UPDATE)
        feats = self._features(frame, np.concatenate([pos, neg]))
        self._pos_memory.append(feats[: len(pos)])
        self._neg_memory.append(feats[len(pos):])
        del self._pos_memory[: -o.n_frames_long]
        del self._neg_memory[: -o.n_frames_short]

    def _indices(self, n: int, count: int) -> np.ndarray:
        reps = -(-count // n)
        return np.concatenate([self._rng.permutation(n) for _ in range(reps)])[:count]

    def _train(self, pos: Tensor, neg: Tensor) -> None:
        """MDNet's online update of fc4-6 on cached conv features, with hard negative mining."""
        o = self.options
        if o.update_iters == 0:
            return
        n_cand = max(o.batch_neg_cand, o.batch_neg)
        pos_idx = torch.as_tensor(self._indices(len(pos), o.batch_pos * o.update_iters), device=self.device)
        neg_idx = torch.as_tensor(self._indices(len(neg), n_cand * o.update_iters), device=self.device)
        labels = torch.cat([torch.ones(o.batch_pos), torch.zeros(o.batch_neg)]).long().to(self.device)
        params = [p for n, p in self.net.named_parameters() if n.startswith("fc.")]
        self.net.train()  # dropout in the training forward, as MDNet
        with self._own_dropout_stream():
            for it in range(o.update_iters):
                batch_pos = pos.index_select(0, pos_idx[it * o.batch_pos:(it + 1) * o.batch_pos])
                candidates = neg.index_select(0, neg_idx[it * n_cand:(it + 1) * n_cand])
                with torch.no_grad():
                    # mined without dropout (MDNet scores the candidates in eval mode)
                    scores = self.net.head_without_dropout(candidates)[:, 1]
                    hard = scores.topk(min(o.batch_neg, len(candidates))).indices
                batch_neg = candidates.index_select(0, hard)
                scores = self.net.head(torch.cat([batch_pos, batch_neg]))
                # MDNet's loss is summed over the batch; lr_update is on that scale.
                loss = F.cross_entropy(scores, labels[: len(scores)], reduction="sum")
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, o.grad_clip)
                self._optimizer.step()
        self.net.eval()

    @contextlib.contextmanager
    def _own_dropout_stream(self) -> Iterator[None]:
        """Dropout's masks from this tracker's own torch stream, seeded at every ``init``.

        Not the global one: a sequence's boxes must not depend on what the process ran before
        (got10k's experiments do not reseed between sequences). The global state is left as it was.
        """
        cuda = self.device.type == "cuda"
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else None
        with torch.random.fork_rng(devices=[index] if cuda else []):
            if self._torch_rng is None:
                torch.default_generator.manual_seed(self.seed)
                if cuda:
                    torch.cuda.default_generators[index].manual_seed(self.seed)
            else:
                torch.set_rng_state(self._torch_rng[0])
                if cuda:
                    torch.cuda.set_rng_state(self._torch_rng[1], index)
            yield
            self._torch_rng = (torch.get_rng_state(), torch.cuda.get_rng_state(index) if cuda else None)


class MetaSDNetDef(MetaTrackerDef):
    """MetaSDNet's definition for ``track-train`` / ``track-eval``.

    Args:
        name: the ``--tracker`` name.
        tiny: the narrow :func:`build_vggm` model (fast CPU tests; cannot load VGG-M weights).
        adapt_conv: adapt conv1-3 too in the first-frame step (Meta-Tracker); if False only
            fc4-6, and tasks carry conv3 features of shape ``(n, feature_dim)`` instead of crops.
        inner_lr: initial per-element step size alpha (meta-training then learns it). Meta-Tracker
            starts at 1e-4 on a loss summed over 128 samples (1.28e-2 on our mean loss); for the
            full network that step overshoots from a random initialisation (first-frame loss
            0.69 -> 1.16 on Couple), 1e-3 lowers it (0.69 -> 0.59), hence the default 1e-3.
        n_support_pos, n_support_neg: support boxes per task (Meta-Tracker: 32, 96).
        n_query_pos, n_query_neg: query boxes per task (32, 96), split over the query frames.
        query_frames: frames of ``t+1 .. t+horizon`` the query boxes come from (Meta-Tracker: 1).
        dropout: the fc dropout rate (MDNet: 0.5; active only in train mode).
        options: tracking settings of the trackers this definition makes.

    Task shapes: ``support_x`` ``(n_support_pos + n_support_neg, 3, 107, 107)`` float32 crops
    (pixels - 128), or ``(..., feature_dim)`` features when ``adapt_conv=False``;
    ``support_y`` ``(n_support_pos + n_support_neg,)`` int64, positives first; the query likewise.

    >>> d = MetaSDNetDef(name="example", tiny=True, adapt_conv=False, n_support_pos=2, n_support_neg=3,
    ...                  n_query_pos=2, n_query_neg=2)
    >>> model, source = d.build_model(None)
    >>> frames = np.random.default_rng(0).integers(0, 255, (4, 48, 64, 3), dtype=np.uint8)
    >>> seq = Sequence("toy", [], np.array([[10., 10, 20, 16]] * 4))
    >>> seq.image = lambda i: frames[i]
    >>> task = d.sample_task(model, seq, 0, 10, np.random.default_rng(0))
    >>> task.support_x.shape, task.support_y.tolist(), task.query_x.shape, source
    (torch.Size([5, 288]), [1, 1, 0, 0, 0], torch.Size([4, 288]), 'random-init')
    """

    default_horizon = 10

    def __init__(
        self,
        name: str = "metasdnet",
        *,
        tiny: bool = False,
        adapt_conv: bool = True,
        inner_lr: float = 1e-3,
        n_support_pos: int = 32,
        n_support_neg: int = 96,
        n_query_pos: int = 32,
        n_query_neg: int = 96,
        query_frames: int = 1,
        dropout: float = 0.5,
        options: MetaSDNetOptions | None = None,
    ) -> None:
        counts = {"n_support_pos": n_support_pos, "n_support_neg": n_support_neg, "n_query_pos": n_query_pos,
                  "n_query_neg": n_query_neg, "query_frames": query_frames}
        for key, value in counts.items():
            if value < 1:
                raise ValueError(f"MetaSDNetDef: {key} must be >= 1, got {value}")
        self.name = name.lower()
        self.tiny = tiny
        self.adapt_conv = adapt_conv
        self.inner_lr = float(inner_lr)
        self.adapt = ("conv.*", "fc.*") if adapt_conv else ("fc.*",)
        self.n_support_pos, self.n_support_neg = n_support_pos, n_support_neg
        self.n_query_pos, self.n_query_neg = n_query_pos, n_query_neg
        self.query_frames = query_frames
        self.dropout = dropout
        self.options = options or MetaSDNetOptions()

    def build_model(self, backbone_weights: Path | None) -> tuple[nn.Module, str]:
        model = build_vggm(tiny=self.tiny, dropout=self.dropout)
        if backbone_weights is None:
            return model, BACKBONE_RANDOM
        if self.tiny:
            raise ValueError(f"--backbone-weights {backbone_weights}: --tracker {self.name} is the narrow test "
                             "model and cannot load VGG-M weights; use --tracker metasdnet")
        load_vggm_mat(model, backbone_weights)
        return model, Path(backbone_weights).name

    def loss_fn(self, output: Tensor, target: Tensor) -> Tensor:
        return binary_loss(output, target)

    def _boxes(self, image: np.ndarray, box: np.ndarray, n_pos: int, n_neg: int, rng: np.random.Generator):
        size = (image.shape[1], image.shape[0])
        # The part inside the frame, as Meta-Tracker's data provider cuts ground truth: the
        # samplers keep their boxes in the frame, so around a box that runs past the edge no
        # sample could reach the positives' overlap, and the nearest would be labelled positive.
        box = inside_frame(box, size)
        pos = draw_samples(SampleGenerator("gaussian", size, 0.1, 1.2, 1.1, valid=True), box, n_pos, rng, POS_OVERLAP)
        neg = draw_samples(SampleGenerator("uniform", size, 1.0, 1.2, 1.1, valid=True), box, n_neg, rng,
                           NEG_OVERLAP_INIT)
        return pos, neg

    def _inputs(self, model: nn.Module, image: np.ndarray, boxes: np.ndarray) -> Tensor:
        # On the model's device, as the tracker cuts them: on a GPU, cutting hundreds of crops per
        # task on the CPU and copying them over made building a meta-batch cost more than its step.
        crops = crop_regions(frame_tensor(image, _device(model)), boxes, CROP_SIZE, PADDING)
        if self.adapt_conv:
            return crops
        with torch.no_grad():
            return model.features(crops)

    def sample_task(
        self, model: nn.Module, sequence: Sequence, t: int, horizon: int, rng: np.random.Generator
    ) -> Task:
        """Support from frame ``t``, query from ``query_frames`` frames of ``t+1 .. t+horizon``.

        Raises:
            ValueError: ``t`` out of range, its box empty, or no later frame within the horizon
                with a visible target (names the sequence and the frames).
        """
        n = len(sequence)
        if not 0 <= t < n:
            raise ValueError(f"{sequence.name}: task frame t={t} is outside 0..{n - 1}")
        boxes = sequence.boxes
        if is_empty_box(boxes[t:t + 1])[0]:
            raise ValueError(f"{sequence.name}: frame {t + 1} has no visible target; cannot cut a task there")
        last = min(t + max(int(horizon), 1), n - 1)
        later = [j for j in range(t + 1, last + 1) if not is_empty_box(boxes[j:j + 1])[0]]
        if not later:
            raise ValueError(f"{sequence.name}: no frame with a visible target in frames {t + 2}..{last + 1} "
                             f"(the query horizon after frame {t + 1})")
        image = sequence.image(t)
        pos, neg = self._boxes(image, boxes[t], self.n_support_pos, self.n_support_neg, rng)
        support_x = self._inputs(model, image, np.concatenate([pos, neg]))
        device = _device(model)
        support_y = _binary_labels(self.n_support_pos, self.n_support_neg, device)
        chosen = np.sort(rng.choice(later, size=min(self.query_frames, len(later)), replace=False))
        pos_split = np.array_split(np.arange(self.n_query_pos), len(chosen))
        neg_split = np.array_split(np.arange(self.n_query_neg), len(chosen))
        qx_pos, qx_neg = [], []
        for j, ps, ns in zip(chosen, pos_split, neg_split):
            frame = sequence.image(int(j))
            qp, qn = self._boxes(frame, boxes[j], len(ps), len(ns), rng)
            x = self._inputs(model, frame, np.concatenate([qp, qn]))
            qx_pos.append(x[: len(qp)])
            qx_neg.append(x[len(qp):])
        query_x = torch.cat(qx_pos + qx_neg)
        query_y = _binary_labels(self.n_query_pos, self.n_query_neg, device)
        return Task(support_x, support_y, query_x, query_y)

    def make_tracker(self, learner: MetaSGD, metadata: dict[str, Any], seed: int) -> Tracker:
        return MetaSDNetTracker(learner, metadata, seed=seed, options=self.options, name=self.name)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _binary_labels(n_pos: int, n_neg: int, device: torch.device) -> Tensor:
    """``n_pos`` ones then ``n_neg`` zeros, int64, on ``device``."""
    return torch.cat([torch.ones(n_pos, dtype=torch.long, device=device), torch.zeros(n_neg, dtype=torch.long, device=device)])


def register_metasdnet(definition: MetaSDNetDef, help: str | None = None) -> MetaSDNetDef:
    """Register ``definition`` for ``track-train`` (meta trackers) and ``track-eval`` (trackers)."""
    return register_meta(definition, help or f"MetaSDNet variant {definition.name}")


METASDNET = register_metasdnet(
    MetaSDNetDef(),
    "Meta-Tracker's MetaSDNet (VGG-M + fc4-6, one meta-learned first-frame step; --backbone-weights "
    "imagenet-vgg-m.mat, --checkpoint a track-train run)",
)
METASDNET_TINY = register_metasdnet(
    MetaSDNetDef("metasdnet-tiny", tiny=True, adapt_conv=False, inner_lr=1e-2),
    "narrow MetaSDNet for fast CPU tests (fc4-6 adapted, random conv)",
)
