"""Score trackers' results against a data set and write ``report.json`` and the attribute table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dropgrad import atomic_write, write_json

from ..data.otb import ATTRIBUTES
from ..data.sequence import Sequence
from .ope import (
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    EmptyGT,
    SequenceScore,
    Summary,
    align_lengths,
    score_sequence,
    summarize,
)
from .results import TrackerResult

__all__ = ["TrackerEvaluation", "attribute_groups", "attribute_table", "build_report", "evaluate_tracker", "write_report"]


@dataclass
class TrackerEvaluation:
    """One tracker's per-sequence scores, overall and per-attribute summaries, and any notes."""

    tracker: str
    scores: dict[str, SequenceScore]
    overall: Summary
    attributes: dict[str, Summary]
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def attribute_groups(sequences: Mapping[str, Sequence]) -> dict[str, list[str]]:
    """``{attribute code: [sequence names]}`` in the toolkit's attribute order, non-empty groups only."""
    groups = {code: [n for n, s in sequences.items() if code in s.attributes] for code in ATTRIBUTES}
    extra = sorted({a for s in sequences.values() for a in s.attributes} - set(ATTRIBUTES))
    groups.update({code: [n for n, s in sequences.items() if code in s.attributes] for code in extra})
    return {k: v for k, v in groups.items() if v}


def evaluate_tracker(
    tracker: str,
    results: Mapping[str, TrackerResult],
    sequences: Mapping[str, Sequence],
    *,
    empty_gt: EmptyGT = "exclude",
    max_length_mismatch: int = 2,
    metadata: dict | None = None,
) -> TrackerEvaluation:
    """Score ``results`` (one entry per sequence of ``sequences``) with OPE.

    >>> import numpy as np
    >>> seq = Sequence("a", [], np.array([[0., 0, 10, 10]] * 5), ("SV",))
    >>> ev = evaluate_tracker("still", {"a": TrackerResult(seq.boxes.copy(), "a.txt")}, {"a": seq})
    >>> round(ev.overall.success_auc * 21, 6), list(ev.attributes)
    (20.0, ['SV'])
    """
    scores: dict[str, SequenceScore] = {}
    notes: list[str] = []
    for name, seq in sequences.items():
        result = results[name]
        boxes, gt, note = align_lengths(result.boxes, seq.boxes, result.source, name, max_length_mismatch)
        times = result.times[: len(gt)] if result.times is not None else None
        score = score_sequence(boxes, gt, name=name, empty_gt=empty_gt, times=times)
        score.fps = result.fps
        if note:
            score.notes.append(note)
            notes.append(note)
        scores[name] = score
    overall = summarize(scores)
    attributes = {code: summarize(scores, names) for code, names in attribute_groups(sequences).items()}
    return TrackerEvaluation(tracker, scores, overall, attributes, notes, dict(metadata or {}))


def build_report(evaluations: list[TrackerEvaluation], dataset: str, empty_gt: EmptyGT, extra: dict | None = None) -> dict:
    """The content of ``report.json``: protocol, and per tracker overall / attribute / sequence scores."""
    return {
        "dataset": dataset,
        "protocol": {
            "evaluation": "OPE (one-pass evaluation, OTB toolkit definitions)",
            "success_thresholds": SUCCESS_THRESHOLDS.tolist(),
            "precision_thresholds_px": PRECISION_THRESHOLDS.tolist(),
            "success_auc": "mean of the success curve averaged over sequences",
            "precision_20": "precision curve averaged over sequences, at 20 px",
            "first_frame": "the tracker's first box is replaced by the ground truth",
            "empty_ground_truth": empty_gt,
        },
        **(extra or {}),
        "trackers": {
            ev.tracker: {
                "overall": ev.overall.to_dict(),
                "attributes": {code: s.to_dict(curves=True) for code, s in ev.attributes.items()},
                "sequences": {name: s.to_dict() for name, s in ev.scores.items()},
                **({"metadata": ev.metadata} if ev.metadata else {}),
                **({"warnings": ev.notes} if ev.notes else {}),
            }
            for ev in evaluations
        },
    }


def attribute_table(evaluations: list[TrackerEvaluation]) -> list[dict]:
    """Rows ``{attribute, n_sequences, <tracker> AUC, <tracker> P@20, ...}``, ``ALL`` first."""
    rows = []
    codes = ["ALL"] + [c for c in evaluations[0].attributes]
    for code in codes:
        first = evaluations[0].overall if code == "ALL" else evaluations[0].attributes[code]
        desc = "All sequences" if code == "ALL" else ATTRIBUTES.get(code, code)
        row: dict = {"attribute": code, "name": desc, "n_sequences": len(first.names)}
        for ev in evaluations:
            s = ev.overall if code == "ALL" else ev.attributes[code]
            row[f"{ev.tracker} AUC"] = s.success_auc
            row[f"{ev.tracker} P@20"] = s.precision_20
        rows.append(row)
    return rows


def _markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    head = list(rows[0])

    def quote(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.6f}"
        return f'"{v}"' if isinstance(v, str) and ("," in v or " " in v) else str(v)

    return "\n".join([",".join(quote(h) for h in head)] + [",".join(quote(v) for v in r.values()) for r in rows]) + "\n"


def write_report(out: str | os.PathLike[str], report: dict, evaluations: list[TrackerEvaluation]) -> list[Path]:
    """Write ``report.json``, ``attributes.md`` and ``attributes.csv`` into ``out`` (atomically)."""
    base = Path(out)
    rows = attribute_table(evaluations)
    paths = [write_json(base / "report.json", report)]
    md = _markdown(rows)
    csv = _csv(rows)
    paths.append(atomic_write(base / "attributes.md", lambda f: f.write(md), binary=False))
    paths.append(atomic_write(base / "attributes.csv", lambda f: f.write(csv), binary=False))
    return paths


def overall_line(evaluations: list[TrackerEvaluation], dataset: str) -> dict:
    """The one-line summary printed by ``--json``."""
    return {
        "dataset": dataset,
        "trackers": {ev.tracker: ev.overall.to_dict(curves=False) for ev in evaluations},
    }



