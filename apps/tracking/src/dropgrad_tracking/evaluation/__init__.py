"""OTB one-pass evaluation: IoU, success/precision curves, results folders, reports and plots."""

from .iou import box_iou, center_error, is_empty_box
from .ope import (
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    LengthMismatchError,
    SequenceScore,
    Summary,
    align_lengths,
    score_sequence,
    summarize,
)
from .report import (
    TrackerEvaluation,
    attribute_table,
    build_report,
    evaluate_tracker,
    write_report,
)
from .results import ResultsError, TrackerResult, parse_results_arg, read_results

__all__ = [
    "PRECISION_THRESHOLDS",
    "SUCCESS_THRESHOLDS",
    "LengthMismatchError",
    "ResultsError",
    "SequenceScore",
    "Summary",
    "TrackerEvaluation",
    "TrackerResult",
    "align_lengths",
    "attribute_table",
    "box_iou",
    "build_report",
    "center_error",
    "evaluate_tracker",
    "is_empty_box",
    "parse_results_arg",
    "read_results",
    "score_sequence",
    "summarize",
    "write_report",
]
