"""Networks: the shared feature extractor (trunk) and the per-keypoint viewpoint module."""

from .head import KeypointHead
from .trunk import TRUNKS, build_trunk

__all__ = ["TRUNKS", "KeypointHead", "build_trunk"]
