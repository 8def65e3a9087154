"""Few-shot backbones (Conv4, CloserLook ResNet-10/18), activation regularisers, class activation
maps and the MetaSGD* feature-extractor pre-training.

>>> from dropgrad_fewshot.models import build_model
>>> build_model("conv4", 5, in_channels=1, image_size=28)(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 5])
"""

import torch  # noqa: F401  (used by the docstring example)

from .build import (
    BACKBONES,
    CONV4_GROUPS,
    build_model,
    count_parameters,
    dropgrad_groups,
)
from .cam import cams_from_features, class_activation_maps, save_cam_grid
from .conv4 import Conv4, conv4_output_size
from .net import REGULARIZERS, FewShotNet
from .pretrain import pretrain_feature_extractor
from .resnet import ResNet

__all__ = [
    "BACKBONES",
    "CONV4_GROUPS",
    "REGULARIZERS",
    "Conv4",
    "FewShotNet",
    "ResNet",
    "build_model",
    "cams_from_features",
    "class_activation_maps",
    "conv4_output_size",
    "count_parameters",
    "dropgrad_groups",
    "pretrain_feature_extractor",
    "save_cam_grid",
]
