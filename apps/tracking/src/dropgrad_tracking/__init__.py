"""Online object tracking with DropGrad: OTB2015 data, the OTB one-pass evaluation, trackers.

Part 1 (this package so far): loaders for OTB2015 (raw folders or pysot ``OTB100.json``), VOT
and ImageNet-VID meta-training lists, procedural OTB-layout sequences, the OPE scorer with
reports and plots, the got10k tracker interface with a static baseline, and ``track-eval``.

>>> import numpy as np
>>> from dropgrad_tracking import score_sequence
>>> gt = np.array([[10., 10, 20, 20]] * 3)
>>> round(score_sequence(gt, gt).success_auc, 4)
0.9524
"""

from .data import (
    OTB100_NAMES,
    Sequence,
    canonical_name,
    load_otb,
    load_otb_folders,
    load_otb_json,
)
from .evaluation import (
    box_iou,
    center_error,
    evaluate_tracker,
    read_results,
    score_sequence,
    summarize,
)
from .trackers import (
    StaticTracker,
    Tracker,
    available_trackers,
    make_tracker,
    register_tracker,
    run_tracker,
)

__version__ = "0.1.0"

__all__ = [
    "OTB100_NAMES",
    "Sequence",
    "StaticTracker",
    "Tracker",
    "available_trackers",
    "box_iou",
    "canonical_name",
    "center_error",
    "evaluate_tracker",
    "load_otb",
    "load_otb_folders",
    "load_otb_json",
    "make_tracker",
    "read_results",
    "register_tracker",
    "run_tracker",
    "score_sequence",
    "summarize",
]
