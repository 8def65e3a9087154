"""Mean and 95% confidence interval over episodes, as few-shot papers report them."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MeanCI", "mean_ci95", "summarize"]


def _as_float_array(values: Any) -> np.ndarray:
    """Return ``values`` as a float64 array of shape (n,), or raise a ValueError."""
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"values must be a 1-D sequence of numbers, got {type(values).__name__}"
        ) from None
    if arr.ndim != 1:
        raise ValueError(f"values must be one-dimensional (one value per episode), got shape "
                         f"{arr.shape}")
    if arr.size == 0:
        raise ValueError("values is empty; need at least one episode result for a mean")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"values[{bad}] = {arr[bad]} is not finite; expected finite numbers")
    return arr


def mean_ci95(values: Sequence[float] | np.ndarray | Any) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval, ``1.96 * std / sqrt(n)``.

    ``std`` is the population standard deviation (ddof=0), as CloserLook-FewShot computes it
    (``np.std``) and as the DropGrad paper's tables therefore report; with n in the hundreds the
    difference from ddof=1 is far below the printed precision.

    Args:
        values: one result per episode (e.g. accuracy in %), of shape (n,); a list, numpy array
            or tensor (any device).

    Returns:
        ``(mean, ci95)`` as Python floats; ``ci95`` is 0.0 when n == 1.

    Raises:
        ValueError: if ``values`` is empty, not 1-D, or holds a non-finite number.

    >>> mean_ci95([60.0, 62.0, 64.0, 66.0])  # doctest: +ELLIPSIS
    (63.0, 2.1913466179497...)
    >>> mean_ci95([70.0])
    (70.0, 0.0)
    """
    arr = _as_float_array(values)
    ci = 1.96 * float(arr.std(ddof=0)) / math.sqrt(arr.size)
    return float(arr.mean()), ci


@dataclass
class MeanCI:
    """A mean with its 95% confidence half-width over ``n`` episodes.

    >>> m = MeanCI(mean=63.1234, ci95=0.8367, n=600)
    >>> str(m)
    '63.12 ± 0.84'
    >>> m.as_dict()
    {'mean': 63.1234, 'ci95': 0.8367, 'n': 600}
    """

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.ci95:.2f}"

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready ``{"mean": ..., "ci95": ..., "n": ...}``."""
        return {"mean": float(self.mean), "ci95": float(self.ci95), "n": int(self.n)}


def summarize(values: Sequence[float] | np.ndarray | Any) -> MeanCI:
    """``mean_ci95`` packed with the episode count; see it for the definition.

    Args:
        values: one result per episode, of shape (n,).

    >>> print(summarize([60.0, 62.0, 64.0, 66.0]))
    63.00 ± 2.19
    """
    arr = _as_float_array(values)
    mean, ci = mean_ci95(arr)
    return MeanCI(mean=mean, ci95=ci, n=int(arr.size))
