"""Bad OTB input is refused before a tracker runs, naming the file: no partial results."""

import json

import numpy as np
import pytest
from dropgrad_tracking.data import OTBDataError, Sequence, check_frames, load_otb_json
from PIL import Image


def _frames(folder, n):
    folder.mkdir(parents=True)
    for k in range(1, n + 1):
        Image.new("RGB", (16, 12)).save(folder / f"{k:04d}.jpg")
    return [f"Seq/img/{k:04d}.jpg" for k in range(1, n + 1)]


def _json(tmp_path, names, boxes):
    path = tmp_path / "OTB.json"
    path.write_text(json.dumps({"Seq": {"video_dir": "Seq", "img_names": names, "gt_rect": boxes, "attr": []}}))
    return path


def test_missing_middle_frame_is_found_before_running(tmp_path):
    names = _frames(tmp_path / "Seq" / "img", 5)
    (tmp_path / "Seq" / "img" / "0003.jpg").unlink()
    seqs = load_otb_json(_json(tmp_path, names, [[1, 1, 4, 4]] * 5), tmp_path)
    with pytest.raises(OTBDataError, match=r"Seq: frame file .*0003\.jpg not found"):
        check_frames(seqs)


@pytest.mark.parametrize(
    "box", [[1, 1, 0, 0], [1, 1, -3, 4], [1, 1, 4, 0], [float("nan")] * 4, [float("nan"), 1, 4, 4]]
)
def test_unusable_first_box_names_the_ground_truth(tmp_path, box):
    names = _frames(tmp_path / "Seq" / "img", 3)
    path = _json(tmp_path, names, [box, [1, 1, 4, 4], [1, 1, 4, 4]])
    with pytest.raises(OTBDataError, match=r"OTB\.json: the first box of Seq \(frame 1\)"):
        check_frames(load_otb_json(path, tmp_path))


def test_good_sequence_passes(tmp_path):
    names = _frames(tmp_path / "Seq" / "img", 3)
    check_frames(load_otb_json(_json(tmp_path, names, [[1, 1, 4, 4]] * 3), tmp_path))
    check_frames({"S": Sequence("S", [tmp_path / n for n in names], np.ones((3, 4)))})


def test_img_names_that_are_not_paths(tmp_path):
    path = _json(tmp_path, [5, "Seq/img/0002.jpg"], [[1, 1, 4, 4]] * 2)
    with pytest.raises(OTBDataError, match=r"sequence 'Seq': img_names\[0\] is 5"):
        load_otb_json(path, tmp_path)
    path = _json(tmp_path, ["Seq/img/0001.jpg", ""], [[1, 1, 4, 4]] * 2)  # an empty name would be the root itself
    with pytest.raises(OTBDataError, match=r"sequence 'Seq': img_names\[1\] is ''"):
        load_otb_json(path, tmp_path)


def test_vot_list_twice_and_not_utf8_name_the_file_and_line(tmp_path):
    from dropgrad_tracking.data.vot import read_sequence_list

    path = tmp_path / "vot-otb.txt"
    path.write_text("vot2013/cup\nvot2013/juice\n\nvot2013/cup\n")
    with pytest.raises(OTBDataError, match=r"vot-otb\.txt, line 4: vot2013/cup is listed twice \(first on line 1\)"):
        read_sequence_list(path)
    path.write_bytes(b"vot2013/cup\nvot2013/jui\xe9ce\n")
    with pytest.raises(OTBDataError, match=r"vot-otb\.txt is not a text file \(byte 23"):
        read_sequence_list(path)


def test_vot_sequences_named_twice(tmp_path):
    from dropgrad_tracking.data.vot import load_vot

    with pytest.raises(OTBDataError, match="--sequences names a/cup twice"):
        load_vot(tmp_path, names=["a/cup", "a/juice", "a/cup"])


@pytest.mark.parametrize("kind", ["folder", "latin1"])
def test_vid_list_unreadable_names_the_file(tmp_path, kind):
    from dropgrad_tracking.data.vid import read_vid_list

    path = tmp_path / "ilsvrc_train.json"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b'[{"seq_name": "caf\xe9"}]')
    with pytest.raises(OTBDataError, match=r"ilsvrc_train\.json: (cannot be read|not a text file)"):
        read_vid_list(path)


def test_a_sequence_selected_twice_under_two_spellings():
    from dropgrad_tracking.data.otb import select_sequences

    found = {"Couple": Sequence("Couple", [], np.ones((2, 4)))}
    assert list(select_sequences(found, ["couple"], "src")) == ["Couple"]
    with pytest.raises(OTBDataError, match=r"src: sequence Couple is named twice in the selection \(as 'COUPLE'\)"):
        select_sequences(found, ["Couple", "COUPLE"], "src")


def test_track_train_resume_of_another_apps_run_folder_is_one_line(fewshot_run_folder, capsys):
    from dropgrad_tracking.cli_train import main

    run = fewshot_run_folder
    assert main(["--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"track-train: error: {run} is another app's run folder, not a track-train run" in err


def test_track_train_resume_of_a_marked_run_folder_names_its_app(marked_fewshot_run_folder, capsys):
    from dropgrad_tracking.cli_train import main

    run = marked_fewshot_run_folder
    assert main(["--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        f"track-train: error: {run} is a run folder of dropgrad-fewshot (fewshot-train), not a track-train run; "
        "open it with fewshot-train --resume or fewshot-test; expected a track-train run folder") in err, err
