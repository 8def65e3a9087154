"""OTB-style plots: each curve is drawn from its own data and the legend is ranked by score."""

import matplotlib
import numpy as np
from dropgrad_tracking.evaluation.ope import PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS, Summary
from dropgrad_tracking.evaluation.plots import plot_curves

matplotlib.use("Agg")


def _summary(level):
    success = np.clip(level - SUCCESS_THRESHOLDS, 0, 1)
    precision = np.clip(level * PRECISION_THRESHOLDS / 20, 0, 1)
    return Summary(["a"], success, precision, {})


def test_legend_is_ranked_best_first_with_each_trackers_score(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    curves = [("low", _summary(0.3)), ("high", _summary(0.9)), ("mid", _summary(0.6))]
    for kind, score in (("success", lambda s: s.success_auc), ("precision", lambda s: s.precision_20)):
        path = plot_curves(tmp_path / f"{kind}.png", kind, curves, "t")
        assert path.stat().st_size > 1000
        ax = figures[-1].axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [f"{name} [{score(s):.3f}]" for name, s in (curves[1], curves[2], curves[0])]
        for line, (_, s) in zip(ax.get_lines(), (curves[1], curves[2], curves[0])):
            np.testing.assert_array_equal(line.get_ydata(), s.success if kind == "success" else s.precision)
