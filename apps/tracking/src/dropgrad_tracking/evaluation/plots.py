"""Success and precision plots in the OTB style: one line per tracker, legend ranked by score."""

from __future__ import annotations

import os
from collections.abc import Sequence as Seq
from pathlib import Path

from dropgrad import atomic_write

from ..data.otb import ATTRIBUTES
from .ope import PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS, Summary
from .report import TrackerEvaluation

__all__ = ["plot_curves", "write_plots"]

_STYLES = ["-", "--", "-.", ":"]


def plot_curves(path: str | os.PathLike[str], kind: str, curves: Seq[tuple[str, Summary]], title: str) -> Path:
    """Write one OTB-style plot: ``kind`` is ``"success"`` (legend: AUC) or ``"precision"`` (legend: P@20)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if kind == "success":
        x, key, label = SUCCESS_THRESHOLDS, (lambda s: s.success_auc), "AUC"
        xlabel, ylabel = "Overlap threshold", "Success rate"
    elif kind == "precision":
        x, key, label = PRECISION_THRESHOLDS, (lambda s: s.precision_20), "P@20"
        xlabel, ylabel = "Location error threshold (pixels)", "Precision"
    else:
        raise ValueError(f"kind must be 'success' or 'precision', got {kind!r}")
    ranked = sorted(curves, key=lambda c: -key(c[1]))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, summary) in enumerate(ranked):
        y = summary.success if kind == "success" else summary.precision
        ax.plot(x, y, _STYLES[(i // len(colors)) % len(_STYLES)], color=colors[i % len(colors)], linewidth=2,
                label=f"{name} [{key(summary):.3f}]")
    if kind == "precision":
        ax.axvline(20, color="0.6", linewidth=0.8, linestyle=":")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(float(x[0]), float(x[-1])), ylim=(0, 1), title=title)
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower left" if kind == "success" else "lower right", fontsize=8, title=label, title_fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_plots(out: str | os.PathLike[str], evaluations: Seq[TrackerEvaluation]) -> list[Path]:
    """Overall and per-attribute success and precision plots: ``out/{success,precision}_<ATTR>.png``."""
    base = Path(out)
    paths = []
    groups = [("ALL", "All sequences", [(e.tracker, e.overall) for e in evaluations])]
    for code in evaluations[0].attributes:
        groups.append((code, ATTRIBUTES.get(code, code), [(e.tracker, e.attributes[code]) for e in evaluations]))
    for code, desc, curves in groups:
        n = len(curves[0][1].names)
        for kind in ("success", "precision"):
            title = f"{kind.capitalize()} plots of OPE - {desc} ({n})"
            paths.append(plot_curves(base / f"{kind}_{code}.png", kind, curves, title))
    return paths



