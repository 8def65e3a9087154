"""Meta-batches from an episode cache: one gather, one transfer, conversion and augmentation on the device.

:class:`CachedEpisodeBatches` samples the same episodes as
:class:`~dropgrad_fewshot.data.episodes.EpisodeBatches` (core's ``EpisodeSampler`` over the same
labels and seed), then

1. gathers the uint8 pixels of every image of the meta-batch with one indexed read
   (``np.take``) from the memory map into a (pinned, for CUDA) tensor,
2. copies that tensor to the device once (``non_blocking``),
3. converts, augments and normalises there in batched ops
   (:mod:`~dropgrad_fewshot.data.device_augment`).

Without augmentation the tensors equal ``EpisodeBatches(source data set)``'s bit for bit
(tested). With augmentation, the parameters of batch ``b`` come from
``PCG64([AUGMENT_STREAM, seed, b])``: a pure function of ``(seed, b)``, on any device, but not
the per-image streams of the file path (one generator per batch instead of one per image keeps
the parameter draw at microseconds per batch). A ``shard`` of the tasks draws the whole batch's
parameters and keeps its images' rows, so it equals slicing the whole batch, augmented or not.

The next batch's gather runs on a background thread while the current one trains (``np.take``
releases the GIL for the copy). ``stage(b)`` goes further: it queues batch ``b``'s transfer,
conversion and augmentation at once, on a side CUDA stream, so that on a GPU they run while the
current meta-step does, not in the step stream before the next one (``fewshot-train`` stages each
next batch right after queueing a step). Prefetching and staging change no number.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from dropgrad import EpisodeSampler, Task

from .base import FewShotDataset
from .cache import CachedDataset
from .device_augment import augment_batch
from .episodes import EpisodeBatches, check_episodes, task_shard

__all__ = ["AUGMENT_STREAM", "CachedEpisodeBatches", "episode_batches"]

AUGMENT_STREAM = 0xA06_5EED  # keeps the augmentation stream apart from the sampler's PCG64([seed, i])


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    n = operator.index(value)
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n}")
    return n


class CachedEpisodeBatches:
    """Meta-batches of N-way K-shot Q-query tasks over a :class:`CachedDataset`, built on ``device``.

    Args:
        dataset: the cached split.
        n_way, n_shot, n_query, tasks_per_batch, seed: as :class:`EpisodeBatches`.
        device: where the tasks are built and returned (None: CPU).
        augment: training augmentation on the device (default: ``dataset.augment``).
        prefetch: gather batch ``b + 1`` on a background thread after returning batch ``b``.
            On CUDA it also gives :meth:`stage` its side stream (without it, staging builds the
            batch in the caller's stream).

    ``batch(b)`` returns a :class:`dropgrad.Task` with ``support_x`` of shape
    (T, n_way * n_shot, C, S, S) float32 and ``query_x`` of shape (T, n_way * n_query, C, S, S),
    labels class-major as in :class:`EpisodeBatches`, all on ``device``.

    >>> import tempfile
    >>> from dropgrad_fewshot.data.cache import build_cache
    >>> ds = CachedDataset(build_cache("glyphs", "val", None, 28, tempfile.mkdtemp(), n_classes=6, images_per_class=4))
    >>> task = CachedEpisodeBatches(ds, n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=0).batch(0)
    >>> tuple(task.support_x.shape), task.query_y[0].tolist()
    ((2, 3, 1, 28, 28), [0, 0, 1, 1, 2, 2])
    """

    num_workers = 0  # the background gather replaces data-loader workers

    def __init__(
        self,
        dataset: CachedDataset,
        *,
        n_way: int,
        n_shot: int,
        n_query: int,
        tasks_per_batch: int,
        seed: int,
        device: torch.device | str | None = None,
        augment: bool | None = None,
        prefetch: bool = True,
        shard: slice | None = None,
    ) -> None:
        if not isinstance(dataset, CachedDataset):
            raise TypeError(f"CachedEpisodeBatches needs a CachedDataset, got {type(dataset).__name__}")
        check_episodes(dataset, n_way, n_shot, n_query)
        self.dataset = dataset
        self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
        self.tasks_per_batch = _count("tasks_per_batch (--meta-batch)", tasks_per_batch, 1)
        self.shard = task_shard(shard, self.tasks_per_batch)
        self.seed = _count("seed (--seed)", seed, 0)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.augment = dataset.augment if augment is None else bool(augment)
        self.sampler = EpisodeSampler(dataset.labels, n_way, n_shot, n_query, seed=self.seed, groups=dataset.item_groups())
        self._pin = self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="episode-gather") if prefetch else None
        self._pending: tuple[int, Future] | None = None
        t = len(self.shard)
        self._sy = torch.arange(n_way, device=self.device).repeat_interleave(n_shot).expand(t, -1)
        self._qy = torch.arange(n_way, device=self.device).repeat_interleave(n_query).expand(t, -1)
        # A shard's augmentation: the whole batch's parameters, at the rows of the shard's images
        # (support of every task, then query); None for the whole batch.
        T, ns, nq = self.tasks_per_batch, n_way * n_shot, n_way * n_query
        lo, hi = self.shard.start, self.shard.stop
        rows = np.concatenate([np.arange(lo * ns, hi * ns), T * ns + np.arange(lo * nq, hi * nq)])
        self._draw = None if t == T else (T * (ns + nq), rows)
        self._staged: tuple[int, Task, torch.cuda.Event | None] | None = None
        self._side: torch.cuda.Stream | None = None
        if prefetch and self.device.type == "cuda":
            self._side = torch.cuda.Stream(device=self.device)
            # The labels above were made in the caller's stream; the side stream clones them.
            self._made = torch.cuda.Event()
            self._made.record(torch.cuda.current_stream(self.device))

    def indices(self, index: int) -> np.ndarray:
        """Item indices of batch ``index``: every support item of its tasks (the shard's), then every query item.

        Of shape (T * n_way * (n_shot + n_query),), T the shard's number of tasks.
        """
        t = self.tasks_per_batch
        eps = [self.sampler.sample(index * t + k) for k in self.shard]
        return np.concatenate([ep.support for ep in eps] + [ep.query for ep in eps])

    def gather(self, index: int) -> torch.Tensor:
        """The uint8 pixels of batch ``index`` on the CPU (pinned for CUDA), of shape (B, S, S, C)."""
        idx = self.indices(index)
        images = self.dataset.images
        out = torch.empty((len(idx), *images.shape[1:]), dtype=torch.uint8, pin_memory=self._pin)
        # mode="clip" writes straight into ``out`` ("raise" buffers); the sampler's indices are in range.
        np.take(images, idx, axis=0, out=out.numpy(), mode="clip")
        return out

    def _gathered(self, index: int) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == index:
            u8 = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
            u8 = self.gather(index)
        if self._pool is not None:
            self._pending = (index + 1, self._pool.submit(self.gather, index + 1))
        return u8

    def batch(self, index: int) -> Task:
        """Meta-batch ``index`` (episodes ``index*T .. index*T + T - 1``), on ``device``.

        The batch :meth:`stage` built if it was staged last, else built now in the current stream.
        """
        index = _count("batch index", index, 0)
        staged, self._staged = self._staged, None
        if staged is None or staged[0] != index:
            return self._build(index)
        task, done = staged[1], staged[2]
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in task:
                # Made in the side stream: without this its memory could go back to that
                # stream's pool, and to the next staged batch, while this stream still reads it.
                t.record_stream(stream)
        return task

    def stage(self, index: int) -> None:
        """Start building batch ``index`` now, for the next :meth:`batch` call to return.

        On CUDA (with ``prefetch``) the transfer and the augmentation are queued on a side
        stream and nothing waits for them here: they overlap whatever the caller's stream is
        running, and ``batch(index)`` makes the caller's stream wait for them. Elsewhere the
        batch is built at once. A later ``batch`` of another index drops the staged one.
        """
        index = _count("batch index", index, 0)
        if self._staged is not None and self._staged[0] == index:
            return
        self._staged = None
        if self._side is None:
            self._staged = (index, self._build(index), None)
            return
        self._side.wait_event(self._made)
        with torch.cuda.stream(self._side):
            task = self._build(index)
            done = torch.cuda.Event()
            done.record(self._side)
        self._staged = (index, task, done)

    def _build(self, index: int) -> Task:
        u8 = self._gathered(index).to(self.device, non_blocking=True)
        fmt = self.dataset.pixels
        if self.augment:
            rng = np.random.Generator(np.random.PCG64([AUGMENT_STREAM, self.seed, index]))
            x = fmt._normalize(augment_batch(fmt.unit(u8), rng, draw=self._draw), -3)
        else:
            x = fmt.to_float(u8)
        t = len(self.shard)
        ns = t * self.n_way * self.n_shot
        sx = x[:ns].view(t, self.n_way * self.n_shot, *x.shape[1:])
        qx = x[ns:].view(t, self.n_way * self.n_query, *x.shape[1:])
        return Task(sx, self._sy.clone(), qx, self._qy.clone())

    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[Task]:
        """Yield ``batch(start), batch(start + 1), ...`` up to ``stop`` (exclusive; None: forever)."""
        i = _count("start", start, 0)
        while stop is None or i < stop:
            yield self.batch(i)
            i += 1

    def __iter__(self) -> Iterator[Task]:
        return self.iterate(0, None)

    def close(self) -> None:
        """Stop the background gather thread (also done when the object is collected)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None
        self._staged = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (
            f"CachedEpisodeBatches({self.dataset.describe()}; {self.n_way}-way {self.n_shot}-shot "
            f"{self.n_query}-query, {self.tasks_per_batch} tasks per batch, seed={self.seed}, "
            f"device={self.device}{', augmented on the device' if self.augment else ''})"
        )


def episode_batches(
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
) -> EpisodeBatches | CachedEpisodeBatches:
    """:class:`CachedEpisodeBatches` on ``device`` for a cached split, else :class:`EpisodeBatches` (CPU tensors).

    >>> from dropgrad_fewshot.data.glyphs import GlyphDataset
    >>> type(episode_batches(GlyphDataset("val", n_classes=5, images_per_class=3), n_way=2, n_shot=1,
    ...                      n_query=1, tasks_per_batch=1, seed=0)).__name__
    'EpisodeBatches'
    """
    if isinstance(dataset, CachedDataset):
        return CachedEpisodeBatches(
            dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, tasks_per_batch=tasks_per_batch,
            seed=seed, device=device, shard=shard,
        )
    return EpisodeBatches(
        dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, tasks_per_batch=tasks_per_batch,
        seed=seed, num_workers=num_workers, shard=shard,
    )
