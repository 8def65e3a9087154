"""Data-parallel meta-training over processes started by ``torchrun``: one context object.

Each process (rank) builds the same meta-batch, adapts only its shard of the tasks, and the
meta-gradients are combined with ONE all-reduce over a flat buffer after ``step_fn``'s backward
and before clipping and the optimiser step. Every rank then takes the same optimiser step, so
the model stays identical on all ranks without ever being broadcast during training.

Why an explicit all-reduce and not ``DistributedDataParallel``: a MAML step runs several
backward passes per meta-batch (one per task in the per-task loop, plus ``autograd.grad`` calls
inside the inner loop) through ``functional_call`` on fast weights, never through the module's
own ``forward`` that DDP hooks; and the meta-learned parameters include step sizes outside the
backbone. DDP's per-backward bucket hooks would fire once per task (or need ``no_sync``
bookkeeping) and cannot see the functional calls, while a single reduction after the whole
meta-batch is exact, costs one collective per optimiser step and works for every learner.

Gradients are weighted by each rank's share of the meta-batch's tasks (``Shard.weight``), so
with an uneven split (5 tasks on 2 ranks: 3 + 2) the sum over ranks is still the mean over all
tasks, i.e. the single-process meta-gradient (up to float summation order).

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) the context is a no-op single-process
one: ``shard`` returns everything, collectives return their input, so callers need no branch.

>>> ctx = DistributedContext.from_env({})          # not under torchrun
>>> ctx.is_distributed, ctx.is_main, ctx.world_size
(False, True, 1)
>>> shard_bounds(5, rank=1, world_size=2)
Shard(start=3, stop=5, total=5)
>>> shard_bounds(5, rank=1, world_size=2).weight
0.4
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .runtime import select_device

__all__ = [
    "RANK_SEED_STRIDE",
    "DistributedContext",
    "DistributedError",
    "Shard",
    "shard_bounds",
]

# Rank r's global RNGs are seeded with seed + r * RANK_SEED_STRIDE (a prime far from the
# small offsets apps use for their episode streams), rank 0 keeping the single-process stream.
RANK_SEED_STRIDE = 104_729


class DistributedError(RuntimeError):
    """Another process of the run failed (its message is included), or the torchrun setup is wrong."""


@dataclass(frozen=True)
class Shard:
    """The contiguous part ``start:stop`` of ``total`` items that one rank handles.

    >>> s = Shard(0, 3, 5)
    >>> len(s), s.slice, list(s.indices), s.weight
    (3, slice(0, 3, None), [0, 1, 2], 0.6)
    """

    start: int
    stop: int
    total: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def indices(self) -> range:
        return range(self.start, self.stop)

    @property
    def weight(self) -> float:
        """This rank's share of the items: the factor that turns its mean into its part of the global mean."""
        return len(self) / self.total if self.total else 0.0


def shard_bounds(n_items: int, rank: int, world_size: int) -> Shard:
    """Split ``n_items`` into ``world_size`` contiguous parts differing by at most one item.

    The first ``n_items % world_size`` ranks get one item more; ranks past ``n_items`` get an
    empty shard (weight 0). Concatenating the shards in rank order gives ``0 .. n_items - 1``.

    >>> [tuple(shard_bounds(7, r, 3).indices) for r in range(3)]
    [(0, 1, 2), (3, 4), (5, 6)]
    >>> len(shard_bounds(1, rank=1, world_size=2))
    0
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 0:
        raise ValueError(f"n_items must be an integer >= 0, got {n_items!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return Shard(start, start + base + (rank < extra), n_items)


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


class DistributedContext:
    """Rank, world size and collectives of one process of a torchrun job (or a no-op single process).

    Args:
        rank: global rank (torchrun's ``RANK``).
        world_size: number of processes (``WORLD_SIZE``); 1 is the no-op context.
        local_rank: rank on this machine (``LOCAL_RANK``): the CUDA device index it uses.

    Call :meth:`init` once (it picks the backend from the device: nccl on CUDA, gloo on CPU),
    then use :meth:`meta_batch_shard` in the step function and hand the context to
    :class:`dropgrad.MetaTrainer`, which reduces the gradients and keeps ranks in lock-step.

    >>> ctx = DistributedContext()
    >>> ctx.init("cpu")
    device(type='cpu')
    >>> shard = ctx.meta_batch_shard(4)
    >>> shard.slice, shard.weight
    (slice(0, 4, None), 1.0)
    >>> ctx.all_reduce_gradients([], metrics={"loss": 0.5})
    {'loss': 0.5}
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0) -> None:
        if world_size < 1:
            raise DistributedError(f"WORLD_SIZE must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise DistributedError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
        if local_rank < 0:
            raise DistributedError(f"LOCAL_RANK must be >= 0, got {local_rank}")
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device: torch.device | None = None
        self.backend: str | None = None
        self._grad_weight: float | None = None
        self._setup_open = True
        self._failure_agreed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistributedContext:
        """The context torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

        Without those variables (a plain ``python`` or console-script start) it is the
        single-process context. ``MASTER_ADDR``/``MASTER_PORT`` are read by :meth:`init`.
        """
        env = os.environ if environ is None else environ
        world = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", 0)
        local = _env_int(env, "LOCAL_RANK", rank)
        if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise DistributedError(
                f"WORLD_SIZE={world} but MASTER_ADDR/MASTER_PORT are not set; start the processes with "
                "torchrun (e.g. torchrun --nproc_per_node=2 ...)"
            )
        return cls(rank=rank, world_size=world, local_rank=local)

    # ------------------------------------------------------------------ basics
    @property
    def is_distributed(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.device is not None

    def __repr__(self) -> str:
        return (
            f"DistributedContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
            f"backend={self.backend!r}, device={self.device})"
        )

    def init(self, device: str | None = "auto", timeout_s: float = 1800.0) -> torch.device:
        """Pick this rank's device, join the process group; returns the device.

        Args:
            device: the ``--device`` value. Single process: anything :func:`select_device`
                takes. Under torchrun: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is present,
                else CPU), ``cuda`` (``cuda:LOCAL_RANK``) or ``cpu``; an explicit ``cuda:N``
                is refused, since each process owns the GPU of its local rank.
            timeout_s: how long a collective may wait for the other ranks.

        Raises:
            ValueError: a device this process cannot use (names the option and the rank).

        Calling it again with the same device returns the device it already chose.
        """
        if self.device is not None:
            return self.device
        if not self.is_distributed:
            self.device = select_device(device)
            return self.device
        spec = "auto" if device is None else str(device)
        if spec == "cpu":
            chosen = torch.device("cpu")
        elif spec in ("auto", "cuda"):
            if torch.cuda.is_available():
                if self.local_rank >= torch.cuda.device_count():
                    raise ValueError(
                        f"--device {spec}: process with LOCAL_RANK={self.local_rank} needs cuda:{self.local_rank} "
                        f"but only {torch.cuda.device_count()} CUDA device(s) are visible; start at most that "
                        "many processes per node"
                    )
                chosen = torch.device("cuda", self.local_rank)
            elif spec == "cuda":
                raise ValueError("--device cuda asks for CUDA but torch sees none; use --device cpu (gloo) or auto")
            else:
                chosen = torch.device("cpu")
        else:
            raise ValueError(
                f"--device {spec!r} under torchrun: each process uses the GPU of its LOCAL_RANK; pass "
                "--device auto, cuda or cpu (select GPUs with CUDA_VISIBLE_DEVICES)"
            )
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if dist.is_initialized():
            backend = str(dist.get_backend())  # joined already (e.g. by the caller): keep its group
        else:
            dist.init_process_group(
                backend=backend,
                init_method="env://",
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        self.device, self.backend = chosen, backend
        return chosen

    def destroy(self) -> None:
        """Leave the process group (safe to call more than once, and on the no-op context)."""
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()
        self.device = None

    def rank_seed(self, seed: int) -> int:
        """This rank's seed: ``seed`` on rank 0 (so rank 0 equals a single-process run), else offset.

        >>> DistributedContext(rank=2, world_size=4).rank_seed(7) == 7 + 2 * RANK_SEED_STRIDE
        True
        """
        return seed + self.rank * RANK_SEED_STRIDE

    def shard(self, n_items: int) -> Shard:
        """This rank's contiguous part of ``n_items`` (see :func:`shard_bounds`)."""
        return shard_bounds(n_items, self.rank, self.world_size)

    def meta_batch_shard(self, n_tasks: int) -> Shard:
        """:meth:`shard` of a meta-batch's tasks; also makes its weight the weight of this rank's
        gradients in the next :meth:`all_reduce_gradients` (so the step's update is the mean
        over all ``n_tasks`` tasks, whatever the split)."""
        part = self.shard(n_tasks)
        self._grad_weight = part.weight
        return part

    # ------------------------------------------------------------- collectives
    def _require(self) -> None:
        if self.is_distributed and not dist.is_initialized():
            raise DistributedError("DistributedContext.init() must be called before any collective")

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if not self.is_distributed:
            return
        self._require()
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (picklable), returned on every rank."""
        if not self.is_distributed:
            return obj
        self._require()
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        self._require()
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` (in place) with rank ``src``'s values; one collective per dtype."""
        if not self.is_distributed:
            return
        self._require()
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault(t.dtype, []).append(t)
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.device)
            dist.broadcast(flat, src=src)
            offset = 0
            with torch.no_grad():
                for t in group:
                    n = t.numel()
                    t.copy_(flat[offset : offset + n].view_as(t))
                    offset += n

    def broadcast_module(self, module: nn.Module, extra: Sequence[torch.Tensor] = (), src: int = 0) -> None:
        """Give every rank rank ``src``'s parameters and buffers of ``module`` (and ``extra`` tensors)."""
        seen: set[int] = set()
        tensors: list[torch.Tensor] = []
        for t in [*module.parameters(), *module.buffers(), *extra]:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        self.broadcast_tensors(tensors, src=src)

    def all_reduce_gradients(
        self,
        params: Iterable[torch.Tensor],
        *,
        metrics: Mapping[str, float | torch.Tensor] | None = None,
        buffers: Iterable[torch.Tensor] = (),
        weight: float | None = None,
    ) -> dict[str, float | torch.Tensor]:
        """Combine the ranks' gradients, step metrics and buffers with ONE all-reduce; in place.

        Every rank contributes ``weight * grad`` (``weight``: the given one, else that of the
        latest :meth:`meta_batch_shard`, else ``1 / world_size``) and gets the sum, so when the
        weights are the task shares the result is the mean over all tasks of the meta-batch.
        A parameter without a gradient on some ranks counts as zero there; one without a
        gradient on every rank keeps ``grad = None`` (as in a single process, so the optimiser
        skips it). ``metrics`` (the step function's means over this rank's tasks) are combined
        with the same weights. Floating-point ``buffers`` (e.g. BatchNorm running statistics)
        become the weighted mean over ranks; integer buffers take rank 0's value, so every rank
        holds the same state.

        Args:
            params: the optimiser's parameters, in the same order on every rank.
            metrics: the same keys on every rank.
            buffers: model buffers to keep identical across ranks.
            weight: this rank's weight; see above.

        Returns:
            The combined metrics as floats (``metrics`` unchanged in a single process: a
            one-element tensor stays one, unread).
        """
        w = weight if weight is not None else self._grad_weight
        self._grad_weight = None
        if not self.is_distributed:
            return dict(metrics or {})
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        self._require()
        if w is None:
            w = 1.0 / self.world_size
        params = list(params)
        buffers = list(buffers)
        has_int = any(not b.is_floating_point() for b in buffers)
        dtype = torch.float64 if has_int else torch.float32
        for t in [*(p.grad for p in params if p.grad is not None), *buffers]:
            if t.is_floating_point():
                dtype = torch.promote_types(dtype, t.dtype)
        # Layout: [gradients | buffers | has-gradient flags | metrics]; the small tail comes back
        # to the host in one copy.
        n_grads = sum(p.numel() for p in params)
        n_bufs = sum(b.numel() for b in buffers)
        flat = torch.zeros(n_grads + n_bufs + len(params) + len(metrics), dtype=dtype, device=self.device)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is not None and w != 0:
                torch.mul(p.grad.detach().reshape(-1).to(dtype), w, out=flat[offset : offset + n])
            offset += n
        for b in buffers:
            n = b.numel()
            if b.is_floating_point():
                torch.mul(b.detach().reshape(-1).to(dtype), w, out=flat[offset : offset + n])
            elif self.is_main:
                flat[offset : offset + n].copy_(b.detach().reshape(-1))
            offset += n
        # A rank with no tasks has no metric values to give (maybe NaN): weight 0 means 0.
        tail = [float(p.grad is not None) for p in params] + [v * w if w else 0.0 for v in metrics.values()]
        flat[offset:].copy_(torch.tensor(tail, dtype=dtype))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)

        tail = flat[offset:].cpu().tolist()
        present, reduced = tail[: len(params)], tail[len(params) :]
        offset = 0
        with torch.no_grad():
            for p, flag in zip(params, present):
                n = p.numel()
                if flag != 0:
                    value = flat[offset : offset + n].view(p.shape).to(p.dtype)
                    if p.grad is None:
                        p.grad = value.clone(memory_format=torch.preserve_format)
                    else:
                        p.grad.copy_(value)
                offset += n
            for b in buffers:
                n = b.numel()
                seg = flat[offset : offset + n].view(b.shape)
                b.copy_(seg if b.is_floating_point() else seg.round())
                offset += n
        return dict(zip(metrics, (float(v) for v in reduced)))

    # ------------------------------------------------------------ setup phase
    def agree(self, error: BaseException | None = None, *, final: bool = False) -> None:
        """A synchronisation point of the setup phase: every rank says whether it failed.

        Every rank must call it the same number of times before training (or report through
        :meth:`fail` from its error handler, which counts as a call). If any rank failed, the
        ranks that did not raise :class:`DistributedError` with the first failure's message, so
        all processes stop before training with one clear error instead of hanging in a
        collective. ``final=True`` closes the setup phase (later errors are not voted on).

        Raises:
            DistributedError: another rank failed.
            BaseException: ``error`` itself, if given.
        """
        if final:
            self._setup_open = False
        if not self.is_distributed:
            if error is not None:
                raise error
            return
        message = None if error is None else (str(error) or type(error).__name__)
        votes = self.all_gather_object(message)
        failed = [(r, m) for r, m in enumerate(votes) if m is not None]
        if not failed:
            return
        self._setup_open = False
        self._failure_agreed = True
        if error is not None:
            raise error
        rank, first = failed[0]
        raise DistributedError(f"process {rank} of {self.world_size} failed before training: {first}")

    def fail(self, error: BaseException) -> bool:
        """Report ``error`` to the other ranks if they may be waiting in :meth:`agree`; never raises.

        Call it from the error handler around the setup: it votes only while the setup phase
        is open (a no-op after training started and in a single process).

        Returns:
            True when every rank knows of the failure and is stopping too (so the handler may
            still use collectives, e.g. rank 0 prints the error and all ranks meet at a
            :meth:`barrier`, so torchrun does not stop rank 0 before it has printed).
        """
        if self.is_distributed and self._setup_open and dist.is_initialized():
            self._setup_open = False
            try:
                self.all_gather_object(str(error) or type(error).__name__)
                self._failure_agreed = True
            except Exception:  # noqa: BLE001, S110 - the process is failing already; its own error matters
                pass
        return self._failure_agreed
