"""The OPE scorer on hand-made cases: perfect tracker, empty boxes, lengths, thresholds."""

import warnings

import numpy as np
import pytest
from dropgrad_tracking.data.sequence import Sequence
from dropgrad_tracking.evaluation import (
    SUCCESS_THRESHOLDS,
    LengthMismatchError,
    TrackerResult,
    align_lengths,
    attribute_table,
    evaluate_tracker,
    score_sequence,
    summarize,
)
from dropgrad_tracking.evaluation.ope import timing


def _gt(n=10):
    return np.array([[10.0 + 3 * i, 20, 30, 40] for i in range(n)])


def test_perfect_tracker_scores_20_of_21():
    gt = _gt()
    s = score_sequence(gt.copy(), gt)
    assert s.success_auc == pytest.approx(20 / 21, abs=1e-15)
    assert s.success[-1] == 0.0 and (s.success[:-1] == 1).all()
    assert (s.precision == 1).all() and s.precision_20 == 1.0 and s.mean_iou == 1.0


def test_first_frame_counts_as_ground_truth():
    gt = _gt(4)
    boxes = np.full_like(gt, 500.0)
    s = score_sequence(boxes, gt)
    assert s.success[0] == pytest.approx(1 / 4) and s.precision_20 == pytest.approx(1 / 4)


def test_success_thresholds_are_strict_and_toolkit_exact():
    assert SUCCESS_THRESHOLDS[3] == 0.15 and SUCCESS_THRESHOLDS[6] == 0.3  # k / 20, not linspace's 0.15000000000000002
    gt = np.array([[0.0, 0, 10, 10]] * 2)
    half = np.array([[0.0, 0, 10, 10], [0, 0, 5, 10]])  # IoU exactly 0.5 on frame 2
    s = score_sequence(half, gt)
    assert s.success[10] == 0.5 and s.success[9] == 1.0  # 0.5 > 0.5 is false, 0.5 > 0.45 true
    off = np.array([[0.0, 0, 10, 10], [20, 0, 10, 10]])  # centre error exactly 20 px
    assert score_sequence(off, gt).precision_20 == 1.0 and score_sequence(off, gt).precision[19] == 0.5


def test_empty_ground_truth_frames():
    gt = _gt(5)
    gt[3] = 0  # target not visible
    boxes = gt.copy()
    boxes[3] = [100, 100, 10, 10]
    boxes[4] = [300, 300, 10, 10]  # a miss
    excluded = score_sequence(boxes, gt)
    assert excluded.n_scored == 4 and excluded.success[0] == pytest.approx(3 / 4) and excluded.precision_20 == pytest.approx(3 / 4)
    toolkit = score_sequence(boxes, gt, empty_gt="toolkit")
    # The toolkit keeps invalid frames in the denominator: a failure in success, a hit in precision.
    assert toolkit.success[0] == pytest.approx(3 / 5) and toolkit.precision_20 == pytest.approx(4 / 5)
    kept = score_sequence(boxes, gt, empty_gt="keep")
    assert kept.success[0] == pytest.approx(3 / 5) and kept.n_scored == 5
    gt_edge = _gt(3)
    gt_edge[1, 0] = 0  # x = 0: a real box the toolkit nevertheless counts as invalid
    assert score_sequence(gt_edge.copy(), gt_edge, empty_gt="toolkit").success[0] == pytest.approx(2 / 3)
    assert score_sequence(gt_edge.copy(), gt_edge).success[0] == 1.0
    with pytest.raises(ValueError, match="every ground-truth box is empty"):
        score_sequence(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="do not match ground truth of shape"):
        score_sequence(np.zeros((0, 4)), np.zeros((0, 4)))  # no frames at all: a clear error, not an IndexError


def test_off_by_one_lengths_score_common_frames_and_warn():
    gt = _gt(10)
    with pytest.warns(UserWarning, match="9 boxes for 10 ground-truth frames"):
        boxes, cut, note = align_lengths(gt[:9], gt, "r/Couple.txt", "Couple")
    assert len(boxes) == len(cut) == 9 and "r/Couple.txt" in note
    with pytest.warns(UserWarning):
        boxes, cut, _ = align_lengths(np.vstack([gt, gt[:2]]), gt, "r/Couple.txt", "Couple")
    assert len(boxes) == 10
    with pytest.raises(LengthMismatchError, match="r/Couple.txt: 7 boxes, but the ground truth of Couple has 10 frames"):
        align_lengths(gt[:7], gt, "r/Couple.txt", "Couple")


def test_length_mismatches_drop_the_trailing_frames_of_the_longer_one():
    # The common frames are the first ones: a surplus box at the end is dropped, not the first
    # box (which would shift every result against its ground truth by a frame).
    gt = _gt(10)
    longer = np.vstack([gt, gt[-1:] + 100, gt[-1:] + 200])
    with pytest.warns(UserWarning, match="12 boxes for 10 ground-truth frames; scored the first 10"):
        boxes, cut, _ = align_lengths(longer, gt, "r/Couple.txt", "Couple")
    np.testing.assert_array_equal(boxes, gt)
    np.testing.assert_array_equal(cut, gt)
    with pytest.warns(UserWarning):
        boxes, cut, _ = align_lengths(gt[:8], gt, "r/Couple.txt", "Couple")
    np.testing.assert_array_equal(boxes, gt[:8])
    np.testing.assert_array_equal(cut, gt[:8])
    # ... so a tracker exact on the common frames scores as a perfect one.
    with pytest.warns(UserWarning):
        ev = evaluate_tracker("t", {"a": TrackerResult(longer, "a")}, {"a": Sequence("a", [], gt)})
    assert ev.overall.success_auc == pytest.approx(20 / 21) and ev.overall.precision_20 == 1.0


def test_evaluate_tracker_averages_per_sequence_then_across():
    a = Sequence("a", [], _gt(4), ("SV",))
    b = Sequence("b", [], _gt(8), ("OCC",))
    miss = b.boxes.copy()
    miss[1:] += 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate_tracker("t", {"a": TrackerResult(a.boxes.copy(), "a"), "b": TrackerResult(miss, "b")}, {"a": a, "b": b})
    # Per sequence first: (1 + 1/8) / 2, not the frame-weighted 5/12.
    assert ev.overall.success[0] == pytest.approx((1 + 1 / 8) / 2)
    assert ev.attributes["SV"].success_auc == pytest.approx(20 / 21)
    assert summarize(ev.scores, ["b"]).precision_20 == pytest.approx(1 / 8)
    # Mean IoU the same way: a tracks exactly (1.0), b overlaps only on its first frame (1/8).
    overall = ev.overall.to_dict()
    assert overall["mean_iou"] == pytest.approx((1 + 1 / 8) / 2)
    assert (overall["n_frames"], overall["n_scored"], overall["n_sequences"]) == (12, 12, 2)


def test_timing_fps_with_and_without_first_frame():
    gt = _gt(3)
    ev = evaluate_tracker("t", {"a": TrackerResult(gt.copy(), "a", times=np.array([1.0, 0.5, 0.5]))}, {"a": Sequence("a", [], gt)})
    t = ev.overall.timing
    assert t["fps"] == pytest.approx(3 / 2) and t["fps_without_first"] == pytest.approx(2.0) and t["first_frame_seconds"] == 1.0


def test_lost_target_nan_boxes_count_as_misses(tmp_path):
    from dropgrad_tracking.data import read_box_file

    path = tmp_path / "Couple.txt"
    path.write_text("10,20,30,40\nnan,nan,nan,nan\nNaN NaN NaN NaN\n")
    boxes = read_box_file(path)
    gt = np.array([[10.0, 20, 30, 40]] * 3)
    s = score_sequence(boxes, gt)
    assert s.success[0] == pytest.approx(1 / 3) and s.precision[-1] == pytest.approx(1 / 3)


def test_success_50_is_the_share_of_frames_with_iou_above_one_half():
    gt = np.array([[0.0, 0, 10, 10]] * 4)
    # IoU 1 (frame 0 is the ground truth), 0.52, 0.5, 0.4: above 0.5 are 2 of 4 (above 0.45: 3, above 0.55: 1).
    boxes = np.array([[9.0, 9, 9, 9], [0, 0, 5.2, 10], [0, 0, 5, 10], [0, 0, 4, 10]])
    s = score_sequence(boxes, gt, name="a")
    np.testing.assert_allclose(s.success[9:12], [3 / 4, 2 / 4, 1 / 4])
    assert s.to_dict()["success_50"] == 0.5
    far = score_sequence(np.vstack([gt[:1], gt[1:] + 100]), gt, name="b")  # only frame 0 overlaps
    summary = summarize({"a": s, "b": far})
    assert summary.to_dict()["success_50"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert summary.to_dict(curves=False)["success_50"] == pytest.approx(3 / 8)


def test_speed_is_reported_only_when_every_sequence_was_timed():
    gt = _gt(3)
    timed = score_sequence(gt, gt, name="a", times=np.array([1.0, 0.5, 0.5]))
    untimed = score_sequence(gt, gt, name="b")
    assert timing([timed, untimed]) == {}  # not the speed of a subset presented as the tracker's
    timed.fps, untimed.fps = 2.0, 4.0  # the toolkit's reported fps: the mean of those
    assert timing([timed, untimed]) == {"fps": 3.0}


def test_reported_speed_is_the_mean_over_every_sequence_and_zero_times_are_infinitely_fast():
    gt = _gt(3)
    scores = [score_sequence(gt, gt, name=n) for n in "abc"]
    scores[0].fps, scores[1].fps = 1.0, 2.0
    assert timing(scores) == {}  # one sequence without a reported speed: no speed at all
    scores[2].fps = 6.0
    assert timing(scores) == {"fps": 3.0}  # the mean (not the median, 2.0)
    instant = score_sequence(gt, gt, name="d", times=np.zeros(3))
    assert timing([instant]) == {"fps": float("inf"), "fps_without_first": float("inf"), "first_frame_seconds": 0.0}


def test_times_of_surplus_result_frames_are_left_out_of_the_speed():
    gt = _gt(3)
    boxes = np.vstack([gt, gt[-1:]])  # one box too many: scored on the 3 common frames
    with pytest.warns(UserWarning, match="4 boxes for 3 ground-truth frames"):
        ev = evaluate_tracker("t", {"a": TrackerResult(boxes, "a.txt", times=np.array([1.0, 0.5, 0.5, 100.0]))},
                              {"a": Sequence("a", [], gt)})
    assert ev.overall.timing["fps"] == pytest.approx(3 / 2) and ev.scores["a"].n_frames == 3


def test_attribute_table_rows_hold_each_attributes_own_scores():
    a = Sequence("a", [], _gt(4), ("SV",))
    b = Sequence("b", [], _gt(8), ("SV", "OCC"))
    miss = b.boxes.copy()
    miss[1:] += 500
    ev = evaluate_tracker("t", {"a": TrackerResult(a.boxes.copy(), "a"), "b": TrackerResult(miss, "b")}, {"a": a, "b": b})
    rows = {r["attribute"]: r for r in attribute_table([ev])}
    assert list(rows) == ["ALL", "SV", "OCC"] and rows["OCC"]["name"] == "Occlusion"
    assert (rows["ALL"]["n_sequences"], rows["SV"]["n_sequences"], rows["OCC"]["n_sequences"]) == (2, 2, 1)
    assert rows["OCC"]["t P@20"] == pytest.approx(1 / 8) and rows["OCC"]["t AUC"] == pytest.approx(1 / 8 * 20 / 21)
    assert rows["SV"]["t P@20"] == pytest.approx((1 + 1 / 8) / 2) == rows["ALL"]["t P@20"]


def test_mean_iou_leaves_out_the_frames_that_do_not_count():
    # Toolkit mode: a box at x = 0 is tracked exactly but is "invalid", so it is not among the
    # frames that count (n_scored) and must not add its IoU to their mean (which would exceed 1).
    gt = _gt(3)
    gt[1, 0] = 0
    s = score_sequence(gt.copy(), gt, empty_gt="toolkit")
    assert s.n_scored == 2 and s.mean_iou == 1.0
    boxes = gt.copy()
    boxes[2] += 500  # a miss on a valid frame: (1 + 0) / 2
    assert score_sequence(boxes, gt, empty_gt="toolkit").mean_iou == pytest.approx(0.5)


def test_summary_counts_scored_frames_not_all_frames():
    gt = _gt(5)
    gt[2] = 0  # not visible: excluded
    ev = evaluate_tracker("t", {"a": TrackerResult(gt.copy(), "a"), "b": TrackerResult(_gt(3), "b")},
                          {"a": Sequence("a", [], gt), "b": Sequence("b", [], _gt(3))})
    assert (ev.overall.n_frames, ev.overall.n_scored) == (8, 7)
    assert ev.overall.to_dict(curves=False)["n_scored"] == 7


def test_attributes_outside_the_toolkits_list_get_their_own_group_after_its_own():
    from dropgrad_tracking.evaluation.report import attribute_groups

    seqs = {"a": Sequence("a", [], _gt(3), ("SV", "ZZ")), "b": Sequence("b", [], _gt(3), ("CM", "OCC"))}
    groups = attribute_groups(seqs)
    assert list(groups) == ["SV", "OCC", "CM", "ZZ"]  # the toolkit's order, then the others sorted
    assert groups["ZZ"] == ["a"] and groups["CM"] == ["b"] and groups["SV"] == ["a"]


def test_attribute_tables_keep_the_scores_precision(tmp_path):
    import csv

    from dropgrad_tracking.evaluation.report import build_report, write_report

    gt = _gt(7)
    boxes = gt.copy()
    boxes[1:4] += 500  # 4 of 7 frames tracked: AUC 4/7 * 20/21 = 0.5442176...
    ev = evaluate_tracker("t", {"a": TrackerResult(boxes, "a")}, {"a": Sequence("a", [], gt, ("SV",))})
    write_report(tmp_path, build_report([ev], "toy", "exclude"), [ev])
    auc = 4 / 7 * 20 / 21
    rows = list(csv.DictReader((tmp_path / "attributes.csv").read_text().splitlines()))
    assert [r["attribute"] for r in rows] == ["ALL", "SV"]
    assert float(rows[0]["t AUC"]) == pytest.approx(auc, abs=1e-6) and float(rows[0]["t P@20"]) == pytest.approx(4 / 7, abs=1e-6)
    md = (tmp_path / "attributes.md").read_text()
    assert f"| {auc:.4f} | {4 / 7:.4f} |" in md
