"""The embedded glyph classes: deterministic, disjoint splits, learnable but not trivial."""

import numpy as np
import pytest
import torch
from dropgrad_fewshot.data import DataError, GlyphDataset, build_dataset
from dropgrad_fewshot.data.glyphcheck import main as glyphcheck_main
from dropgrad_fewshot.data.glyphcheck import nearest_neighbour_accuracy
from dropgrad_fewshot.data.glyphs import GLYPH_DEFAULT_CLASSES, render_glyph_class


def test_default_sizes_and_describe():
    ds = build_dataset("glyphs", "train")
    assert ds.n_classes == GLYPH_DEFAULT_CLASSES["train"] >= 1000
    assert len(ds) == 20 * ds.n_classes and ds.channels == 1 and ds.image_size == 28
    assert ds.describe() == "glyphs train: 4000 classes, 80000 images, 1x28x28"
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)


def test_deterministic_from_seed_and_seed_matters():
    a = render_glyph_class(5, "train", 17, 6)
    assert np.array_equal(a, render_glyph_class(5, "train", 17, 6))
    assert not np.array_equal(a, render_glyph_class(6, "train", 17, 6))
    x, y = GlyphDataset("val", n_classes=3, seed=2)[25]
    assert y == 1 and torch.equal(x, GlyphDataset("val", n_classes=3, seed=2)[25][0])


def test_splits_are_disjoint():
    """The same class number in two splits is a different character (different skeleton)."""
    for c in range(20):
        imgs = {s: render_glyph_class(0, s, c, 2).astype(float) for s in ("train", "val", "test")}
        assert not np.array_equal(imgs["train"], imgs["val"])
        assert not np.array_equal(imgs["val"], imgs["test"])
    names = {s: set(GlyphDataset(s, n_classes=10).class_names) for s in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["val"] & names["test"]


def test_images_in_range_with_ink_and_variation():
    a = render_glyph_class(0, "test", 0, 20).astype(np.float32) / 255
    assert a.min() == 0.0 and a.max() == 1.0
    ink = (a > 0.5).mean(axis=(1, 2))
    assert np.all(ink > 0.01) and np.all(ink < 0.5)
    # drawings of one class differ from each other (per-instance distortion)
    assert len({a[i].tobytes() for i in range(20)}) == 20


def test_learnable_but_not_trivial():
    """Nearest neighbour on pixels, 5-way 1-shot: well above chance (20%), well below perfect."""
    imgs = np.stack([render_glyph_class(0, "test", c, 20) for c in range(150)]).astype(np.float32) / 255
    acc = nearest_neighbour_accuracy(imgs, episodes=600)
    assert 0.3 < acc < 0.8, acc


def test_glyphcheck_command(capsys):
    assert glyphcheck_main(["--classes", "20", "--episodes", "50"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "nearest-neighbour 5-way 1-shot accuracy" in out


def test_rotations_are_new_classes():
    ds = GlyphDataset("train", n_classes=3, images_per_class=4, rotations=True)
    assert ds.n_classes == 12 and len(ds) == 48
    base, _ = ds[2 * 4 * 4 + 1]  # character 2, rotation 0, drawing 1
    rot, label = ds[(2 * 4 + 3) * 4 + 1]  # character 2, rotation 270, drawing 1
    assert label == 11 and torch.equal(rot, torch.rot90(base, 3, dims=(-2, -1)))


def test_augment_is_keyed():
    ds = GlyphDataset("train", n_classes=3, images_per_class=4, augment=True)
    assert torch.equal(ds.load(3, (1, 2)), ds.load(3, (1, 2)))
    loads = {ds.load(3, (k,)).numpy().tobytes() for k in range(10)}
    assert len(loads) > 1
    x0 = ds[3][0]
    ds.set_epoch_seed(1)
    assert torch.equal(ds[3][0], ds.load(3, (1, 3)))
    ds.set_epoch_seed(0)
    assert torch.equal(ds[3][0], x0)


def test_image_size_option():
    x, _ = build_dataset("glyphs", "val", image_size=40, n_classes=2)[0]
    assert x.shape == (1, 40, 40)


def test_options_are_validated():
    with pytest.raises(DataError, match="unknown option 'protocol'"):
        build_dataset("glyphs", "train", protocol="maml")
    with pytest.raises(DataError, match="rotations='no' must be true/false"):
        build_dataset("glyphs", "train", rotations="no")
    with pytest.raises(DataError, match="n_classes=0 must be >= 1"):
        build_dataset("glyphs", "train", n_classes=0)
    with pytest.raises(DataError, match="reads no files"):
        build_dataset("glyphs", "train", data_root="/tmp")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        build_dataset("glyphs", "dev")
    with pytest.raises(DataError, match="unknown data set 'mnist'"):
        build_dataset("mnist", "train")
    with pytest.raises(DataError, match="--data-root is required"):
        build_dataset("omniglot", "train")


def test_augmentation_shifts_reach_all_25_offsets():
    from dropgrad_fewshot.data.transforms import shift

    plain = GlyphDataset("train", n_classes=2, images_per_class=2, seed=1)
    aug = GlyphDataset("train", n_classes=2, images_per_class=2, seed=1, augment=True)
    x = plain.load(1)
    shifts = {(dy, dx): shift(x, dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = set()
    for k in range(400):
        a = aug.load(1, (k,))
        match = [d for d, s in shifts.items() if torch.equal(a, s)]
        assert match, k
        seen.add(match[0])
    assert seen == set(shifts)


def test_render_equals_a_naive_distance_field():
    """_render against a float64 per-pixel loop: coverage clip(w - d + 1/2, 0, 1), d the distance from
    the pixel centre (j + 1/2, i + 1/2) to the polyline, max over strokes, rounded to uint8."""
    from dropgrad_fewshot.data.glyphs import _render

    rng = np.random.default_rng(0)
    size, B, n, T = 12, 6, 2, 5
    pts = rng.uniform(-0.1, 1.1, size=(B, n, T, 2))
    widths = rng.uniform(0.02, 0.08, size=(B, n))
    ours = _render(pts, widths, size).astype(int)
    ref = np.zeros((B, size, size))
    for b in range(B):
        for i in range(size):
            for j in range(size):
                c = np.array([j + 0.5, i + 0.5])
                for s in range(n):
                    p = pts[b, s] * size
                    d = min(
                        np.linalg.norm(c - (a + np.clip((c - a) @ (e - a) / max((e - a) @ (e - a), 1e-12), 0, 1) * (e - a)))
                        for a, e in zip(p[:-1], p[1:])
                    )
                    ref[b, i, j] = max(ref[b, i, j], np.clip(widths[b, s] * size - d + 0.5, 0, 1))
    ref = np.floor(ref * 255 + 0.5).astype(int)
    assert np.abs(ours - ref).max() <= 1
    assert (ref > 0).mean() > 0.05  # the strokes do cover part of the canvas
