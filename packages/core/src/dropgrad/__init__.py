"""DropGrad: gradient dropout for gradient-based meta-learning, and the pieces around it.

>>> import torch
>>> from torch import nn
>>> import dropgrad
>>> learner = dropgrad.MAML(nn.Linear(4, 3), inner_lr=0.1, steps=1,
...                         dropgrad=dropgrad.DropGrad(p=0.1, kind="gaussian"))
>>> task = dropgrad.Task(torch.randn(1, 3, 4), torch.arange(3)[None],
...                      torch.randn(1, 6, 4), torch.arange(3).repeat(2)[None])
>>> learner.meta_loss(task).loss.backward()
"""

from .atomic import atomic_write, write_json
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    RUN_APPS,
    ConfigError,
    add_dataclass_arguments,
    build_config,
    check_app_marker,
    config_to_dict,
    load_config_file,
    namespace_values,
    save_config,
)
from .distributed import DistributedContext, DistributedError, Shard
from .dropout import ConsistentDropout, has_consistent_dropout, resample_dropout_masks
from .episodes import Episode, EpisodeSampler
from .graphs import CapturedEvaluation, CapturedMetaStep
from .inner import MAML, MAMLPlusPlus, MetaOutput, MetaSGD, Task, msl_weights, sgd_step
from .metrics import MeanCI, mean_ci95, summarize
from .noise import RESNET_GROUPS, DropGrad, check_p, check_schedule
from .rundir import check_new_run_dir, folder_tag, is_unstarted_run, resume_run, run_config, start_run
from .runtime import (
    autocast,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    select_device,
)
from .training import (
    MetaTrainer,
    TrainConfig,
    load_best_model,
    plot_metrics,
    read_metrics,
)

__version__ = "0.1.0"

__all__ = [
    "MAML",
    "RESNET_GROUPS",
    "RUN_APPS",
    "CapturedEvaluation",
    "CapturedMetaStep",
    "CheckpointError",
    "ConfigError",
    "ConsistentDropout",
    "DistributedContext",
    "DistributedError",
    "DropGrad",
    "Episode",
    "EpisodeSampler",
    "MAMLPlusPlus",
    "MeanCI",
    "MetaOutput",
    "MetaSGD",
    "MetaTrainer",
    "Shard",
    "Task",
    "TrainConfig",
    "add_dataclass_arguments",
    "atomic_write",
    "autocast",
    "build_config",
    "capture_rng_state",
    "check_app_marker",
    "check_new_run_dir",
    "check_p",
    "check_schedule",
    "config_to_dict",
    "folder_tag",
    "has_consistent_dropout",
    "is_unstarted_run",
    "load_best_model",
    "load_checkpoint",
    "load_config_file",
    "mean_ci95",
    "msl_weights",
    "namespace_values",
    "plot_metrics",
    "read_metrics",
    "resample_dropout_masks",
    "restore_rng_state",
    "resume_run",
    "run_config",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "select_device",
    "sgd_step",
    "start_run",
    "summarize",
    "write_json",
]
