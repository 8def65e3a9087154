"""The options of a few-shot run (``fewshot-train``), one dataclass field per command-line option.

Defaults follow the paper's sources (CloserLook's MAML and the DropGrad release): 5 inner steps
at inner lr 0.01, 4 tasks per meta-batch, Adam 1e-3, 16 query images per class while training,
600 test episodes with 15 queries, Gaussian DropGrad with p = 0.1. Where the original code has a
hidden rule, this config states it as an explicit option instead (see ``resolve_defaults``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dropgrad import check_p, check_schedule

from .data.build import DEFAULT_IMAGE_SIZE, GRAYSCALE, PATH_OPTIONS, format_data_option, parse_data_option
from .models.build import BACKBONE_SPECS

__all__ = ["COMPILE_FORMS", "DATASET_DEFAULTS", "FewShotConfig", "resolve_defaults"]

Dataset = Literal["glyphs", "omniglot", "miniimagenet", "cub"]

# (epochs, episodes per epoch) when --epochs / --episodes-per-epoch are not given.
# glyphs: sized so the default run takes about 5 minutes on 2 CPU cores.
# Real data sets: CloserLook trains meta-learners for 600 (1-shot) / 400 (5-shot) "epochs" of
# 100 episodes and silently multiplies MAML's epochs by its 4 tasks per update; the product of
# both is written out here: 2400 / 1600 epochs of 100 tasks (60,000 / 40,000 meta-batches).
DATASET_DEFAULTS: dict[str, dict[str, int]] = {
    "glyphs": {"epochs": 10, "episodes_per_epoch": 80},
    "omniglot": {"epochs": 60, "episodes_per_epoch": 1000},
}

# --compile-forms names -> the dropgrad.MAML(folded_forms=...) settings each turns on.
COMPILE_FORMS: dict[str, dict[str, bool | int]] = {
    "pwpool": {"pointwise_max_pool": True},
    "pad8": {"channel_multiple": 8},
    "unfold": {"unfold_depth": 27},  # in_channels * kh * kw of a 3x3 convolution over RGB
    "grouped": {"grouped_tasks": True},
    "idxpool": {"indexed_pool_backward": True},
    "tpool": {"triton_pool": True},
}


def _meta_epochs(shot: int) -> int:
    return 2400 if shot == 1 else 1600


@dataclass
class FewShotConfig:
    """Every option of ``fewshot-train`` (the run directory's ``config.json`` holds one)."""

    dataset: Dataset = field(default="glyphs", metadata={"help": "training data set (glyphs: the embedded procedural default, no files needed)"})
    data_root: str | None = field(default=None, metadata={"path": True, "help": "folder of the data set (omniglot: the folder holding images_background/; miniimagenet: the image folder, or the ILSVRC folder for CloserLook filelists; cub: CUB_200_2011/)"})
    test_dataset: Dataset | None = field(default=None, metadata={"help": "data set of the final test (default: --dataset; cub after miniimagenet is the cross-domain protocol)"})
    test_data_root: str | None = field(default=None, metadata={"path": True, "help": "folder of --test-dataset (default: --data-root when --test-dataset is --dataset)"})
    data_options: list[str] = field(default_factory=list, metadata={"help": "loader options of --dataset, comma-separated KEY=VALUE as fewshot-cache --option takes them, e.g. filelist_dir=DIR (CloserLook's base/val/novel.json outside --data-root), csv_dir=DIR, class_maps=FILE, layout=csv, check_sizes=false (a partial copy); see DATA.md"})
    test_data_options: list[str] = field(default_factory=list, metadata={"help": "the same for a --test-dataset other than --dataset"})
    val_dataset: Dataset | None = field(default=None, metadata={"help": "data set whose val split selects the best model: --dataset (the default) or --test-dataset (CloserLook's cross-domain protocol validates on CUB's val classes)"})
    train_classes: Literal["base", "all"] = field(default="base", metadata={"help": "classes of --dataset meta-trained on: base (its train split) or all (train, val and test splits together: CloserLook's cross-domain protocol, all.json; needs --test-dataset and --val-dataset of another data set)"})
    cache: str | None = field(default=None, metadata={"path": True, "help": "folder of episode caches built by fewshot-cache / tools/build_episode_cache.py: train/val/test read decoded uint8 images from memory-mapped files and augment on the device (--data-root is then not needed, and not read: the log says so when both are given)"})
    method: Literal["maml", "metasgd", "metasgd-star", "mamlpp"] = field(default="maml", metadata={"help": "meta-learning method (metasgd-star: MetaSGD from a feature extractor pre-trained with cross-entropy on the base classes)"})
    first_order: bool = field(default=False, metadata={"help": "first-order approximation (no second derivatives)"})
    backbone: Literal["conv4", "conv4-48", "resnet10", "resnet18"] = field(default="conv4", metadata={"help": "network (ResNets: CloserLook variant; conv4-48: MAML++'s 48-filter Conv4)"})
    image_size: int | None = field(default=None, metadata={"help": "input size in pixels (default: 28 for glyphs/omniglot, 84 for Conv4 and 224 for ResNets on RGB sets)"})
    augment: bool = field(default=False, metadata={"help": "training-time augmentation: random resized crop, colour jitter and flip on RGB sets; shifts of up to 2 px on glyphs/omniglot"})
    omniglot_protocol: Literal["maml", "background"] = field(default="maml", metadata={"help": "omniglot split: maml (1200/423 characters, as Finn et al.) or background (images_background / images_evaluation)"})
    rotations: bool | None = field(default=None, metadata={"help": "glyphs, omniglot: rotations by 90 degrees are new classes (default: on for omniglot's maml protocol, off otherwise)"})
    way: int = field(default=5, metadata={"help": "classes per task (N-way)"})
    shot: int = field(default=1, metadata={"help": "support images per class (K-shot)"})
    query: int = field(default=16, metadata={"help": "query images per class in training tasks"})
    test_query: int = field(default=15, metadata={"help": "query images per class in validation and test tasks"})
    inner_steps: int = field(default=5, metadata={"help": "inner-loop steps (training and test)"})
    inner_lr: float = field(default=0.01, metadata={"help": "inner-loop step size (initial value for metasgd/mamlpp)"})
    meta_batch: int = field(default=4, metadata={"help": "tasks per meta-batch (one Adam step)"})
    outer_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the meta-update"})
    outer_lr_schedule: Literal["constant", "cosine"] | None = field(default=None, metadata={"help": "the meta-update's learning rate over the epochs: constant, or cosine (annealed once per epoch from --outer-lr to 1e-5 over --epochs: MAML++'s cosine annealing of the meta-optimiser); default: cosine for --method mamlpp, constant otherwise"})
    dropgrad: Literal["none", "binary", "gaussian"] = field(default="gaussian", metadata={"help": "DropGrad noise on the inner-loop gradients (none: the baseline)"})
    p: float = field(default=0.1, metadata={"help": "DropGrad rate p, 0 <= p < 1 (noise variance p/(1-p))"})
    dropgrad_layers: str = field(default="all", metadata={"help": "which parameters get DropGrad: all, or comma-separated groups (ResNets: conv,block1..block4,fc; Conv4: conv1..conv4,fc) or name patterns"})
    dropgrad_schedule: Literal["constant", "linear"] = field(default="constant", metadata={"help": "DropGrad strength over epochs (linear: from 0 at the first epoch to full at the last)"})
    regularizer: Literal["none", "dropout", "spatialdropout"] = field(default="none", metadata={"help": "activation regulariser compared with DropGrad: one mask per task, shared by f_theta and f_theta'"})
    dropout_p: float = field(default=0.3, metadata={"help": "drop rate of --regularizer dropout/spatialdropout"})
    epochs: int | None = field(default=None, metadata={"help": "meta-training epochs (default: glyphs 10, omniglot 60, real RGB sets 2400 for 1-shot / 1600 otherwise: CloserLook's epochs with its hidden x4 made explicit)"})
    episodes_per_epoch: int | None = field(default=None, metadata={"help": "training tasks (not meta-batches) per epoch; a multiple of --meta-batch (default: glyphs 80, omniglot 1000, RGB sets 100)"})
    val_episodes: int = field(default=100, metadata={"help": "validation tasks per epoch (a fixed set, drawn once)"})
    test_episodes: int = field(default=600, metadata={"help": "test tasks of the final evaluation"})
    patience: int | None = field(default=None, metadata={"help": "early stopping: epochs without a better validation accuracy (default: never)"})
    msl_epochs: int | None = field(default=None, metadata={"help": "mamlpp: epochs with the multi-step loss (default: 15% of --epochs, rounded, at least 1: Antoniou et al.'s 15 of 100, whatever an epoch's length)"})
    first_order_epochs: int = field(default=0, metadata={"help": "mamlpp: first-order epochs before switching to second order (derivative-order annealing)"})
    pretrain_epochs: int = field(default=20, metadata={"help": "metasgd-star: cross-entropy pre-training epochs over the base classes"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "metasgd-star: Adam learning rate of the pre-training"})
    pretrain_batch: int = field(default=64, metadata={"help": "metasgd-star: pre-training batch size"})
    batched: Literal["auto", "on", "off", "fold"] = field(default="auto", metadata={"help": "adapt a meta-batch's tasks together: on = with torch.func.vmap; fold = folded into the batch dimension (norms, activations and pooling run once for all tasks, convolutions per task; the fastest for Conv4 first order with --compile and --cuda-graph on an H200); off = the per-task loop; auto: vmap on a GPU when it is exact for the model, but second-order training and training from a CUDA graph loop"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast (GPU), MetaSGD*'s pre-training included"})
    cuda_graph: Literal["auto", "on", "off"] = field(default="auto", metadata={"help": "record the meta-training step, and evaluation's chunk of tasks, once each in a CUDA graph and replay them (auto: on a GPU; removes the per-operator launch cost that bounds the step; shapes are fixed within a run, a new epoch's settings record a new graph)"})
    compile: bool = field(default=False, metadata={"help": "run the backbone through torch.compile (inductor) in first-order meta-training steps: fused kernels, compiled once per input shape at the start (needs --first-order, mamlpp's --first-order-epochs or --compile-second-order; evaluation runs eagerly; not with --regularizer dropout/spatialdropout)"})
    compile_second_order: bool = field(default=False, metadata={"help": "with --compile, also compile second-order meta-training steps: each inner step (forward, gradient, update) is one compiled function whose backward, the double backward, is compiled too (per-task loop or --batched fold; not with --checkpoint or --batched on)"})
    compile_combo: bool = field(default=False, metadata={"help": "with --compile: inductor's combo kernels (independent small kernels of a compiled step launched as one kernel; +4.9% for folded Conv4 first order on an H200: 321 against 306 tasks/s; refused with --compile-forms grouped, with which it crashed there)"})
    compile_forms: str = field(default="none", metadata={"help": "with --compile and --batched fold: other forms of layers where the folded steps are compiled, comma-separated: unfold (convolutions of at most 27 values per output pixel, e.g. 3x3 over RGB, as one matmul over their unfolded input; folded Conv4 first order on an H200 with --compile-combo: 366 against 313 tasks/s, same run), grouped (experimental: the other per-task convolutions as one grouped convolution per layer; refused with --compile-combo, which crashed with it on an H200; without combo kernels not timed on a GPU yet), pad8 (input channels padded with zeros to a multiple of 8, on a GPU in half precision; 339 against 325), pwpool (max pooling over non-overlapping windows as pointwise operators; slower on an H200: 116 against 325), idxpool (experimental: that pooling's backward as a pointwise select at the saved indices; slower on an H200 with --compile-combo --compile-forms unfold: 256 against 356 tasks/s, same run), tpool (experimental: that pooling as two hand-written Triton kernels on a GPU, not timed on a GPU yet; one of pwpool, idxpool and tpool); the same sums up to rounding; none: off (docs/performance.md)"})
    cudnn_benchmark: bool = field(default=True, metadata={"help": "on a GPU, let cuDNN time its convolution algorithms once per input shape and keep the fastest (the shapes are fixed within a run)"})
    channels_last: bool = field(default=False, metadata={"help": "store conv weights channels_last (NHWC; faster convolutions on recent GPUs, above all with --bf16)"})
    task_chunk: int | None = field(default=None, metadata={"help": "batched meta-training: adapt and back-propagate this many tasks at a time, so peak memory is one chunk's (default: the whole meta-batch; the per-task loop, --batched off, already holds one task at a time)"})
    task_streams: int | None = field(default=None, metadata={"help": "per-task meta-training on a GPU: run the meta-batch's tasks on this many concurrent CUDA streams, so a step replayed from a CUDA graph (--cuda-graph) runs their small kernels side by side (same meta-gradients up to summation order; memory of that many tasks at once; not with mamlpp, whose BatchNorm running statistics the tasks share)"})
    checkpoint: bool = field(default=False, metadata={"help": "second order: recompute each inner step during the backward pass instead of keeping its activations (less memory, about one more forward+backward per step)"})
    verify_images: bool = field(default=False, metadata={"help": "decode every image of the three splits before training, so an unreadable file stops the run before it starts (default: it stops the run, naming the file, when first loaded)"})
    num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, episodes and noise"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, expected: str) -> None:
            if not ok:
                value = getattr(self, option.replace("-", "_"))
                raise ValueError(f"--{option} must be {expected}, got {value!r}")

        self.data_options = self._checked_options(self.dataset, self.data_options, "--data-options")
        if self.test_data_options:
            if self.test_dataset in (None, self.dataset):
                raise ValueError("--test-data-options applies to a --test-dataset other than --dataset; use --data-options")
            self.test_data_options = self._checked_options(self.test_dataset, self.test_data_options, "--test-data-options")
        need(self.way >= 2, "way", ">= 2")
        need(self.shot >= 1, "shot", ">= 1")
        need(self.query >= 1, "query", ">= 1")
        need(self.test_query >= 1, "test-query", ">= 1")
        need(self.inner_steps >= 1, "inner-steps", ">= 1")
        need(self.inner_lr > 0, "inner-lr", "> 0")
        need(self.meta_batch >= 1, "meta-batch", ">= 1")
        need(self.task_chunk is None or self.task_chunk >= 1, "task-chunk", ">= 1")
        if self.task_chunk is not None and self.batched == "off":
            raise ValueError("--task-chunk applies to batched meta-training (--batched auto, on or fold); "
                             "the per-task loop of --batched off already back-propagates one task at a time")
        need(self.task_streams is None or self.task_streams >= 2, "task-streams", ">= 2")
        if self.task_streams is not None and self.method == "mamlpp":
            raise ValueError("--task-streams does not support --method mamlpp (concurrent tasks would update its shared BatchNorm running statistics)")
        need(self.outer_lr > 0, "outer-lr", "> 0")
        check_p(self.p, "--p")
        need(0 <= self.dropout_p < 1, "dropout-p", "in [0, 1)")
        need(self.epochs is None or self.epochs >= 1, "epochs", ">= 1")
        need(self.msl_epochs is None or self.msl_epochs >= 0, "msl-epochs", ">= 0")
        if self.epochs is not None and self.dropgrad != "none":
            check_schedule(self.dropgrad_schedule, self.epochs, "--dropgrad-schedule", "--epochs")
        need(self.episodes_per_epoch is None or self.episodes_per_epoch >= 1, "episodes-per-epoch", ">= 1")
        if self.episodes_per_epoch is not None and self.episodes_per_epoch % self.meta_batch:
            raise ValueError(
                f"--episodes-per-epoch {self.episodes_per_epoch} must be a multiple of --meta-batch {self.meta_batch}"
            )
        need(self.patience is None or self.patience >= 1, "patience", ">= 1")
        need(self.seed >= 0, "seed", ">= 0")
        need(self.val_episodes >= 1, "val-episodes", ">= 1")
        need(self.test_episodes >= 1, "test-episodes", ">= 1")
        need(self.image_size is None or self.image_size >= 8, "image-size", ">= 8")
        need(self.num_workers >= 0, "num-workers", ">= 0")
        need(self.pretrain_epochs >= 1, "pretrain-epochs", ">= 1")
        need(self.pretrain_batch >= 2, "pretrain-batch", ">= 2")
        if self.method == "mamlpp" and self.first_order_epochs < 0:
            raise ValueError("--first-order-epochs must be >= 0")
        if self.compile and self.regularizer != "none":
            raise ValueError(f"--compile does not support --regularizer {self.regularizer} (its per-task mask is drawn inside the forward); use --no-compile")
        if self.compile_combo:
            if not self.compile:
                raise ValueError("--compile-combo needs --compile")
            import torch
            import torch._inductor.config as inductor_config

            if not hasattr(inductor_config, "combo_kernels"):
                raise ValueError(f"--compile-combo needs inductor's combo_kernels setting, which torch {torch.__version__} lacks; drop --compile-combo")
        if self.folded_forms and (not self.compile or self.batched != "fold"):
            raise ValueError(f"--compile-forms {self.compile_forms} needs --compile and --batched fold (the forms apply where folded steps are compiled)")
        if self.compile_combo and self.folded_forms.get("grouped_tasks"):
            # Three of five such runs on an H200 (torch 2.11) stopped the process: inductor's kernel for
            # max pooling's backward read window offsets out of range (a device-side assert).
            raise ValueError("--compile-forms grouped with --compile-combo crashed on an H200 (torch 2.11: a device-side "
                             "assert in inductor's kernel for max pooling's backward; docs/performance.md); drop one of them")
        if self.compile_second_order:
            if not self.compile:
                raise ValueError("--compile-second-order needs --compile")
            if self.first_order:
                raise ValueError("--compile-second-order has no second-order step to compile with --first-order; drop one")
            if self.checkpoint:
                raise ValueError("--compile-second-order does not support --checkpoint (torch.func.grad in the compiled step turns off the hooks checkpointing needs); drop one")
            if self.batched == "on":
                raise ValueError("--compile-second-order compiles the per-task loop's or folded tasks' steps, not vmap's (--batched on); use --batched auto, off or fold")
        elif self.compile and not self.first_order and not (self.method == "mamlpp" and self.first_order_epochs > 0):
            raise ValueError(
                "--compile applies to first-order steps unless --compile-second-order is given: add --first-order, "
                "--compile-second-order, or with --method mamlpp --first-order-epochs N; or drop --compile"
            )
        if self.dataset != "glyphs" and self.data_root is None and self.cache is None:
            raise ValueError(f"--dataset {self.dataset} needs --data-root (the folder holding the data set) or --cache (a folder of episode caches)")
        other = self.test_dataset not in (None, self.dataset, "glyphs")
        if other and self.test_data_root is None and self.cache is None:
            raise ValueError(f"--test-dataset {self.test_dataset} needs --test-data-root (its own folder; --data-root is {self.dataset}'s) or --cache")
        if self.val_dataset not in (None, self.dataset, self.test_dataset):
            raise ValueError(f"--val-dataset must be --dataset ({self.dataset}) or --test-dataset ({self.test_dataset}), got {self.val_dataset}")
        if self.train_classes not in ("base", "all"):
            raise ValueError(f"--train-classes must be base or all, got {self.train_classes!r}")
        if self.train_classes == "all":
            # Every class of --dataset is trained on: validating or testing on it would score seen classes.
            if self.test_dataset in (None, self.dataset) or self.val_dataset in (None, self.dataset):
                raise ValueError("--train-classes all trains on every class of --dataset: it needs --test-dataset and --val-dataset "
                                 "of another data set (CloserLook's cross-domain protocol: --dataset miniimagenet --train-classes all "
                                 "--val-dataset cub --test-dataset cub)")
            if self.cache is not None:
                raise ValueError("--train-classes all reads the data set's files; it does not combine with --cache")

    @staticmethod
    def _checked_options(dataset: str, entries: list[str], option: str) -> list[str]:
        """``entries`` checked against ``dataset``'s loader; folder and file options made absolute,
        so ``fewshot-test`` and ``--config`` find them from any working directory."""
        own = {"protocol": "--omniglot-protocol", "rotations": "--rotations"}
        out, seen = [], set()
        for text in entries:
            key, value = parse_data_option(dataset, text, option)
            if key in own:
                raise ValueError(f"{option} {text!r}: {key} has its own option, {own[key]}")
            if key in seen:
                raise ValueError(f"{option}: {key} is given twice")
            seen.add(key)
            if key in PATH_OPTIONS:
                value = str(Path(value).expanduser().resolve())
            out.append(format_data_option(key, value))
        return out

    def loader_options(self, dataset: str) -> dict[str, object]:
        """The parsed ``--data-options`` of ``dataset`` (``--test-data-options`` for another data set)."""
        entries = self.data_options if dataset == self.dataset else self.test_data_options
        return dict(parse_data_option(dataset, text) for text in entries)

    @property
    def folded_forms(self) -> dict[str, bool | int]:
        """``dropgrad.MAML(folded_forms=...)`` for ``--compile-forms`` (``{}``: none); ValueError names a bad one."""
        names = [n.strip() for n in self.compile_forms.split(",")]
        if names == ["none"]:
            return {}
        unknown = [n for n in names if n not in COMPILE_FORMS]
        if unknown or len(set(names)) != len(names):
            raise ValueError(
                f"--compile-forms must be none or distinct comma-separated names among {', '.join(COMPILE_FORMS)}, "
                f"got {self.compile_forms!r}"
            )
        pooling = [n for n in ("pwpool", "idxpool", "tpool") if n in names]
        if len(pooling) > 1:
            raise ValueError(f"--compile-forms: {' and '.join(pooling)} are forms of the same max pooling; give one")
        return {k: v for n in names for k, v in COMPILE_FORMS[n].items()}

    @property
    def image_size_resolved(self) -> int:
        """The input size the data sets are built with."""
        if self.image_size is not None:
            return self.image_size
        if self.dataset in GRAYSCALE:
            return DEFAULT_IMAGE_SIZE[self.dataset]
        return BACKBONE_SPECS[self.backbone].rgb_image_size

    @property
    def channels(self) -> int:
        return 1 if self.dataset in GRAYSCALE else 3


# MAML++'s multi-step loss runs for this share of training: Antoniou et al. train 100 epochs and
# anneal it over the first 15. Our epochs are 100 tasks, theirs 500 iterations, so a count of
# epochs would not carry over; the share does.
MSL_SHARE = 0.15


def resolve_defaults(cfg: FewShotConfig) -> FewShotConfig:
    """Fill the defaults that depend on other options (epochs, episodes per epoch, MAML++'s
    multi-step-loss epochs) so config.json states them.

    >>> cfg = resolve_defaults(FewShotConfig())
    >>> cfg.epochs, cfg.episodes_per_epoch, cfg.msl_epochs, cfg.outer_lr_schedule
    (10, 80, 2, 'constant')
    >>> c = resolve_defaults(FewShotConfig(dataset="cub", data_root="CUB_200_2011", shot=5))
    >>> c.epochs, c.episodes_per_epoch
    (1600, 100)
    """
    defaults = DATASET_DEFAULTS.get(cfg.dataset, {"epochs": _meta_epochs(cfg.shot), "episodes_per_epoch": 100})
    episodes = cfg.episodes_per_epoch or defaults["episodes_per_epoch"]
    # Round the default up to whole meta-batches (an explicit value was already checked).
    episodes = -(-episodes // cfg.meta_batch) * cfg.meta_batch
    epochs = cfg.epochs or defaults["epochs"]
    return dataclasses.replace(
        cfg,
        epochs=epochs,
        episodes_per_epoch=episodes,
        msl_epochs=cfg.msl_epochs if cfg.msl_epochs is not None else max(1, round(MSL_SHARE * epochs)),
        outer_lr_schedule=cfg.outer_lr_schedule or ("cosine" if cfg.method == "mamlpp" else "constant"),
        test_dataset=cfg.test_dataset or cfg.dataset,
        # Another data set's folder is never --data-root (__post_init__ asks for its own).
        test_data_root=cfg.test_data_root if cfg.test_data_root is not None or cfg.test_dataset not in (None, cfg.dataset) else cfg.data_root,
    )
