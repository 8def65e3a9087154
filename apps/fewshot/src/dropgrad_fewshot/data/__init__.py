"""Few-shot data: the embedded procedural glyphs, Omniglot, mini-ImageNet and CUB-200-2011.

>>> from dropgrad_fewshot.data import build_dataset, EpisodeBatches
>>> train = build_dataset("glyphs", "train", n_classes=20, images_per_class=5)
>>> task = EpisodeBatches(train, n_way=5, n_shot=1, n_query=2, tasks_per_batch=4, seed=0).batch(0)
>>> tuple(task.support_x.shape), tuple(task.query_y.shape)
((4, 5, 1, 28, 28), (4, 10))
"""

from .base import FewShotDataset, ImageFileDataset, open_image
from .build import DATASETS, build_dataset, dataset_options
from .cache import CachedDataset, build_cache, cache_path, open_cache, verify_cache
from .cached_episodes import CachedEpisodeBatches, episode_batches
from .episodes import EpisodeBatches, check_episodes
from .errors import DataError
from .glyphs import GlyphDataset
from .transforms import GrayscaleTransform, RGBTransform
from .union import ClassUnion

__all__ = [
    "DATASETS",
    "CachedDataset",
    "CachedEpisodeBatches",
    "ClassUnion",
    "DataError",
    "EpisodeBatches",
    "FewShotDataset",
    "GlyphDataset",
    "GrayscaleTransform",
    "ImageFileDataset",
    "RGBTransform",
    "build_cache",
    "build_dataset",
    "cache_path",
    "check_episodes",
    "dataset_options",
    "episode_batches",
    "open_cache",
    "open_image",
    "verify_cache",
]
