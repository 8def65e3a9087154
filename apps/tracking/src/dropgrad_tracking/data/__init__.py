"""Tracking data: OTB2015 (raw folders or pysot JSON), VOT and ImageNet-VID readers, synthetic sequences."""

from .boxes import BoxFileError, polygon_to_box, read_box_file, write_box_file
from .names import OTB100_NAMES, NameMap, canonical_name, got10k_name, name_key
from .otb import (
    ATTRIBUTES,
    FRAME_RANGES,
    OTBDataError,
    check_frames,
    load_otb,
    load_otb_folders,
    load_otb_json,
)
from .sequence import ImageReadError, Sequence, read_image

__all__ = [
    "ATTRIBUTES",
    "FRAME_RANGES",
    "OTB100_NAMES",
    "BoxFileError",
    "ImageReadError",
    "NameMap",
    "OTBDataError",
    "Sequence",
    "canonical_name",
    "check_frames",
    "got10k_name",
    "load_otb",
    "load_otb_folders",
    "load_otb_json",
    "name_key",
    "polygon_to_box",
    "read_box_file",
    "read_image",
    "write_box_file",
]

from .synthetic import (
    SyntheticConfig,
    ensure_synthetic,
    render_sequence,
    write_synthetic,
)
from .vid import VidSnippet, read_vid_list, vid_sequences
from .vot import load_vot, load_vot_sequence, read_sequence_list

__all__ += [
    "SyntheticConfig",
    "VidSnippet",
    "ensure_synthetic",
    "load_vot",
    "load_vot_sequence",
    "read_sequence_list",
    "read_vid_list",
    "render_sequence",
    "vid_sequences",
    "write_synthetic",
]
