"""Agreement with got10k's ExperimentOTB.report() on the same results.

got10k's OTB data set is built with download=False over a temporary raw-layout folder holding
the ground truth of OTB100.json and empty frame files (report() never opens an image). got10k
keeps every frame (our ``empty_gt="keep"``) and uses ``np.linspace(0, 1, 21)`` thresholds.
"""

import numpy as np
import pytest
from dropgrad_tracking.data import got10k_name, write_box_file
from dropgrad_tracking.evaluation import read_results, score_sequence, summarize
from got10k.datasets import OTB
from got10k.experiments import ExperimentOTB

# A spread of quirks: frame ranges, two-target videos, Human4, negative and empty boxes.
NAMES = ["Biker", "Board", "BlurCar3", "Couple", "Crowds", "David", "Diving", "Football1", "Freeman4",
         "Human4-2", "Jogging-1", "Jogging-2", "Skating2-1", "Skating2-2", "Tiger1", "Twinnings"]


def _build_root(root, seqs):
    for name in NAMES:
        seq = seqs[name]
        folder = root / seq.frames[0].parent.parent.name
        img = folder / "img"
        img.mkdir(parents=True, exist_ok=True)
        # got10k slices these itself from the full image list: give it the full list.
        last = {"David": 770, "Football1": 81, "Diving": 231, "Freeman4": 283}.get(name, 0)
        numbers = range(1, last + 1) if last else [int(f.stem) for f in seq.frames]
        digits = len(seq.frames[0].stem)
        for k in numbers:
            (img / f"{k:0{digits}d}.jpg").touch()
        gt_name = {"Jogging-1": ".1", "Jogging-2": ".2", "Skating2-1": ".1", "Skating2-2": ".2", "Human4-2": ".2"}.get(name, "")
        np.savetxt(folder / f"groundtruth_rect{gt_name}.txt", seq.boxes, fmt="%d", delimiter=",")
    (root / "Human4" / "groundtruth_rect.1.txt").write_text("")  # as in the OTB release


def test_report_agrees_with_got10k(otb_dir, otb_json, tmp_path, capsys):
    root = tmp_path / "otb"
    _build_root(root, otb_json)
    struck, _ = read_results(otb_dir / "results" / "STRUCK", NAMES)
    result_dir = tmp_path / "results"
    for name in NAMES:
        write_box_file(result_dir / "OTB2015" / "STRUCK" / f"{got10k_name(name)}.txt", struck[name].boxes)

    experiment = ExperimentOTB.__new__(ExperimentOTB)  # its __init__ forces download=True
    experiment.dataset = OTB(str(root), version=2015, download=False)
    experiment.result_dir = str(result_dir / "OTB2015")
    experiment.report_dir = str(tmp_path / "reports" / "OTB2015")
    experiment.nbins_iou, experiment.nbins_ce = 21, 51
    experiment.plot_curves = lambda names: None
    performance = experiment.report(["STRUCK"])["STRUCK"]
    capsys.readouterr()
    assert sorted(performance["seq_wise"]) == sorted(got10k_name(n) for n in NAMES)

    scores = {}
    for name in NAMES:
        scores[name] = score_sequence(struck[name].boxes, otb_json[name].boxes, name=name, empty_gt="keep",
                                      success_thresholds=np.linspace(0, 1, 21))
        theirs = performance["seq_wise"][got10k_name(name)]
        np.testing.assert_allclose(scores[name].success, theirs["success_curve"], rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(scores[name].precision, theirs["precision_curve"], rtol=0, atol=1e-12, err_msg=name)
    overall = summarize(scores)
    # The got10k layout (Jogging.1, Skating2.2, Human4) reads back under the canonical names.
    again, ignored = read_results(result_dir / "OTB2015" / "STRUCK", NAMES)
    assert not ignored and all(np.array_equal(again[n].boxes.round(3), struck[n].boxes.round(3)) for n in NAMES)
    assert overall.success_auc == pytest.approx(performance["overall"]["success_score"], abs=1e-12)
    assert overall.precision_20 == pytest.approx(performance["overall"]["precision_score"], abs=1e-12)
