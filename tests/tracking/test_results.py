"""Reading results folders: per-frame times that do not fit, two files for one sequence."""

import numpy as np
import pytest
from dropgrad_tracking.evaluation import ResultsError, read_results


def _boxes(path, n):
    path.write_text("".join(f"{10 + i},20,30,40\n" for i in range(n)))


@pytest.mark.parametrize("n_times", [2, 4])
def test_times_of_another_length_give_no_speed(tmp_path, n_times):
    _boxes(tmp_path / "Couple.txt", 3)
    (tmp_path / "times").mkdir()
    (tmp_path / "times" / "Couple_time.txt").write_text("0.5\n" * n_times)
    with pytest.warns(UserWarning, match=rf"{n_times} times for 3 boxes; no speed for Couple"):
        results, _ = read_results(tmp_path, ["Couple"])
    assert results["Couple"].times is None


def test_matching_times_are_read(tmp_path):
    _boxes(tmp_path / "Couple.txt", 3)
    (tmp_path / "Couple_time.txt").write_text("1\n0.5\n0.25\n")  # beside the results works too
    results, ignored = read_results(tmp_path, ["Couple"])
    np.testing.assert_array_equal(results["Couple"].times, [1.0, 0.5, 0.25])
    assert ignored == []


def test_two_files_for_one_sequence_are_refused(tmp_path):
    _boxes(tmp_path / "Jogging-1.txt", 3)
    _boxes(tmp_path / "jogging.1.txt", 4)  # got10k's spelling of the same target
    with pytest.raises(ResultsError, match=r"both Jogging-1.txt and jogging.1.txt are results for Jogging-1"):
        read_results(tmp_path, ["Jogging-1"])


def test_toolkit_json_reads_the_first_run_and_refuses_other_result_types(tmp_path):
    import json

    first = [[10, 20, 30, 40], [11, 20, 30, 40], [12, 20, 30, 40]]
    # TRE-style files hold several runs; the first is the one from frame 1 (OPE).
    (tmp_path / "Couple.json").write_text(json.dumps([{"res": first, "type": "rect", "fps": 20},
                                                      {"res": first[1:], "type": "rect", "fps": 5}]))
    results, _ = read_results(tmp_path, ["Couple"])
    np.testing.assert_array_equal(results["Couple"].boxes, first)
    assert results["Couple"].fps == 20.0
    (tmp_path / "Couple.json").write_text(json.dumps([{"res": first, "resType": "polygon"}]))
    with pytest.raises(ResultsError, match="result type 'polygon' is not supported"):
        read_results(tmp_path, ["Couple"])


def test_results_folder_given_as_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from dropgrad_tracking.evaluation.results import parse_results_arg

    (tmp_path / "STRUCK").mkdir()
    monkeypatch.chdir(tmp_path / "STRUCK")
    assert parse_results_arg(".") == ("STRUCK", Path("."))
    assert parse_results_arg("ours=.") == ("ours", Path("."))
