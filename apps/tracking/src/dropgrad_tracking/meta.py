"""What a meta-learned tracker tells ``track-train`` and ``track-eval``: one :class:`MetaTrackerDef`.

Meta-Tracker (Park & Berg 2018) meta-learns, for a tracker's online-adapted network, the initial
parameters theta and one step size per parameter element alpha, so that ONE inner step on the
first frame's samples gives a model that scores the next frames well. That is core's
:class:`dropgrad.MetaSGD` with ``steps=1`` (DropGrad between the inner gradient and the update),
so both trackers share one learner; what differs per tracker is in its definition:

- the network and which of its parameters the inner loop adapts (``adapt`` patterns);
- the loss, and how a training task is cut from a sequence: the support set from frame ``t``,
  the query set from frames ``t+1 .. t+horizon`` (:meth:`MetaTrackerDef.sample_task`);
- how a tracker runs with the meta-learned learner (:meth:`MetaTrackerDef.make_tracker`).

A checkpoint is a ``track-train`` run directory: ``config.json`` names the tracker and the backbone
source, ``checkpoints/best.pt`` holds the learner's ``state_dict`` (theta and alpha).
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dropgrad import DropGrad, MetaSGD, Task, check_app_marker, load_best_model, select_device
from torch import Tensor, nn

from .data.sequence import Sequence
from .trackers.base import Tracker
from .trackers.registry import TrackerOptions, register_tracker

__all__ = [
    "BACKBONE_RANDOM",
    "MetaTrackerDef",
    "available_meta_trackers",
    "build_learner",
    "load_learner",
    "meta_tracker",
    "register_meta",
    "register_meta_tracker",
]

BACKBONE_RANDOM = "random-init"


class MetaTrackerDef(ABC):
    """One meta-learned tracker (MetaSDNet, MetaCREST).

    Attributes:
        name: the ``--tracker`` name, lower case.
        inner_lr: initial value of every per-element step size alpha.
        adapt: ``fnmatch`` patterns of the parameters the inner step adapts (and that get an alpha).
        default_horizon: query frames after the support frame (the paper: 10).
    """

    name: str
    inner_lr: float
    adapt: tuple[str, ...]
    default_horizon: int = 10

    @abstractmethod
    def build_model(self, backbone_weights: Path | None) -> tuple[nn.Module, str]:
        """The network with its backbone loaded from a local file, and the backbone's source.

        Returns ``(model, source)``: ``source`` is the weight file's name, or
        :data:`BACKBONE_RANDOM` when ``backbone_weights`` is None. No warning here: the callers
        warn once they know whether a checkpoint supplies the backbone.
        """

    @abstractmethod
    def loss_fn(self, output: Tensor, target: Tensor) -> Tensor:
        """Scalar loss of the network's ``output`` against a task's labels (support and query alike)."""

    @abstractmethod
    def sample_task(
        self, model: nn.Module, sequence: Sequence, t: int, horizon: int, rng: np.random.Generator
    ) -> Task:
        """One training task: support from frame ``t``, query from ``t+1 .. t+horizon``.

        Shapes are fixed per tracker definition (so tasks stack). ``model`` is given so frozen
        features may be computed here; ``rng`` is the only randomness used. Build the tensors
        on the model's device (the built-in trackers do): the training loop moves a task made
        elsewhere, but cutting crops on the CPU for a GPU model costs more than the step.
        """

    @abstractmethod
    def make_tracker(self, learner: MetaSGD, metadata: dict[str, Any], seed: int) -> Tracker:
        """A got10k-interface tracker that adapts with ``learner`` (in eval mode: DropGrad off)."""


_REGISTRY: dict[str, MetaTrackerDef] = {}


def register_meta_tracker(definition: MetaTrackerDef) -> MetaTrackerDef:
    """Add a definition under ``definition.name``; registering a name twice is an error."""
    key = definition.name.lower()
    if key in _REGISTRY:
        raise ValueError(f"a meta-learned tracker named {key!r} is already registered")
    _REGISTRY[key] = definition
    return definition


def available_meta_trackers() -> list[str]:
    """Registered meta-learned tracker names, sorted."""
    return sorted(_REGISTRY)


def meta_tracker(name: str) -> MetaTrackerDef:
    """The definition registered as ``name``; an unknown name lists the known ones."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"--tracker {name!r} is not a meta-learned tracker; choose from {', '.join(available_meta_trackers())}")
    return _REGISTRY[key]


def build_learner(
    definition: MetaTrackerDef,
    backbone_weights: Path | None,
    dropgrad: DropGrad | None = None,
    first_order: bool = False,
) -> tuple[MetaSGD, str]:
    """The shared learner: ``MetaSGD`` with one inner step over ``definition.adapt``.

    Returns ``(learner, backbone_source)``.
    """
    model, source = definition.build_model(backbone_weights)
    learner = MetaSGD(
        model,
        inner_lr=definition.inner_lr,
        steps=1,
        first_order=first_order,
        dropgrad=dropgrad,
        loss_fn=definition.loss_fn,
        adapt=list(definition.adapt),
    )
    return learner, source


def register_meta(definition: MetaTrackerDef, help: str) -> MetaTrackerDef:
    """Register ``definition`` for ``track-train`` (:func:`register_meta_tracker`) and, under the
    same name, as a ``track-eval`` tracker: its learner from ``--checkpoint`` (a track-train run)
    or else the seeded untrained initialisation (:func:`load_seeded_learner`), wrapped by
    ``definition.make_tracker``. Returns ``definition``."""
    register_meta_tracker(definition)

    def factory(options: TrackerOptions) -> Tracker:
        learner, metadata = load_seeded_learner(
            definition.name, options.checkpoint, options.backbone_weights, select_device(options.device), options.seed
        )
        return definition.make_tracker(learner, metadata, seed=options.seed)

    register_tracker(definition.name, factory, help, accepts=("checkpoint", "backbone_weights"))
    return definition


def load_seeded_learner(
    name: str, checkpoint: Path | None, backbone_weights: Path | None, device: torch.device, seed: int,
) -> tuple[MetaSGD, dict[str, Any]]:
    """:func:`load_learner` with an untrained initialisation drawn from ``seed``, not from
    whatever the process drew before; the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU stream modules initialise from
        return load_learner(name, checkpoint, backbone_weights, device)


def load_learner(
    name: str,
    checkpoint: Path | None,
    backbone_weights: Path | None,
    device: torch.device,
) -> tuple[MetaSGD, dict[str, Any]]:
    """The learner a tracker runs with, in eval mode on ``device``, and its result metadata.

    ``checkpoint``: a ``track-train`` run directory. Its ``config.json`` must name the same
    tracker; its backbone source is recorded. Without a checkpoint the untrained
    initialisation is used and ``metadata["checkpoint"]`` says so. A random backbone (neither
    ``backbone_weights`` nor a checkpoint trained from real weights) gives a warning and
    ``metadata["backbone"] == "random-init"``.

    Raises:
        ValueError: the run directory is not a run of this tracker.
        dropgrad.checkpoint.CheckpointError: ``best.pt`` is missing or corrupt.
    """
    definition = meta_tracker(name)
    learner, source = build_learner(definition, backbone_weights)
    metadata: dict[str, Any] = {"backbone": source, "checkpoint": "untrained-init"}
    if checkpoint is not None:
        run = Path(checkpoint)
        config_path = run / "config.json"
        if not config_path.is_file():
            raise ValueError(f"--checkpoint {run}: no config.json; expected a track-train run directory")
        saved = json.loads(config_path.read_text())
        if isinstance(saved, dict):  # another app's run names that app, not just "no tracker"
            saved = check_app_marker(saved, "track-train", config_path)
        if not isinstance(saved, dict) or "tracker" not in saved:
            raise ValueError(f"--checkpoint {run}: {config_path} names no tracker; expected a track-train run directory")
        if str(saved.get("tracker", "")).lower() != definition.name:
            raise ValueError(
                f"--checkpoint {run}: a run of --tracker {saved.get('tracker')!r}, not {definition.name!r}"
            )
        info = load_best_model(run, learner)
        metadata.update(
            checkpoint=str(run),
            checkpoint_epoch=info["epoch"],
            dropgrad=_dropgrad_label(saved),
            backbone=saved.get("backbone_source", source),
        )
    if metadata["backbone"] == BACKBONE_RANDOM:
        warnings.warn(
            f"{definition.name}: the backbone is randomly initialised (no --backbone-weights); "
            "tracking results are not meaningful",
            stacklevel=2,
        )
    learner.to(device).eval()
    return learner, metadata


def _dropgrad_label(saved: dict[str, Any]) -> str:
    """The run's DropGrad setting as ``track-train`` writes it in ``results.json`` (``gaussian:0.2``)."""
    # Imported here: the training package imports this module.
    from .training.config import TrackTrainConfig

    keys = ("dropgrad", "dropgrad_p", "dropgrad_schedule")
    return TrackTrainConfig(**{k: saved[k] for k in keys if k in saved}).dropgrad_spec
