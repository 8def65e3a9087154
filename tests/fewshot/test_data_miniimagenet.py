"""mini-ImageNet from Ravi's CSVs, CloserLook's filelists and the MAML++ folder layout.

The real list files come from ../shared/data; the images are generated: one tiny JPEG,
hard-linked under every listed name (a real, decodable image at each path, at no disk cost).
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from dropgrad_fewshot.data import DataError, build_dataset, check_episodes
from dropgrad_fewshot.data.miniimagenet import FILELIST_NAMES
from PIL import Image

SPLITS = ("train", "val", "test")
CSV_ROWS = {"train": 38400, "val": 9600, "test": 12000}
CLASSES = {"train": 64, "val": 16, "test": 20}


def _seed_image(folder):
    src = folder / "seed.jpg"
    Image.new("RGB", (12, 10), (200, 40, 90)).save(src)
    return src


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.link(src, dst)


@pytest.fixture(scope="module")
def mini_lists(shared_data):
    return shared_data / "mini-imagenet"


@pytest.fixture(scope="module")
def csv_root(mini_lists, tmp_path_factory):
    """An image folder in Ravi's layout: root/images/<name>.jpg plus the three real CSVs."""
    root = tmp_path_factory.mktemp("mini_csv")
    src = _seed_image(root)
    (root / "images").mkdir()
    for s in SPLITS:
        shutil.copy(mini_lists / "ravi-csv" / f"{s}.csv", root / f"{s}.csv")
        with open(root / f"{s}.csv", newline="") as f:
            for row in csv.DictReader(f):
                os.link(src, root / "images" / row["filename"])
    return root


@pytest.fixture(scope="module")
def ilsvrc_root(mini_lists, tmp_path_factory):
    """An ILSVRC folder (ILSVRC2015/Data/CLS-LOC/train/<wnid>/<file>) with every filelist image."""
    root = tmp_path_factory.mktemp("ilsvrc")
    src = _seed_image(root)
    train = root / "ILSVRC2015" / "Data" / "CLS-LOC" / "train"
    for name in FILELIST_NAMES.values():
        meta = json.loads((mini_lists / "closerlook-filelists" / name).read_text())
        for path in meta["image_names"]:
            wnid, file = path.split("/")[-2:]
            _link(src, train / wnid / file)
    return root


def test_csv_layout_split_sizes(csv_root):
    for s in SPLITS:
        ds = build_dataset("miniimagenet", s, data_root=csv_root)
        assert len(ds) == CSV_ROWS[s] and ds.n_classes == CLASSES[s]
        assert ds.class_counts().tolist() == [600] * CLASSES[s]
        assert ds.channels == 3 and ds.image_size == 84
    with open(csv_root / "val.csv", newline="") as f:
        first = next(csv.DictReader(f))
    ds = build_dataset("miniimagenet", "val", data_root=csv_root, layout="csv")
    assert ds.paths[0].name == first["filename"] and ds.class_names[ds.labels[0]] == first["label"]
    x, _ = ds[0]
    assert x.shape == (3, 84, 84) and x.dtype == torch.float32


def test_closerlook_layout_maps_the_foreign_prefix(ilsvrc_root, mini_lists):
    filelists = mini_lists / "closerlook-filelists"
    splits = {s: build_dataset("miniimagenet", s, data_root=ilsvrc_root, filelist_dir=filelists) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [38400, 9600, 12000]
    assert [splits[s].n_classes for s in SPLITS] == [64, 16, 20]
    first = json.loads((filelists / "base.json").read_text())["image_names"][0]
    assert first.startswith("/home/")  # a foreign absolute path ...
    # ... mapped onto the user's folder, whichever level of the ILSVRC tree --data-root names
    expected = ilsvrc_root / "ILSVRC2015/Data/CLS-LOC/train" / "/".join(first.split("/")[-2:])
    assert splits["train"].paths[0] == expected
    for deeper in ("ILSVRC2015", "ILSVRC2015/Data/CLS-LOC", "ILSVRC2015/Data/CLS-LOC/train"):
        ds = build_dataset("miniimagenet", "test", data_root=ilsvrc_root / deeper, filelist_dir=filelists)
        assert ds.paths == splits["test"].paths
    assert splits["val"][5][0].shape == (3, 84, 84)


def test_layouts_agree_on_classes(csv_root, ilsvrc_root, mini_lists):
    for s in SPLITS:
        a = build_dataset("miniimagenet", s, data_root=csv_root).class_names
        b = build_dataset(
            "miniimagenet", s, data_root=ilsvrc_root, filelist_dir=mini_lists / "closerlook-filelists"
        ).class_names
        assert a == b


def _mamlpp_root(tmp_path, mini_lists, per_class=3):
    """MAML++'s full-size layout with `per_class` images in each of its 100 class folders."""
    maps = json.loads((mini_lists / "mamlpp-class-maps" / "label_name_to_map_mini_imagenet_full_size.json").read_text())
    root = tmp_path / "mini_imagenet_full_size"
    root.mkdir()
    src = _seed_image(tmp_path)
    for key in maps:
        for k in range(per_class):
            _link(src, root / key / f"{key.split('/')[1]}{k:08d}.jpg")
    return root


def test_mamlpp_layout_with_class_maps(tmp_path, mini_lists):
    root = _mamlpp_root(tmp_path, mini_lists)
    maps = mini_lists / "mamlpp-class-maps"
    ds = build_dataset("miniimagenet", "val", data_root=root, class_maps=maps, check_sizes=False)
    assert ds.n_classes == 16 and len(ds) == 48
    with pytest.raises(DataError, match="class n01532829 .* has 3 images, expected 600"):
        build_dataset("miniimagenet", "train", data_root=root, class_maps=maps)
    shutil.rmtree(root / "test" / "n01930112")
    with pytest.raises(DataError, match=r"does not match the class map .*missing class folders \['n01930112'\]"):
        build_dataset("miniimagenet", "test", data_root=root, class_maps=maps, check_sizes=False)
    with pytest.raises(DataError, match="found 19 classes, expected 20"):
        build_dataset("miniimagenet", "test", data_root=root)


def test_a_mistyped_label_is_named_with_its_line(csv_root, tmp_path):
    # One label typed wrong makes a 65th class of one image: the error points at its line.
    root = tmp_path / "typo"
    root.mkdir()
    (root / "images").symlink_to(csv_root / "images")
    lines = (csv_root / "train.csv").read_text().splitlines()
    name, label = lines[2].split(",")
    lines[2] = f"{name},{label[:-1]}X"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"found 65 classes, expected 64; the smallest class, {label[:-1]}X "
                                        rf"\(first listed at .*train.csv line 3\), has 1 image\(s\)"):
        build_dataset("miniimagenet", "train", data_root=root, layout="csv")


def test_csv_row_naming_a_missing_image(csv_root, tmp_path):
    (tmp_path / "images").mkdir()
    src = _seed_image(tmp_path)
    rows = (csv_root / "test.csv").read_text().splitlines()
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    for s in ("train", "val"):
        (tmp_path / f"{s}.csv").write_text("filename,label\n")
    for row in rows[1:]:
        name = row.split(",")[0]
        if name != rows[7].split(",")[0]:
            os.link(src, tmp_path / "images" / name)
    with pytest.raises(DataError) as err:
        build_dataset("miniimagenet", "test", data_root=tmp_path)
    msg = str(err.value)
    assert f"{tmp_path / 'test.csv'} line 8 names {tmp_path / 'images' / rows[7].split(',')[0]}" in msg
    assert "which does not exist (1 of 12000" in msg


def test_malformed_csv_and_wrong_folder(tmp_path, mini_lists):
    for s in SPLITS:
        (tmp_path / f"{s}.csv").write_text("filename,label\na.jpg,n01\n")
    (tmp_path / "val.csv").write_text("filename,label\na.jpg\n")
    with pytest.raises(DataError, match=r"val.csv line 2: expected 'filename,label', got 'a.jpg'"):
        build_dataset("miniimagenet", "val", data_root=tmp_path)
    (tmp_path / "val.csv").write_text("name;wnid\n")
    with pytest.raises(DataError, match="val.csv line 1: expected the header 'filename,label'"):
        build_dataset("miniimagenet", "val", data_root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="cannot tell the layout .* expected one of: an image folder with Ravi's"):
        build_dataset("miniimagenet", "train", data_root=empty)
    with pytest.raises(DataError, match="not found; expected Ravi's train.csv"):
        build_dataset("miniimagenet", "train", data_root=empty, layout="csv")
    with pytest.raises(DataError, match="looked for its first image n01532829/n01532829_12734.JPEG"):
        build_dataset("miniimagenet", "train", data_root=empty, filelist_dir=mini_lists / "closerlook-filelists")
    with pytest.raises(DataError, match="layout='lmdb' is not one of"):
        build_dataset("miniimagenet", "train", data_root=empty, layout="lmdb")


def test_unreadable_image_and_short_class(tmp_path):
    """check_sizes=False admits odd splits; problems then surface with the path or the class."""
    (tmp_path / "images").mkdir()
    src = _seed_image(tmp_path)
    lines = ["filename,label"]
    for c in range(5):
        for k in range(4 if c else 2):
            name = f"n0{c}_{k}.jpg"
            lines.append(f"{name},n0{c}")
            os.link(src, tmp_path / "images" / name)
    for s in SPLITS:
        (tmp_path / f"{s}.csv").write_text("\n".join(lines) + "\n")
    ds = build_dataset("miniimagenet", "train", data_root=tmp_path, check_sizes=False)
    with pytest.raises(DataError, match=r"class 'n00' \(.*train.csv, label n00\) has 2 images"):
        check_episodes(ds, 5, 1, 2)
    (tmp_path / "images" / "n01_3.jpg").unlink()
    (tmp_path / "images" / "n01_3.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = build_dataset("miniimagenet", "val", data_root=tmp_path, check_sizes=False)
    with pytest.raises(DataError, match=f"unreadable image {tmp_path / 'images' / 'n01_3.jpg'}"):
        ds[ds.paths.index(tmp_path / "images" / "n01_3.jpg")]


def test_class_map_of_values_and_map_in_the_parent_folder_are_checked(tmp_path, mini_lists):
    # MAML++ writes two maps; the second has "<split>/<wnid>" as values. A map beside the
    # MAML++ folder is found without class_maps.
    root = _mamlpp_root(tmp_path, mini_lists, per_class=1)
    values_map = mini_lists / "mamlpp-class-maps" / "map_to_label_name_mini_imagenet_full_size.json"
    assert build_dataset("miniimagenet", "val", data_root=root, class_maps=values_map, check_sizes=False).n_classes == 16
    shutil.rmtree(root / "val" / "n01855672")
    with pytest.raises(DataError, match=r"missing class folders \['n01855672'\]"):
        build_dataset("miniimagenet", "val", data_root=root, class_maps=values_map, check_sizes=False)
    shutil.copy(values_map, tmp_path / values_map.name)
    with pytest.raises(DataError, match=r"missing class folders \['n01855672'\]"):
        build_dataset("miniimagenet", "val", data_root=root, check_sizes=False)


def test_mamlpp_folder_reads_upper_case_suffixes_and_skips_hidden_folders(tmp_path):
    root = tmp_path / "mini"
    src = _seed_image(tmp_path)
    for split in SPLITS:
        for c in range(2):
            for k, suffix in enumerate((".JPEG", ".jpg", ".PNG")):
                _link(src, root / split / f"n0{c}" / f"im{k}{suffix}")
    (root / "val" / ".ipynb_checkpoints").mkdir()
    ds = build_dataset("miniimagenet", "val", data_root=root, check_sizes=False)
    assert ds.class_names == ["n00", "n01"] and ds.class_counts().tolist() == [3, 3]


def _tiny_csv(folder, image_dir, src):
    lines = ["filename,label"] + [f"n0{c}_{k}.jpg,n0{c}" for c in range(3) for k in range(2)]
    for line in lines[1:]:
        _link(src, image_dir / line.split(",")[0])
    for s in SPLITS:
        (folder / f"{s}.csv").write_text("\n".join(lines) + "\n")


def test_csv_images_may_lie_in_the_root_and_augmentation_follows_key_and_seed(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "noise.jpg"
    Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(src)
    root = tmp_path / "flat"
    root.mkdir()
    _tiny_csv(root, root, src)  # no images/ folder: the images beside the CSVs
    ds = build_dataset("miniimagenet", "train", data_root=root, check_sizes=False, augment=True, seed=1)
    assert len(ds) == 6 and ds.paths[0] == root / "n00_0.jpg"
    a = ds.load(0, (0,))
    assert torch.equal(a, ds.load(0, (0,))) and not torch.equal(a, ds.load(0, (1,)))
    other = build_dataset("miniimagenet", "train", data_root=root, check_sizes=False, augment=True, seed=2)
    assert not torch.equal(a, other.load(0, (0,)))
