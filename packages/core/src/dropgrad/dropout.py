"""Activation Dropout and SpatialDropout with one mask per task (the paper's baselines).

In gradient-based meta-learning a task runs the same network several times: on the support set
at every inner step (f_theta) and on the query set after adaptation (f_theta'). Ordinary
``nn.Dropout`` would draw a new mask at each of those forwards, so the adapted network would be
evaluated with units that the adaptation never saw dropped. The baselines DropGrad is compared
with instead keep ONE mask for the whole task. ``ConsistentDropout`` does that: its mask covers
the feature dimensions only (support and query batches differ in size), is drawn at the first
forward of a task, and is reused until ``resample()`` is called, which the inner loop does at
the start of every task through ``resample_dropout_masks``.
"""

import torch
from torch import nn

__all__ = ["ConsistentDropout", "has_consistent_dropout", "resample_dropout_masks"]


class ConsistentDropout(nn.Module):
    """Dropout whose mask is shared by every forward until ``resample()``.

    Args:
        p: probability of dropping a unit (plain) or a whole channel (spatial); 0 <= p < 1.
            Kept values are scaled by 1 / (1 - p) so the expected activation is unchanged.
        spatial: drop whole channels: input of shape (B, C, *spatial), mask of shape
            (C, 1, ..., 1). Otherwise input of shape (B, *features), mask of shape (*features,).
        generator: draws the masks (on the generator's device; they are then moved to the
            input's device); the global torch RNG when None.

    In eval mode, or with p == 0, the module is the identity. The mask is a plain attribute,
    not a buffer: it is per-task state and never belongs in a checkpoint.

    >>> drop = ConsistentDropout(p=0.5, generator=torch.Generator().manual_seed(0))
    >>> support, query = drop(torch.ones(25, 6)), drop(torch.ones(80, 6))
    >>> bool((support[0] == query[0]).all()), sorted(set(support.flatten().tolist()))
    (True, [0.0, 2.0])
    >>> drop.resample()  # next task: a new mask at the next forward
    >>> drop.mask is None
    True
    """

    def __init__(
        self, p: float = 0.3, spatial: bool = False, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"ConsistentDropout: p must be a number with 0 <= p < 1, got {p!r}")
        self.p = float(p)
        self.spatial = bool(spatial)
        self.generator = generator
        self._mask: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor | None:
        """The current task's mask (values 0 or 1/(1-p)), or None until the next forward."""
        return self._mask

    def resample(self) -> None:
        """Forget the current mask; the next training forward draws a new one."""
        self._mask = None

    def _mask_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() < 2:
            raise ValueError(
                f"ConsistentDropout: input must have a batch dimension and at least one "
                f"feature dimension, got shape {tuple(x.shape)}"
            )
        if self.spatial:
            return (x.shape[1],) + (1,) * (x.dim() - 2)
        return tuple(x.shape[1:])

    def _draw(self, shape: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
        g = self.generator
        device = g.device if g is not None else x.device
        keep = torch.rand(shape, generator=g, device=device) >= self.p
        return (keep.to(x.dtype) / (1.0 - self.p)).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the task's mask.

        Args:
            x: activations of shape (B, *features), or (B, C, *spatial) when ``spatial``.

        Returns:
            Tensor of the same shape as ``x``.

        Raises:
            ValueError: if the feature shape differs from the one the current mask was drawn
                for (a new task must call ``resample()`` first).
        """
        if not self.training or self.p == 0.0:
            return x
        shape = self._mask_shape(x)
        if self._mask is None:
            self._mask = self._draw(shape, x)
        elif tuple(self._mask.shape) != shape:
            what = "channels/dims" if self.spatial else "feature shape"
            raise ValueError(
                f"ConsistentDropout: input of shape {tuple(x.shape)} needs a mask of shape "
                f"{shape} but the current mask has shape {tuple(self._mask.shape)} ({what} "
                "changed within a task); call resample() or resample_dropout_masks(model) "
                "at the start of each task"
            )
        mask = self._mask
        if mask.device != x.device or mask.dtype != x.dtype:
            # e.g. the model moved to a GPU or entered autocast after the mask was drawn.
            mask = mask.to(device=x.device, dtype=x.dtype)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, spatial={self.spatial}"


def resample_dropout_masks(module: nn.Module) -> int:
    """Call ``resample()`` on every ``ConsistentDropout`` in ``module``; return how many.

    The inner loop calls this at the start of every task so that each task gets fresh masks.

    >>> net = nn.Sequential(nn.Linear(4, 4), ConsistentDropout(0.2), nn.ReLU(),
    ...                     ConsistentDropout(0.1, spatial=True))
    >>> resample_dropout_masks(net)
    2
    """
    count = 0
    for m in module.modules():
        if isinstance(m, ConsistentDropout):
            m.resample()
            count += 1
    return count


def has_consistent_dropout(module: nn.Module) -> bool:
    """Whether ``module`` contains a ``ConsistentDropout`` (itself included).

    >>> has_consistent_dropout(nn.Sequential(nn.Linear(2, 2), ConsistentDropout(0.5)))
    True
    >>> has_consistent_dropout(nn.Linear(2, 2))
    False
    """
    return any(isinstance(m, ConsistentDropout) for m in module.modules())
