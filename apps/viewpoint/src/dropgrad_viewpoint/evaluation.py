"""Few-shot evaluation: per test category, adapt on K-shot support draws and score the rest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import torch
from dropgrad import EpisodeSampler, atomic_write

from .data.sources import CategorySource
from .geometry import rotation_error_deg, score_errors, summarize_runs
from .methods.metaview import MetaView
from .methods.pose import rotations_from_prediction

__all__ = ["adapt_and_score", "evaluate", "plot_examples"]


def adapt_and_score(
    model: MetaView, source: CategorySource, support: np.ndarray, query: np.ndarray, steps: int,
    device: torch.device, adapt: bool = True, chunk: int = 64,
) -> dict[str, np.ndarray]:
    """Adapt on ``support`` (eval mode: no DropGrad) and predict the rotations of ``query``.

    Returns ``{"errors" (n,), "pred" (n, 3, 3), "true" (n, 3, 3)}``; ``adapt=False`` scores the
    unadapted initialisation (every copy the same).
    """
    model.eval()
    s = source.batch(support, device)
    with torch.no_grad():
        feats = model.trunk(s["images"])
    params = model.adapt(feats, s, steps) if adapt else {k: v.detach() for k, v in model.initial_params(len(source.names)).items()}
    preds, trues = [], []
    for start in range(0, len(query), chunk):
        q = source.batch(query[start : start + chunk], device)
        p = model.predict(q["images"], params)
        preds.append(rotations_from_prediction(p.kp2d.cpu(), p.depth.cpu(), p.canon.cpu(), p.confidence.cpu()))
        trues.append(q["rotation"].cpu().numpy())
    pred, true = np.concatenate(preds), np.concatenate(trues)
    errors = np.nan_to_num(rotation_error_deg(pred, true), nan=180.0)
    return {"errors": errors, "pred": pred, "true": true}


def evaluate(
    model: MetaView, sources: Mapping[str, CategorySource], shots: int, draws: int, steps: int, seed: int,
    device: torch.device, unadapted: bool = False,
) -> dict:
    """Acc30 (%) / MedErr (deg) per category and pooled, mean ± std over ``draws`` support draws.

    Draw d of a category is episode d of a core ``EpisodeSampler`` (1-way, ``shots``-shot, all
    other objects as queries), so every method and run sees the same supports.
    """
    per_cat: dict[str, list[np.ndarray]] = {}
    for c, source in sources.items():
        n = len(source)
        if n < shots + 1:
            raise ValueError(f"category {c!r} has {n} usable objects; {shots}-shot evaluation needs {shots + 1}")
        sampler = EpisodeSampler([0] * n, n_way=1, n_shot=shots, n_query=n - shots, seed=seed)
        per_cat[c] = []
        for d in range(draws):
            ep = sampler.sample(d)
            per_cat[c].append(adapt_and_score(model, source, ep.support, ep.query, steps, device, adapt=not unadapted)["errors"])
    categories = {c: {**summarize_runs(runs).as_dict(), "n_query": len(runs[0])} for c, runs in per_cat.items()}
    pooled_runs = [np.concatenate([per_cat[c][d] for c in per_cat]) for d in range(draws)]
    # Category mean: the average of per-category scores within a draw, then mean ± std over draws.
    cat_means = np.array([[np.mean([score_errors(per_cat[c][d])[i] for c in per_cat]) for i in (0, 1)] for d in range(draws)])
    return {
        "categories": categories,
        "pooled": summarize_runs(pooled_runs).as_dict(),
        "category_mean": {"acc30": float(cat_means[:, 0].mean()), "acc30_std": float(cat_means[:, 0].std()),
                          "mederr": float(cat_means[:, 1].mean()), "mederr_std": float(cat_means[:, 1].std()), "runs": draws},
    }


def _axes(image: np.ndarray, rot: np.ndarray, color_scale: float, thickness: int, dashed: bool) -> None:
    h = image.shape[0]
    c = np.array([h / 2.0, h / 2.0])
    for i, color in enumerate([(0, 0, 255), (0, 200, 0), (255, 0, 0)]):  # x red, y green, z blue (BGR)
        d = rot[:, i]
        end = c + 0.35 * h * np.array([d[0], -d[1]])
        col = tuple(int(v * color_scale) for v in color)
        if dashed:
            for t0 in np.arange(0, 1, 0.2):
                a, b = c + (end - c) * t0, c + (end - c) * (t0 + 0.1)
                cv2.line(image, tuple(int(v) for v in a), tuple(int(v) for v in b), col, thickness, cv2.LINE_AA)
        else:
            cv2.line(image, tuple(int(v) for v in c), tuple(int(v) for v in end), col, thickness, cv2.LINE_AA)


def plot_examples(
    model: MetaView, sources: Mapping[str, CategorySource], shots: int, steps: int, seed: int,
    device: torch.device, path: str | Path, per_category: int = 4, max_categories: int = 5,
) -> Path:
    """A PNG grid of query crops with predicted (solid) and true (dashed) object axes.

    One row per category (first draw), ``per_category`` queries each; the caption is the error.
    """
    rows = []
    for c, source in list(sources.items())[:max_categories]:
        sampler = EpisodeSampler([0] * len(source), n_way=1, n_shot=shots, n_query=len(source) - shots, seed=seed)
        ep = sampler.sample(0)
        query = ep.query[:per_category]
        scored = adapt_and_score(model, source, ep.support, query, steps, device)
        tiles = []
        for j, crop in enumerate(source.crops(query)):
            big = cv2.resize(crop, (160, 160), interpolation=cv2.INTER_LINEAR)
            _axes(big, scored["true"][j], 0.6, 2, dashed=True)
            _axes(big, scored["pred"][j], 1.0, 2, dashed=False)
            cv2.putText(big, f"{scored['errors'][j]:.0f} deg", (4, 154), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(big)
        tiles += [np.zeros_like(tiles[0])] * (per_category - len(tiles))
        label = np.zeros((160, 110, 3), dtype=np.uint8)
        cv2.putText(label, c[:14], (4, 84), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.hstack([label] + tiles))
    grid = np.vstack(rows)
    ok, buf = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("could not encode the examples PNG")
    return atomic_write(Path(path), lambda f: f.write(buf.tobytes()))
