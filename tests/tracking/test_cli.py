"""``track-eval`` end to end: the synthetic set with the static baseline, re-scoring, errors."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from dropgrad_tracking.cli import main

FAST = ["--synthetic-sequences", "3", "--synthetic-frames", "20", "--no-progress"]


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    code = main(["--dataset", "synthetic", "--tracker", "static", "--out", str(out), "--json", *FAST])
    assert code == 0
    return out


def test_synthetic_static_end_to_end(static_run):
    report = json.loads((static_run / "report.json").read_text())
    static = report["trackers"]["static"]
    assert report["dataset"] == "Synthetic" and report["n_sequences"] == 3
    assert set(static["sequences"]) == {"Synthetic-01", "Synthetic-02", "Synthetic-03"}
    for key in ("success_auc", "precision_20", "fps", "fps_without_first", "first_frame_seconds", "success_curve"):
        assert key in static["overall"], key
    assert len(static["overall"]["success_curve"]) == 21 and len(static["overall"]["precision_curve"]) == 51
    assert static["sequences"]["Synthetic-01"]["n_frames"] == 20
    assert static["metadata"]["tracker"] == "static"
    assert "ALL" in (static_run / "attributes.md").read_text() and (static_run / "attributes.csv").is_file()
    for kind in ("success", "precision"):
        assert (static_run / "plots" / f"{kind}_ALL.png").stat().st_size > 1000
        assert (static_run / "plots" / f"{kind}_BC.png").is_file()
    assert (static_run / "got10k" / "Synthetic" / "static" / "times" / "Synthetic-01_time.txt").is_file()
    assert (static_run / "synthetic-data" / "Synthetic-01" / "attrs.txt").is_file()


def test_a_rerun_into_the_same_folder_leaves_nothing_of_the_earlier_run_that_it_rewrites(static_run, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(static_run, out)
    code, _, err = _run(["--dataset", "synthetic", "--tracker", "static", "--out", str(out), "--sequences", "Synthetic-01",
                         "--no-plots", *FAST], capsys)
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["n_sequences"] == 1
    assert sorted(p.name for p in (out / "results" / "static").glob("*.txt")) == ["Synthetic-01.txt"]
    assert not (out / "plots").exists()  # the earlier run's plots showed three sequences
    assert (out / "synthetic-data" / "Synthetic-03").is_dir()  # the data set is kept
    # A folder that is not an earlier evaluation's output is never cleared.
    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "plots" / "keep.png").write_bytes(b"x")
    assert _run(["--dataset", "synthetic", "--tracker", "static", "--out", str(mine), "--no-plots", *FAST], capsys)[0] == 0
    assert (mine / "plots" / "keep.png").is_file()


def test_rescoring_the_written_results_and_comparing_trackers(static_run, tmp_path, capsys):
    # A perfect "tracker": the ground truth itself, spelled with another name variant.
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for gt in sorted((static_run / "synthetic-data").glob("*/groundtruth_rect.txt")):
        (perfect / f"{gt.parent.name.lower().replace('-', '_')}.txt").write_text(gt.read_text().replace(",", "\t"))
    code, out, err = _run([
        "--dataset", "synthetic", "--root", str(static_run / "synthetic-data"), "--out", str(tmp_path / "cmp"),
        "--results", f"static={static_run / 'results' / 'static'}", "--results", f"perfect={perfect}", "--json", *FAST,
    ], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])["trackers"]
    before = json.loads((static_run / "report.json").read_text())["trackers"]["static"]["overall"]
    assert summary["static"]["success_auc"] == pytest.approx(before["success_auc"], abs=1e-12)
    assert summary["perfect"]["success_auc"] == pytest.approx(20 / 21) and summary["perfect"]["precision_20"] == 1.0
    assert summary["static"]["success_auc"] < 0.5 * summary["perfect"]["success_auc"]
    assert "static" in summary and "fps" in summary["static"] and "fps" not in summary["perfect"]
    table = (tmp_path / "cmp" / "attributes.md").read_text()
    assert "static AUC" in table and "perfect P@20" in table


def test_off_by_one_results_warn_and_bigger_mismatches_fail(static_run, tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    for txt in sorted((static_run / "results" / "static").glob("*.txt")):
        lines = txt.read_text().splitlines()
        (res / txt.name).write_text("\n".join(lines[:-1]) + "\n")  # one frame short
    args = ["--dataset", "synthetic", "--root", str(static_run / "synthetic-data"), "--results", str(res), "--no-plots", *FAST]
    code, out, err = _run([*args, "--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "warning:" in err and "19 boxes for 20 ground-truth frames" in err
    (res / "Synthetic-02.txt").write_text("1,2,3,4\n" * 5)
    code, out, err = _run([*args, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "Synthetic-02.txt: 5 boxes, but the ground truth of Synthetic-02 has 20 frames" in err
    (res / "Synthetic-02.txt").write_text("1,2,3,4\n1;2;3;4\n")
    code, out, err = _run([*args, "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "Synthetic-02.txt, line 2" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "OTB2015", "--results", "x"], "OTB2015 not found: no --root and no --annotations"),
        (["--dataset", "synthetic"], "nothing to score"),
        (["--dataset", "synthetic", "--tracker", "static", "--checkpoint", "run"], "--checkpoint is not used by --tracker static"),
        (["--dataset", "synthetic", "--tracker", "kcf"], "not a known tracker"),
        (["--dataset", "synthetic", "--results", "does/not/exist"], "--results does/not/exist: not a directory"),
    ],
)
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, args, message):
    code, out, err = _run([*args, "--out", str(tmp_path / "o"), *FAST], capsys)
    assert code == 2
    assert "track-eval: error: " in err and message in err and "Traceback" not in err


def test_missing_otb_message_points_to_synthetic(tmp_path, capsys):
    code, _, err = _run(["--dataset", "OTB2015", "--root", str(tmp_path / "nowhere"), "--results", "x", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "groundtruth_rect.txt" in err and "track-eval --dataset synthetic, track-train --source synthetic" in err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "dropgrad_tracking.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for option in ("--dataset", "--annotations", "--results", "--tracker", "--empty-gt", "--json", "static"):
        assert option in result.stdout


def test_scoring_is_deterministic(static_run, tmp_path, capsys):
    args = ["--dataset", "synthetic", "--root", str(static_run / "synthetic-data"), "--results", str(static_run / "results" / "static"),
            "--no-plots", *FAST]
    _run([*args, "--out", str(tmp_path / "a")], capsys)
    _run([*args, "--out", str(tmp_path / "b")], capsys)
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    a.pop("scoring_seconds"), b.pop("scoring_seconds")
    assert np.allclose(a["trackers"]["static"]["overall"]["success_curve"], b["trackers"]["static"]["overall"]["success_curve"])
    assert a["trackers"]["static"]["sequences"] == b["trackers"]["static"]["sequences"]


class _Broken:
    """A new tracker with a bug in ``update`` (a numpy shape error is a ValueError)."""

    def __new__(cls):
        from dropgrad_tracking.trackers import Tracker

        class Broken(Tracker):
            def __init__(self):
                super().__init__("broken")

            def init(self, image, box):
                self.box = np.asarray(box, dtype=float)

            def update(self, image):
                return self.box + np.zeros(3)

        return Broken()


def test_a_bug_in_a_tracker_shows_its_traceback_and_where_it_ran(tmp_path, capsys, monkeypatch):
    # It used to print one "track-eval: error: operands could not be broadcast ..." line and exit 2,
    # as if it were a user error: no tracker, sequence, frame, file or line.
    from dropgrad_tracking.trackers import register_tracker, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_tracker("broken", lambda options: _Broken(), "test")
    code, out, err = _run(["--tracker", "broken", "--out", str(tmp_path), "--no-plots", *FAST], capsys)
    assert code == 1, err
    assert "Traceback" in err and "in update" in err and "test_cli.py" in err
    assert "track-eval: error: broken.update failed on Synthetic-01, frame 2: ValueError: operands" in err
