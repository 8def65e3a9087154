"""Meta-training of the trackers (``track-train``): options, sequence sources, task sampling, the loop."""

from .config import SOURCES, TrackTrainConfig
from .loop import evaluate_tasks, make_dropgrad, train
from .sources import SequenceSplit, discard_stale_synthetic, load_sources, split_sequences, support_frames
from .tasks import VAL_STREAM, TaskSampler, stack_tasks

__all__ = [
    "SOURCES",
    "VAL_STREAM",
    "SequenceSplit",
    "TaskSampler",
    "TrackTrainConfig",
    "discard_stale_synthetic",
    "evaluate_tasks",
    "load_sources",
    "make_dropgrad",
    "split_sequences",
    "stack_tasks",
    "support_frames",
    "train",
]
