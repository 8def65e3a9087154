"""The options of a ``track-train`` run, one dataclass field per command-line option.

Defaults follow Meta-Tracker (Park & Berg 2018) and the DropGrad paper's tracking setting: one
meta-learned inner step on the first frame's samples, queries from the next 10 frames, Adam on
theta and the per-element step sizes, Gaussian DropGrad with p = 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from dropgrad import check_p, check_schedule

__all__ = ["SOURCES", "TrackTrainConfig"]

#: The ``--source`` choices, listed once: the parser's choices and the check below both read it.
#: A new source is a name here plus its branch in ``training/sources.py``'s ``load_sources``.
Source = Literal["synthetic", "otb", "vot", "vid"]
SOURCES: tuple[str, ...] = get_args(Source)


@dataclass
class TrackTrainConfig:
    """Every option of ``track-train`` (the run directory's ``config.json`` holds one).

    ``backbone_source`` is not an option: ``track-train`` fills it in from the tracker's
    ``build_model`` (the weight file's name, or ``random-init``) before the run starts, so a
    checkpoint always says what its backbone was.

    >>> cfg = TrackTrainConfig(tracker="metasdnet", epochs=2)
    >>> cfg.dropgrad, cfg.dropgrad_p, cfg.source
    ('gaussian', 0.2, 'synthetic')
    >>> cfg.dropgrad_spec
    'gaussian:0.2'
    >>> TrackTrainConfig(dropgrad_p=1.0)
    Traceback (most recent call last):
    ...
    ValueError: DropGrad: --dropgrad-p must satisfy 0 <= --dropgrad-p < 1, got --dropgrad-p=1.0
    """

    tracker: str = field(default="metasdnet", metadata={"help": "meta-learned tracker to train (a registered name; track-train --help lists them)"})
    source: Source = field(default="synthetic", metadata={"help": "training sequences: synthetic (procedural, no files), otb (raw OTB folders or --annotations JSON), vot (VOT folders, optionally --list-file vot-otb.txt), vid (ImageNet-VID: --list-file ilsvrc_train.json and --root Data/VID/train)"})
    root: str | None = field(default=None, metadata={"path": True, "help": "data folder: otb: the folder of sequence folders or the image root of --annotations; vot: the VOT root; vid: ImageNet-VID's Data/VID/train; synthetic: where the set lives (default <out>/synthetic-data, generated if absent)"})
    annotations: str | None = field(default=None, metadata={"path": True, "help": "--source otb: ground truth as a pysot-format JSON (OTB100.json)"})
    list_file: str | None = field(default=None, metadata={"path": True, "help": "--source vot: a list of sequence folders (Meta-Tracker's vot-otb.txt); --source vid: Meta-Tracker's ilsvrc_train.json (required)"})
    sequences: str | None = field(default=None, metadata={"help": "comma-separated subset of the source's sequences (default: all)"})
    synthetic_sequences: int = field(default=16, metadata={"help": "--source synthetic: number of sequences"})
    synthetic_frames: int = field(default=60, metadata={"help": "--source synthetic: frames per sequence"})
    synthetic_height: int = field(default=240, metadata={"help": "--source synthetic: frame height in pixels"})
    synthetic_width: int = field(default=320, metadata={"help": "--source synthetic: frame width in pixels"})
    synthetic_seed: int = field(default=1, metadata={"help": "--source synthetic: seed of the set (track-eval's synthetic set uses --seed 0 by default, so the default training set is disjoint from it)"})
    val_sequences: int = field(default=2, metadata={"help": "held-out validation sequences: the last N of the source (in name order); they and the other sequences of their videos are never trained on"})
    val_tasks: int = field(default=8, metadata={"help": "fixed validation tasks per held-out sequence (support frames evenly spaced)"})
    epochs: int = field(default=10, metadata={"help": "meta-training epochs"})
    steps_per_epoch: int = field(default=100, metadata={"help": "meta-batches (Adam steps) per epoch"})
    tasks_per_batch: int = field(default=8, metadata={"help": "tasks (sequence, frame) per meta-batch"})
    horizon: int | None = field(default=None, metadata={"help": "query frames after the support frame (default: the tracker's, 10 as in Meta-Tracker)"})
    outer_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the meta-update (theta and the per-element step sizes)"})
    grad_clip: float | None = field(default=None, metadata={"help": "clip the meta-gradient's global norm (default: off)"})
    dropgrad: Literal["gaussian", "binary", "none"] = field(default="gaussian", metadata={"help": "DropGrad noise on the inner gradient (none: the baseline)"})
    dropgrad_p: float = field(default=0.2, metadata={"help": "DropGrad rate p, 0 <= p < 1 (noise variance p/(1-p))"})
    dropgrad_schedule: Literal["constant", "linear"] = field(default="constant", metadata={"help": "DropGrad strength over epochs (linear: from 0 at the first epoch to full at the last)"})
    first_order: bool = field(default=False, metadata={"help": "first-order meta-gradient (drop the second-order terms)"})
    backbone_weights: str | None = field(default=None, metadata={"path": True, "help": "local backbone weight file (metasdnet: MatConvNet imagenet-vgg-m.mat; metacrest: a torchvision VGG-16 state dict); default: random initialisation, with a warning"})
    backbone_source: str | None = field(default=None, metadata={"help": "set by track-train (what the backbone was built from); not an option"})
    patience: int | None = field(default=None, metadata={"help": "early stopping: epochs without a lower validation loss (default: never)"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also write checkpoints/last.pt every this many steps, for long epochs (0: at epoch ends only)"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, task choice and noise"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, expected: str) -> None:
            if not ok:
                value = getattr(self, option.replace("-", "_"))
                raise ValueError(f"--{option} must be {expected}, got {value!r}")

        need(isinstance(self.tracker, str) and bool(self.tracker.strip()), "tracker", "a tracker name")
        need(self.source in SOURCES, "source", "one of " + ", ".join(SOURCES))
        need(self.synthetic_sequences >= 2, "synthetic-sequences", ">= 2 (training and held-out validation)")
        need(self.synthetic_frames >= 2, "synthetic-frames", ">= 2")
        need(self.synthetic_height >= 64, "synthetic-height", ">= 64")
        need(self.synthetic_width >= 64, "synthetic-width", ">= 64")
        need(self.synthetic_seed >= 0, "synthetic-seed", ">= 0")
        need(self.val_sequences >= 1, "val-sequences", ">= 1")
        need(self.val_tasks >= 1, "val-tasks", ">= 1")
        need(self.epochs >= 1, "epochs", ">= 1")
        if self.dropgrad != "none":
            check_schedule(self.dropgrad_schedule, self.epochs, "--dropgrad-schedule", "--epochs")
        need(self.steps_per_epoch >= 1, "steps-per-epoch", ">= 1")
        need(self.tasks_per_batch >= 1, "tasks-per-batch", ">= 1")
        need(self.horizon is None or self.horizon >= 1, "horizon", ">= 1")
        need(self.outer_lr > 0, "outer-lr", "> 0")
        need(self.grad_clip is None or self.grad_clip > 0, "grad-clip", "> 0")
        need(self.patience is None or self.patience >= 1, "patience", ">= 1")
        need(self.checkpoint_every_steps >= 0, "checkpoint-every-steps", ">= 0")
        need(self.seed >= 0, "seed", ">= 0")
        check_p(self.dropgrad_p, "--dropgrad-p")
        if self.source != "otb" and self.annotations is not None:
            raise ValueError(f"--annotations is for --source otb, not --source {self.source}")
        if self.source in ("synthetic", "otb") and self.list_file is not None:
            raise ValueError(f"--list-file is for --source vot or vid, not --source {self.source}")
        if self.source == "vid" and (self.list_file is None or self.root is None):
            raise ValueError("--source vid needs --list-file (Meta-Tracker's ilsvrc_train.json) and --root (ImageNet-VID Data/VID/train)")
        if self.source == "vot" and self.root is None:
            raise ValueError("--source vot needs --root (the folder holding the VOT sequence folders)")
        if self.source == "otb" and self.root is None and self.annotations is None:
            raise ValueError("--source otb needs --root (raw OTB sequence folders) and/or --annotations (OTB100.json)")

    @property
    def dropgrad_spec(self) -> str:
        """The DropGrad setting in one word: ``gaussian:0.2``, ``binary:0.1`` or ``none``."""
        if self.dropgrad == "none" or self.dropgrad_p == 0:
            return "none"
        suffix = ":linear" if self.dropgrad_schedule == "linear" else ""
        return f"{self.dropgrad}:{self.dropgrad_p:g}{suffix}"
