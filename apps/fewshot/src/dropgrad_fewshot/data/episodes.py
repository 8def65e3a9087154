"""Meta-batches of few-shot tasks: a pure function of (seed, batch index), optionally prefetched.

Batch ``b`` holds the episodes ``b*T .. b*T + T - 1`` of core's :class:`dropgrad.EpisodeSampler`
(T = tasks_per_batch), so it is the same in any process, after a resume, and with or without
data-loader workers. The images of an episode are loaded with the augmentation key
``(seed, episode id, slot)`` (slot = position in the episode's support-then-query order), so
augmented batches are reproducible too. A ``shard`` (a range of task positions, e.g. one torchrun
rank's) builds only those tasks of every batch, equal to slicing the whole batch.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np
import torch
from dropgrad import EpisodeSampler, Task
from torch.utils.data import DataLoader, Dataset

from .base import FewShotDataset
from .errors import DataError

__all__ = ["EpisodeBatches", "check_episodes", "task_shard"]

_MAX_LISTED = 5


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {n}")
    return n


def task_shard(shard: slice | None, tasks_per_batch: int) -> range:
    """The task positions ``shard`` selects from a meta-batch of ``tasks_per_batch`` (None: all).

    >>> task_shard(slice(2, 4), 4), task_shard(None, 3)
    (range(2, 4), range(0, 3))
    """
    if shard is None:
        return range(tasks_per_batch)
    if not isinstance(shard, slice) or shard.step not in (None, 1):
        raise DataError(f"shard must be a contiguous slice of the meta-batch's tasks, got {shard!r}")
    start = 0 if shard.start is None else shard.start
    stop = tasks_per_batch if shard.stop is None else shard.stop
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= tasks_per_batch):
        raise DataError(
            f"shard must select at least one of the meta-batch's {tasks_per_batch} tasks (0 <= start < stop <= "
            f"{tasks_per_batch}), got {shard!r}"
        )
    return range(start, stop)


def check_episodes(dataset: FewShotDataset, n_way: int, n_shot: int, n_query: int) -> None:
    """Raise :class:`DataError` unless ``dataset`` can give n_way-way n_shot-shot n_query-query tasks.

    Checks that there are at least ``n_way`` classes and that every class has at least
    ``n_shot + n_query`` images; the message names the data set, split, offending classes and
    their folders or list files.

    >>> from dropgrad_fewshot.data.glyphs import GlyphDataset
    >>> ds = GlyphDataset("test", n_classes=3, images_per_class=4)
    >>> check_episodes(ds, 3, 1, 3)
    >>> check_episodes(ds, 5, 1, 1)
    Traceback (most recent call last):
    ...
    dropgrad_fewshot.data.errors.DataError: glyphs test: 5-way tasks need at least 5 classes, but the split has 3 (--way)
    """
    n_way = _count("n_way (--way)", n_way, 1)
    n_shot = _count("n_shot (--shot)", n_shot, 1)
    n_query = _count("n_query (--query)", n_query, 0)
    where = f"{dataset.name} {dataset.split}"
    if dataset.n_classes < n_way:
        raise DataError(
            f"{where}: {n_way}-way tasks need at least {n_way} classes, but the split has "
            f"{dataset.n_classes} (--way)"
        )
    groups = dataset.class_groups
    if groups is not None and len(np.unique(groups)) < n_way:
        raise DataError(
            f"{where}: {n_way}-way tasks need at least {n_way} characters, but the split has "
            f"{len(np.unique(groups))} (--way; a task takes one rotation of each character, as in Finn et al.'s code)"
        )
    counts = dataset.class_counts()
    needed = n_shot + n_query
    short = np.flatnonzero(counts < needed)
    if len(short):
        listed = "; ".join(
            f"class {dataset.class_names[c]!r}"
            + (f" ({dataset.class_source(int(c))})" if dataset.class_source(int(c)) else "")
            + f" has {counts[c]} images"
            for c in short[:_MAX_LISTED]
        )
        more = f"; and {len(short) - _MAX_LISTED} more" if len(short) > _MAX_LISTED else ""
        raise DataError(
            f"{where}: {n_shot}-shot {n_query}-query tasks need {needed} images per class "
            f"(--shot + --query), but {len(short)} of {dataset.n_classes} classes have fewer: "
            f"{listed}{more}"
        )


class EpisodeBatches:
    """Meta-batches of N-way K-shot Q-query tasks over a :class:`FewShotDataset`.

    Args:
        dataset: the split to sample from.
        n_way, n_shot, n_query: task shape.
        tasks_per_batch: T, tasks per meta-batch.
        seed: batch ``b`` is a pure function of ``(seed, b)``.
        num_workers: data-loader worker processes for :meth:`iterate` (0: load in this process).
        device: where the returned tensors live (None: CPU). Workers pin memory for CUDA.

    Raises:
        DataError: at construction, if the task shape is impossible for the data set.

    Every :class:`dropgrad.Task` returned has ``support_x`` of shape
    (T, n_way * n_shot, C, H, W) float32, ``support_y`` of shape (T, n_way * n_shot) int64 with
    class-major labels 0..n_way-1 (``[0]*n_shot + [1]*n_shot + ...``), and ``query_x`` /
    ``query_y`` of shapes (T, n_way * n_query, C, H, W) / (T, n_way * n_query) likewise.

    >>> from dropgrad_fewshot.data.glyphs import GlyphDataset
    >>> batches = EpisodeBatches(GlyphDataset("val", n_classes=10, images_per_class=5),
    ...                          n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=0)
    >>> task = batches.batch(4)
    >>> tuple(task.support_x.shape), task.support_y[0].tolist(), task.query_y[0].tolist()
    ((2, 3, 1, 28, 28), [0, 1, 2], [0, 0, 1, 1, 2, 2])
    >>> torch.equal(task.query_x, batches.batch(4).query_x)
    True
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        *,
        n_way: int,
        n_shot: int,
        n_query: int,
        tasks_per_batch: int,
        seed: int,
        num_workers: int = 0,
        device: torch.device | str | None = None,
        shard: slice | None = None,
    ) -> None:
        check_episodes(dataset, n_way, n_shot, n_query)
        self.tasks_per_batch = _count("tasks_per_batch (--meta-batch)", tasks_per_batch, 1)
        self.shard = task_shard(shard, self.tasks_per_batch)
        self.seed = _count("seed (--seed)", seed, 0)
        self.num_workers = _count("num_workers (--num-workers)", num_workers, 0)
        self.dataset = dataset
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.device = None if device is None else torch.device(device)
        self.sampler = EpisodeSampler(dataset.labels, n_way, n_shot, n_query, seed=self.seed, groups=dataset.item_groups())

    def batch(self, index: int) -> Task:
        """Meta-batch ``index`` (episodes ``index*T .. index*T + T - 1``; the shard's of them), on ``device``."""
        task = self._cpu_batch(_count("batch index", index, 0))
        if self.device is None:
            return task
        if self.device.type == "cuda":
            # From pinned memory the copy is queued behind the running step; from pageable memory
            # CUDA may stage it while the host waits, so the host could not build the next batch.
            task = Task(*(t.pin_memory() for t in task))
        return task.to(self.device)

    def _cpu_batch(self, index: int) -> Task:
        sx, sy, qx, qy = [], [], [], []
        for ep_id in (index * self.tasks_per_batch + t for t in self.shard):
            ep = self.sampler.sample(ep_id)
            items = np.concatenate([ep.support, ep.query])
            # np.stack, not torch.stack: the same copy, without torch's intra-op thread pool,
            # which stalls when the training step and other processes keep the cores busy.
            x = torch.from_numpy(np.stack([
                self.dataset.load(int(i), (self.seed, ep_id, slot)).numpy() for slot, i in enumerate(items)
            ]))
            ns = len(ep.support)
            sx.append(x[:ns])
            qx.append(x[ns:])
            sy.append(torch.from_numpy(ep.support_labels))
            qy.append(torch.from_numpy(ep.query_labels))
        def stack(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.from_numpy(np.stack([p.numpy() for p in parts]))

        return Task(stack(sx), stack(sy), stack(qx), stack(qy))

    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[Task]:
        """Yield ``batch(start), batch(start + 1), ...`` up to ``stop`` (exclusive; None: forever).

        With ``num_workers > 0`` the batches are built in worker processes and prefetched; they
        are the same tensors, in the same order, as without workers.
        """
        start = _count("start", start, 0)
        if stop is not None:
            stop = _count("stop", stop, start)
        if self.num_workers == 0:
            i = start
            while stop is None or i < stop:
                yield self.batch(i)
                i += 1
            return
        # Without a stop, prefetch in long finite windows so the loader can be built.
        window = 1 << 20
        pin = self.device is not None and self.device.type == "cuda"
        lo = start
        while stop is None or lo < stop:
            hi = lo + window if stop is None else min(stop, lo + window)
            loader = DataLoader(
                _BatchRange(self, lo, hi),
                batch_size=None,
                shuffle=False,
                num_workers=self.num_workers,
                pin_memory=pin,
                persistent_workers=False,
                # The loader draws its workers' base seed from this generator; without one it
                # draws from torch's global RNG, shifting DropGrad's noise and dropout masks.
                generator=torch.Generator(),
            )
            for task in loader:
                yield task if self.device is None else task.to(self.device)
            lo = hi

    def __iter__(self) -> Iterator[Task]:
        """Batches 0, 1, 2, ... without end; use :meth:`iterate` for a range."""
        return self.iterate(0, None)

    def __repr__(self) -> str:
        return (
            f"EpisodeBatches({self.dataset.describe()}; {self.n_way}-way {self.n_shot}-shot "
            f"{self.n_query}-query, {self.tasks_per_batch} tasks per batch, seed={self.seed})"
        )


class _BatchRange(Dataset):
    """Batches lo..hi-1 of an EpisodeBatches as a map-style dataset for DataLoader workers."""

    def __init__(self, batches: EpisodeBatches, lo: int, hi: int) -> None:
        self.batches, self.lo, self.hi = batches, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, k: int) -> Task:
        return self.batches._cpu_batch(self.lo + k)
