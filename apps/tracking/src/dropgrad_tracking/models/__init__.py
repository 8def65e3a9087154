"""Tracking networks: MDNet's VGG-M layout (MetaSDNet) and its MatConvNet weight reader."""

from .matconvnet import MatConvNetError, load_vggm_mat, read_matconvnet_convs
from .vggm import CROP_SIZE, VGGM, build_vggm

__all__ = ["CROP_SIZE", "VGGM", "MatConvNetError", "build_vggm", "load_vggm_mat", "read_matconvnet_convs"]
