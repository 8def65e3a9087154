"""Run any tracker over sequences (OPE: start from the first box, never re-initialise).

Writes, per sequence, the results in the OTB text format and in got10k's result layout::

    <out>/results/<tracker>/<Seq>.txt                   x,y,w,h per frame (canonical names)
    <out>/results/<tracker>/times/<Seq>_time.txt        seconds per frame
    <out>/got10k/<Dataset>/<tracker>/<name>.txt         got10k's names (Jogging.1, Human4)
    <out>/got10k/<Dataset>/<tracker>/times/<name>_time.txt

so ``got10k.experiments.ExperimentOTB(..., result_dir=<out>/got10k).report([tracker])`` reads
them as its own; except Tiger1, which got10k scores on all 354 images and the OTB2015 toolkit
(and this runner) on frames 6-354: its got10k file is not written, with a warning. Only the
tracker's ``init``/``update`` calls are timed, not reading the frames.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dropgrad import atomic_write, seed_everything, write_json
from tqdm.auto import tqdm

from ..data.boxes import write_box_file
from ..data.names import GOT10K_OTHER_FRAMES, got10k_name
from ..data.otb import check_frames
from ..data.sequence import Sequence
from ..evaluation.results import METADATA_FILE, TrackerResult
from .base import Tracker, as_box

__all__ = ["TrackerFailure", "TrackingRun", "run_tracker", "track_sequence"]


class TrackerFailure(RuntimeError):
    """A tracker's ``init`` or ``update`` raised: names the tracker, sequence and frame, and
    chains the original exception (so its traceback is shown). Deliberately not a
    ``ValueError``: ``track-eval`` prints those as one-line user errors, which would hide the
    file and line of a bug in a new tracker."""


@dataclass
class TrackingRun:
    """A tracker's output on one sequence: boxes (n, 4) and per-frame seconds (n,)."""

    boxes: np.ndarray
    times: np.ndarray


def track_sequence(tracker: Tracker, sequence: Sequence, bar: tqdm | None = None) -> TrackingRun:
    """One pass over ``sequence``: ``init`` on frame 0 with the ground truth, ``update`` after.

    >>> import tempfile
    >>> from dropgrad_tracking.data import SyntheticConfig, load_otb_folders, write_synthetic
    >>> from dropgrad_tracking.trackers.static import StaticTracker
    >>> root = write_synthetic(tempfile.mkdtemp(), SyntheticConfig(n_sequences=1, n_frames=3, height=64, width=96))
    >>> seq = load_otb_folders(root)["Synthetic-01"]
    >>> run = track_sequence(StaticTracker(), seq)
    >>> run.boxes.shape, bool((run.boxes == seq.boxes[0]).all()), run.times.shape
    ((3, 4), True, (3,))
    """
    n = len(sequence)
    boxes = np.zeros((n, 4))
    times = np.zeros(n)
    for i in range(n):
        image = sequence.image(i)
        start = time.perf_counter()
        try:
            if i == 0:
                tracker.init(image, sequence.init_box)
                raw = sequence.init_box
            else:
                raw = tracker.update(image)
        except Exception as err:
            call = "init" if i == 0 else "update"
            raise TrackerFailure(
                f"{tracker.name}.{call} failed on {sequence.name}, frame {i + 1}: {type(err).__name__}: {err}"
            ) from err
        times[i] = time.perf_counter() - start
        box = raw if i == 0 else as_box(raw, f"{tracker.name} on {sequence.name}, frame {i + 1}")
        boxes[i] = box
        if bar is not None:
            bar.update(1)
    return TrackingRun(boxes, times)


def _write_times(path: Path, times: np.ndarray) -> None:
    text = "".join(f"{t:.8f}\n" for t in times)
    atomic_write(path, lambda f: f.write(text), binary=False)


def run_tracker(
    tracker: Tracker,
    sequences: Mapping[str, Sequence],
    out: str | os.PathLike[str],
    *,
    dataset: str = "OTB2015",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, TrackerResult]:
    """Run ``tracker`` on every sequence, write its results (see the module docstring), return them.

    Every sequence starts from ``seed_everything(seed)``, so a stochastic tracker's result on a
    sequence does not depend on which sequences ran before it.

    Raises:
        OTBDataError: a sequence's frame files are missing (checked before anything runs).
    """
    check_frames(sequences)
    base = Path(out)
    otb_dir = base / "results" / tracker.name
    got_dir = base / "got10k" / dataset / tracker.name
    results: dict[str, TrackerResult] = {}
    total = sum(len(s) for s in sequences.values())
    with tqdm(total=total, desc=f"{tracker.name} on {dataset}", unit="frame", disable=not progress) as bar:
        for name, seq in sequences.items():
            bar.set_postfix_str(name)
            seed_everything(seed)
            run = track_sequence(tracker, seq, bar)
            write_box_file(otb_dir / f"{name}.txt", run.boxes)
            _write_times(otb_dir / "times" / f"{name}_time.txt", run.times)
            if name in GOT10K_OTHER_FRAMES and seq.first_frame != 1:
                warnings.warn(
                    f"{name}: not written to {got_dir}: got10k scores it on {GOT10K_OTHER_FRAMES[name]}, "
                    f"OTB2015 and this run on {len(run.boxes)} frames from frame {seq.first_frame}",
                    stacklevel=2,
                )
            else:
                write_box_file(got_dir / f"{got10k_name(name)}.txt", run.boxes)
                _write_times(got_dir / "times" / f"{got10k_name(name)}_time.txt", run.times)
            results[name] = TrackerResult(run.boxes, str(otb_dir / f"{name}.txt"), times=run.times)
    write_json(otb_dir / METADATA_FILE, {"tracker": tracker.name, "dataset": dataset, "seed": seed, **tracker.metadata})
    return results
