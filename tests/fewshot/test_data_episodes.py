"""EpisodeBatches: pure function of (seed, index), class-major labels, workers change nothing."""

import numpy as np
import pytest
import torch
from dropgrad import EpisodeSampler
from dropgrad_fewshot.data import (
    DataError,
    EpisodeBatches,
    GlyphDataset,
    build_dataset,
    check_episodes,
)


@pytest.fixture(scope="module")
def glyphs():
    return GlyphDataset("train", n_classes=30, images_per_class=6, seed=3)


def make(ds, **kw):
    args = {"n_way": 5, "n_shot": 2, "n_query": 3, "tasks_per_batch": 3, "seed": 11}
    args.update(kw)
    return EpisodeBatches(ds, **args)


def assert_tasks_equal(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_shapes_dtypes_and_class_major_labels(glyphs):
    task = make(glyphs).batch(0)
    assert task.support_x.shape == (3, 10, 1, 28, 28) and task.support_x.dtype == torch.float32
    assert task.query_x.shape == (3, 15, 1, 28, 28)
    assert task.support_y.dtype == torch.int64
    assert task.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 3
    assert task.query_y.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]] * 3


def test_batch_is_the_core_samplers_episodes(glyphs):
    """Task t of batch b holds the images of core EpisodeSampler episode b*T + t, in its order."""
    batches = make(glyphs)
    sampler = EpisodeSampler(glyphs.labels, 5, 2, 3, seed=11)
    task = batches.batch(4)
    for t in range(3):
        ep = sampler.sample(4 * 3 + t)
        expect_s = torch.stack([glyphs[int(i)][0] for i in ep.support])
        expect_q = torch.stack([glyphs[int(i)][0] for i in ep.query])
        assert torch.equal(task.support_x[t], expect_s)
        assert torch.equal(task.query_x[t], expect_q)
        # class-major: every support image of episode class k carries label k
        assert [int(glyphs.labels[i]) for i in ep.support[::2]] == ep.classes.tolist()


def test_pure_function_of_seed_and_index(glyphs):
    a = make(glyphs)
    first = [a.batch(i) for i in (0, 1, 2)]
    # A fresh object and a fresh dataset, asked in another order, give the same batches.
    b = make(GlyphDataset("train", n_classes=30, images_per_class=6, seed=3))
    assert_tasks_equal(b.batch(2), first[2])
    assert_tasks_equal(b.batch(0), first[0])
    assert not torch.equal(first[0].query_x, first[1].query_x)
    assert not torch.equal(make(glyphs, seed=12).batch(0).query_x, first[0].query_x)


def test_augmented_batches_are_reproducible():
    ds = GlyphDataset("train", n_classes=10, images_per_class=6, augment=True)
    plain = GlyphDataset("train", n_classes=10, images_per_class=6)
    a, b = make(ds).batch(5), make(ds).batch(5)
    assert_tasks_equal(a, b)
    assert not torch.equal(a.query_x, make(plain).batch(5).query_x)  # augmentation did something


def test_iterate_with_and_without_workers_is_identical(glyphs):
    plain = list(make(glyphs).iterate(3, 7))
    workers = list(make(glyphs, num_workers=2).iterate(3, 7))
    assert len(plain) == len(workers) == 4
    for a, b in zip(plain, workers):
        assert_tasks_equal(a, b)
    assert_tasks_equal(plain[0], make(glyphs).batch(3))
    it = iter(make(glyphs))
    assert_tasks_equal(next(it), make(glyphs).batch(0))


def test_workers_leave_the_global_rng_alone(glyphs):
    # DropGrad noise and dropout masks come from torch's global RNG: a DataLoader that drew its
    # workers' seed from it shifted them, so --num-workers changed a run and a resumed run (a new
    # loader at the resume step) was not the uninterrupted one.
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert len(list(make(glyphs, num_workers=1).iterate(0, 2))) == 2
    assert torch.equal(torch.rand(4), expected)


def test_device_argument(glyphs):
    task = make(glyphs, device="cpu").batch(0)
    assert task.support_x.device.type == "cpu"


def test_check_episodes_too_few_classes_and_images(tmp_path):
    ds = GlyphDataset("test", n_classes=4, images_per_class=5)
    check_episodes(ds, 4, 1, 4)
    with pytest.raises(DataError, match="5-way tasks need at least 5 classes, but the split has 4"):
        check_episodes(ds, 5, 1, 1)
    with pytest.raises(DataError, match=r"need 6 images per class \(--shot \+ --query\), but 4 of 4 classes"):
        check_episodes(ds, 2, 1, 5)
    with pytest.raises(DataError, match="n_shot"):
        check_episodes(ds, 2, 0, 5)
    with pytest.raises(DataError, match="need 6 images per class"):
        EpisodeBatches(ds, n_way=2, n_shot=1, n_query=5, tasks_per_batch=1, seed=0)


def test_check_episodes_names_the_class_folder(tmp_path):
    """A short Omniglot character is reported with its folder."""
    from PIL import Image

    for set_, n_chars in (("images_background", 3), ("images_evaluation", 2)):
        for c in range(n_chars):
            d = tmp_path / set_ / "Alpha" / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for k in range(2 if (set_, c) == ("images_background", 1) else 4):
                Image.new("1", (105, 105), 1).save(d / f"{c:04d}_{k:02d}.png")
    ds = build_dataset("omniglot", "train", data_root=tmp_path, protocol="background", val_characters=0)
    with pytest.raises(DataError) as err:
        check_episodes(ds, 2, 1, 2)
    msg = str(err.value)
    assert "images_background/Alpha/character02" in msg and "has 2 images" in msg
    assert "1 of 3 classes" in msg


@pytest.mark.parametrize("shard", [slice(0, 1), slice(1, 3), slice(2, 3), slice(0, 3)])
def test_a_shard_is_the_slice_of_the_whole_batch(shard):
    ds = GlyphDataset("train", n_classes=10, images_per_class=6, augment=True)  # per-image keys
    whole, part = make(ds), make(ds, shard=shard, num_workers=1)
    for index in (0, 4):
        full = whole.batch(index)
        assert_tasks_equal(part.batch(index), [t[shard] for t in full])
    assert_tasks_equal(next(part.iterate(4, 5)), [t[shard] for t in whole.batch(4)])  # through a worker


@pytest.mark.parametrize("shard", [slice(2, 2), slice(3, 5), slice(-1, 3), slice(0, 3, 2), (0, 2)])
def test_bad_shards_are_refused(glyphs, shard):
    with pytest.raises(DataError, match="shard must"):
        make(glyphs, shard=shard)


def test_invalid_arguments(glyphs):
    with pytest.raises(DataError, match="tasks_per_batch"):
        make(glyphs, tasks_per_batch=0)
    with pytest.raises(DataError, match="seed"):
        make(glyphs, seed=-1)
    with pytest.raises(DataError, match="batch index"):
        make(glyphs).batch(-1)


def test_all_classes_and_items_get_used(glyphs):
    """Over many batches every class appears (no class silently excluded)."""
    batches = make(glyphs, n_way=5, n_shot=1, n_query=1, tasks_per_batch=4)
    seen = set()
    sampler = batches.sampler
    for e in range(200):
        seen.update(np.asarray(sampler.sample(e).classes).tolist())
    assert seen == set(range(glyphs.n_classes))


def test_every_image_of_a_batch_gets_its_own_augmentation_key(glyphs, monkeypatch):
    # The key seeds the image's random crop/flip/jitter: one key per image slot, else all
    # images of an episode would share one augmentation.
    keys = []
    plain = glyphs.load
    monkeypatch.setattr(glyphs, "load", lambda i, key=None: keys.append(key) or plain(i, key))
    make(glyphs).batch(2)
    assert len(keys) == 3 * 25 and len(set(keys)) == len(keys)
    assert {k[0] for k in keys} == {11} and {k[1] for k in keys} == {6, 7, 8}


def test_open_ended_shards_run_to_the_end_of_the_meta_batch():
    from dropgrad_fewshot.data.episodes import task_shard

    assert task_shard(slice(1, None), 4) == range(1, 4)
    assert task_shard(slice(None, 2), 4) == range(0, 2)
    assert task_shard(slice(None), 4) == range(0, 4)


def _characters_of(batches, batch_index):
    """Per task of a batch: the characters (class // 4) of its classes, read back from the images' labels."""
    out = []
    for t in range(batches.tasks_per_batch):
        ep = batches.sampler.sample(batch_index * batches.tasks_per_batch + t)
        out.append((ep.classes // 4).tolist())
    return out


def test_rotated_glyph_tasks_take_one_rotation_of_each_character():
    """Finn et al.'s MAML code draws N characters per task, then one rotation each: a task never
    holds two rotations of one character (for a symmetric one they would be the same images)."""
    ds = GlyphDataset("train", n_classes=6, images_per_class=3, rotations=True, seed=1)
    assert ds.class_groups.tolist() == np.repeat(np.arange(6), 4).tolist()
    batches = make(ds, n_way=6, n_shot=1, n_query=1, tasks_per_batch=4)
    seen = set()
    for b in range(30):
        for chars in _characters_of(batches, b):
            assert sorted(chars) == list(range(6))
        seen |= {int(c) for t in range(4) for c in batches.sampler.sample(b * 4 + t).classes}
    assert seen == set(range(24))  # every rotation is still a class of its own
    assert GlyphDataset("train", n_classes=6, images_per_class=3).class_groups is None
    with pytest.raises(DataError, match="7-way tasks need at least 7 characters, but the split has 6"):
        check_episodes(ds, 7, 1, 1)


def test_a_union_keeps_each_parts_characters_apart():
    from dropgrad_fewshot.data import ClassUnion

    rotated = [GlyphDataset(s, n_classes=2, images_per_class=2, rotations=True) for s in ("train", "val")]
    assert ClassUnion(rotated).class_groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert ClassUnion([GlyphDataset(s, n_classes=2, images_per_class=2) for s in ("train", "val")]).class_groups is None
    # A part without groups: each of its classes a group of its own, after the other part's.
    mixed = ClassUnion([rotated[0], GlyphDataset("val", n_classes=2, images_per_class=2)])
    assert mixed.class_groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 3]
