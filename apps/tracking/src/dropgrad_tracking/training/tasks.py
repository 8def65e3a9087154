"""Deterministic meta-training tasks: which (sequence, frame) each global step uses.

Meta-batch ``k`` is a pure function of ``(seed, k)`` (and of the model, which a tracker may use
to compute frozen features): its ``(sequence, t)`` pairs and the ``rng`` handed to each
``sample_task`` come from ``numpy.random.default_rng([seed, k, ...])``. A resumed run therefore
draws exactly the tasks the uninterrupted run would have drawn, and validation tasks (another
stream) never change between epochs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from dropgrad import Task
from torch import nn

from ..data.sequence import Sequence
from ..meta import MetaTrackerDef
from .sources import support_frames

__all__ = ["VAL_STREAM", "TaskSampler", "stack_tasks"]

#: Seed offset of the validation tasks' stream (never the training stream).
VAL_STREAM = 1_000_003


def stack_tasks(tasks: list[Task]) -> Task:
    """Stack tasks of equal shapes into one :class:`~dropgrad.Task` with a leading task dimension T.

    Raises:
        ValueError: the tasks' shapes differ (a tracker's ``sample_task`` must give fixed shapes).

    >>> t = Task(torch.zeros(4, 2), torch.zeros(4), torch.zeros(6, 2), torch.zeros(6))
    >>> stack_tasks([t, t]).query_x.shape
    torch.Size([2, 6, 2])
    """
    fields = []
    for i, name in enumerate(Task._fields):
        parts = [t[i] for t in tasks]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"sample_task gave {name} of different shapes {sorted(shapes)}; tasks must have fixed shapes")
        fields.append(torch.stack(parts))
    return Task(*fields)


class TaskSampler:
    """Tasks cut from ``sequences`` by a tracker definition's ``sample_task``.

    Args:
        definition: the meta-learned tracker.
        model: handed to ``sample_task`` (for frozen features); run under ``torch.no_grad``.
        sequences: ``{name: Sequence}``; each needs a usable support frame (see
            :func:`~dropgrad_tracking.training.sources.support_frames`).
        horizon: query frames after the support frame.
        seed: the stream's seed.

    The sequence is drawn uniformly, then the support frame uniformly among its usable frames,
    so long sequences do not dominate (Meta-Tracker draws a video, then a frame).
    """

    def __init__(
        self, definition: MetaTrackerDef, model: nn.Module, sequences: Mapping[str, Sequence], horizon: int, seed: int
    ) -> None:
        if not sequences:
            raise ValueError("no sequences to sample tasks from")
        self.definition = definition
        self.model = model
        self.names = list(sequences)
        self.sequences = dict(sequences)
        self.horizon = horizon
        self.seed = seed
        self.frames = {n: support_frames(s, horizon) for n, s in self.sequences.items()}
        empty = [n for n, f in self.frames.items() if not len(f)]
        if empty:
            raise ValueError(f"sequence(s) {', '.join(empty)} have no usable support frame for horizon {horizon}")

    def choose(self, step: int, n_tasks: int) -> list[tuple[str, int]]:
        """The ``(sequence name, support frame)`` pairs of meta-batch ``step``."""
        rng = np.random.default_rng([self.seed, step])
        picks = []
        for _ in range(n_tasks):
            name = self.names[int(rng.integers(len(self.names)))]
            frames = self.frames[name]
            picks.append((name, int(frames[int(rng.integers(len(frames)))])))
        return picks

    def build(self, picks: list[tuple[str, int]], step: int, offset: int = 0) -> Task:
        """The stacked tasks of ``picks`` (where ``sample_task`` made them: the built-in trackers use the
        model's device), task ``i`` with its own rng
        ``[seed, step, offset + i + 1]`` (``offset``: the first pick's place in a longer list)."""
        was_training = self.model.training
        tasks = []
        try:
            with torch.no_grad():
                for i, (name, t) in enumerate(picks):
                    rng = np.random.default_rng([self.seed, step, offset + i + 1])
                    tasks.append(self.definition.sample_task(self.model, self.sequences[name], t, self.horizon, rng))
        finally:
            self.model.train(was_training)
        return stack_tasks(tasks)

    def batch(self, step: int, n_tasks: int) -> Task:
        """Meta-batch ``step``: ``n_tasks`` stacked tasks, a pure function of ``(seed, step)``."""
        return self.build(self.choose(step, n_tasks), step)

    def fixed(self, per_sequence: int) -> list[tuple[str, int]]:
        """Validation picks: ``per_sequence`` support frames evenly spaced over each sequence's usable frames."""
        picks = []
        for name in self.names:
            frames = self.frames[name]
            index = np.unique(np.linspace(0, len(frames) - 1, per_sequence).round().astype(int))
            picks += [(name, int(frames[i])) for i in index]
        return picks
