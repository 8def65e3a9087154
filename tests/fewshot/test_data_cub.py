"""CUB-200-2011: CloserLook's split computed from classes.txt equals the published filelists."""

import json
import shutil

import numpy as np
import pytest
import torch
from dropgrad_fewshot.data import DataError, build_dataset
from dropgrad_fewshot.data.cub import cub_split
from PIL import Image

GRAYSCALE = ("009.Brewer_Blackbird/Brewer_Blackbird_0028_2682.jpg", "025.Pelagic_Cormorant/Pelagic_Cormorant_0022_23802.jpg")
FILELISTS = {"train": "base.json", "val": "val.json", "test": "novel.json"}


@pytest.fixture(scope="module")
def cub_root(shared_data):
    return shared_data / "cub" / "CUB_200_2011"


def test_split_equals_closerlook_filelists(cub_root, shared_data):
    ours = cub_split(cub_root)
    for split, name in FILELISTS.items():
        meta = json.loads((shared_data / "cub" / "closerlook-filelists" / name).read_text())
        # CloserLook's paths carry a foreign prefix; compare <class folder>/<file>.
        theirs = sorted(
            (meta["label_names"][lab], "/".join(path.split("/")[-2:]))
            for path, lab in zip(meta["image_names"], meta["image_labels"])
        )
        mine = sorted((cls, rel.split("/", 1)[1]) for cls, rel, _ in ours[split])
        assert mine == theirs, split
    assert [len({c for c, _, _ in ours[s]}) for s in ("train", "val", "test")] == [100, 50, 50]
    assert sum(len(v) for v in ours.values()) == 11788


def test_split_rule_by_sorted_index(cub_root):
    names = sorted(line.split()[1] for line in (cub_root / "classes.txt").read_text().splitlines())
    ours = cub_split(cub_root)
    for split, rule in (("train", lambda i: i % 2 == 0), ("val", lambda i: i % 4 == 1), ("test", lambda i: i % 4 == 3)):
        assert {c for c, _, _ in ours[split]} == {n for i, n in enumerate(names) if rule(i)}


def test_grayscale_images_load_as_three_channels(cub_root):
    # The sample has 300 of the 11,788 images, so the up-front file check is off here.
    ds = build_dataset("cub", "train", data_root=cub_root, check_files=False)
    assert ds.n_classes == 100 and len(ds) == 5885
    for rel in GRAYSCALE:
        path = cub_root / "images" / rel
        assert Image.open(path).mode == "L"
        x, y = ds[ds.paths.index(path)]
        assert x.shape == (3, 84, 84) and x.dtype == torch.float32
        assert ds.class_names[y] == rel.split("/")[0]
        # equal R, G, B before normalisation: undo the per-channel ImageNet normalisation
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        raw = x * std + mean
        assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    big = build_dataset("cub", "train", data_root=cub_root, check_files=False, image_size=224)
    assert big[big.paths.index(cub_root / "images" / GRAYSCALE[0])][0].shape == (3, 224, 224)


def test_missing_images_are_reported_up_front(cub_root):
    with pytest.raises(DataError) as err:
        build_dataset("cub", "val", data_root=cub_root)
    msg = str(err.value)
    assert "images.txt line" in msg and "which does not exist" in msg and "of 2950 listed images are missing" in msg
    assert msg.endswith("(for a partial copy set check_files=false: fewshot-train --data-options, fewshot-cache --option)")
    ds = build_dataset("cub", "val", data_root=cub_root, check_files=False)
    missing = next(i for i, p in enumerate(ds.paths) if not p.exists())
    with pytest.raises(DataError, match="image file not found"):
        ds[missing]


def test_parent_folder_and_wrong_folder(cub_root, tmp_path):
    ds = build_dataset("cub", "test", data_root=cub_root.parent, check_files=False)
    assert ds.n_classes == 50
    with pytest.raises(DataError, match="not the official CUB_200_2011 folder .*missing classes.txt"):
        build_dataset("cub", "test", data_root=tmp_path)


def test_complete_small_copy_and_inconsistent_metadata(cub_root, tmp_path):
    """A CUB folder restricted to the 50 classes with images: loads with every file checked."""
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    (root / "images").symlink_to(cub_root / "images")
    present = {p.relative_to(cub_root / "images").as_posix() for p in (cub_root / "images").glob("*/*.jpg")}
    images = [l for l in (cub_root / "images.txt").read_text().splitlines() if l.split()[1] in present]
    keep = {l.split()[0] for l in images}
    (root / "images.txt").write_text("\n".join(images) + "\n")
    labels = [l for l in (cub_root / "image_class_labels.txt").read_text().splitlines() if l.split()[0] in keep]
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join((cub_root / "classes.txt").read_text().splitlines()[:50]) + "\n")
    splits = {s: build_dataset("cub", s, data_root=root, check_sizes=False) for s in ("train", "val", "test")}
    assert [splits[s].n_classes for s in ("train", "val", "test")] == [25, 13, 12]
    assert sum(len(d) for d in splits.values()) == 300
    assert np.all(splits["val"].class_counts() == 6)
    with pytest.raises(DataError, match="found 25 classes, expected 100"):
        build_dataset("cub", "train", data_root=root)
    # an image listed in the wrong class
    bad = labels[0].split()[0] + " 2"
    (root / "image_class_labels.txt").write_text("\n".join([bad] + labels[1:]) + "\n")
    with pytest.raises(DataError, match="images.txt line 1: 001.Black_footed_Albatross/.* gives class 2"):
        build_dataset("cub", "train", data_root=root, check_sizes=False)
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\nbroken\n")
    with pytest.raises(DataError, match="classes.txt line 2: expected '<id> <value>'"):
        build_dataset("cub", "train", data_root=root, check_sizes=False)
    shutil.rmtree(tmp_path / "CUB_200_2011")


def test_augmented_loads_vary_with_the_key_and_the_seed(cub_root):
    ds = build_dataset("cub", "train", data_root=cub_root, check_files=False, augment=True, seed=1)
    i = ds.paths.index(cub_root / "images" / GRAYSCALE[0])
    a = ds.load(i, (0,))
    assert a.shape == (3, 84, 84) and torch.equal(a, ds.load(i, (0,)))
    assert not torch.equal(a, ds.load(i, (1,)))
    other = build_dataset("cub", "train", data_root=cub_root, check_files=False, augment=True, seed=2)
    assert not torch.equal(a, other.load(i, (0,)))


def test_split_follows_sorted_folder_names_whatever_the_classes_txt_order(cub_root, tmp_path):
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    for name in ("images.txt", "image_class_labels.txt"):
        (root / name).symlink_to(cub_root / name)
    (root / "classes.txt").write_text("\n".join((cub_root / "classes.txt").read_text().splitlines()[::-1]) + "\n")
    ours, ref = cub_split(root), cub_split(cub_root)
    assert {s: [(c, r) for c, r, _ in v] for s, v in ours.items()} == {s: [(c, r) for c, r, _ in v] for s, v in ref.items()}


def test_metadata_gaps_are_named_errors_and_blank_lines_are_skipped(tmp_path):
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    (root / "classes.txt").write_text("1 001.A\n2 002.B\n")
    (root / "images.txt").write_text("1 001.A/a.jpg\n\n2 002.B/b.jpg\n3 001.A/c.jpg\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 2\n3 1\n")
    assert [(c, r) for c, r, _ in cub_split(root)["train"]] == [("001.A", "images/001.A/a.jpg"), ("001.A", "images/001.A/c.jpg")]
    (root / "image_class_labels.txt").write_text("1 1\n3 1\n")
    with pytest.raises(DataError, match=r"images.txt line 3: image id 2 has no line in image_class_labels.txt"):
        cub_split(root)
    (root / "image_class_labels.txt").write_text("1 1\n2 7\n3 1\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt line 2: class id 7 is not in classes.txt"):
        cub_split(root)
