"""Omniglot on the real files: counts, the MAML and background protocols, rotations, errors."""

import numpy as np
import pytest
import torch
from dropgrad_fewshot.data import DataError, build_dataset
from dropgrad_fewshot.data.omniglot import omniglot_characters, split_characters
from PIL import Image


@pytest.fixture(scope="module")
def omniglot(shared_data):
    return shared_data / "omniglot"


def test_official_counts(omniglot):
    background = omniglot_characters(omniglot, "images_background")
    evaluation = omniglot_characters(omniglot, "images_evaluation")
    assert len(background) == 964 and len(evaluation) == 659
    assert len({c.alphabet for c in background}) == 30 and len({c.alphabet for c in evaluation}) == 20
    assert all(len(c.files) == 20 for c in background + evaluation)


def test_maml_protocol_split(omniglot):
    splits = {s: split_characters(omniglot, s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    folders = {s: {c.folder for c in chars} for s, chars in splits.items()}
    assert not folders["train"] & folders["val"] and not folders["train"] & folders["test"]
    assert not folders["val"] & folders["test"]
    assert len(folders["train"] | folders["val"] | folders["test"]) == 1623
    # Both sets are pooled: meta-training characters come from both.
    assert {c.set for c in splits["train"]} == {"images_background", "images_evaluation"}
    # The split is fixed by split_seed, not by the run's seed.
    assert [c.folder for c in split_characters(omniglot, "test", split_seed=2)] != [c.folder for c in splits["test"]]
    ds = build_dataset("omniglot", "test", data_root=omniglot, seed=5)
    assert splits["test"][0].folder == ds.paths[0].parent


def test_maml_datasets_with_rotations(omniglot):
    sizes = {s: build_dataset("omniglot", s, data_root=omniglot) for s in ("train", "val", "test")}
    assert [sizes[s].n_classes for s in ("train", "val", "test")] == [4400, 400, 1692]
    assert len(sizes["test"]) == 1692 * 20
    ds = sizes["test"]
    assert np.array_equal(np.bincount(ds.labels), np.full(1692, 20))
    x0, y0 = ds[0]
    x3, y3 = ds[3 * 20]  # the same drawing as a new class rotated by 270 degrees
    assert (y0, y3) == (0, 3) and ds.paths[0] == ds.paths[60]
    assert torch.equal(x3, torch.rot90(x0, 3, dims=(-2, -1)))
    assert "rot270" in ds.class_names[3]


def test_background_protocol(omniglot):
    train = build_dataset("omniglot", "train", data_root=omniglot, protocol="background")
    val = build_dataset("omniglot", "val", data_root=omniglot, protocol="background")
    test = build_dataset("omniglot", "test", data_root=omniglot, protocol="background")
    assert (train.n_classes, val.n_classes, test.n_classes) == (864, 100, 659)
    assert all("images_evaluation" in str(p) for p in test.paths[::500])
    assert not set(train.paths) & set(val.paths)
    rotated = build_dataset("omniglot", "test", data_root=omniglot, protocol="background", rotations=True)
    assert rotated.n_classes == 4 * 659


def test_images_are_28px_inverted_in_unit_range(omniglot):
    ds = build_dataset("omniglot", "val", data_root=omniglot, rotations=False)
    x, _ = ds[7]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and 0.5 < float(x.max()) <= 1.0
    assert x.mean() < 0.3  # strokes bright on a dark background
    # Reference: Lanczos resize of the 1-bit PNG, inverted.
    ref = np.asarray(Image.open(ds.paths[7]).convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float32)
    assert np.allclose(x[0].numpy(), 1 - ref / 255, atol=1e-6)
    big = build_dataset("omniglot", "val", data_root=omniglot, image_size=84)
    assert big[0][0].shape == (1, 84, 84)


def test_wrong_folder_messages(omniglot, tmp_path):
    with pytest.raises(DataError, match="is one of the two sets; pass its parent folder"):
        build_dataset("omniglot", "train", data_root=omniglot / "images_background")
    with pytest.raises(DataError, match="missing folder .*images_background.*expected the Omniglot folder"):
        build_dataset("omniglot", "train", data_root=tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        build_dataset("omniglot", "train", data_root=tmp_path / "nope")
    (tmp_path / "images_background.zip").touch()
    with pytest.raises(DataError, match="unzip it in place"):
        build_dataset("omniglot", "train", data_root=tmp_path)
    with pytest.raises(DataError, match="protocol='lake' is not one of"):
        build_dataset("omniglot", "train", data_root=omniglot, protocol="lake")


def _tiny_omniglot(root, chars=(3, 2), drawings=4, ink=False):
    """Blank drawings; with ``ink``, a black 30 x 30 square on each (so shifts show)."""
    for set_, n in zip(("images_background", "images_evaluation"), chars):
        for c in range(n):
            d = root / set_ / "Alpha" / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for k in range(drawings):
                im = Image.new("L", (105, 105), 255) if ink else Image.new("1", (105, 105), 1)
                if ink:
                    im.paste(0, (30 + 5 * c, 40, 60 + 5 * c, 70))
                im.save(d / f"{c:04d}_{k:02d}.png")
    return root


def test_partial_folder_and_empty_character(tmp_path):
    root = _tiny_omniglot(tmp_path)
    with pytest.raises(DataError, match="takes 1200 meta-training characters .* holds 5 characters"):
        build_dataset("omniglot", "train", data_root=root)
    ds = build_dataset("omniglot", "train", data_root=root, train_characters=3, val_characters=1)
    assert ds.n_classes == 2 * 4
    (root / "images_evaluation" / "Alpha" / "character09").mkdir()
    with pytest.raises(DataError, match="character09 holds no .png drawings"):
        build_dataset("omniglot", "test", data_root=root, protocol="background")


def test_unreadable_image_names_the_path(tmp_path):
    root = _tiny_omniglot(tmp_path)
    bad = root / "images_evaluation" / "Alpha" / "character01" / "0000_00.png"
    bad.write_bytes(b"not a png")
    ds = build_dataset("omniglot", "test", data_root=root, protocol="background")
    with pytest.raises(DataError, match=f"unreadable image {bad}"):
        ds[0]


def test_augmented_loads_are_keyed_shifts_that_follow_the_seed(tmp_path):
    from dropgrad_fewshot.data.transforms import shift

    root = _tiny_omniglot(tmp_path, ink=True)
    opts = dict(data_root=root, protocol="background", val_characters=0)
    plain = build_dataset("omniglot", "train", **opts)
    aug = build_dataset("omniglot", "train", augment=True, seed=1, **opts)
    x = plain.load(5)
    shifts = [shift(x, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    loads = [aug.load(5, (k,)) for k in range(30)]
    # every load is one of the 25 shifts, and they vary with the key (not one cached shift)
    assert all(any(torch.equal(a, s) for s in shifts) for a in loads)
    assert len({a.numpy().tobytes() for a in loads}) > 5
    assert torch.equal(aug.load(5, (3,)), loads[3])
    # the data set's seed is part of the augmentation stream
    other = build_dataset("omniglot", "train", augment=True, seed=2, **opts)
    assert any(not torch.equal(other.load(5, (k,)), loads[k]) for k in range(10))


def test_hidden_folders_are_not_alphabets_or_characters(tmp_path):
    root = _tiny_omniglot(tmp_path)
    (root / "images_background" / ".ipynb_checkpoints").mkdir()
    (root / "images_background" / "Alpha" / ".character99").mkdir()
    assert len(omniglot_characters(root, "images_background")) == 3


def test_maml_split_is_the_documented_permutation_of_the_sorted_characters(omniglot):
    """Characters sorted by (set, alphabet, folder), permuted by PCG64(split_seed); test = after 1200."""
    pool = [
        f"{set_}/{alpha.name}/{char.name}"
        for set_ in ("images_background", "images_evaluation")
        for alpha in sorted((omniglot / set_).iterdir(), key=lambda p: p.name) if alpha.is_dir()
        for char in sorted(alpha.iterdir(), key=lambda p: p.name) if char.is_dir()
    ]
    assert len(pool) == 1623
    order = np.random.Generator(np.random.PCG64(1)).permutation(1623)
    for split, positions in (("test", order[1200:]), ("val", order[1100:1200])):
        assert [f"{c.set}/{c.name}" for c in split_characters(omniglot, split)] == [pool[i] for i in positions]


def test_background_validation_characters_are_shuffled_across_alphabets(omniglot):
    # The last 100 of a shuffle, not the last 100 folders (which would be 2-3 alphabets).
    val = split_characters(omniglot, "val", protocol="background")
    assert len(val) == 100 and len({c.alphabet for c in val}) >= 15


def test_maml_protocol_tasks_hold_distinct_characters_like_finns_code(omniglot):
    """Without the character groups, about 29% of 20-way test tasks held two rotations of one character."""
    from dropgrad_fewshot.data import EpisodeBatches

    test = build_dataset("omniglot", "test", data_root=omniglot)
    batches = EpisodeBatches(test, n_way=20, n_shot=1, n_query=1, tasks_per_batch=1, seed=0)
    classes = [batches.sampler.sample(i).classes for i in range(300)]
    assert all(len(set((c // 4).tolist())) == 20 for c in classes)
    assert len({int(r) for c in classes for r in c % 4}) == 4  # all rotations are drawn
