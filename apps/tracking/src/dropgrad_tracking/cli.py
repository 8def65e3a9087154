"""``track-eval``: score trackers on OTB2015 or the synthetic set with the OTB one-pass evaluation.

Two ways to get results, freely combined in one report:

- ``--results [NAME=]DIR`` (repeatable): score an existing results folder of any tracker;
- ``--tracker NAME``: run a registered tracker first (its results are written under ``--out``).

Examples::

    track-eval --dataset OTB2015 --annotations OTB100.json --results STRUCK=res/STRUCK --out runs/eval
    track-eval --dataset synthetic --tracker static --out runs/static
    track-eval --dataset OTB2015 --root OTB2015 --tracker metasdnet --checkpoint runs/metasdnet \\
               --backbone-weights imagenet-vgg-m.mat --out runs/eval-metasdnet
    track-eval --dataset OTB2015 --root OTB2015 --results dropgrad=runs/eval-a/results/metasdnet \\
               --results baseline=runs/eval-b/results/metasdnet --out runs/compare

A meta-learned tracker (metasdnet, metasdnet-tiny, metacrest) without --checkpoint runs its untrained
initialisation; the results and the report say so ("checkpoint": "untrained-init"), as they say
"backbone": "random-init" when no backbone weights were loaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Sequence as Seq
from pathlib import Path

from dropgrad import write_json

from .data.boxes import BoxFileError
from .data.otb import OTBDataError, load_otb, select_sequences
from .data.sequence import ImageReadError, Sequence
from .data.synthetic import SyntheticConfig, ensure_synthetic
from .evaluation.ope import LengthMismatchError
from .evaluation.plots import write_plots
from .evaluation.report import (
    TrackerEvaluation,
    build_report,
    evaluate_tracker,
    overall_line,
    write_report,
)
from .evaluation.results import (
    ResultsError,
    parse_results_arg,
    read_metadata,
    read_results,
)
from .trackers import (
    TrackerFailure,
    TrackerOptions,
    available_trackers,
    make_tracker,
    run_tracker,
    tracker_spec,
)

__all__ = ["build_parser", "load_dataset", "main"]

#: Metadata that changes what a score means; shown next to it on the console and in ``--json``.
_FLAGS = ("checkpoint", "backbone", "dropgrad")

_USER_ERRORS = (OTBDataError, ResultsError, BoxFileError, LengthMismatchError, ImageReadError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    trackers = ", ".join(f"{n} ({tracker_spec(n).help})" for n in available_trackers())
    p = argparse.ArgumentParser(
        prog="track-eval",
        description="One-pass evaluation (OTB toolkit definitions) of tracking results: success plot AUC over "
        "IoU thresholds 0..1 and precision at 20 px, overall and per attribute, with OTB-style plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=["OTB2015", "synthetic"], default="synthetic",
                      help="ground truth: OTB2015 (needs --root or --annotations) or the procedural synthetic set "
                      "(generated into --root if absent; default: <out>/synthetic-data)")
    data.add_argument("--root", type=Path, help="OTB2015: folder of raw OTB sequence folders (<Video>/img/0001.jpg, "
                      "groundtruth_rect*.txt), or the image root of --annotations; synthetic: where the set lives")
    data.add_argument("--annotations", type=Path, help="OTB2015 ground truth as a pysot-format JSON (OTB100.json)")
    data.add_argument("--sequences", help="comma-separated subset of sequences to score (any spelling: jogging.1)")
    data.add_argument("--synthetic-sequences", type=int, default=8, help="synthetic set: number of sequences (default 8)")
    data.add_argument("--synthetic-frames", type=int, default=60, help="synthetic set: frames per sequence (default 60)")
    data.add_argument("--seed", type=int, default=0, help="seed of the synthetic set and of stochastic trackers (default 0)")

    res = p.add_argument_group("results")
    res.add_argument("--results", action="append", default=[], metavar="[NAME=]DIR",
                     help="an existing results folder (<Seq>.txt with x,y,w,h per line, optional times/<Seq>_time.txt, "
                     "or the OTB toolkit's <Seq>.json); repeat to compare trackers")
    res.add_argument("--tracker", help=f"run this tracker and score it: {trackers}")
    res.add_argument("--checkpoint", type=Path, metavar="RUN_DIR",
                     help="--tracker: a track-train run directory of that tracker (its checkpoints/best.pt is loaded); "
                     "without it a meta-learned tracker runs its untrained initialisation, flagged in the results")
    res.add_argument("--backbone-weights", type=Path, metavar="PATH",
                     help="--tracker: local backbone weight file (metasdnet: imagenet-vgg-m.mat; metacrest: a torchvision "
                     "VGG-16 state dict); without it and without a checkpoint the backbone is random (flagged)")
    res.add_argument("--device", default="auto", help="--tracker: auto (CUDA when present), cpu, cuda or cuda:N")

    ev = p.add_argument_group("evaluation and output")
    ev.add_argument("--out", type=Path, default=Path("runs/track-eval"), help="output folder (default runs/track-eval)")
    ev.add_argument("--empty-gt", choices=["exclude", "toolkit", "keep"], default="exclude",
                    help="frames whose ground-truth box is empty: exclude them (default), do exactly what the OTB "
                    "toolkit does (any coordinate <= 0 is invalid, counted as a failure in success and a hit in "
                    "precision), or keep them like got10k")
    ev.add_argument("--max-length-mismatch", type=int, default=2,
                    help="results up to this many frames shorter/longer than the ground truth are scored on the "
                    "common frames with a warning; more is an error (default 2)")
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG success/precision plots")
    ev.add_argument("--json", action="store_true", help="print the overall summary as one JSON line on stdout")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def load_dataset(args: argparse.Namespace) -> tuple[str, dict[str, Sequence]]:
    """The ground truth the options ask for: ``(dataset label, {name: Sequence})``."""
    names = [n.strip() for n in args.sequences.split(",") if n.strip()] if args.sequences else None
    if args.dataset == "synthetic":
        if args.annotations is not None:
            raise ValueError("--annotations is for --dataset OTB2015; the synthetic set has its own ground truth")
        root = args.root if args.root is not None else args.out / "synthetic-data"
        config = SyntheticConfig(args.synthetic_sequences, args.synthetic_frames, seed=args.seed)
        sequences = ensure_synthetic(root, config)
        if names is not None:
            sequences = select_sequences(sequences, names, str(root))
        return "Synthetic", sequences
    return "OTB2015", load_otb(args.root, args.annotations, names)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    if not args.results and not args.tracker:
        raise ValueError("nothing to score: give --results DIR (existing results) and/or --tracker NAME (run one)")
    if args.max_length_mismatch < 0:
        raise ValueError(f"--max-length-mismatch must be >= 0, got {args.max_length_mismatch}")
    if args.tracker is None and (args.checkpoint or args.backbone_weights):
        raise ValueError("--checkpoint and --backbone-weights need --tracker")
    accepts = tracker_spec(args.tracker).accepts if args.tracker else frozenset()
    # Only for trackers that take the option: the registry names the option a tracker does not use.
    if "checkpoint" in accepts and args.checkpoint is not None and not args.checkpoint.is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint}: not a directory (expected a track-train run directory)")
    if "backbone_weights" in accepts and args.backbone_weights is not None and not args.backbone_weights.is_file():
        raise ValueError(f"--backbone-weights {args.backbone_weights}: file not found")
    folders = [parse_results_arg(r) for r in args.results]
    tracker = None
    if args.tracker:
        # Build the tracker (and validate its options) before any data is read or generated.
        tracker = make_tracker(args.tracker, TrackerOptions(args.checkpoint, args.backbone_weights, args.device, args.seed))
    label, sequences = load_dataset(args)
    names_seen = [n for n, _ in folders] + ([tracker.name] if tracker else [])
    dupes = {n for n in names_seen if names_seen.count(n) > 1}
    if dupes:
        raise ValueError(f"two result sets are named {', '.join(sorted(dupes))}; name them with --results NAME=DIR")

    loaded = []
    for name, folder in folders:
        results, ignored = read_results(folder, sequences)
        if ignored:
            shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
            warnings.warn(f"--results {folder}: {len(ignored)} files are not sequences of this evaluation and "
                          f"were not scored ({shown})", stacklevel=2)
        meta = {**read_metadata(folder), "results_folder": str(folder), **({"ignored_files": ignored} if ignored else {})}
        loaded.append((name, results, meta))

    out: Path = args.out
    _clear_previous_outputs(out, tracker.name if tracker else None, label)
    write_json(out / "config.json", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, sort_keys=True)
    if tracker is not None:
        results = run_tracker(tracker, sequences, out, dataset=label, seed=args.seed, progress=not args.no_progress)
        folder = out / "results" / tracker.name
        loaded.append((tracker.name, results, {**read_metadata(folder), "results_folder": str(folder)}))

    start = time.perf_counter()
    evaluations: list[TrackerEvaluation] = [
        evaluate_tracker(name, results, sequences, empty_gt=args.empty_gt,
                         max_length_mismatch=args.max_length_mismatch, metadata=meta)
        for name, results, meta in loaded
    ]
    seconds = time.perf_counter() - start
    report = build_report(evaluations, label, args.empty_gt,
                          {"n_sequences": len(sequences), "scoring_seconds": seconds})
    write_report(out, report, evaluations)
    if not args.no_plots:
        write_plots(out / "plots", evaluations)
    summary = overall_line(evaluations, label)
    for ev in evaluations:
        flags = {k: ev.metadata[k] for k in _FLAGS if k in ev.metadata}
        if flags:
            summary["trackers"][ev.tracker].update(flags)
    return summary


def _clear_previous_outputs(out: Path, tracker: str | None, dataset: str) -> None:
    """Remove what an earlier evaluation in ``out`` wrote and this one rewrites: its report and
    plots (which would describe other sequences or trackers until this one finishes, or for
    good if it fails) and the results of the tracker about to run (a subset run would leave
    the other sequences' old boxes beside the new ones). Other trackers' results and a
    generated data set stay. Only in an earlier track-eval's output folder (its config.json)."""
    try:
        earlier = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(earlier, dict) or not {"dataset", "out", "results"} <= set(earlier):
        return
    for name in ("report.json", "attributes.md", "attributes.csv"):
        (out / name).unlink(missing_ok=True)
    folders = [out / "plots"]
    if tracker is not None:
        folders += [out / "results" / tracker, out / "got10k" / dataset / tracker]
    for folder in folders:
        if folder.is_dir():
            shutil.rmtree(folder)


def main(argv: Seq[str] | None = None) -> int:
    """Entry point of ``track-eval``; user errors print ``track-eval: error: ...`` and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = _run(args, parser)
        except TrackerFailure as err:
            # A tracker raised while running: show where (its traceback), not just one line.
            for w in caught:
                print(f"track-eval: warning: {w.message}", file=sys.stderr)
            traceback.print_exception(err.__cause__ or err, file=sys.stderr)
            print(f"track-eval: error: {err}", file=sys.stderr)
            return 1
        except _USER_ERRORS as err:
            for w in caught:
                print(f"track-eval: warning: {w.message}", file=sys.stderr)
            print(f"track-eval: error: {err}", file=sys.stderr)
            return 2
    for w in caught:
        print(f"track-eval: warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for name, s in summary["trackers"].items():
            fps = f", {s['fps']:.1f} fps" if "fps" in s else ""
            if "fps_without_first" in s:
                fps += f" ({s['fps_without_first']:.1f} without the first frame"
                fps += f", first frame {s['first_frame_seconds']:.3f} s)" if "first_frame_seconds" in s else ")"
            flags = [f"{k}: {s[k]}" for k in _FLAGS if k in s]
            note = f" [{'; '.join(flags)}]" if flags else ""
            print(f"{name}: success AUC {s['success_auc']:.4f}, precision@20px {s['precision_20']:.4f} "
                  f"on {s['n_sequences']} {summary['dataset']} sequences{fps}{note}")
        print(f"report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
