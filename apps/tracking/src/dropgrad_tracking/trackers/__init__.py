"""Trackers (got10k's interface), the ``--tracker`` registry and the run-a-tracker path."""

from .base import Tracker, as_array, as_box
from .registry import (
    TrackerOptions,
    TrackerSpec,
    available_trackers,
    make_tracker,
    register_tracker,
    tracker_spec,
)
from .runner import TrackerFailure, TrackingRun, run_tracker, track_sequence
from .static import StaticTracker

register_tracker("static", lambda options: StaticTracker(), "baseline: the first box, held still")
# Imported after "static" so the registry lists the baseline first; importing registers them.
from . import metacrest, metasdnet  # noqa: F401

__all__ = [
    "StaticTracker",
    "Tracker",
    "TrackerFailure",
    "TrackerOptions",
    "TrackerSpec",
    "TrackingRun",
    "as_array",
    "as_box",
    "available_trackers",
    "make_tracker",
    "register_tracker",
    "run_tracker",
    "track_sequence",
    "tracker_spec",
]
