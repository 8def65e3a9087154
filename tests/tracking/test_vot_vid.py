"""Meta-training source readers: VOT folders (polygons to boxes) and Meta-Tracker's VID list."""

import json

import numpy as np
import pytest
from dropgrad_tracking.data import (
    BoxFileError,
    OTBDataError,
    load_vot,
    read_sequence_list,
    read_vid_list,
    vid_sequences,
)


def _vot_sequence(folder, regions, color=False):
    img = folder / "color" if color else folder
    img.mkdir(parents=True)
    for k in range(1, len(regions) + 1):
        (img / f"{k:08d}.jpg").touch()
    (folder / "groundtruth.txt").write_text("".join(",".join(str(v) for v in r) + "\n" for r in regions))


def test_vot_polygons_become_bounding_boxes(tmp_path):
    _vot_sequence(tmp_path / "vot2014" / "ball", [[1, 2, 11, 2, 11, 22, 1, 22], [0.5, 1.5, 4.5, 1.5, 4.5, 6.5, 0.5, 6.5]])
    _vot_sequence(tmp_path / "vot2016" / "car", [[5, 6, 7, 8]] * 3, color=True)
    (tmp_path / "list.txt").write_text("vot2014/ball\nvot2016/car\n")
    seqs = load_vot(tmp_path, list_file=tmp_path / "list.txt")
    np.testing.assert_allclose(seqs["vot2014/ball"].boxes, [[1, 2, 10, 20], [0.5, 1.5, 4, 5]])
    assert seqs["vot2016/car"].frames[0].parent.name == "color" and len(seqs["vot2016/car"]) == 3
    assert sorted(load_vot(tmp_path)) == ["vot2014/ball", "vot2016/car"]
    (tmp_path / "vot2016" / "car" / "groundtruth.txt").write_text("1,2,3\n")
    with pytest.raises(BoxFileError, match=r"groundtruth.txt, line 1: expected 4 or 8 numbers"):
        load_vot(tmp_path, ["vot2016/car"])


def test_meta_tracker_lists(otb_dir, tmp_path):
    vot = read_sequence_list(otb_dir / "meta-tracker-lists" / "vot-otb.txt")
    assert len(vot) == 58 and vot[0] == "vot2013/cup"
    snippets = read_vid_list(otb_dir / "meta-tracker-lists" / "ilsvrc_train.json")
    assert len(snippets) == 718
    first = snippets[0]
    assert (first.seq_name, first.start_frame, first.end_frame, first.boxes.shape) == ("ILSVRC2015_train_00002000", 99, 125, (27, 4))
    # Files are numbered from 000000: frame 99 (1-based) is 000098.JPEG; split folders are searched.
    snippet_dir = tmp_path / "train" / "ILSVRC2015_VID_train_0000" / first.seq_name
    snippet_dir.mkdir(parents=True)
    files = first.frame_files(tmp_path / "train")
    assert files[0] == snippet_dir / "000098.JPEG" and files[-1].name == "000124.JPEG"
    assert len(vid_sequences(otb_dir / "meta-tracker-lists" / "ilsvrc_train.json")) == 718


def test_malformed_vid_entries_are_named(tmp_path):
    path = tmp_path / "vid.json"
    path.write_text(json.dumps([{"seq_name": "a", "start_frame": 1, "end_frame": 3, "gt": [[1, 2, 3, 4]], "im_width": 9, "im_height": 9}]))
    with pytest.raises(OTBDataError, match=r"entry 0 \(a\): 1 boxes for frames 1-3"):
        read_vid_list(path)


def test_vot_frames_are_ordered_by_number_whatever_the_listing(tmp_path, monkeypatch):
    import pathlib
    import random

    folder = tmp_path / "vot2013" / "cup"
    folder.mkdir(parents=True)
    for k in range(1, 13):  # unpadded: "10.jpg" sorts before "2.jpg" as text
        (folder / f"{k}.jpg").touch()
    (folder / "groundtruth.txt").write_text("".join(f"{k},2,3,4\n" for k in range(1, 13)))
    listing = pathlib.Path.iterdir

    def shuffled(self):
        items = list(listing(self))
        random.Random(0).shuffle(items)
        return iter(items)

    monkeypatch.setattr(pathlib.Path, "iterdir", shuffled)
    seq = load_vot(tmp_path, ["vot2013/cup"])["vot2013/cup"]
    assert [f.name for f in seq.frames] == [f"{k}.jpg" for k in range(1, 13)]
    np.testing.assert_array_equal(seq.boxes[:, 0], np.arange(1, 13))


def test_vot_frame_and_region_counts_must_agree(tmp_path):
    _vot_sequence(tmp_path / "ball", [[5, 6, 7, 8]] * 3)
    (tmp_path / "ball" / "00000004.jpg").touch()  # one frame more than regions
    with pytest.raises(OTBDataError, match=r"4 frames in .* but 3 regions"):
        load_vot(tmp_path, ["ball"])


def test_vid_frames_are_one_based_and_recorded(tmp_path):
    entry = {"seq_name": "a", "start_frame": 0, "end_frame": 1, "gt": [[1, 2, 3, 4]] * 2, "im_width": 9, "im_height": 9}
    path = tmp_path / "vid.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(OTBDataError, match=r"entry 0 \(a\): 2 boxes for frames 0-1"):  # a 0-based list is refused
        read_vid_list(path)
    path.write_text(json.dumps([dict(entry, start_frame=5, end_frame=6)]))
    (tmp_path / "a").mkdir()
    seq = vid_sequences(path, tmp_path)["0000:a"]
    assert seq.first_frame == 5 and [f.name for f in seq.frames] == ["000004.JPEG", "000005.JPEG"]
