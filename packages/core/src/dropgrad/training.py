"""The meta-training loop shared by every app: steps, validation, early stopping, checkpoints.

An app supplies a ``step_fn`` (one meta-batch: sample tasks, adapt, meta-loss, ``backward()``)
and optionally a ``validate_fn``; :class:`MetaTrainer` owns everything around them: zeroing and
clipping gradients, the optimiser and scheduler steps, bf16 autocast, the DropGrad schedule,
progress bar, logs, validation, early stopping, atomic checkpoints and exact resume.

Run directory written by :meth:`MetaTrainer.fit`::

    metrics.jsonl          one JSON object per line: "train" (means over the last
                           log_every_steps steps), "val" (once per epoch) and "resume" events
    log.txt                every line the trainer prints
    checkpoints/last.pt    full training state, at every epoch end (after validation) and
                           every checkpoint_every_steps steps
    checkpoints/best.pt    model weights whenever the monitored metric improves
    train_summary.json     what fit() returns
    train_config.json      the TrainConfig of the (latest) fit call

With a :class:`dropgrad.distributed.DistributedContext` of several processes (torchrun), every
rank runs the same loop in lock-step: the gradients of ``step_fn`` are combined by one
all-reduce before clipping and the optimiser step, validation results are broadcast from rank 0
so every rank takes the same best/early-stopping decisions, and only rank 0 writes the files
above, prints and shows the progress bar. ``last.pt`` also holds every rank's RNG state, so a
resume on the same number of processes is exact.

Epochs are 0-based everywhere (files, callbacks, summary); printed lines show the index and
the count, e.g. ``epoch 2 (3/10)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write, write_json
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .distributed import DistributedContext
from .noise import DropGrad, check_schedule
from .runtime import autocast, capture_rng_state, restore_rng_state

__all__ = [
    "MetaTrainer",
    "ProgressNoise",
    "TrainConfig",
    "load_best_model",
    "plot_metrics",
    "read_metrics",
]

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
SUMMARY_FILE = "train_summary.json"
CONFIG_FILE = "train_config.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


@runtime_checkable
class ProgressNoise(Protocol):
    """What the trainer needs from a gradient-noise operator such as ``dropgrad.noise.DropGrad``."""

    def set_progress(self, fraction: float) -> None: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any: ...


@dataclass
class TrainConfig:
    """Options of the meta-training loop (each field's ``metadata["help"]`` documents it).

    >>> cfg = TrainConfig(epochs=3, patience=2)
    >>> cfg.monitor, cfg.monitor_mode
    ('val_loss', 'min')
    >>> TrainConfig(epochs=0)
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig.epochs must be >= 1, got 0
    """

    epochs: int = field(default=10, metadata={"help": "number of meta-training epochs"})
    steps_per_epoch: int = field(
        default=100, metadata={"help": "optimiser steps (meta-batches) per epoch"}
    )
    monitor: str = field(
        default="val_loss",
        metadata={
            "help": "epoch metric that selects best.pt and drives early stopping: a key returned "
            "by the validation function, or train_<name> for an epoch mean of a step metric"
        },
    )
    monitor_mode: Literal["min", "max"] = field(
        default="min",
        metadata={"help": "whether a lower (min) or higher (max) monitored value is better", "choices": ("min", "max")},
    )
    patience: int | None = field(
        default=None,
        metadata={"help": "stop after this many epochs without improvement of the monitor (default: never stop early)"},
    )
    grad_clip: float | None = field(
        default=None, metadata={"help": "clip the global gradient norm of the meta-update to this value (default: off)"}
    )
    bf16: bool = field(
        default=False, metadata={"help": "run steps and validation under bfloat16 autocast"}
    )
    checkpoint_every_steps: int = field(
        default=0,
        metadata={"help": "also write checkpoints/last.pt every this many optimiser steps (0: only at epoch ends)"},
    )
    log_every_steps: int = field(
        default=10, metadata={"help": "write a train record (means of the step metrics) every this many steps"}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        check("epochs", is_int(self.epochs) and self.epochs >= 1, ">= 1")
        check("steps_per_epoch", is_int(self.steps_per_epoch) and self.steps_per_epoch >= 1, ">= 1")
        check("monitor", isinstance(self.monitor, str) and bool(self.monitor), "a metric name")
        check("monitor_mode", self.monitor_mode in ("min", "max"), "'min' or 'max'")
        check("patience", self.patience is None or (is_int(self.patience) and self.patience >= 1), "None or >= 1")
        check(
            "grad_clip",
            self.grad_clip is None
            or (isinstance(self.grad_clip, (int, float)) and not isinstance(self.grad_clip, bool)
                and math.isfinite(self.grad_clip) and self.grad_clip > 0),
            "None or a positive number",
        )
        check("bf16", isinstance(self.bf16, bool), "True or False")
        check(
            "checkpoint_every_steps",
            is_int(self.checkpoint_every_steps) and self.checkpoint_every_steps >= 0,
            ">= 0",
        )
        check("log_every_steps", is_int(self.log_every_steps) and self.log_every_steps >= 1, ">= 1")
        check("progress", isinstance(self.progress, bool), "True or False")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (JSON- and checkpoint-safe)."""
        return dataclasses.asdict(self)


StepFn = Callable[[int], Mapping[str, Any]]
ValidateFn = Callable[[int], Mapping[str, Any]]


Scalar = float | torch.Tensor  # a float, or a float64 one-element tensor not yet read


def _as_floats(values: Any, source: str, *, lazy: bool = False) -> dict[str, Scalar]:
    """Metrics dict -> ``{str: float}``; accepts 0-d tensors and numpy scalars, refuses the rest.

    ``lazy``: one-element tensors stay tensors (float64, detached), read only when a log line
    or checkpoint needs them. Reading a GPU tensor waits for the GPU to finish the step, so
    the host could not prepare the next step while this one runs.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"{source} must return a dict of metric name -> number, got {type(values).__name__}")
    out: dict[str, Scalar] = {}
    for key, value in values.items():
        try:
            if lazy and isinstance(value, torch.Tensor) and value.device.type != "mps":  # MPS has no float64
                if value.numel() != 1 or value.is_complex():
                    raise TypeError
                out[str(key)] = value.detach().reshape(()).to(torch.float64)  # exact for every real dtype
            else:
                out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            shown = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                     else repr(value))
            raise TypeError(
                f"{source} returned {key!r} = {shown}, which is not a number (use loss.item() or a 0-d tensor)"
            ) from exc
    return out


def _read(values: Mapping[str, Scalar]) -> dict[str, float]:
    """The metrics as Python floats (reads lazy tensors: waits for the GPU)."""
    return {k: float(v) for k, v in values.items()}


def _without_generator_state(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A DropGrad ``state_dict`` without its generator's state (its progress stays)."""
    if state is None:
        return None
    return {
        k: {n: v for n, v in value.items() if n != "generator_state"} if k.endswith("_extra_state") and isinstance(value, dict) else value
        for k, value in state.items()
    }


def _fmt(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class MetaTrainer:
    """Runs meta-training epochs of ``step_fn`` with validation, early stopping and exact resume.

    Args:
        run_dir: directory of this run (created if needed); see the module docstring for layout.
        config: loop options.
        model: the meta-learned model, already on ``device``. Its ``state_dict`` is what
            checkpoints store and ``best.pt`` holds.
        optimizer: the meta-optimiser; its parameters (which may include learned inner
            learning rates outside ``model``) are the ones clipped.
        step_fn: ``step_fn(global_step) -> {"loss": ..., ...}`` does ONE meta-batch: samples its
            tasks (deterministically from ``global_step`` and/or the global RNGs, which are
            checkpointed), computes the meta-loss and calls ``.backward()`` itself (it may do
            so task by task). ``global_step`` is the 0-based index of this optimiser step. The
            trainer zeroes gradients before and runs it under bf16 autocast when
            ``config.bf16`` (so ``backward`` runs inside autocast too); then clips, steps the
            optimiser and, with ``scheduler_interval="step"``, the scheduler. Returned values
            are numbers or one-element tensors. Return tensors on a GPU (not ``.item()``): the
            trainer reads them only when it logs, checkpoints or ends the epoch, so the host
            can queue the next step while the GPU runs this one (in a single process; several
            processes read them at every step's all-reduce).
        validate_fn: ``validate_fn(epoch) -> {"val_loss": ..., ...}``, called once per epoch
            with the model (and ``dropgrad``) in eval mode, NOT under ``torch.no_grad`` (meta-
            learners adapt with gradients at validation time), under autocast when ``config.bf16``.
            Without it, ``config.monitor`` must name an epoch train mean (``train_<name>``).
        scheduler: optional LR scheduler; ``ReduceLROnPlateau`` is stepped with the monitored value.
        scheduler_interval: ``"epoch"`` (after validation) or ``"step"`` (after each optimiser step).
        dropgrad: optional gradient-noise operator; ``set_progress(epoch / max(epochs - 1, 1))``
            at every epoch start (0 at the first epoch, 1 at the last), switched to eval mode for
            validation if it is a module, and checkpointed through its ``state_dict``.
        device: where the model runs (selects the autocast device type).
        on_epoch_start: ``on_epoch_start(epoch)``, called at each epoch start and again when a
            run resumes inside an epoch, so it should set state from ``epoch`` alone; anything
            random in it should be seeded from ``epoch`` (global RNG draws in it are not replayed
            on a mid-epoch resume).
        logger: where printed lines go instead of stdout: a :class:`logging.Logger` (``info``) or
            any ``callable(str)``. Every line is also appended to ``log.txt``.
        distributed: the process's :class:`~dropgrad.distributed.DistributedContext` (already
            ``init()``-ed) when several processes train together; ``step_fn`` then does its
            rank's shard of the meta-batch (``distributed.meta_batch_shard``) and returns means
            over it, and the trainer all-reduces gradients, step metrics and floating-point
            model buffers after it. ``validate_fn`` runs on every rank (it may shard its work
            and gather); rank 0's values are what count. Default: a single process.

    >>> import tempfile
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x = torch.randn(16, 2); y = x.sum(1, keepdim=True)
    >>> def step_fn(global_step):
    ...     loss = ((model(x) - y) ** 2).mean()
    ...     loss.backward()
    ...     return {"loss": loss.item()}
    >>> def validate_fn(epoch):
    ...     return {"val_loss": ((model(x) - y) ** 2).mean().item()}
    >>> cfg = TrainConfig(epochs=3, steps_per_epoch=5, progress=False)
    >>> trainer = MetaTrainer(tempfile.mkdtemp(), cfg, model, opt, step_fn=step_fn,
    ...                       validate_fn=validate_fn, logger=lambda line: None)
    >>> summary = trainer.fit()
    >>> summary["epochs_completed"], summary["global_step"], summary["best_epoch"]
    (3, 15, 2)
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: TrainConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        step_fn: StepFn,
        validate_fn: ValidateFn | None = None,
        scheduler: Any | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
        dropgrad: ProgressNoise | None = None,
        device: torch.device | str = torch.device("cpu"),
        on_epoch_start: Callable[[int], Any] | None = None,
        logger: logging.Logger | Callable[[str], Any] | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        if not callable(step_fn):
            raise TypeError("step_fn must be callable: step_fn(global_step) -> dict of metrics")
        if validate_fn is None and not config.monitor.startswith("train_"):
            raise ValueError(
                f"TrainConfig.monitor={config.monitor!r} needs a validate_fn; pass validate_fn, or "
                "monitor an epoch train mean such as 'train_loss'"
            )
        if dropgrad is not None and not isinstance(dropgrad, ProgressNoise):
            raise TypeError("dropgrad must have set_progress(fraction), state_dict() and load_state_dict()")
        if isinstance(dropgrad, DropGrad) and dropgrad.kind != "none" and dropgrad.p > 0:
            check_schedule(dropgrad.schedule, config.epochs, epochs_option="TrainConfig.epochs")
        self.run_dir = Path(run_dir)
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.step_fn = step_fn
        self.validate_fn = validate_fn
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.dropgrad = dropgrad
        self.device = torch.device(device)
        self.on_epoch_start = on_epoch_start
        if isinstance(logger, logging.Logger):
            self._emit: Callable[[str], Any] | None = logger.info
        else:
            self._emit = logger
        self._bar: Any = None
        self.distributed = distributed if distributed is not None else DistributedContext()
        if self.distributed.is_distributed and not self.distributed.initialized:
            raise ValueError("distributed: call DistributedContext.init() before building the MetaTrainer")
        self._reset_state()

    # ------------------------------------------------------------------ paths
    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def last_path(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT

    # ---------------------------------------------------------------- logging
    def log(self, line: str, *, echo: bool = True) -> None:
        """Append ``line`` to ``log.txt`` and print it (or hand it to the logger); rank 0 only.

        ``echo=False`` only appends: for a line the caller also raises as a warning, which the
        user already sees once.
        """
        if not self.distributed.is_main:
            return
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if not echo:
            return
        if self._emit is not None:
            self._emit(line)
        elif self._bar is not None and not self._bar.disable:
            tqdm.write(line)  # keeps the progress bar intact
        else:
            print(line, flush=True)

    def record(self, event: str, values: Mapping[str, Any]) -> None:
        """Append ``{"event": event, **values}`` as one line to ``metrics.jsonl`` (rank 0 only)."""
        if not self.distributed.is_main:
            return
        line = json.dumps({"event": event, **values}, allow_nan=True)
        # Opened per record so each line is in the OS before the next checkpoint measures sizes.
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self.epoch = 0  # epoch being run, or next to run
        self.step_in_epoch = 0  # optimiser steps done in self.epoch
        self.global_step = 0  # optimiser steps done in total
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self._epoch_sums: dict[str, Scalar] = {}
        self._epoch_count = 0
        self._window_sums: dict[str, Scalar] = {}
        self._window_count = 0
        self._elapsed_before = 0.0  # wall time of earlier (resumed-from) segments
        self._resume_note: str | None = None
        self._t0 = time.perf_counter()

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._t0)

    def _set_mode(self, training: bool) -> None:
        self.model.train(training)
        # A standalone DropGrad must be off while adapting at validation time.
        if isinstance(self.dropgrad, nn.Module):
            self.dropgrad.train(training)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _file_size(self, path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def _checkpoint_payload(self) -> dict[str, Any]:
        return {
            "kind": "last",
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "dropgrad": None if self.dropgrad is None else dict(self.dropgrad.state_dict()),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "epoch_sums": _read(self._epoch_sums),
            "epoch_count": self._epoch_count,
            "window_sums": _read(self._window_sums),
            "window_count": self._window_count,
            "elapsed_s": self._elapsed(),
            "rng": capture_rng_state(),
            # Lines past these sizes were written after this checkpoint; resume cuts them off.
            "log_sizes": {METRICS_FILE: self._file_size(self.metrics_path), LOG_FILE: self._file_size(self.log_path)},
        }

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks and must resume per rank: RNGs and the DropGrad state."""
        return {
            "rng": capture_rng_state(),
            "dropgrad": None if self.dropgrad is None else dict(self.dropgrad.state_dict()),
        }

    def _sync_buffers(self) -> list[torch.Tensor]:
        return list(self.model.buffers()) if self.distributed.is_distributed else []

    def _save_last(self) -> None:
        ctx = self.distributed
        # Collective on every rank; only rank 0 writes.
        ranks = ctx.all_gather_object(self._rank_state()) if ctx.is_distributed else None
        if not ctx.is_main:
            return
        payload = self._checkpoint_payload()
        if ranks is not None:
            payload["ranks"] = ranks
        save_checkpoint(self.last_path, payload)

    def _save_best(self, value: float) -> None:
        if not self.distributed.is_main:
            return
        save_checkpoint(
            self.best_path,
            {
                "kind": "best",
                "model": self.model.state_dict(),
                "epoch": self.epoch,
                "global_step": self.global_step,
                "monitor": self.config.monitor,
                "value": value,
            },
        )

    def _restore(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Load a last.pt payload into the trainer; returns its RNG snapshot (applied later)."""
        if state.get("kind") != "last":
            raise CheckpointError(f"{self.last_path} is not a training-state checkpoint (kind {state.get('kind')!r})")
        saved_spe = state["config"]["steps_per_epoch"]
        if saved_spe != self.config.steps_per_epoch:
            raise ValueError(
                f"cannot resume {self.run_dir}: it was trained with steps_per_epoch={saved_spe}, "
                f"this config has {self.config.steps_per_epoch}"
            )
        load_weights(self.model, state["model"], self.last_path)
        self.optimizer.load_state_dict(state["optimizer"])
        ctx = self.distributed
        ranks = state.get("ranks")
        rng: dict[str, Any] | None = state["rng"]
        if ctx.is_distributed or ranks is not None:
            if ranks is not None and len(ranks) == ctx.world_size:
                own = ranks[ctx.rank]
                rng = own["rng"]
                state = {**state, "dropgrad": own["dropgrad"]}
            else:
                saved = 1 if ranks is None else len(ranks)
                self._resume_note = (
                    f"warning: {self.last_path} was written by {saved} process(es), this run has "
                    f"{ctx.world_size}: tasks split differently and ranks other than 0 start fresh "
                    "random streams, so the resumed run is not bit-identical to an uninterrupted one"
                )
                if not ctx.is_main:
                    rng = None
                    # Rank 0's noise generator too: kept, every rank would draw rank 0's noise.
                    state = {**state, "dropgrad": _without_generator_state(state["dropgrad"])}
        for name, obj in (("scheduler", self.scheduler), ("dropgrad", self.dropgrad)):
            if (obj is None) != (state[name] is None):
                have = "has" if state[name] is not None else "has no"
                raise ValueError(
                    f"cannot resume {self.run_dir}: its checkpoint {have} {name} state but this "
                    f"trainer was given {'a' if obj is not None else 'no'} {name}"
                )
            if obj is not None:
                obj.load_state_dict(state[name])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_value = None if state["best_value"] is None else float(state["best_value"])
        self.best_epoch = None if state["best_epoch"] is None else int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self._epoch_sums = {str(k): float(v) for k, v in state["epoch_sums"].items()}
        self._epoch_count = int(state["epoch_count"])
        self._window_sums = {str(k): float(v) for k, v in state["window_sums"].items()}
        self._window_count = int(state["window_count"])
        self._elapsed_before = float(state["elapsed_s"])
        self._t0 = time.perf_counter()
        for name, path in ((METRICS_FILE, self.metrics_path), (LOG_FILE, self.log_path)):
            size = int(state["log_sizes"][name])
            # Only cut: a file shorter than recorded (lost in a crash) is kept, never zero-padded.
            if ctx.is_main and path.exists() and path.stat().st_size > size:
                os.truncate(path, size)
        return rng

    # ------------------------------------------------------------------- loop
    def _train_step(self, check_grads: bool) -> dict[str, Scalar]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.bf16):
            metrics = _as_floats(self.step_fn(self.global_step), "step_fn", lazy=True)
        params = self._params()
        # Several processes: the mean over the whole meta-batch, before clipping sees it.
        metrics = self.distributed.all_reduce_gradients(params, metrics=metrics, buffers=self._sync_buffers())
        if check_grads and not any(p.grad is not None for p in params):
            raise RuntimeError(
                "step_fn left no gradient on the optimiser's parameters: it must call "
                ".backward() on the meta-loss itself"
            )
        if self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            metrics["grad_norm"] = norm.detach().to(torch.float64)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return metrics

    def _flush_window(self) -> None:
        if self._window_count == 0:
            return
        means = {k: v / self._window_count for k, v in _read(self._window_sums).items()}
        if self._bar is not None and not self._bar.disable:
            # Refreshed here, not per step: it reads the step metrics, which waits for the GPU.
            self._bar.set_postfix({k: f"{v / self._epoch_count:.4g}" for k, v in _read(self._epoch_sums).items()},
                                  refresh=False)
        record = {"epoch": self.epoch, "step": self.global_step, **means, "lr": self._lr(), "time": round(self._elapsed(), 3)}
        self.record("train", record)
        if not self.config.progress:
            self.log(f"epoch {self.epoch} step {self.step_in_epoch}/{self.config.steps_per_epoch} | {_fmt(means)}")
        self._window_sums, self._window_count = {}, 0

    def _validate(self) -> dict[str, float]:
        means = {f"train_{k}": v / max(self._epoch_count, 1) for k, v in _read(self._epoch_sums).items()}
        values = dict(means)
        if self.validate_fn is not None:
            self._set_mode(False)
            try:
                with autocast(self.device, self.config.bf16):
                    values.update(_as_floats(self.validate_fn(self.epoch), "validate_fn"))
            finally:
                self._set_mode(True)
        if self.config.monitor not in values:
            raise ValueError(
                f"TrainConfig.monitor={self.config.monitor!r} is not among the epoch metrics; "
                f"present: {', '.join(sorted(values)) or '(none)'}"
            )
        # Every rank must take rank 0's best/early-stopping/scheduler decisions.
        return self.distributed.broadcast_object(values)

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.config.monitor_mode == "min" else value > self.best_value

    def _end_epoch(self) -> None:
        cfg = self.config
        values = self._validate()
        value = values[cfg.monitor]
        improved = self._improved(value)
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            self._save_best(value)
        else:
            self.bad_epochs += 1
        stop = cfg.patience is not None and self.bad_epochs >= cfg.patience
        self.record("val", {"epoch": self.epoch, "step": self.global_step, **values, "best": improved, "time": round(self._elapsed(), 3)})
        best = f"{self.best_value:.4g} @ epoch {self.best_epoch}" if self.best_value is not None else "none"
        self.log(
            f"epoch {self.epoch} ({self.epoch + 1}/{cfg.epochs}) | {_fmt(values)} | "
            f"best {cfg.monitor}={best}{' (new best)' if improved else ''} | {self._elapsed():.1f}s"
        )
        diverged = sorted(k for k, v in values.items() if not math.isfinite(v))
        if diverged:
            # Otherwise visible only in metrics.jsonl: a NaN epoch neither improves nor stops a run.
            self.log(
                f"warning: epoch {self.epoch}: {', '.join(diverged)} not finite; the run has diverged "
                "(a smaller learning rate or bf16 off may help)"
            )
        if stop:
            self.stopped_early = True
            self.log(
                f"early stopping: {cfg.monitor} did not improve for {self.bad_epochs} epoch(s) "
                f"(patience {cfg.patience}); best {best}"
            )
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            else:
                self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums, self._epoch_count = {}, 0
        self._save_last()  # after validation, so a resume never re-validates or re-trains this epoch

    def summary(self) -> dict[str, Any]:
        """The run summary (also what :meth:`fit` returns and writes to ``train_summary.json``)."""
        return {
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "monitor": self.config.monitor,
            "epochs_completed": self.epoch,
            "global_step": self.global_step,
            "stopped_early": self.stopped_early,
            "wall_time_s": round(self._elapsed(), 3),
        }

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``config.epochs`` epochs are done or early stopping triggers.

        Args:
            resume: continue the run in ``run_dir`` from ``checkpoints/last.pt``: model,
                optimiser, scheduler, dropgrad, counters and RNG states are restored and the logs
                cut back to the checkpoint, so the result equals an uninterrupted run (bit for
                bit on CPU); a run dir without ``last.pt`` yet (stopped before its first
                checkpoint) starts from the beginning. Without ``resume`` the run dir must not
                hold a checkpoint yet.

        Returns:
            ``{"best_epoch", "best_value", "monitor", "epochs_completed", "global_step",
            "stopped_early", "wall_time_s"}`` (also written to ``train_summary.json``).

        Raises:
            ValueError: ``resume`` without a checkpoint, a fresh start over an existing run, a
                monitor key missing from the epoch metrics, or a checkpoint that does not fit
                this trainer.
            dropgrad.checkpoint.CheckpointError: ``last.pt`` is truncated or corrupt.
        """
        cfg = self.config
        ctx = self.distributed
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.last_path.parent.mkdir(parents=True, exist_ok=True)
            # A checkpoint write killed midway (SIGKILL: no cleanup ran) leaves its temporary file.
            for stale in self.last_path.parent.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        self._reset_state()
        pending_rng: dict[str, Any] | None = None
        if resume and not self.last_path.exists():
            # Stopped before its first checkpoint: nothing to continue, and its directory (its
            # config.json already written) would refuse a fresh start. Same seeds: the same run.
            self.log(f"nothing to resume in {self.run_dir} (no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} yet): starting it from the beginning")
            resume = False
        if resume:
            # Every rank reads the same last.pt, so they start from the same state.
            pending_rng = self._restore(load_checkpoint(self.last_path, map_location="cpu"))
            self.record("resume", {"epoch": self.epoch, "step": self.global_step, "time": round(self._elapsed(), 3)})
            self.log(
                f"resumed {self.last_path} at epoch {self.epoch}, step {self.step_in_epoch}/"
                f"{cfg.steps_per_epoch} (global step {self.global_step})"
            )
            if self._resume_note:
                self.log(self._resume_note)
        else:
            if self.last_path.exists():
                raise ValueError(
                    f"{self.run_dir} already holds a run ({CHECKPOINT_DIR}/{LAST_CHECKPOINT}); resume it "
                    "or choose another run directory"
                )
            if ctx.is_main:
                # Leftovers of an attempt killed before its first checkpoint belong to no run.
                self.metrics_path.write_text("", encoding="utf-8")
                self.best_path.unlink(missing_ok=True)
        # The last point where a rank's setup error stops every rank cleanly (see agree()).
        ctx.agree(final=True)
        if not resume:
            # Same seeds should give the same initialisation everywhere; rank 0's makes sure.
            ctx.broadcast_module(self.model, extra=self._params())
        if ctx.is_main:
            write_json(self.run_dir / CONFIG_FILE, cfg.to_dict())

        if pending_rng is not None and (self.step_in_epoch == 0 or self.stopped_early or self.epoch >= cfg.epochs):
            # At an epoch boundary the uninterrupted run called on_epoch_start with these states.
            restore_rng_state(pending_rng)
            pending_rng = None
        check_grads = True
        while not self.stopped_early and self.epoch < cfg.epochs:
            if self.dropgrad is not None:
                self.dropgrad.set_progress(self.epoch / max(cfg.epochs - 1, 1))
            if self.on_epoch_start is not None:
                self.on_epoch_start(self.epoch)
            if pending_rng is not None:
                # Mid-epoch resume: on_epoch_start already ran before the checkpoint; the step
                # stream must continue from the checkpointed RNG states.
                restore_rng_state(pending_rng)
                pending_rng = None
            self._set_mode(True)
            self._bar = tqdm(
                total=cfg.steps_per_epoch,
                initial=self.step_in_epoch,
                desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or not ctx.is_main,
                leave=False,
                dynamic_ncols=True,
            )
            try:
                while self.step_in_epoch < cfg.steps_per_epoch:
                    metrics = self._train_step(check_grads)
                    check_grads = False
                    self.global_step += 1
                    self.step_in_epoch += 1
                    for k, v in metrics.items():
                        self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
                        self._window_sums[k] = self._window_sums.get(k, 0.0) + v
                    self._epoch_count += 1
                    self._window_count += 1
                    if not self._bar.disable:
                        self._bar.update(1)
                    last_step = self.step_in_epoch == cfg.steps_per_epoch
                    if self.step_in_epoch % cfg.log_every_steps == 0 or last_step:
                        self._flush_window()
                    every = cfg.checkpoint_every_steps
                    # The last step of an epoch is checkpointed by _end_epoch, after validation.
                    if every and self.global_step % every == 0 and not last_step:
                        self._save_last()
            finally:
                self._bar.close()
                self._bar = None
            self._end_epoch()

        if not self.stopped_early and self.epoch >= cfg.epochs:
            self.log(f"training complete: {self.epoch} epoch(s), {self.global_step} steps")
        result = self.summary()
        if ctx.is_main:
            write_json(self.run_dir / SUMMARY_FILE, result)
        # Nobody reads best.pt or the summary before rank 0 has written them.
        ctx.barrier()
        return result


def load_best_model(run_dir: str | os.PathLike[str], model: nn.Module, map_location: Any = "cpu") -> dict[str, Any]:
    """Load ``run_dir/checkpoints/best.pt`` into ``model`` (``weights_only`` load).

    Returns:
        ``{"epoch", "global_step", "monitor", "value"}`` of the best checkpoint.

    Raises:
        dropgrad.checkpoint.CheckpointError: ``best.pt`` is missing, corrupt or not a best checkpoint.

    >>> model = nn.Linear(2, 1)
    >>> info = load_best_model("runs/exp1", model)  # doctest: +SKIP
    >>> info["epoch"], info["monitor"]  # doctest: +SKIP
    (7, 'val_loss')
    """
    path = Path(run_dir) / CHECKPOINT_DIR / BEST_CHECKPOINT
    last = path.parent / LAST_CHECKPOINT
    if not path.exists() and last.is_file():
        state = load_checkpoint(last)
        if state.get("kind") == "last" and state.get("best_value") is None and state.get("epoch", 0) > 0:
            # The run trained, but no epoch's monitored value was a number (a diverged run: NaN).
            monitor = state.get("config", {}).get("monitor", "the monitored value")
            raise CheckpointError(
                f"{path} was never written: no epoch of the run had a finite {monitor} (see "
                f"{Path(run_dir) / METRICS_FILE}); {last} holds its last state"
            )
    payload = load_checkpoint(path, map_location=map_location)
    if "model" not in payload:
        raise CheckpointError(f"{path} holds no model weights (keys: {', '.join(sorted(payload))})")
    load_weights(model, payload["model"], path)
    return {k: payload.get(k) for k in ("epoch", "global_step", "monitor", "value")}


def read_metrics(metrics_jsonl: str | os.PathLike[str], event: str | None = None) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` records, optionally only those of one ``event``.

    A last line without its newline that is not JSON, what a run killed while writing leaves
    (a resume cuts it), is left out with a warning.

    Raises:
        ValueError: a line is not a JSON object (names the file and line number).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text('{"event": "val", "epoch": 0, "val_loss": 1.5}\\n')
    >>> read_metrics(p, "val")[0]["val_loss"]
    1.5
    """
    path = Path(metrics_jsonl)
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}:{lineno}: left out an unfinished last line (the run was stopped while writing it)", stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if event is None or record.get("event") == event:
            records.append(record)
    return records


def plot_metrics(
    metrics_jsonl: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    keys: str | Sequence[str],
    event: str = "val",
    *,
    title: str | None = None,
) -> Path:
    """Plot ``keys`` of the ``event`` records of a metrics file to a PNG (Agg, no display needed).

    ``"val"`` records are plotted over ``epoch``, ``"train"`` records over ``step``.

    Args:
        metrics_jsonl: a run's ``metrics.jsonl``.
        out_png: the image to write (parent directory created).
        keys: one metric name or several, e.g. ``["train_loss", "val_loss"]``.
        event: which records to plot.
        title: optional figure title.

    Raises:
        ValueError: no record of that event, or a key that no record has (names those present).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> lines = [f'{{"event": "val", "epoch": {e}, "val_loss": {1 / (e + 1)}}}' for e in range(3)]
    >>> _ = (d / "metrics.jsonl").write_text("\\n".join(lines) + "\\n")
    >>> plot_metrics(d / "metrics.jsonl", d / "val_loss.png", "val_loss").stat().st_size > 0
    True
    """
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    src = Path(metrics_jsonl)
    out = Path(out_png)
    names = [keys] if isinstance(keys, str) else list(keys)
    if not names:
        raise ValueError("plot_metrics: keys must name at least one metric")
    records = read_metrics(src, event)
    if not records:
        raise ValueError(f"{src} has no {event!r} records to plot")
    x_key = "epoch" if event == "val" else "step"
    present = sorted({k for r in records for k in r} - {"event"})
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in names:
        points = [(r[x_key], r[name]) for r in records if name in r and x_key in r and r[name] is not None]
        if not points:
            raise ValueError(f"{src}: no {event!r} record has {name!r}; present: {', '.join(present)}")
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, label=name)
    ax.set_xlabel(x_key)
    ax.set_ylabel(names[0] if len(names) == 1 else "value")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_write(out, lambda f: fig.savefig(f, format="png"))
