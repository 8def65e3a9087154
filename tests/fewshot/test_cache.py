"""Episode cache: cached pixels equal the normal path's, device augmentation against torchvision, errors, CLI."""

import doctest
import functools
import hashlib
import os
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from dropgrad import folder_tag
from dropgrad_fewshot import cache_cli, cli, run, testing
from dropgrad_fewshot.data import (
    CachedDataset,
    CachedEpisodeBatches,
    DataError,
    EpisodeBatches,
    build_cache,
    build_dataset,
    cached_episodes,
    device_augment,
    open_cache,
    verify_cache,
)
from dropgrad_fewshot.data import build as build_mod
from dropgrad_fewshot.data import cache as cache_mod
from dropgrad_fewshot.data.device_augment import (
    PixelFormat,
    Shifts,
    apply_crop_jitter_flip,
    apply_shifts,
    sample_crop_jitter_flip,
    sample_shifts,
)
from dropgrad_fewshot.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    random_resized_crop_params,
    shift,
)

REPO = Path(__file__).resolve().parents[2]


def assert_same_batches(a, b, indices):
    for i in indices:
        ta, tb = a.batch(i), b.batch(i)
        for x, y in zip(ta, tb):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x.cpu(), y.cpu()), i


def assert_same_items(cached, source, items):
    for i in items:
        x, y = cached.load(int(i)), source.load(int(i))
        assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape
        assert torch.equal(x, y), i


@pytest.mark.parametrize("module", [cache_mod, cached_episodes, device_augment, build_mod])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- equality with the normal path
def test_glyph_cache_equals_the_normal_path_items_and_batches(tmp_path):
    opts = dict(n_classes=12, images_per_class=6, rotations=True)
    source = build_dataset("glyphs", "train", seed=3, **opts)
    path = build_cache("glyphs", "train", None, 28, tmp_path, seed=3, **opts)
    cached = open_cache(tmp_path, "glyphs", "train", 28, options=opts, seed=3)
    assert cached.images.shape == (len(source), 28, 28, 1) and path.stat().st_size == len(source) * 784
    assert cached.labels.tolist() == source.labels.tolist() and cached.class_names == source.class_names
    assert_same_items(cached, source, range(len(source)))  # every item, rotations included
    kw = dict(n_way=5, n_shot=2, n_query=3, tasks_per_batch=3, seed=7)
    fast = CachedEpisodeBatches(cached, **kw)
    # out of order too: the background gather of b+1 must not leak into another index
    assert_same_batches(fast, EpisodeBatches(source, **kw), [0, 1, 2, 5, 4, 4, 9])
    assert_same_batches(CachedEpisodeBatches(cached, prefetch=False, **kw), EpisodeBatches(cached, **kw), [3, 0])
    fast.close()


def test_omniglot_cache_equals_the_normal_path(shared_data, tmp_path):
    root = shared_data / "omniglot"
    source = build_dataset("omniglot", "val", data_root=root)  # maml protocol: 100 characters x 4 rotations
    build_cache("omniglot", "val", root, 28, tmp_path, threads=2)
    cached = open_cache(tmp_path, "omniglot", "val", 28, options={"protocol": "maml", "rotations": None})
    assert len(cached) == len(source) == 8000
    rng = np.random.default_rng(0)
    assert_same_items(cached, source, rng.choice(len(source), 600, replace=False))
    kw = dict(n_way=20, n_shot=1, n_query=5, tasks_per_batch=4, seed=1)
    assert_same_batches(CachedEpisodeBatches(cached, **kw), EpisodeBatches(source, **kw), [0, 3])
    with pytest.raises(DataError, match=r"other data-set options .*protocol: cache 'maml', run 'background'"):
        open_cache(tmp_path, "omniglot", "val", 28, options={"protocol": "background"})


@pytest.fixture(scope="module")
def mini_cub(shared_data, tmp_path_factory):
    """A CUB_200_2011 folder holding only the 300 sample images (linked, not copied), metadata cut to them."""
    src = shared_data / "cub" / "CUB_200_2011"
    root = tmp_path_factory.mktemp("cub") / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    images = [line.split() for line in (src / "images.txt").read_text().splitlines() if line.strip()]
    keep = {i for i, rel in images if (src / "images" / rel).is_file()}
    assert len(keep) == 300
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel in images if i in keep))
    labels = [line.split() for line in (src / "image_class_labels.txt").read_text().splitlines() if line.strip()]
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in labels if i in keep))
    (root / "classes.txt").write_text((src / "classes.txt").read_text())
    for folder in (src / "images").iterdir():
        (root / "images" / folder.name).symlink_to(folder, target_is_directory=True)
    return root


def test_cub_cache_equals_the_normal_path_at_84_and_224(mini_cub, tmp_path):
    opts = dict(check_sizes=False)
    for split, size in (("train", 84), ("val", 224)):
        source = build_dataset("cub", split, data_root=mini_cub, image_size=size, **opts)
        assert cache_cli.main(["--dataset", "cub", "--data-root", str(mini_cub), "--splits", split,
                               "--image-size", str(size), "--out", str(tmp_path), "--option", "check_sizes=false",
                               "--no-progress"]) == 0
        cached = open_cache(tmp_path, "cub", split, size, options=opts)
        assert cached.channels == 3 and cached.images.shape == (len(source), size, size, 3)
        assert_same_items(cached, source, range(len(source)) if size == 84 else range(0, len(source), 7))
        kw = dict(n_way=5, n_shot=1, n_query=2, tasks_per_batch=2, seed=0)
        assert_same_batches(CachedEpisodeBatches(cached, **kw), EpisodeBatches(source, **kw), [0, 1])
    meta = json.loads((tmp_path / "cub-train-84.json").read_text())
    assert meta["source"]["data_root"] == str(mini_cub.resolve()) and meta["pixels"]["mean"] is not None
    assert "centre crop 84" in meta["resize"] and meta["shape"] == [150, 84, 84, 3]


# --------------------------------------------------------------------------- device augmentation
def test_crop_jitter_flip_matches_torchvision_tensor_ops():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 20, 20, generator=gen)
    p = sample_crop_jitter_flip(24, 20, np.random.default_rng(5))
    assert p.flip.any() and not p.flip.all() and (p.width < 20).any()
    ours = apply_crop_jitter_flip(x, p)
    for i in range(24):
        ref = TF.resized_crop(x[i], int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]), [20, 20],
                              interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        ref = TF.adjust_brightness(ref, float(p.brightness[i]))
        ref = TF.adjust_contrast(ref, float(p.contrast[i]))
        ref = TF.adjust_saturation(ref, float(p.saturation[i]))
        if p.flip[i]:
            ref = TF.hflip(ref)
        torch.testing.assert_close(ours[i], ref, atol=2e-5, rtol=0)


def test_crop_parameters_follow_the_file_paths_random_resized_crop():
    n = 20000
    p = sample_crop_jitter_flip(n, 84, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ref = np.array([random_resized_crop_params(84, 84, rng) for _ in range(n)])  # (top, left, h, w)
    for ours, theirs in ((p.height * p.width, ref[:, 2] * ref[:, 3]), (p.width / p.height, ref[:, 3] / ref[:, 2])):
        q = [0.05, 0.25, 0.5, 0.75, 0.95]
        np.testing.assert_allclose(np.quantile(ours, q), np.quantile(theirs, q), rtol=0.04)
    assert ((p.top + p.height <= 84) & (p.left + p.width <= 84) & (p.top >= 0) & (p.left >= 0)).all()
    assert abs(np.mean(p.top + p.height / 2 - 42)) < 0.5  # centred on average
    assert 0.48 < p.flip.mean() < 0.52 and 0.6 <= p.brightness.min() and p.saturation.max() <= 1.4


def test_shifts_equal_the_file_path_shift():
    x = torch.rand(30, 1, 9, 9)
    s = sample_shifts(30, 2, np.random.default_rng(2))
    out = apply_shifts(x, s)
    for i in range(30):
        assert torch.equal(out[i], shift(x[i], int(s.dy[i]), int(s.dx[i])))
    assert torch.equal(apply_shifts(x, Shifts(np.zeros(30, int), np.zeros(30, int))), x)


def test_crop_sizes_follow_the_file_paths_rule_at_the_image_edge():
    # At 4 px the (height, width) pairs are few and the crops as wide or as high as the image
    # (w == S, h < S) are common: torchvision's accept rule is 0 < w <= S and 0 < h <= S.
    n, size = 20000, 4
    p = sample_crop_jitter_flip(n, size, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    ref = np.array([random_resized_crop_params(size, size, rng) for _ in range(n)])
    ours, theirs = p.height * 10 + p.width, ref[:, 2] * 10 + ref[:, 3]
    for hw in np.union1d(ours, theirs):
        assert abs(np.mean(ours == hw) - np.mean(theirs == hw)) < 0.012, hw
    assert np.mean((p.width == size) & (p.height < size)) > 0.1


def test_jitter_factors_are_drawn_independently():
    # CloserLook's ImageJitter draws one factor per enhancement (brightness, contrast, colour).
    p = sample_crop_jitter_flip(20000, 16, np.random.default_rng(4))
    f = np.stack([p.brightness, p.contrast, p.saturation])
    assert np.abs(np.corrcoef(f)[np.triu_indices(3, 1)]).max() < 0.05
    assert np.allclose(f.mean(axis=1), 1.0, atol=0.01) and f.min() >= 0.6 and f.max() <= 1.4


def test_shifts_along_one_axis_equal_the_file_path_shift():
    # Only dx moves: the zero padding must still cover the largest |dx|.
    x = torch.rand(4, 1, 7, 7)
    s = Shifts(np.zeros(4, dtype=np.int64), np.array([2, -2, 1, 0]))
    out = apply_shifts(x, s)
    for i in range(4):
        assert torch.equal(out[i], shift(x[i], 0, int(s.dx[i])))
    t = Shifts(np.array([-2, 0, 1, 2]), np.zeros(4, dtype=np.int64))
    assert all(torch.equal(o, shift(xi, int(dy), 0)) for o, xi, dy in zip(apply_shifts(x, t), x, t.dy))


def test_grayscale_batch_augmentation_shifts_up_to_2_pixels_like_the_file_path():
    # The file path (glyphs, Omniglot) shifts by rng.integers(-2, 3) in each direction: a single
    # bright pixel lands uniformly on the 5 x 5 offsets around its place.
    x = torch.zeros(1000, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    y = device_augment.augment_batch(x, np.random.default_rng(0))
    where = y[:, 0].flatten(1).argmax(1)
    assert torch.equal(y.flatten(1).sum(1), torch.ones(1000))
    for d in (where // 9 - 4, where % 9 - 4):
        counts = torch.bincount(d + 2, minlength=5)
        assert counts.numel() == 5 and (counts > 150).all(), counts.tolist()


def test_augmented_batches_are_seed_deterministic_and_only_change_the_images(tmp_path, mini_cub):
    build_cache("cub", "train", mini_cub, 32, tmp_path, check_sizes=False)
    plain = open_cache(tmp_path, "cub", "train", 32, options={"check_sizes": False})
    aug = open_cache(tmp_path, "cub", "train", 32, options={"check_sizes": False}, augment=True)
    kw = dict(n_way=5, n_shot=1, n_query=2, tasks_per_batch=2, seed=4)
    a, b, p = CachedEpisodeBatches(aug, **kw), CachedEpisodeBatches(aug, prefetch=False, **kw), CachedEpisodeBatches(plain, **kw)
    assert_same_batches(a, b, [0, 2])
    t0, t1, tp = a.batch(0), a.batch(1), p.batch(0)
    assert not torch.equal(t0.support_x, t1.support_x) and not torch.equal(t0.support_x, tp.support_x)
    assert torch.equal(t0.support_y, tp.support_y) and torch.equal(t0.query_y, tp.query_y)
    # still normalised images: about zero-mean where the plain ones are
    assert abs(float(t0.query_x.mean() - tp.query_x.mean())) < 0.5
    # per-item loads are keyed like every data set
    assert torch.equal(aug.load(3, (1, 2)), aug.load(3, (1, 2))) and not torch.equal(aug.load(3, (1, 2)), aug.load(3, (1, 3)))


def _glyph_cache(tmp_path, augment=True):
    opts = dict(n_classes=12, images_per_class=6)
    build_cache("glyphs", "train", None, 28, tmp_path, seed=3, **opts)
    return open_cache(tmp_path, "glyphs", "train", 28, options=opts, seed=3, augment=augment)


def _count_builds(batches, monkeypatch):
    built = []
    build = batches._build
    monkeypatch.setattr(batches, "_build", lambda index: built.append(index) or build(index))
    return built


def test_staged_batches_are_the_batches_and_are_built_once(tmp_path, monkeypatch):
    cached = _glyph_cache(tmp_path)
    kw = dict(n_way=3, n_shot=2, n_query=2, tasks_per_batch=3, seed=5)
    staged, fresh = CachedEpisodeBatches(cached, **kw), CachedEpisodeBatches(cached, prefetch=False, **kw)
    built = _count_builds(staged, monkeypatch)
    staged.stage(1)
    staged.stage(1)  # already staged: nothing new
    assert built == [1]
    assert_same_batches(staged, fresh, [1])
    assert built == [1]  # batch(1) handed over the staged batch
    assert_same_batches(staged, fresh, [1])  # asked again: built again, the same
    staged.stage(2)
    assert_same_batches(staged, fresh, [3])  # another index: the staged batch is dropped
    assert built == [1, 1, 2, 3]
    assert_same_batches(staged, fresh, [2])
    assert built == [1, 1, 2, 3, 2]
    with pytest.raises(ValueError, match="batch index must be an integer >= 0"):
        staged.stage(-1)
    staged.close()


def test_fewshot_train_stages_each_next_batch_and_none_past_the_last(tmp_path, monkeypatch):
    from dropgrad_fewshot.data import glyphs

    for split in ("train", "val", "test"):  # fewshot-train's glyphs at their default options, fewer of them
        monkeypatch.setitem(glyphs.GLYPH_DEFAULT_CLASSES, split, 6)
    assert cache_cli.main(["--dataset", "glyphs", "--image-size", "28", "--out", str(tmp_path / "cache"), "--no-progress"]) == 0
    calls = []
    stage, batch = CachedEpisodeBatches.stage, CachedEpisodeBatches.batch
    monkeypatch.setattr(CachedEpisodeBatches, "stage", lambda self, i: calls.append((self, "stage", i)) or stage(self, i))
    monkeypatch.setattr(CachedEpisodeBatches, "batch", lambda self, i: calls.append((self, "batch", i)) or batch(self, i))
    assert cli.train_main([
        "--out", str(tmp_path / "run"), "--dataset", "glyphs", "--cache", str(tmp_path / "cache"), "--image-size", "28",
        "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2", "--inner-steps", "1", "--meta-batch", "2",
        "--epochs", "2", "--episodes-per-epoch", "6", "--val-episodes", "2", "--test-episodes", "2",
        "--no-progress", "--device", "cpu"]) == 0
    staging = {id(c[0]) for c in calls if c[1] == "stage"}
    assert len(staging) == 1  # the training batches only
    train = [c[1:] for c in calls if id(c[0]) in staging]
    # 3 steps per epoch, 6 in all: each step's batch, then the next one staged; none after the last
    assert train == [("batch", 0), ("stage", 1), ("batch", 1), ("stage", 2), ("batch", 2), ("stage", 3),
                     ("batch", 3), ("stage", 4), ("batch", 4), ("stage", 5), ("batch", 5)]


def _assert_shards_slice_the_batch(cached, kw, shards, indices):
    whole = CachedEpisodeBatches(cached, **kw)
    assert whole.augment  # the augmentation parameters are drawn for the whole batch, then sliced
    for shard in shards:
        part = CachedEpisodeBatches(cached, shard=shard, **kw)
        for i in indices:
            for x, y in zip(part.batch(i), whole.batch(i)):
                assert torch.equal(x, y[shard]), (shard, i)
        part.close()
    whole.close()


def test_cached_shards_slice_the_augmented_batch_grayscale(tmp_path):
    cached = _glyph_cache(tmp_path)
    kw = dict(n_way=3, n_shot=2, n_query=2, tasks_per_batch=3, seed=5)
    _assert_shards_slice_the_batch(cached, kw, [slice(0, 1), slice(1, 3), slice(2, 3)], [0, 3])


def test_cached_shards_slice_the_augmented_batch_rgb(tmp_path, mini_cub):
    build_cache("cub", "train", mini_cub, 32, tmp_path, check_sizes=False)
    cached = open_cache(tmp_path, "cub", "train", 32, options={"check_sizes": False}, augment=True)
    kw = dict(n_way=5, n_shot=1, n_query=2, tasks_per_batch=4, seed=4)
    _assert_shards_slice_the_batch(cached, kw, [slice(0, 2), slice(2, 4), slice(3, 4)], [0, 1])


def test_pixel_format_reproduces_each_data_sets_conversion():
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1)
    ref = u8.numpy()[0, :, :, 0]
    glyph = PixelFormat("reciprocal").to_float(u8)[0, 0].numpy()
    assert np.array_equal(glyph, ref.astype(np.float32) * np.float32(1 / 255))
    omni = PixelFormat("divide", invert=True).to_float(u8)[0, 0].numpy()
    assert np.array_equal(omni, 1.0 - np.asarray(ref, dtype=np.float32) / 255.0)
    assert not np.array_equal(glyph, np.asarray(ref, dtype=np.float32) / 255.0)  # the two really differ
    # The CPU's table lookup and the element-wise ops a GPU runs give the same bits.
    u8 = torch.randint(0, 256, (5, 7, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for fmt in (PixelFormat("divide", False, IMAGENET_MEAN, IMAGENET_STD), PixelFormat("divide", True), PixelFormat("reciprocal")):
        ops = fmt._normalize(fmt._unit_nhwc(u8), -1).permute(0, 3, 1, 2)
        assert torch.equal(fmt.to_float(u8), ops)
        assert torch.equal(fmt.normalize(fmt.unit(u8)), ops)


# --------------------------------------------------------------------------- errors
def test_errors_name_the_file(tmp_path):
    opts = dict(n_classes=4, images_per_class=3)
    path = build_cache("glyphs", "val", None, 28, tmp_path, **opts)
    side = path.with_suffix(".json")
    with pytest.raises(DataError, match=r"glyphs val at 32 px in .*found glyphs-val-28.u8.*--image-size 32"):
        open_cache(tmp_path, "glyphs", "val", 32, options=opts)
    # The command named is the console script an installed copy has; tools/ exists only in a checkout.
    with pytest.raises(DataError, match=r"no episode cache for glyphs test at 28 px.*build it with fewshot-cache --dataset"):
        open_cache(tmp_path, "glyphs", "test", 28)
    with pytest.raises(DataError, match="holds 28-pixel images, but the run uses 84"):
        CachedDataset(path, image_size=84)
    with pytest.raises(DataError, match=r"other data-set options .*seed: cache 0, run 1"):
        open_cache(tmp_path, "glyphs", "val", 28, options=opts, seed=1)
    with pytest.raises(DataError, match="--cache .*not a folder"):
        open_cache(tmp_path / "nope", "glyphs", "val", 28)

    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match=f"{side}.*format version 99"):
        CachedDataset(path)
    side.write_text(json.dumps({**meta, "labels": meta["labels"][::-1]}))
    with pytest.raises(DataError, match="checksum"):
        CachedDataset(path)
    side.write_text(json.dumps(meta))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match=rf"{path} has {len(data) - 100} bytes.*12 x 28 x 28 x 1 = {len(data)} bytes \(truncated\)"):
        CachedDataset(path)
    path.write_bytes(data)
    side.unlink()
    with pytest.raises(DataError, match=f"{path} has no sidecar"):
        CachedDataset(path)
    path.unlink()
    with pytest.raises(DataError, match=f"episode cache file not found: {path}"):
        CachedDataset(path)


def test_verify_finds_a_changed_pixel_and_names_the_file(tmp_path, capsys):
    opts = ["--option", "n_classes=4", "--option", "images_per_class=3", "--no-progress"]
    assert cache_cli.main(["--dataset", "glyphs", "--splits", "val", "test", "--out", str(tmp_path), *opts]) == 0
    capsys.readouterr()
    val, test = tmp_path / "glyphs-val-28.u8", tmp_path / "glyphs-test-28.u8"
    # The recorded digest is the file's SHA-256 (hashlib over the whole file, independently).
    meta = json.loads(val.with_suffix(".json").read_text())
    assert meta["pixels_sha256"] == hashlib.sha256(val.read_bytes()).hexdigest()
    assert cache_cli.main(["--verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [str(test), str(val)] and all(": ok (12 x 28 x 28 x 1" in x for x in out)

    data = bytearray(val.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size: the sidecar's own checks cannot see it
    val.write_bytes(bytes(data))
    CachedDataset(val)  # opening does not read every byte
    with pytest.raises(SystemExit) as exc:
        cache_cli.main(["--verify", str(test), str(val.with_suffix(".json"))])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out.startswith(f"{test}: ok")
    assert f"error: episode cache {val}: its pixels differ" in captured.err and "Traceback" not in captured.err

    side = test.with_suffix(".json")
    side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "pixels_sha256"}))
    with pytest.raises(DataError, match=f"{side} records no pixel checksum"):
        verify_cache(test)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--verify", "{tmp}", "--dataset", "glyphs"], "--verify checks built caches; it takes no --dataset"),
        (["--dataset", "glyphs"], "required: --dataset, --out (or --verify PATH"),
        (["--verify", "{tmp}"], "no episode cache (*.u8) in that folder"),
        (["--verify", "{tmp}/a.txt"], "expected a cache folder or a .u8/.json file"),
        (["--verify", "{tmp}/a.u8"], "episode cache file not found"),
    ],
)
def test_verify_option_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        cache_cli.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_the_rebuild_command_of_an_options_mismatch_builds_the_runs_cache(tmp_path, capsys):
    opts = dict(n_classes=4, images_per_class=3)
    build_cache("glyphs", "val", None, 28, tmp_path / "a", **opts)
    with pytest.raises(DataError) as err:
        open_cache(tmp_path / "a", "glyphs", "val", 28, options={**opts, "rotations": True}, seed=1)
    command = str(err.value).split("build this run's with ")[1].split(" (one cache")[0]
    assert command == (f"fewshot-cache --dataset glyphs --splits val --image-size 28 --seed 1 --option images_per_class=3 "
                       f"--option n_classes=4 --option rotations=true --out {tmp_path / 'a'}")
    argv = command.split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "b")  # as the message says: another folder keeps the old one
    assert cache_cli.main([*argv, "--no-progress"]) == 0
    rotated = open_cache(tmp_path / "b", "glyphs", "val", 28, options={**opts, "rotations": True}, seed=1)
    assert rotated.n_classes == 16 and rotated.class_groups.tolist() == [k // 4 for k in range(16)]  # as the source's
    assert open_cache(tmp_path / "a", "glyphs", "val", 28, options=opts).class_groups is None


def test_a_failed_build_leaves_nothing_behind(tmp_path, shared_data):
    out = tmp_path / "out"
    # The sample holds 300 of CUB's 11,788 images: without the up-front check, the first missing one stops the build.
    with pytest.raises(DataError, match="image file not found"):
        build_cache("cub", "train", shared_data / "cub" / "CUB_200_2011", 16, out, check_files=False, check_sizes=False)
    assert list(out.iterdir()) == []


def test_a_rebuild_stopped_before_its_sidecar_leaves_no_sidecar(tmp_path, monkeypatch):
    # New pixels beside the old sidecar would pass its checks (labels and shape only) if the
    # rebuild had the same size: the old sidecar must be gone before the pixels change.
    path = build_cache("glyphs", "val", None, 28, tmp_path, n_classes=4, images_per_class=3)
    real = os.replace

    def stop_at_the_sidecar(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", stop_at_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        build_cache("glyphs", "val", None, 28, tmp_path, n_classes=4, images_per_class=3, seed=1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with pytest.raises(DataError, match=f"{path} has no sidecar"):
        CachedDataset(path)


def test_tool_script_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    script = REPO / "tools" / "build_episode_cache.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--dataset", "glyphs", "--out", str(tmp_path), "--option", "colour=red"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: --option 'colour=red': expected KEY=VALUE with KEY one of" in err
    assert "Traceback" not in err and err.count("\n") <= 3
    with pytest.raises(SystemExit) as exc:
        cache_cli.main(["--dataset", "cub", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "not the official CUB_200_2011 folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- fewshot-train --cache
def test_train_with_cache_gives_the_same_run_as_without(tmp_path, capsys, monkeypatch, mini_cub):
    # CUB's 300 sample images as the data set; the file path needs check_sizes off for that.
    tiny = ["--dataset", "cub", "--image-size", "32", "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2",
            "--inner-steps", "1", "--meta-batch", "2", "--epochs", "2", "--episodes-per-epoch", "4",
            "--val-episodes", "4", "--test-episodes", "4", "--no-progress", "--device", "cpu"]
    assert cache_cli.main(["--dataset", "cub", "--data-root", str(mini_cub), "--image-size", "32", "--out",
                           str(tmp_path / "cache"), "--option", "check_sizes=false", "--no-progress"]) == 0
    assert cli.train_main(["--out", str(tmp_path / "plain"), "--data-root", str(mini_cub), *tiny,
                           "--data-options", "check_sizes=false"]) == 0
    # no --data-root: the cache is all the run needs (a partial copy's cache, like its files, needs check_sizes=false)
    assert cli.train_main(["--out", str(tmp_path / "cached"), "--cache", str(tmp_path / "cache"), *tiny,
                           "--data-options", "check_sizes=false"]) == 0

    def metrics(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k in ("loss", "acc", "val_loss", "val_acc", "step", "epoch")} for r in rows]

    assert metrics("plain") == metrics("cached") and len(metrics("plain")) == 4
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    cached = json.loads((tmp_path / "cached" / "results.json").read_text())
    assert plain["test_acc_mean"] == cached["test_acc_mean"]
    assert "(cached)" in (tmp_path / "cached" / "log.txt").read_text()
    # fewshot-test from the run's own folder, and from a copy: the copy's file is its own.
    copy = tmp_path / "cub_copy"
    shutil.copytree(mini_cub, copy, symlinks=True)
    own = testing.test_run(tmp_path / "plain", data_root=str(mini_cub), episodes=4, progress=False)
    other = testing.test_run(tmp_path / "plain", data_root=str(copy), episodes=4, progress=False)
    assert Path(own["written"]).name == "test_cub_test_3w1s.json"
    assert Path(other["written"]).name == f"test_cub_test_3w1s_data-{folder_tag(copy)}.json"
    assert (own["test_data_root"], other["test_data_root"]) == (str(mini_cub.resolve()), str(copy.resolve()))
    assert own["test_acc_mean"] == other["test_acc_mean"]  # same files, same episodes
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--out", str(tmp_path / "bad"), "--cache", str(tmp_path / "cache"), *tiny, "--image-size", "48"])
    assert exc.value.code == 2
    assert "no episode cache for cub train at 48 px" in capsys.readouterr().err


def test_benchmark_quick_smoke(tmp_path, capsys):
    bench = runpy.run_path(str(REPO / "tools" / "bench_episode_cache.py"))  # not as __main__: just its functions
    assert bench["main"](["--quick", "--device", "cpu", "--shapes", "conv4", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    for path in ("file ", "file+aug", "cache ", "cache+aug"):
        assert f"conv4 84px   {path}" in out
    assert "max |diff| = 0" in out and "FAILED" not in out
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert all(r["tasks_s"] > 0 for r in rows if "tasks_s" in r) and len(rows) == 5


@pytest.mark.gpu
def test_cuda_batches_equal_the_cpu_file_path(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (tmp_path / "mini" / split).mkdir(parents=True)
    for c in range(5):
        folder = tmp_path / "mini" / "train" / f"n{c:08d}"
        folder.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    kw = dict(n_way=5, n_shot=1, n_query=3, tasks_per_batch=2, seed=0)
    for name, root, opts in (("miniimagenet", tmp_path / "mini", {"check_sizes": False}),
                             ("glyphs", None, {"n_classes": 6, "images_per_class": 4})):
        source = build_dataset(name, "train", data_root=root, **opts)
        build_cache(name, "train", root, source.image_size, tmp_path / "cache", **opts)
        cached = open_cache(tmp_path / "cache", name, "train", source.image_size, options=opts)
        fast = CachedEpisodeBatches(cached, device="cuda", **kw)
        assert fast.batch(0).support_x.is_cuda
        assert_same_batches(fast, EpisodeBatches(source, **kw), [0, 1])  # bit for bit, on the GPU
        aug = CachedEpisodeBatches(cached, device="cuda", augment=True, **kw)
        cpu_aug = CachedEpisodeBatches(cached, augment=True, **kw)
        torch.testing.assert_close(aug.batch(2).query_x.cpu(), cpu_aug.batch(2).query_x, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_cuda_staged_batches_are_waited_for_and_equal_the_ones_built_in_stream(tmp_path, monkeypatch):
    cached = _glyph_cache(tmp_path)
    kw = dict(n_way=3, n_shot=2, n_query=2, tasks_per_batch=3, seed=5, device="cuda")
    want = [CachedEpisodeBatches(cached, prefetch=False, **kw).batch(i) for i in range(3)]
    batches = CachedEpisodeBatches(cached, **kw)
    assert_same_batches(batches, CachedEpisodeBatches(cached, **kw), [0])  # constants made, first gather done
    augment = cached_episodes.augment_batch

    def slow_augment(x, *args, **kwargs):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time queued first in the side stream
        return augment(x, *args, **kwargs)

    monkeypatch.setattr(cached_episodes, "augment_batch", slow_augment)
    for i in (1, 2):
        torch.cuda.set_sync_debug_mode("error")  # staging and handing over never wait for the GPU
        try:
            batches.stage(i)
            task = batches.batch(i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        # Read at once in this stream: equal only if it waited for the side stream's slow work.
        for got, expected in zip(task, want[i]):
            assert got.is_cuda and torch.equal(got, expected), i


# --------------------------------------------------------------------------- the augmentation's generator
def test_augmented_batch_is_the_documented_generators_draw_then_normalised(tmp_path):
    """Batch ``b`` is augmented with ``PCG64([AUGMENT_STREAM, seed, b])`` (apart from the sampler's
    ``PCG64([seed, i])``), then normalised: rebuilt here from the gathered pixels by hand. A
    one-channel mean/std stands in for an RGB set's, so the normalisation after the
    augmentation is checked without the shared data."""
    cached = _glyph_cache(tmp_path)
    mean, std = 0.3, 0.2
    cached.pixels = PixelFormat("reciprocal", False, (mean,), (std,))
    kw = dict(n_way=3, n_shot=2, n_query=2, tasks_per_batch=3, seed=5)
    batches = CachedEpisodeBatches(cached, prefetch=False, **kw)
    for b in (0, 2):
        u8 = torch.from_numpy(np.ascontiguousarray(cached.images[batches.indices(b)]))
        unit = u8.permute(0, 3, 1, 2).to(torch.float32) * np.float32(1 / 255)
        rng = np.random.default_rng([cached_episodes.AUGMENT_STREAM, kw["seed"], b])
        expected = (device_augment.augment_batch(unit, rng) - mean) / std
        task = batches.batch(b)
        got = torch.cat([task.support_x.flatten(0, 1), task.query_x.flatten(0, 1)])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    batches.close()


def test_episode_batches_hands_a_cached_split_its_shard_and_device(tmp_path):
    cached = _glyph_cache(tmp_path, augment=False)
    kw = dict(n_way=3, n_shot=1, n_query=1, tasks_per_batch=3, seed=0)
    part = cached_episodes.episode_batches(cached, shard=slice(1, 3), device="cpu", **kw)
    whole = CachedEpisodeBatches(cached, **kw)
    assert isinstance(part, CachedEpisodeBatches) and part.shard == range(1, 3) and part.device == torch.device("cpu")
    for x, y in zip(part.batch(1), whole.batch(1)):
        assert torch.equal(x, y[1:3])
    part.close()
    whole.close()


def test_crop_aspect_ratio_is_log_uniform():
    # torchvision draws log(aspect) uniformly in [log 3/4, log 4/3]; the accept rule (w, h <= S of
    # a square image) and the fallback (the whole image) are symmetric in w and h, so log(w / h)
    # has mean 0 (a uniform aspect in [3/4, 4/3] gives about +0.03). Standard error here: 0.0012.
    p = sample_crop_jitter_flip(20000, 84, np.random.default_rng(3))
    assert abs(float(np.log(p.width / p.height).mean())) < 0.006


def test_an_augmented_item_load_is_the_keyed_draw_then_normalised(tmp_path):
    """``CachedDataset.load(i, key)`` (per-item loads, e.g. metasgd-star's pre-training on a
    cache) augments the unit-range pixels with ``PCG64([seed, *key])``, then normalises, as
    the batched path does. A one-channel mean/std stands in for an RGB set's."""
    cached = _glyph_cache(tmp_path)  # augment=True, seed=3
    mean, std = 0.3, 0.2
    cached.pixels = PixelFormat("reciprocal", False, (mean,), (std,))
    moved = 0
    for i, key in ((0, (1, 2)), (5, (7,)), (9, (0,))):
        unit = torch.from_numpy(np.array(cached.images[i])).permute(2, 0, 1)[None].to(torch.float32) * np.float32(1 / 255)
        expected = (device_augment.augment_batch(unit, np.random.Generator(np.random.PCG64([3, *key]))) - mean) / std
        got = cached.load(i, key)
        torch.testing.assert_close(got, expected[0], rtol=0, atol=1e-6)
        moved += not torch.equal(got, (unit[0] - mean) / std)
    assert moved  # at least one draw shifted its image


def test_content_options_keep_an_explicit_omniglot_rotation_choice():
    # None means the protocol's default (maml: rotations on); an explicit False must stay False,
    # or a maml run without rotations would open a cache of rotated classes without a word.
    opts = cache_mod.content_options
    assert opts("omniglot", "train", {"protocol": "maml"})["rotations"] is True
    assert opts("omniglot", "train", {"protocol": "maml", "rotations": False})["rotations"] is False
    assert opts("omniglot", "train", {"protocol": "background", "rotations": True})["rotations"] is True
    assert opts("omniglot", "train", {"protocol": "maml", "rotations": False}) != opts("omniglot", "train", {"protocol": "maml"})


def test_pixel_formats_and_cached_splits_survive_pickling(tmp_path):
    # Data-loader workers started with spawn (and copy.deepcopy) rebuild a split from its pickle:
    # its pixel format must come back with empty per-device caches, not without them.
    import pickle

    cached = _glyph_cache(tmp_path, augment=False)
    want = [cached.load(i) for i in (0, 7)]  # fills the format's table and maps the file
    again = pickle.loads(pickle.dumps(cached))
    assert again._mm is None  # each process maps the file itself
    assert all(torch.equal(again.load(i), w) for i, w in zip((0, 7), want))
    fmt = PixelFormat("divide", False, IMAGENET_MEAN, IMAGENET_STD)
    u8 = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = fmt.to_float(u8)
    copy = pickle.loads(pickle.dumps(fmt))
    assert copy == fmt and torch.equal(copy.to_float(u8), ref) and torch.equal(copy.normalize(copy.unit(u8)), ref)


def test_a_cache_of_a_partial_copy_needs_check_sizes_false_as_the_files_do(tmp_path):
    """check_sizes only says how strictly a copy is checked: a cache built from a partial copy
    must be refused, like its files, by a run that did not pass check_sizes=false too."""
    from PIL import Image

    root = tmp_path / "CUB_200_2011"
    names = [f"{k:03d}.Bird_{k}" for k in range(1, 9)]
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{k} {n}\n" for k, n in enumerate(names, 1)))
    images, labels = [], []
    for k, n in enumerate(names, 1):
        (root / "images" / n).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (10, 8), (k * 20, j * 90, 7)).save(root / "images" / n / f"{j}.jpg")
            images.append(f"{len(images) + 1} {n}/{j}.jpg\n")
            labels.append(f"{len(labels) + 1} {k}\n")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    with pytest.raises(DataError, match="expected 100"):
        build_dataset("cub", "train", data_root=root, image_size=8)
    build_cache("cub", "train", root, 8, tmp_path / "cache", check_sizes=False)
    with pytest.raises(DataError, match="holds 4 classes.*has 100 classes.*check_sizes=false"):
        open_cache(tmp_path / "cache", "cub", "train", 8)
    assert open_cache(tmp_path / "cache", "cub", "train", 8, options={"check_sizes": False}).n_classes == 4


def test_a_miniimagenet_cache_with_every_class_but_fewer_images_is_a_partial_copy():
    # Checked on the class counts the cache holds (a stand-in for one): 64 classes of 599 images
    # is a partial copy as surely as 63 classes of 600.
    from types import SimpleNamespace

    def fake(counts):
        return SimpleNamespace(name="miniimagenet", split="train", path="cache", n_classes=len(counts),
                               class_counts=lambda: np.asarray(counts))

    cache_mod._check_split_sizes(fake([600] * 64))
    for counts in ([600] * 63 + [599], [600] * 63):
        with pytest.raises(DataError, match="built from a partial copy with check_sizes=false"):
            cache_mod._check_split_sizes(fake(counts))


# --------------------------------------------------------------------------- layouts, build hints, --data-root
def _partial_mini(root: Path) -> Path:
    """A partial mini-ImageNet copy (2 classes x 3 images per split) in MAML++'s and Ravi's CSV layouts;
    the CSV images are smaller copies, as Ravi's folders are resized to 84 px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        rows = ["filename,label"]
        for c in range(2):
            wnid = f"n{split[:2]}{c:06d}"
            (root / "mamlpp" / split / wnid).mkdir(parents=True)
            (root / "csv" / "images").mkdir(parents=True, exist_ok=True)
            for i in range(3):
                img = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
                img.save(root / "mamlpp" / split / wnid / f"{wnid}_{i}.jpg")
                img.resize((12, 12)).save(root / "csv" / "images" / f"{wnid}{i:08d}.jpg")
                rows.append(f"{wnid}{i:08d}.jpg,{wnid}")
        (root / "csv" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_cache_of_one_mini_imagenet_layout_is_refused_for_a_run_that_names_another(tmp_path):
    # Ravi's CSV images (resized already) and MAML++'s full-size ones give other pixels at the same rows.
    mini = _partial_mini(tmp_path / "mini")
    build_cache("miniimagenet", "val", mini / "csv", 16, tmp_path / "c", check_sizes=False)  # layout auto: csv
    build_cache("miniimagenet", "val", mini / "mamlpp", 16, tmp_path / "m", check_sizes=False)
    assert json.loads((tmp_path / "c" / "miniimagenet-val-16.json").read_text())["source"]["layout"] == "csv"
    assert (tmp_path / "c" / "miniimagenet-val-16.u8").read_bytes() != (tmp_path / "m" / "miniimagenet-val-16.u8").read_bytes()
    with pytest.raises(DataError, match=r"read from the csv layout, but this run asks for layout=mamlpp") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 16, options={"layout": "mamlpp", "check_sizes": False})
    assert "--option layout=mamlpp" in str(exc.value) and "--option check_sizes=false" in str(exc.value)
    # The layout it was read in, or none named (auto), opens it.
    for options in ({"layout": "csv", "check_sizes": False}, {"check_sizes": False}):
        assert open_cache(tmp_path / "c", "miniimagenet", "val", 16, options=options).n_classes == 2


def test_the_build_hint_of_a_partial_copy_builds_the_missing_cache(tmp_path, capsys):
    # A cache of a partial copy at 16 px; the run needs 24 px. Following the hint must work as given.
    mini = _partial_mini(tmp_path / "mini")
    build_cache("miniimagenet", "val", mini / "csv", 16, tmp_path / "c", layout="csv", check_sizes=False)
    with pytest.raises(DataError, match="no episode cache for miniimagenet val at 24 px") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 24, options={"check_sizes": False})
    hint = str(exc.value).split("build it with ", 1)[1]
    assert f"--data-root {mini / 'csv'}" in hint and "--option check_sizes=false" in hint and "--option layout=csv" in hint
    argv = hint.split()
    assert argv[0] == "fewshot-cache" and cache_cli.main([*argv[1:], "--no-progress"]) == 0
    assert open_cache(tmp_path / "c", "miniimagenet", "val", 24, options={"check_sizes": False}).n_classes == 2


def test_a_run_with_cache_and_data_root_says_that_the_data_root_is_not_read(tmp_path, capsys, monkeypatch):
    from dropgrad_fewshot.data import glyphs

    for split in ("train", "val", "test"):
        monkeypatch.setitem(glyphs.GLYPH_DEFAULT_CLASSES, split, 4)
    assert cache_cli.main(["--dataset", "glyphs", "--out", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert cli.train_main([
        "--out", str(tmp_path / "run"), "--dataset", "glyphs", "--cache", str(tmp_path / "cache"),
        "--data-root", str(tmp_path / "elsewhere"), "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2",
        "--inner-steps", "1", "--meta-batch", "2", "--epochs", "1", "--episodes-per-epoch", "2", "--val-episodes", "2",
        "--test-episodes", "2", "--no-progress", "--device", "cpu"]) == 0
    line = f"--data-root {tmp_path / 'elsewhere'} is not read: --cache {tmp_path / 'cache'} holds the glyphs splits"
    assert line in (tmp_path / "run" / "log.txt").read_text() and line in capsys.readouterr().out


def _hint(exc, marker="build it with "):
    return str(exc.value).split(marker, 1)[1]


def test_the_layout_recorded_is_the_one_named_and_a_hint_keeps_the_runs_layout(tmp_path, capsys):
    # One folder in two layouts (Ravi's CSV lists and images, MAML++'s split folders): "auto" finds
    # mamlpp there, so a cache built with layout=csv must record csv, and the hint of a run that
    # names mamlpp must build mamlpp, not the layout of the cache beside it.
    mini = _partial_mini(tmp_path / "mini")
    dual = mini / "csv"
    for split in ("train", "val", "test"):
        shutil.copytree(mini / "mamlpp" / split, dual / split)
    build_cache("miniimagenet", "val", dual, 16, tmp_path / "c", layout="csv", check_sizes=False)
    assert json.loads((tmp_path / "c" / "miniimagenet-val-16.json").read_text())["source"]["layout"] == "csv"
    assert open_cache(tmp_path / "c", "miniimagenet", "val", 16, options={"layout": "csv", "check_sizes": False}).n_classes == 2
    run_options = {"layout": "mamlpp", "check_sizes": False}
    with pytest.raises(DataError, match="no episode cache for miniimagenet val at 24 px") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 24, options=run_options)
    hint = _hint(exc)
    assert "--option layout=mamlpp" in hint and "layout=csv" not in hint and f"--data-root {dual}" in hint
    assert cache_cli.main([*hint.split()[1:], "--no-progress"]) == 0
    assert open_cache(tmp_path / "c", "miniimagenet", "val", 24, options=run_options).n_classes == 2
    # The list folders name the layout, as the data set reads them.
    assert cache_mod._resolved_layout("miniimagenet", tmp_path, {"csv_dir": tmp_path}) == "csv"
    assert cache_mod._resolved_layout("miniimagenet", tmp_path, {"filelist_dir": tmp_path}) == "closerlook"
    assert cache_mod._resolved_layout("cub", tmp_path, {}) is None


def test_a_cache_from_before_layouts_were_recorded_is_judged_by_its_options(tmp_path):
    # Sidecars written before the resolved layout was recorded have only the options it was built with.
    mini = _partial_mini(tmp_path / "mini")
    build_cache("miniimagenet", "val", mini / "csv", 16, tmp_path / "c", layout="csv", check_sizes=False)
    side = tmp_path / "c" / "miniimagenet-val-16.json"
    meta = json.loads(side.read_text())
    del meta["source"]["layout"]
    side.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="read from the csv layout, but this run asks for layout=mamlpp"):
        open_cache(tmp_path / "c", "miniimagenet", "val", 16, options={"layout": "mamlpp", "check_sizes": False})
    meta["source"]["options"]["layout"] = "auto"  # not known which layout auto found: not refused
    side.write_text(json.dumps(meta))
    assert open_cache(tmp_path / "c", "miniimagenet", "val", 16, options={"layout": "mamlpp", "check_sizes": False}).n_classes == 2


def test_the_hints_of_a_run_with_its_own_data_root_build_from_that_folder(tmp_path, capsys):
    # The cache beside was read from Ravi's CSV copy; the run names a MAML++ copy: the hint builds from
    # the run's folder in the layout found there, not with the other copy's layout=csv.
    mini = _partial_mini(tmp_path / "mini")
    build_cache("miniimagenet", "val", mini / "csv", 16, tmp_path / "c", layout="csv", check_sizes=False)
    options = {"check_sizes": False}
    with pytest.raises(DataError, match="no episode cache for miniimagenet val at 24 px") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 24, options=options, data_root=mini / "mamlpp")
    hint = _hint(exc)
    assert f"--data-root {mini / 'mamlpp'}" in hint and "layout=csv" not in hint
    assert cache_cli.main([*hint.split()[1:], "--no-progress"]) == 0
    assert json.loads((tmp_path / "c" / "miniimagenet-val-24.json").read_text())["source"]["layout"] == "mamlpp"
    # A layout mismatch: the cache's own folder is in the other layout, so no folder is known without the run's.
    mamlpp = {"layout": "mamlpp", "check_sizes": False}
    with pytest.raises(DataError, match="read from the csv layout") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 16, options=mamlpp)
    assert "--data-root DATA_ROOT" in str(exc.value) and str(mini / "csv") not in str(exc.value)
    with pytest.raises(DataError, match="read from the csv layout") as exc:
        open_cache(tmp_path / "c", "miniimagenet", "val", 16, options=mamlpp, data_root=mini / "mamlpp")
    argv = _hint(exc, "build this run's with ").split(" into another folder")[0].split()
    argv[argv.index("--out") + 1] = str(tmp_path / "m")
    assert cache_cli.main([*argv[1:], "--no-progress"]) == 0
    assert open_cache(tmp_path / "m", "miniimagenet", "val", 16, options=mamlpp).n_classes == 2
    # Another data set's cache in the folder lends it no folder: its data root is not this data set's.
    with pytest.raises(DataError, match="no episode cache for cub val") as exc:
        open_cache(tmp_path / "c", "cub", "val", 16)
    assert "--data-root DATA_ROOT" in str(exc.value) and str(mini) not in str(exc.value)


def test_a_hint_builds_the_runs_content_not_the_cache_besides(tmp_path, capsys):
    # The cache beside has rotated classes; the run (another size) has none: its hint must not add them.
    opts = dict(n_classes=4, images_per_class=3)
    build_cache("glyphs", "val", None, 28, tmp_path, rotations=True, **opts)
    with pytest.raises(DataError, match="no episode cache for glyphs val at 20 px") as exc:
        open_cache(tmp_path, "glyphs", "val", 20, options=opts)
    hint = _hint(exc)
    assert "rotations" not in hint and "--option n_classes=4" in hint
    assert cache_cli.main([*hint.split()[1:], "--no-progress"]) == 0
    assert open_cache(tmp_path, "glyphs", "val", 20, options=opts).n_classes == 4


def test_a_cached_split_gets_the_runs_data_root_for_its_build_hints(monkeypatch):
    from dropgrad_fewshot.config import FewShotConfig, resolve_defaults

    calls = []
    monkeypatch.setattr(run, "open_cache", lambda *a, **kw: calls.append(kw))
    cfg = resolve_defaults(FewShotConfig(dataset="miniimagenet", data_root="mini", cache="c"))
    run.load_split(cfg, "val")
    assert calls and calls[0]["data_root"] == cfg.data_root
