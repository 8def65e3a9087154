"""One-pass evaluation (OPE) as the OTB toolkit defines it.

Per sequence, with the tracker's first box replaced by the ground truth:

- success curve: share of frames with IoU > t for t = 0, 0.05, ..., 1 (21 thresholds, the
  toolkit's ``k / 20`` values exactly, so ties such as IoU = 0.15 fall the same way);
- precision curve: share of frames with centre error <= t pixels, t = 0, 1, ..., 50;

then each curve is averaged over sequences; the success score (AUC) is the mean of the averaged
success curve and the precision score is its value at 20 px. A perfect tracker's AUC is therefore
20/21: no IoU exceeds the threshold 1.

Frames whose ground-truth box is empty (w or h <= 0, or NaN: the target is not visible) are
handled by ``empty_gt``:

- ``"exclude"`` (default): they do not count, in numerator or denominator;
- ``"toolkit"``: exactly what the OTB toolkit's Python port does: a frame counts as invalid when
  any of x, y, w, h is <= 0 (so a box touching the image's left or top edge at 0 too); invalid
  frames stay in the denominator, fail every success threshold and pass every precision threshold;
- ``"keep"``: every frame is scored like any other (got10k's ``ExperimentOTB``).

A tracker's box that is NaN fails that frame (IoU 0, infinite centre error), and one without
a positive size has IoU 0 (its centre still counts), as in got10k; the MATLAB toolkit would
reuse the previous frame's box.

The toolkit also rounds centre errors to 4 decimals; we do not. That can only matter for an
error within 5e-5 above an integer threshold, which integer boxes never produce.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .iou import box_iou, center_error, is_empty_box

__all__ = [
    "PRECISION_THRESHOLDS",
    "SUCCESS_THRESHOLDS",
    "EmptyGT",
    "LengthMismatchError",
    "SequenceScore",
    "Summary",
    "align_lengths",
    "score_sequence",
    "summarize",
    "timing",
]

#: IoU thresholds of the success plot: 0, 0.05, ..., 1 computed as k / 20 like the toolkit.
SUCCESS_THRESHOLDS: np.ndarray = np.arange(21) / 20.0
#: Centre-error thresholds of the precision plot, in pixels.
PRECISION_THRESHOLDS: np.ndarray = np.arange(51, dtype=np.float64)

EmptyGT = Literal["exclude", "toolkit", "keep"]


class LengthMismatchError(ValueError):
    """A results file whose box count differs from the ground truth by more than the tolerance."""


class _CurveScores:
    """The OTB scores read off a success curve (21 thresholds) and a precision curve (0..50 px)."""

    success: np.ndarray
    precision: np.ndarray

    @property
    def success_auc(self) -> float:
        return float(np.mean(self.success))

    @property
    def precision_20(self) -> float:
        return float(self.precision[20])


@dataclass
class SequenceScore(_CurveScores):
    """OPE scores of one tracker on one sequence.

    Attributes:
        success: success curve, shape (21,) for the default thresholds.
        precision: precision curve, shape (51,).
        n_frames: frames compared (ground truth and results aligned).
        n_scored: frames that count (``n_frames`` minus excluded empty-ground-truth frames).
        mean_iou: mean IoU over the frames that count (the toolkit's "average coverage").
        times: per-frame seconds of shape (n_frames,), when the results came with times.
    """

    name: str
    success: np.ndarray
    precision: np.ndarray
    n_frames: int
    n_scored: int
    mean_iou: float
    times: np.ndarray | None = None
    fps: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {
            "success_auc": self.success_auc,
            "precision_20": self.precision_20,
            "success_50": float(self.success[10]),
            "mean_iou": self.mean_iou,
            "n_frames": self.n_frames,
            "n_scored": self.n_scored,
            "success_curve": self.success.tolist(),
            "precision_curve": self.precision.tolist(),
        }
        out.update(timing([self]))
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def align_lengths(
    boxes: np.ndarray, gt: np.ndarray, source: str, name: str, tolerance: int = 2
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Cut results and ground truth to their common frames when they differ by <= ``tolerance``.

    Published results are sometimes a frame or two shorter or longer than the ground truth; those
    are scored on the common frames with a warning. A larger difference is an error.

    Returns:
        ``(boxes, gt, note)`` where ``note`` is the warning text or None.

    Raises:
        LengthMismatchError: the lengths differ by more than ``tolerance``; names the file.
    """
    n, m = len(boxes), len(gt)
    if n == m:
        return boxes, gt, None
    if abs(n - m) > tolerance:
        raise LengthMismatchError(
            f"{source}: {n} boxes, but the ground truth of {name} has {m} frames "
            f"(a difference of up to {tolerance} is scored on the common frames; see --max-length-mismatch)"
        )
    k = min(n, m)
    note = f"{source}: {n} boxes for {m} ground-truth frames; scored the first {k}"
    warnings.warn(note, stacklevel=2)
    return boxes[:k], gt[:k], note


def score_sequence(
    boxes: np.ndarray,
    gt: np.ndarray,
    *,
    name: str = "",
    empty_gt: EmptyGT = "exclude",
    success_thresholds: np.ndarray = SUCCESS_THRESHOLDS,
    precision_thresholds: np.ndarray = PRECISION_THRESHOLDS,
    times: np.ndarray | None = None,
) -> SequenceScore:
    """OPE scores of one sequence (see the module docstring for the definitions).

    Args:
        boxes: tracker boxes of shape (n, 4); row 0 is replaced by ``gt[0]``.
        gt: ground truth of shape (n, 4).
        times: optional per-frame seconds of shape (n,).

    Raises:
        ValueError: shapes differ, or no frame has a non-empty ground-truth box.

    >>> gt = np.array([[10., 10, 20, 20]] * 4)
    >>> s = score_sequence(gt.copy(), gt)
    >>> round(s.success_auc, 6) == round(20 / 21, 6), s.precision_20
    (True, 1.0)
    """
    boxes = np.array(boxes, dtype=np.float64, copy=True)
    gt = np.asarray(gt, dtype=np.float64)
    if boxes.shape != gt.shape or gt.ndim != 2 or gt.shape[1] != 4 or not len(gt):
        raise ValueError(f"{name}: results of shape {boxes.shape} do not match ground truth of shape {gt.shape}")
    boxes[0] = gt[0]
    iou = box_iou(boxes, gt)
    err = center_error(boxes, gt)
    if empty_gt == "exclude":
        valid = ~is_empty_box(gt)
        iou, err = iou[valid], err[valid]
        n_scored = int(valid.sum())
    elif empty_gt == "toolkit":
        valid = (gt > 0).all(axis=1)
        iou = np.where(valid, iou, -1.0)
        err = np.where(valid, err, -1.0)
        n_scored = int(valid.sum())
    elif empty_gt == "keep":
        valid = np.ones(len(gt), dtype=bool)
        n_scored = len(gt)
    else:
        raise ValueError(f"empty_gt must be 'exclude', 'toolkit' or 'keep', got {empty_gt!r}")
    if n_scored == 0:
        raise ValueError(f"{name}: every ground-truth box is empty; nothing to score")
    success = (iou[:, None] > np.asarray(success_thresholds)[None, :]).mean(axis=0)
    precision = (err[:, None] <= np.asarray(precision_thresholds)[None, :]).mean(axis=0)
    mean_iou = float(np.where(valid, box_iou(boxes, gt), 0.0).sum() / n_scored)
    t = None if times is None else np.asarray(times, dtype=np.float64)
    return SequenceScore(name, success, precision, len(gt), n_scored, mean_iou, times=t)


def timing(scores: Iterable[SequenceScore]) -> dict[str, float]:
    """Speed over sequences: ``fps`` = all frames / all seconds, ``fps_without_first`` leaves out
    each sequence's first frame (initialisation), ``first_frame_seconds`` is its mean time.

    Sequences without times but with a reported fps (the toolkit's JSON results) give ``fps`` as
    the mean of those; empty when nothing is known.
    """
    scores = list(scores)
    timed = [s.times for s in scores if s.times is not None and len(s.times)]
    if timed and len(timed) == len(scores):
        total = sum(float(t.sum()) for t in timed)
        rest = sum(float(t[1:].sum()) for t in timed)
        frames = sum(len(t) for t in timed)
        out = {"fps": frames / total if total > 0 else float("inf")}
        out["fps_without_first"] = (frames - len(timed)) / rest if rest > 0 else float("inf")
        out["first_frame_seconds"] = float(np.mean([t[0] for t in timed]))
        return out
    reported = [s.fps for s in scores if s.fps is not None]
    if reported and len(reported) == len(scores):
        return {"fps": float(np.mean(reported))}
    return {}


@dataclass
class Summary(_CurveScores):
    """Scores averaged over a set of sequences (all, or those with one attribute)."""

    names: list[str]
    success: np.ndarray
    precision: np.ndarray
    timing: dict[str, float]
    mean_iou: float = float("nan")  # the sequences' mean IoUs averaged, as the curves are
    n_frames: int = 0
    n_scored: int = 0

    def to_dict(self, curves: bool = True) -> dict:
        out: dict = {
            "success_auc": self.success_auc,
            "precision_20": self.precision_20,
            "success_50": float(self.success[10]),
            "mean_iou": self.mean_iou,
            "n_sequences": len(self.names),
            "n_frames": self.n_frames,
            "n_scored": self.n_scored,
            **self.timing,
        }
        if curves:
            out["success_curve"] = self.success.tolist()
            out["precision_curve"] = self.precision.tolist()
        return out


def summarize(scores: Mapping[str, SequenceScore], names: Iterable[str] | None = None) -> Summary:
    """Average the per-sequence curves over ``names`` (default: all) as the toolkit does.

    >>> gt = np.array([[0., 0, 10, 10]] * 3)
    >>> far = np.array([[0., 0, 10, 10], [50, 50, 10, 10], [50, 50, 10, 10]])
    >>> s = summarize({"a": score_sequence(gt, gt, name="a"), "b": score_sequence(far, gt, name="b")})
    >>> round(s.precision_20, 4)
    0.6667
    """
    chosen = list(scores) if names is None else list(names)
    if not chosen:
        raise ValueError("no sequences to summarize")
    success = np.mean([scores[n].success for n in chosen], axis=0)
    precision = np.mean([scores[n].precision for n in chosen], axis=0)
    return Summary(
        chosen, success, precision, timing(scores[n] for n in chosen),
        mean_iou=float(np.mean([scores[n].mean_iou for n in chosen])),
        n_frames=sum(scores[n].n_frames for n in chosen), n_scored=sum(scores[n].n_scored for n in chosen),
    )
