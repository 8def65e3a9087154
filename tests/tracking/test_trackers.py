"""The tracker registry and the tracker-independent run path with its two result layouts."""

import numpy as np
import pytest
from dropgrad_tracking.data import SyntheticConfig, load_otb_folders, write_synthetic
from dropgrad_tracking.evaluation import evaluate_tracker, read_results
from dropgrad_tracking.trackers import (
    StaticTracker,
    Tracker,
    TrackerOptions,
    as_array,
    available_trackers,
    make_tracker,
    register_tracker,
    registry,
    run_tracker,
)
from got10k.trackers import Tracker as Got10kTracker


class Oracle(Tracker):
    """Returns the ground truth it was given: any tracker type must run through the same path."""

    def __init__(self, sequences):
        super().__init__("oracle", metadata={"backbone": "none"})
        self.boxes = [s.boxes for s in sequences.values()]
        self.seen = []

    def init(self, image, box):
        self.frame, self.current = 0, None
        self.seen.append(as_array(image).shape)
        for boxes in self.boxes:
            if np.array_equal(boxes[0], box):
                self.current = boxes

    def update(self, image):
        self.frame += 1
        return self.current[self.frame]


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("syn"), SyntheticConfig(n_sequences=2, n_frames=12, height=80, width=100))
    return load_otb_folders(root)


def test_static_is_registered_and_refuses_unused_options():
    assert "static" in available_trackers()
    tracker = make_tracker("STATIC")
    assert isinstance(tracker, Got10kTracker) and tracker.name == "static"
    with pytest.raises(ValueError, match="--checkpoint is not used by --tracker static"):
        make_tracker("static", TrackerOptions(checkpoint="run"))
    with pytest.raises(ValueError, match="not a known tracker; choose from .*static"):
        make_tracker("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_tracker("static", lambda o: StaticTracker(), "dup")


def test_a_registered_tracker_receives_its_options(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    got = {}

    def factory(options):
        got["options"] = options
        return StaticTracker()

    register_tracker("needs-ckpt", factory, "test", accepts=["checkpoint"])
    make_tracker("needs-ckpt", TrackerOptions(checkpoint="run_dir", device="cpu", seed=4))
    assert got["options"].checkpoint == "run_dir" and got["options"].seed == 4


def test_runner_writes_otb_and_got10k_layouts_and_any_tracker_scores(sequences, tmp_path):
    oracle = Oracle(sequences)
    results = run_tracker(oracle, sequences, tmp_path, dataset="Synthetic", progress=False)
    assert oracle.seen == [(80, 100, 3)] * 2
    ev = evaluate_tracker("oracle", results, sequences)
    assert ev.overall.success_auc == pytest.approx(20 / 21)
    for name, seq in sequences.items():
        text = np.loadtxt(tmp_path / "results" / "oracle" / f"{name}.txt", delimiter=",")
        np.testing.assert_allclose(text, seq.boxes)
        got = np.loadtxt(tmp_path / "got10k" / "Synthetic" / "oracle" / f"{name}.txt", delimiter=",")
        np.testing.assert_allclose(got, seq.boxes)
        times = np.loadtxt(tmp_path / "got10k" / "Synthetic" / "oracle" / "times" / f"{name}_time.txt")
        assert times.shape == (len(seq),) and (times >= 0).all()
        # written to 1e-8 s: a fast tracker's per-frame times (microseconds) must not round to 0
        np.testing.assert_allclose(times, results[name].times, rtol=0, atol=1e-8)
        otb_times = np.loadtxt(tmp_path / "results" / "oracle" / "times" / f"{name}_time.txt")
        np.testing.assert_allclose(otb_times, results[name].times, rtol=0, atol=1e-8)
    assert '"backbone": "none"' in (tmp_path / "results" / "oracle" / "tracker.json").read_text()
    # The written folder reads back (with times) through the same reader as any published results.
    again, ignored = read_results(tmp_path / "results" / "oracle", sequences)
    assert not ignored and all(again[n].times is not None for n in sequences)
    np.testing.assert_allclose(again[next(iter(sequences))].boxes, results[next(iter(sequences))].boxes)


@pytest.mark.parametrize("first_frame", [6, 1])
def test_tiger1_from_frame_6_is_left_out_of_the_got10k_layout(sequences, tmp_path, first_frame):
    # got10k scores Tiger1 on all 354 images; a run from frame 6 (OTB2015's range) would make its
    # report fail on the box count, so the file is not written and a warning says why.
    from dropgrad_tracking.data.sequence import Sequence

    seq = next(iter(sequences.values()))
    tiger = {"Tiger1": Sequence("Tiger1", seq.frames, seq.boxes, first_frame=first_frame)}
    got = tmp_path / "got10k" / "OTB2015" / "oracle" / "Tiger1.txt"
    if first_frame == 6:
        with pytest.warns(UserWarning, match=r"Tiger1: not written to .*got10k scores it on all 354 images, .* from frame 6"):
            run_tracker(Oracle(tiger), tiger, tmp_path, dataset="OTB2015", progress=False)
        assert not got.exists()
    else:
        run_tracker(Oracle(tiger), tiger, tmp_path, dataset="OTB2015", progress=False)
        assert got.is_file()
    assert (tmp_path / "results" / "oracle" / "Tiger1.txt").is_file()


def test_the_got10k_layout_uses_got10ks_names_for_two_target_videos(sequences, tmp_path):
    # got10k's OTB reads Jogging.1.txt, Skating2.2.txt and Human4.txt, not our canonical names.
    from dropgrad_tracking.data.sequence import Sequence

    seq = next(iter(sequences.values()))
    named = {n: Sequence(n, seq.frames, seq.boxes) for n in ("Jogging-1", "Skating2-2", "Human4-2")}
    run_tracker(Oracle(named), named, tmp_path, dataset="OTB2015", progress=False)
    got = tmp_path / "got10k" / "OTB2015" / "oracle"
    assert sorted(p.name for p in got.glob("*.txt")) == ["Human4.txt", "Jogging.1.txt", "Skating2.2.txt"]
    assert (got / "times" / "Jogging.1_time.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "results" / "oracle").glob("*.txt")) == [
        "Human4-2.txt", "Jogging-1.txt", "Skating2-2.txt"]


def test_got10k_track_loop_runs_our_tracker(sequences):
    seq = next(iter(sequences.values()))
    boxes, times = StaticTracker().track([str(f) for f in seq.frames], seq.boxes[0])
    assert boxes.shape == (len(seq), 4) and (boxes == seq.boxes[0]).all()


def test_as_array_accepts_pil_and_arrays():
    from PIL import Image

    pil = Image.fromarray(np.zeros((4, 5), dtype=np.uint8))
    assert as_array(pil).shape == (4, 5, 3) and as_array(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)


def test_a_tracker_returning_a_bad_box_is_named_and_a_raising_one_is_wrapped(sequences, tmp_path):
    from dropgrad_tracking.trackers import TrackerFailure

    class Bad(StaticTracker):
        def update(self, image):
            return [1, 2, 3]

    with pytest.raises(ValueError, match="static on Synthetic-01, frame 2: a tracker must return 4 numbers"):
        run_tracker(Bad(), sequences, tmp_path, progress=False)

    class Raising(StaticTracker):
        def init(self, image, box):
            raise KeyError("oops")

    with pytest.raises(TrackerFailure, match="static.init failed on Synthetic-01, frame 1: KeyError") as info:
        run_tracker(Raising(), sequences, tmp_path, progress=False)
    assert isinstance(info.value.__cause__, KeyError)


class Jitter(Tracker):
    """A stochastic tracker: draws from the global numpy and torch streams in init and update."""

    def __init__(self):
        super().__init__("jitter", is_deterministic=False)
        self.draws = []

    def init(self, image, box):
        import torch

        self.box = np.asarray(box, float)
        self.draws.append((float(np.random.rand()), float(torch.rand(1))))

    def update(self, image):
        return self.box + [np.random.rand(), np.random.rand(), 0, 0]


def test_runner_reseeds_every_sequence_and_records_the_seed(sequences, tmp_path):
    import json

    import torch

    tracker = Jitter()
    np.random.seed(99)
    torch.manual_seed(99)  # whatever the process ran before must not matter
    results = run_tracker(tracker, sequences, tmp_path, seed=5, progress=False)
    first, second = tracker.draws
    assert first == second  # each sequence starts from the same seeded state
    np.random.seed(5)
    torch.manual_seed(5)
    assert first == (float(np.random.rand()), float(torch.rand(1)))  # ... that of seed_everything(seed)
    again = run_tracker(Jitter(), sequences, tmp_path / "again", seed=5, progress=False)
    for name in sequences:
        np.testing.assert_array_equal(again[name].boxes, results[name].boxes)
    meta = json.loads((tmp_path / "results" / "jitter" / "tracker.json").read_text())
    assert meta["seed"] == 5 and meta["tracker"] == "jitter"


def test_runner_times_the_first_frames_init(sequences, tmp_path):
    import time as _time

    class SlowInit(StaticTracker):
        def init(self, image, box):
            _time.sleep(0.05)
            super().init(image, box)

    results = run_tracker(SlowInit(), sequences, tmp_path, progress=False)
    for run in results.values():
        assert run.times[0] >= 0.05 and run.times.shape == (len(sequences[next(iter(sequences))]),)


# ------------------------------------------------------------------ mutation round 5 (m5k)


def test_runner_times_only_the_trackers_init_and_update(sequences, tmp_path, monkeypatch):
    # A fake clock: reading a frame costs 100 "seconds", init 3 and update 1. Only the tracker's calls count.
    from dropgrad_tracking.data.sequence import Sequence
    from dropgrad_tracking.trackers import runner

    clock = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: clock[0])

    class SlowFrames(Sequence):
        def image(self, i):
            clock[0] += 100.0
            return super().image(i)

    class Ticking(StaticTracker):
        def init(self, image, box):
            clock[0] += 3.0
            super().init(image, box)

        def update(self, image):
            clock[0] += 1.0
            return super().update(image)

    seq = next(iter(sequences.values()))
    slow = {seq.name: SlowFrames(seq.name, seq.frames, seq.boxes)}
    results = run_tracker(Ticking(), slow, tmp_path, progress=False)
    np.testing.assert_array_equal(results[seq.name].times, [3.0] + [1.0] * (len(seq) - 1))


def test_runner_checks_every_frame_file_before_running(sequences, tmp_path):
    from dropgrad_tracking.data.sequence import Sequence

    first, second = list(sequences.values())
    broken = Sequence(second.name, [*second.frames[:-1], tmp_path / "missing.jpg"], second.boxes)
    ran = []

    class Recording(StaticTracker):
        def init(self, image, box):
            ran.append(box)
            super().init(image, box)

    with pytest.raises(ValueError, match="missing.jpg"):
        run_tracker(Recording(), {first.name: first, second.name: broken}, tmp_path, progress=False)
    assert ran == [] and not (tmp_path / "results").exists()  # nothing ran, nothing written
