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
