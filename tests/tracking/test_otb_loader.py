"""OTB2015 loaders: the pysot JSON, raw folders with every quirk, malformed files."""

import json

import cv2
import numpy as np
import pytest
from dropgrad_tracking.data import (
    OTB100_NAMES,
    BoxFileError,
    OTBDataError,
    load_otb,
    load_otb_folders,
    load_otb_json,
    read_box_file,
)
from dropgrad_tracking.data.otb import FRAME_RANGES, attribute_code, parse_attributes, read_attr_list, select_sequences

# Frame ranges of OTB2015 (the OTB toolkit's sequence configuration).
RANGES = {
    "David": (300, 770), "Tiger1": (6, 354), "BlurCar1": (247, 988), "BlurCar3": (3, 359), "BlurCar4": (18, 397),
    "Football1": (1, 74), "Freeman3": (1, 460), "Freeman4": (1, 283), "Diving": (1, 215),
}


def _number(path):
    return int(path.stem)


def test_json_has_all_100_targets_with_the_documented_frame_ranges(otb_json, otb_dir):
    assert sorted(otb_json) == sorted(OTB100_NAMES)
    for name, (first, last) in RANGES.items():
        seq = otb_json[name]
        assert (_number(seq.frames[0]), _number(seq.frames[-1]), len(seq)) == (first, last, last - first + 1), name
        assert seq.first_frame == first
    assert otb_json["Board"].frames[0].name == "00001.jpg"  # five-digit names
    # The folder loader's own table (it has no JSON to read) agrees, and has every late start.
    assert FRAME_RANGES == RANGES
    assert {n for n, seq in otb_json.items() if seq.first_frame != 1} <= set(FRAME_RANGES)
    for a, b, folder in (("Jogging-1", "Jogging-2", "Jogging"), ("Skating2-1", "Skating2-2", "Skating2")):
        assert otb_json[a].frames == otb_json[b].frames
        assert otb_json[a].frames[0].parent.parent.name == folder
        assert not np.array_equal(otb_json[a].boxes, otb_json[b].boxes)
    assert otb_json["Human4-2"].frames[0].parent.parent.name == "Human4"
    assert otb_json["Couple"].frames[0] == otb_dir / "Couple" / "img" / "0001.jpg"
    assert set(otb_json["Couple"].attributes) == {"SV", "DEF", "FM", "OPR", "BC"}


def test_the_three_real_sequences_read_from_folders_equal_the_json(otb_dir, otb_json):
    folders = load_otb_folders(otb_dir / "OTB2015-sample")
    assert sorted(folders) == ["Couple", "Crossing", "Football1"]
    for name, seq in folders.items():
        np.testing.assert_array_equal(seq.boxes, otb_json[name].boxes)
        assert [f.name for f in seq.frames] == [f.name for f in otb_json[name].frames]
        assert all(f.is_file() for f in seq.frames)
    # attrs.txt of the folders equals the toolkit's attr_list; the pysot JSON differs for Crossing
    # (it lacks FM and OPR), one of 14 sequences where the two sources disagree (see the README).
    listed = read_attr_list(otb_dir / "lists" / "attr_list.txt")
    for name, seq in folders.items():
        assert seq.attributes == listed[name]
    assert set(folders["Couple"].attributes) == set(otb_json["Couple"].attributes)
    assert set(listed["Crossing"]) - set(otb_json["Crossing"].attributes) == {"FM", "OPR"}
    # Football1's folder has 81 images but OTB2015 scores frames 1-74.
    assert len(list((otb_dir / "OTB2015-sample" / "Football1" / "img").glob("*.jpg"))) > 74
    assert len(folders["Football1"]) == 74
    image = folders["Couple"].image(0)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8


def test_json_with_root_gives_frames_under_the_root(otb_dir):
    seqs = load_otb(root=otb_dir / "OTB2015-sample", annotations=otb_dir / "OTB100.json", names=["couple", "crossing"])
    assert list(seqs) == ["Couple", "Crossing"]
    assert seqs["Couple"].frames[0].is_file()


def test_attribute_list_matches_attrs_txt(otb_dir):
    listed = read_attr_list(otb_dir / "lists" / "attr_list.txt")
    assert listed["Car4"] == ("IV", "SV") and listed["Walking"] == ("SV", "OCC", "DEF")
    assert listed["Jogging-1"] == ("OCC", "DEF", "OPR")
    assert attribute_code("Out-of-View") == "OV"
    with pytest.raises(OTBDataError, match="unknown attribute"):
        parse_attributes("SV, XYZ", "attrs.txt")


def _touch_frames(folder, numbers, digits=4):
    img = folder / "img"
    img.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        (img / f"{k:0{digits}d}.jpg").touch()


def _boxes(n, offset=0):
    return np.array([[10 + i + offset, 20, 30, 40] for i in range(n)], dtype=float)


def _write(path, boxes, sep=","):
    path.write_text("".join(sep.join(str(int(v)) for v in b) + "\n" for b in boxes))


def test_raw_folder_quirks(tmp_path):
    # David: boxes for frames 300-770 only, images 1-770.
    _touch_frames(tmp_path / "David", range(1, 771))
    _write(tmp_path / "David" / "groundtruth_rect.txt", _boxes(471))
    # Tiger1: the file has a box for every image from 1; OTB2015 scores 6-354.
    _touch_frames(tmp_path / "Tiger1", range(1, 355))
    _write(tmp_path / "Tiger1" / "groundtruth_rect.txt", _boxes(354), sep="\t")
    # Board: five-digit frame names, space separated.
    _touch_frames(tmp_path / "Board", range(1, 6), digits=5)
    _write(tmp_path / "Board" / "groundtruth_rect.txt", _boxes(5), sep=" ")
    # Jogging: two targets in one video; Human4: empty .1, scored .2.
    _touch_frames(tmp_path / "Jogging", range(1, 8))
    _write(tmp_path / "Jogging" / "groundtruth_rect.1.txt", _boxes(7))
    _write(tmp_path / "Jogging" / "groundtruth_rect.2.txt", _boxes(7, 100))
    _touch_frames(tmp_path / "Human4", range(1, 5))
    (tmp_path / "Human4" / "groundtruth_rect.1.txt").write_text("")
    _write(tmp_path / "Human4" / "groundtruth_rect.2.txt", _boxes(4))
    (tmp_path / "notes").mkdir()  # not a sequence folder

    seqs = load_otb_folders(tmp_path)
    assert sorted(seqs) == ["Board", "David", "Human4-2", "Jogging-1", "Jogging-2", "Tiger1"]
    assert (_number(seqs["David"].frames[0]), _number(seqs["David"].frames[-1])) == (300, 770)
    tiger = seqs["Tiger1"]
    assert len(tiger) == 349 and _number(tiger.frames[0]) == 6
    np.testing.assert_array_equal(tiger.boxes, _boxes(354)[5:])
    assert seqs["Board"].frames[0].name == "00001.jpg"
    assert seqs["Jogging-1"].frames == seqs["Jogging-2"].frames
    assert seqs["Jogging-2"].boxes[0, 0] == 110


def test_any_spelling_selects_folders_outside_otb_too(tmp_path):
    for name in ("Synthetic-01", "Synthetic-02"):
        _touch_frames(tmp_path / name, range(1, 4))
        _write(tmp_path / name / "groundtruth_rect.txt", _boxes(3))
    assert list(load_otb_folders(tmp_path, iter(["synthetic_02"]))) == ["Synthetic-02"]
    with pytest.raises(OTBDataError, match=r"no sequence named 'Synthetic-99'; it has 2 sequences"):
        load_otb_folders(tmp_path, ["Synthetic-99"])


def test_an_unknown_name_is_answered_with_how_the_names_are_spelled():
    found = {f"Synthetic-{i:02d}": None for i in range(1, 9)}
    with pytest.raises(OTBDataError, match=r"no sequence named 'synthetic-1'; it has 8 sequences \(did you mean 'Synthetic-01'\?\)"):
        select_sequences(found, ["synthetic-1"], "synthetic set")
    with pytest.raises(OTBDataError, match=r"no sequence named 'Basketball'; it has 8 sequences, e.g. Synthetic-01, Synthetic-02, Synthetic-03$"):
        select_sequences(found, ["Basketball"], "synthetic set")


def test_wrong_box_count_and_missing_frames_are_errors_naming_the_file(tmp_path):
    _touch_frames(tmp_path / "David", range(1, 771))
    _write(tmp_path / "David" / "groundtruth_rect.txt", _boxes(470))
    with pytest.raises(OTBDataError, match=r"groundtruth_rect.txt: 470 boxes.*David spans frames 300-770"):
        load_otb_folders(tmp_path)
    other = tmp_path / "other"
    _touch_frames(other / "Crossing", range(1, 5))
    _write(other / "Crossing" / "groundtruth_rect.txt", _boxes(6))
    with pytest.raises(OTBDataError, match="frame 5 of Crossing is missing"):
        load_otb_folders(other)
    # One line lost from a file of one box per frame: refused, not read with every box shifted.
    short = tmp_path / "short"
    _touch_frames(short / "Couple", range(1, 141))
    _write(short / "Couple" / "groundtruth_rect.txt", _boxes(139))
    with pytest.raises(OTBDataError, match=r"Couple/groundtruth_rect.txt: 139 boxes, but .*holds 140 numbered frames \(1-140\)"):
        load_otb_folders(short)


def test_grayscale_frames_are_read_as_three_channels(tmp_path):
    _touch_frames(tmp_path / "Gray", [])
    gray = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    for k in (1, 2):
        cv2.imwrite(str(tmp_path / "Gray" / "img" / f"{k:04d}.jpg"), gray)
    _write(tmp_path / "Gray" / "groundtruth_rect.txt", _boxes(2))
    image = load_otb_folders(tmp_path)["Gray"].image(1)
    assert image.shape == (48, 64, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2,3,4\n1,2,x,4\n", r"bad.txt, line 2: '1,2,x,4' is not 4 numbers"),
        ("1,2,3,4\n1,2,3\n", r"bad.txt, line 2: expected 4 numbers"),
        ("1,2,3,4\n\n1,2,3,4\n", r"bad.txt, line 2: blank line"),
        ("", r"bad.txt is empty"),
    ],
)
def test_malformed_box_lines_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(BoxFileError, match=match):
        read_box_file(path)


def test_mixed_separators_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("1,2,3,4\n5\t6\t7\t8\n9 10, 11\t12\n\n  \n")
    np.testing.assert_array_equal(read_box_file(path), np.arange(1, 13, dtype=float).reshape(3, 4))


def test_malformed_json_entries_are_named(tmp_path):
    path = tmp_path / "otb.json"
    path.write_text(json.dumps({"Couple": {"img_names": ["a/img/0001.jpg"], "gt_rect": [[1, 2, 3, 4], [1, 2, 3, 4]]}}))
    with pytest.raises(OTBDataError, match="sequence 'Couple': 1 img_names for 2 gt_rect boxes"):
        load_otb_json(path)


def test_no_usable_source_gives_one_clear_message(tmp_path):
    with pytest.raises(OTBDataError) as err:
        load_otb(None, None)
    text = str(err.value)
    assert "--root" in text and "groundtruth_rect.txt" in text and "--dataset synthetic" in text
    with pytest.raises(OTBDataError, match="no OTB sequence folders found"):
        load_otb(tmp_path, None)


def test_human4_is_selected_by_got10ks_name_from_json_and_folders(tmp_path):
    path = tmp_path / "otb.json"
    path.write_text(json.dumps({
        "Human4": {"img_names": ["Human4/img/0001.jpg"], "gt_rect": [[1, 2, 3, 4]], "attr": []},
        "Couple": {"img_names": ["Couple/img/0001.jpg"], "gt_rect": [[1, 2, 3, 4]], "attr": []},
    }))
    assert list(load_otb_json(path, names=["human4"])) == ["Human4-2"]
    _touch_frames(tmp_path / "raw" / "Human4", range(1, 4))
    (tmp_path / "raw" / "Human4" / "groundtruth_rect.1.txt").write_text("")
    _write(tmp_path / "raw" / "Human4" / "groundtruth_rect.2.txt", _boxes(3))
    assert list(load_otb_folders(tmp_path / "raw", ["Human4"])) == ["Human4-2"]


def test_a_blank_second_target_file_is_no_target(tmp_path):
    _touch_frames(tmp_path / "Human4", range(1, 4))
    (tmp_path / "Human4" / "groundtruth_rect.1.txt").write_text("\n \n")  # blank, not empty
    _write(tmp_path / "Human4" / "groundtruth_rect.2.txt", _boxes(3))
    assert list(load_otb_folders(tmp_path)) == ["Human4-2"]


def test_check_frames_finds_a_missing_last_frame(tmp_path):
    from dropgrad_tracking.data.otb import check_frames

    _touch_frames(tmp_path / "Couple", range(1, 5))
    _write(tmp_path / "Couple" / "groundtruth_rect.txt", _boxes(4))
    seqs = load_otb_folders(tmp_path)
    check_frames(seqs)
    seqs["Couple"].frames[-1].unlink()  # a truncated download
    with pytest.raises(OTBDataError, match=r"Couple: frame file .*0004.jpg not found"):
        check_frames(seqs)
