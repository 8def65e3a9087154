"""Options of ``viewpoint-train`` (every field is a command-line option and a config-file key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dropgrad import check_p, check_schedule

from .models.trunk import Trunk

__all__ = ["DEFAULT_SYNTHETIC_ROOT", "ViewpointConfig"]

DEFAULT_SYNTHETIC_ROOT = "runs/viewpoint-data"  # under runs/, which git ignores


@dataclass
class ViewpointConfig:
    """MetaView + DropGrad meta-training and few-shot evaluation."""

    dataset: Literal["synthetic", "objectnet3d"] = field(
        default="synthetic", metadata={"help": "synthetic: the embedded procedural set (generated if absent); objectnet3d: a real ObjectNet3D folder"}
    )
    data_root: str | None = field(
        default=None, metadata={"path": True, "help": f"data folder (synthetic default: {DEFAULT_SYNTHETIC_ROOT} in the working directory, stored absolute in config.json; required for objectnet3d)"}
    )
    shots: int = field(default=10, metadata={"help": "annotated support images per category (K-shot)"})
    query: int = field(default=5, metadata={"help": "query images per meta-training task"})
    meta_batch: int = field(default=4, metadata={"help": "tasks (categories) per meta-update"})
    dropgrad: Literal["none", "binary", "gaussian"] = field(default="gaussian", metadata={"help": "DropGrad noise kind (none: the MetaView baseline)"})
    p: float = field(default=0.1, metadata={"help": "DropGrad rate p (noise variance p/(1-p)), 0 <= p < 1"})
    schedule: Literal["constant", "linear"] = field(default="constant", metadata={"help": "DropGrad strength schedule"})
    epochs: int = field(default=10, metadata={"help": "meta-training epochs"})
    steps_per_epoch: int = field(default=80, metadata={"help": "meta-updates per epoch"})
    inner_steps: int = field(default=3, metadata={"help": "inner-loop steps while meta-training"})
    eval_steps: int = field(default=3, metadata={"help": "inner-loop steps when adapting at validation/test time"})
    inner_lr: float = field(default=1.0, metadata={"help": "inner-loop step size alpha (initial value when learned)"})
    inner_lr_3d: float = field(default=0.01, metadata={"help": "alpha of the depth/canonical output layer (its gradients are larger)"})
    outer_lr: float = field(default=3e-3, metadata={"help": "Adam learning rate of the meta-update"})
    first_order: bool = field(
        default=True, metadata={"help": "first-order meta-gradient (second order through conv layers is ~25x slower on CPU)"}
    )
    trunk: Trunk = field(default="small", metadata={"help": "feature extractor (resnet18: the paper's, for real data on a GPU)"})
    image_size: int = field(default=64, metadata={"help": "crop side in pixels fed to the trunk (224 with resnet18)"})
    head_kernel: int = field(default=1, metadata={"help": "first conv kernel of the per-keypoint module: 1 (per-position MLP, fast) or 3"})
    learn_inner_lr: bool = field(default=True, metadata={"help": "meta-learn one inner step size per parameter tensor (MAML++-style)"})
    hidden: int = field(default=16, metadata={"help": "channels of the per-keypoint viewpoint module"})
    weight_3d: float = field(default=10.0, metadata={"help": "weight of the depth and canonical-coordinate losses"})
    weight_hidden: float = field(
        default=1.0, metadata={"help": "weight of the flat-heatmap loss on keypoints not visible in an image (0: off)"}
    )
    train_sets: str = field(default="train", metadata={"help": "comma-separated Image_sets/*.txt with the base-category images"})
    test_sets: str = field(default="val", metadata={"help": "comma-separated Image_sets/*.txt with the novel-category test images"})
    novel_categories: str = field(
        default="", metadata={"help": "comma-separated test categories (empty: Image_sets/novel_categories.txt if present, else StarMap's 20)"}
    )
    val_categories: int = field(default=3, metadata={"help": "base categories held out for validation (seeded choice)"})
    val_draws: int = field(default=2, metadata={"help": "support draws per validation category each epoch"})
    eval_draws: int = field(default=10, metadata={"help": "support draws per test category in the final evaluation"})
    preload: bool = field(default=True, metadata={"help": "crop every object once and keep the crops in memory (off for large real sets)"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, initialisation and noise"})
    threads: int = field(
        default=1,
        metadata={"help": "CPU threads for torch (0: torch's default); 1 was 10x+ faster than 2 on a shared 2-core CPU"},
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self) -> None:
        """Raise ValueError naming the option when a value is out of range."""
        check_p(self.p, "--p")
        for name, low in (("shots", 1), ("query", 1), ("meta_batch", 1), ("epochs", 1), ("steps_per_epoch", 1),
                          ("inner_steps", 1), ("eval_steps", 1), ("image_size", 16), ("hidden", 1),
                          ("val_categories", 0), ("val_draws", 1), ("eval_draws", 1), ("seed", 0), ("threads", 0),
                          ("weight_hidden", 0), ("weight_3d", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        for name in ("inner_lr", "inner_lr_3d", "outer_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.head_kernel not in (1, 3):
            raise ValueError(f"--head-kernel must be 1 or 3, got {self.head_kernel}")
        if self.dropgrad != "none":
            check_schedule(self.schedule, self.epochs, "--schedule", "--epochs")
        if self.dataset == "objectnet3d" and not self.data_root:
            raise ValueError("--dataset objectnet3d needs --data-root (the folder with Annotations/, Images/, Image_sets/, CAD/)")
