"""Measure the glyph generator: images per second and a pixel nearest-neighbour baseline.

Run ``python -m dropgrad_fewshot.data.glyphcheck`` (options: ``--help``). It prints how fast
classes render (single process) and the 5-way 1-shot accuracy of a nearest-neighbour classifier
on raw pixels over test classes, the "learnable but not trivial" check of the embedded default:
well above chance (20%) and well below perfect.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from .glyphs import render_glyph_class

__all__ = ["main", "nearest_neighbour_accuracy"]


def nearest_neighbour_accuracy(
    images: np.ndarray, *, n_way: int = 5, episodes: int = 1000, seed: int = 0
) -> float:
    """N-way 1-shot accuracy of 1-nearest-neighbour (squared L2) on raw pixels.

    Args:
        images: of shape (n_classes, n_drawings, H, W), n_drawings >= 2.

    >>> rng = np.random.default_rng(0)
    >>> prototypes = rng.random((10, 1, 8, 8))
    >>> nearest_neighbour_accuracy(prototypes + 0.01 * rng.random((10, 4, 8, 8)), episodes=50)
    1.0
    """
    rng = np.random.default_rng(seed)
    n_cls, n_draw = images.shape[:2]
    flat = images.reshape(n_cls, n_draw, -1).astype(np.float32)
    correct = 0
    for _ in range(episodes):
        cls = rng.choice(n_cls, n_way, replace=False)
        pick = np.array([rng.choice(n_draw, 2, replace=False) for _ in cls])
        support, query = flat[cls, pick[:, 0]], flat[cls, pick[:, 1]]
        dist = ((query[:, None] - support[None]) ** 2).sum(-1)
        correct += int((dist.argmin(1) == np.arange(n_way)).sum())
    return correct / (n_way * episodes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dropgrad_fewshot.data.glyphcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=300, help="test classes to render (default 300)")
    parser.add_argument("--episodes", type=int, default=2000, help="5-way 1-shot episodes (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="glyph seed (default 0)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    images = np.stack([render_glyph_class(args.seed, "test", c, 20, args.size) for c in range(args.classes)])
    elapsed = time.perf_counter() - start
    acc = nearest_neighbour_accuracy(images.astype(np.float32) / 255, episodes=args.episodes, seed=args.seed)
    print(f"rendered {images.shape[0] * images.shape[1]} glyph images in {elapsed:.2f} s: "
          f"{images.shape[0] * images.shape[1] / elapsed:.0f} images/s")
    print(f"pixel nearest-neighbour 5-way 1-shot accuracy over {args.classes} test classes, "
          f"{args.episodes} episodes: {100 * acc:.1f}% (chance 20%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
