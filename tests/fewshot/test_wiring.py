"""How the few-shot app wires its options into the learner, the pre-training and the data: each
test pins one option that a one-line slip could drop while every run still trains (found by
hand-made mutations that the rest of the suite let pass)."""

import math

import numpy as np
import pytest
import torch
import dropgrad
from dropgrad_fewshot.config import FewShotConfig, resolve_defaults
from dropgrad_fewshot.data.glyphs import GlyphDataset, render_glyph_class
from dropgrad_fewshot.methods import build_learner
from dropgrad_fewshot.models import build_model, dropgrad_groups


def tiny(**changes):
    base = dict(way=3, shot=1, query=2, test_query=2, inner_steps=2, meta_batch=2, epochs=2,
                episodes_per_epoch=4, val_episodes=4, test_episodes=6, progress=False)
    base.update(changes)
    return resolve_defaults(FewShotConfig(**base))


@pytest.mark.parametrize("regularizer", ["dropout", "spatialdropout"])
def test_regularizer_and_its_rate_reach_the_learner(regularizer):
    learner = build_learner(tiny(regularizer=regularizer, dropout_p=0.2))
    drops = [m for m in learner.modules() if isinstance(m, dropgrad.ConsistentDropout)]
    assert len(drops) == 4 and all(d.p == 0.2 and d.spatial == (regularizer == "spatialdropout") for d in drops)


def test_mamlpp_options_reach_the_learner():
    cfg = tiny(method="mamlpp", epochs=20, msl_epochs=7, first_order_epochs=3)
    learner = build_learner(cfg)
    assert (learner.msl_epochs, learner.first_order_epochs) == (7, 3)
    assert build_learner(tiny(method="mamlpp", epochs=20)).msl_epochs == 3  # 15 % of 20


def test_memory_options_and_the_head_size_reach_the_learner():
    learner = build_learner(tiny(task_chunk=3, checkpoint=True))
    assert learner.task_chunk == 3 and learner.checkpoint
    plain = build_learner(tiny())
    assert plain.task_chunk is None and not plain.checkpoint
    assert build_learner(tiny(), n_way=7).model.fc.out_features == 7  # e.g. a head for other tasks


@pytest.mark.parametrize("layers", ["all", "ALL", " Full ", ""])
def test_dropgrad_layers_all_in_any_case_selects_every_parameter(layers):
    from dropgrad_fewshot.methods import make_dropgrad

    names = ["block1.conv.weight", "block4.bn.bias", "fc.weight"]
    assert make_dropgrad(tiny(dropgrad_layers=layers)).selected(names) == (True, True, True)


def test_mamlpp_msl_share_is_15_percent_of_the_real_schedule():
    assert resolve_defaults(FewShotConfig(dataset="cub", data_root="x", shot=1)).msl_epochs == 360


def test_metasgd_star_pretrains_the_base_classes_with_the_pretrain_options(tmp_path, monkeypatch):
    from dropgrad_fewshot import run

    cfg = tiny(method="metasgd-star", pretrain_epochs=3, pretrain_lr=5e-4, pretrain_batch=17, bf16=True, num_workers=2)
    seen = {}

    def fake_split(cfg_, split, **kw):
        seen["split"] = split
        return "data"

    def fake_pretrain(model, data, **kw):
        seen.update(kw)
        return {}

    monkeypatch.setattr(run, "load_split", fake_split)
    monkeypatch.setattr(run, "pretrain_feature_extractor", fake_pretrain)
    run._pretrain(cfg, build_learner(cfg), tmp_path, torch.device("cpu"), lambda line: None)
    assert seen["split"] == "train"
    assert (seen["epochs"], seen["lr"], seen["batch_size"]) == (3, 5e-4, 17)
    assert (seen["amp"], seen["num_workers"]) == (True, 2)  # --bf16 and --num-workers hold for pre-training too


def test_pretraining_draws_a_dropout_mask_per_batch_in_train_mode():
    from dropgrad_fewshot.models import pretrain_feature_extractor

    class Tiny(torch.utils.data.Dataset):
        channels, image_size = 1, 16
        labels = np.array([0, 1] * 8)
        def __len__(self): return 16
        def __getitem__(self, i): return torch.rand(1, 16, 16), int(self.labels[i])

    net = build_model("conv4", 5, in_channels=1, image_size=16, regularizer="dropout", dropout_p=0.5)
    recs = []  # the hook is deep-copied with the model into the pre-training copy
    net.block1.drop.register_forward_hook(lambda m, i, o: recs.append((m.training, m.mask.clone())))
    pretrain_feature_extractor(net, Tiny(), epochs=1, batch_size=4, lr=1e-3, device="cpu", seed=0, progress=False)
    assert len(recs) == 4 and all(training for training, _ in recs)
    assert not all(torch.equal(recs[0][1], r[1]) for r in recs[1:])


def test_glyph_test_classes_are_not_the_train_classes():
    for c in range(5):
        assert not np.array_equal(render_glyph_class(0, "train", c, 2), render_glyph_class(0, "test", c, 2))


def test_glyph_dataset_follows_its_seed():
    a, b = GlyphDataset("val", n_classes=2, seed=2), GlyphDataset("val", n_classes=2, seed=3)
    assert np.array_equal(a.character(1), render_glyph_class(2, "val", 1, 20))
    assert not np.array_equal(a.character(1), b.character(1))


@pytest.mark.parametrize("cached", [False, True])
def test_glyph_rotations_and_shifts_reach_the_data(cached, tmp_path):
    from dropgrad_fewshot import run
    from dropgrad_fewshot.data.cache import build_cache

    def split(rotations=None, augment=False):
        cache = None
        if cached:
            cache = tmp_path / str(bool(rotations))
            if not cache.exists():
                build_cache("glyphs", "val", None, 28, cache, rotations=bool(rotations))
        return run.load_split(tiny(rotations=rotations, augment=augment, cache=cache and str(cache)), "val",
                              augment=augment)

    def first(ds, c):
        return int(np.flatnonzero(ds.labels == c)[0])

    plain, rotated = split(), split(rotations=True)
    assert (plain.n_classes, rotated.n_classes) == (400, 1600)
    k, r = 7, 3  # class 4k + r is character k turned by r quarter turns
    assert torch.equal(rotated.load(first(rotated, 4 * k + r)), torch.rot90(plain.load(first(plain, k)), r, dims=(1, 2)))
    shifted, i = split(augment=True), first(plain, k)
    assert any(not torch.equal(shifted.load(i, (j,)), plain.load(i)) for j in range(8))  # shifts of up to 2 px


def test_data_options_are_checked_and_their_paths_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = FewShotConfig(dataset="miniimagenet", data_root="m", data_options=["filelist_dir=lists", "check_sizes=False"],
                        test_dataset="cub", test_data_root="c", test_data_options=["check_files=no"])
    assert cfg.data_options == [f"filelist_dir={tmp_path / 'lists'}", "check_sizes=false"]
    assert cfg.loader_options("miniimagenet") == {"filelist_dir": str(tmp_path / "lists"), "check_sizes": False}
    assert cfg.loader_options("cub") == {"check_files": False}
    assert FewShotConfig(dataset="miniimagenet", data_root="m", data_options=cfg.data_options[:1]).data_options == cfg.data_options[:1]
    bad = [
        (dict(data_options=["colour=red"]), "--data-options 'colour=red': expected KEY=VALUE with KEY one of"),
        (dict(dataset="omniglot", data_root="o", data_options=["protocol=background"]), "protocol has its own option, --omniglot-protocol"),
        (dict(dataset="cub", data_root="c", data_options=["check_sizes=false", "check_sizes=true"]), "check_sizes is given twice"),
        (dict(dataset="cub", data_root="c", data_options=["check_sizes=maybe"]), "check_sizes must be true or false"),
        (dict(test_data_options=["n_classes=3"]), "--test-data-options applies to a --test-dataset other than"),
    ]
    for changes, message in bad:
        with pytest.raises(ValueError, match=message):
            FewShotConfig(**changes)


def test_data_options_reach_the_loader(monkeypatch):
    from dropgrad_fewshot import run

    seen = []
    monkeypatch.setattr(run, "build_dataset", lambda name, split, **kw: seen.append((name, kw)))
    cfg = tiny(dataset="miniimagenet", data_root="m", data_options=["layout=csv", "check_sizes=false"],
               test_dataset="cub", test_data_root="c", test_data_options=["check_files=false"])
    run.load_split(cfg, "train")
    run.load_split(cfg, "test", test=True)
    (train_name, train_kw), (test_name, test_kw) = seen
    assert train_name == "miniimagenet" and train_kw["layout"] == "csv" and train_kw["check_sizes"] is False
    assert test_name == "cub" and test_kw["check_files"] is False and "layout" not in test_kw


def test_conv4_groups_name_their_block():
    groups = dropgrad_groups("conv4")
    assert all(groups[f"conv{i}"] == (f"block{i}.*",) for i in range(1, 5))


def test_resnet_regulariser_acts_on_the_block_output():
    torch.manual_seed(0)
    net = build_model("resnet10", 5, image_size=32, regularizer="spatialdropout", dropout_p=0.5)
    dropgrad.resample_dropout_masks(net)
    x = net.maxpool(net.relu(net.bn1(net.conv1(torch.randn(4, 3, 32, 32)))))
    block = net.layer1[0]
    out = block(x)
    dropped = block.drop.mask.flatten() == 0
    assert dropped.any() and (out[:, dropped] == 0).all()


def test_resnet_conv_init_is_closerlooks_fan_out():
    torch.manual_seed(0)
    w = build_model("resnet18", 5).layer4[0].conv1.weight  # 256 -> 512, 3x3
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)


def test_each_torchrun_rank_builds_only_its_share_of_the_meta_batch(tmp_path, monkeypatch):
    from dropgrad_fewshot import run

    class Stop(Exception):
        pass

    seen = {}

    def fake_batches(dataset, **kw):
        seen.update(kw)
        raise Stop

    ctx = dropgrad.DistributedContext(rank=1, world_size=2)
    monkeypatch.setattr(ctx, "init", lambda device: torch.device("cpu"))
    monkeypatch.setattr(run, "episode_batches", fake_batches)
    with pytest.raises(Stop):
        run.train(tiny(meta_batch=4, episodes_per_epoch=8), tmp_path, dist=ctx)
    assert seen["shard"] == slice(2, 4)


def test_a_cache_file_longer_than_its_sidecar_is_refused(tmp_path):
    from dropgrad_fewshot.data.cache import CachedDataset, build_cache
    from dropgrad_fewshot.data.errors import DataError

    p = build_cache("glyphs", "val", None, 28, tmp_path, n_classes=2, images_per_class=2)
    with open(p, "ab") as f:
        f.write(b"\0" * 28 * 28)
    with pytest.raises(DataError, match="too long"):
        CachedDataset(p)


def test_every_registry_is_what_the_command_lines_offer():
    # A backbone, data set or noise kind added to its registry (BACKBONES, DATASETS,
    # dropgrad.noise.KINDS) must also be a choice of fewshot-train and fewshot-test, and back.
    import typing

    from dropgrad.noise import KINDS
    from dropgrad_fewshot.cli import test_parser
    from dropgrad_fewshot.config import Dataset
    from dropgrad_fewshot.data import DATASETS
    from dropgrad_fewshot.models import BACKBONES

    hints = typing.get_type_hints(FewShotConfig)
    assert set(typing.get_args(hints["backbone"])) == set(BACKBONES)
    assert set(typing.get_args(Dataset)) == set(DATASETS)
    assert set(typing.get_args(hints["dropgrad"])) == set(KINDS)
    choices = {a.dest: a.choices for a in test_parser()._actions}
    assert set(choices["test_dataset"]) == set(DATASETS)


def test_a_data_set_without_a_builder_is_not_read_as_cub(monkeypatch):
    from dropgrad_fewshot.data import DataError, build

    monkeypatch.setattr(build, "DATASETS", (*build.DATASETS, "folder"))
    monkeypatch.setitem(build.DEFAULT_IMAGE_SIZE, "folder", 84)
    with pytest.raises(DataError, match="'folder' is in DATASETS but has no builder"):
        build.build_dataset("folder", "train", data_root=".")


def test_conv4_dropgrad_layers_select_their_blocks():
    from dropgrad_fewshot.methods import make_dropgrad

    dg = make_dropgrad(FewShotConfig(backbone="conv4", dropgrad_layers="conv2, fc"))
    assert dg.selected(["block1.conv.weight", "block2.conv.weight", "block2.bn.bias", "block3.conv.weight", "fc.weight", "fc.bias"]) == (
        False, True, True, False, True, True,
    )


def test_inner_steps_and_an_unresolved_mamlpp_schedule_reach_the_learner():
    assert build_learner(tiny(inner_steps=3)).steps == 3
    # An unresolved config (as check_learner gets it): build_learner resolves msl_epochs itself.
    cfg = FewShotConfig(way=3, shot=1, inner_steps=2, method="mamlpp", epochs=20)
    assert cfg.msl_epochs is None
    learner = build_learner(cfg)
    assert (learner.steps, learner.msl_epochs) == (2, 3)  # 15 % of 20


def test_task_streams_on_a_gpu_refuse_batched_training_only(monkeypatch):
    from dropgrad_fewshot import methods

    monkeypatch.setattr(methods, "_on_gpu", lambda learner: True)
    learner = build_learner(tiny(task_streams=2))
    methods.check_task_streams(learner, batched=False)  # the per-task loop: what streams are for
    with pytest.raises(ValueError, match="--task-streams spreads the per-task loop over streams, but training batches"):
        methods.check_task_streams(learner, batched=True)


def test_channels_last_reaches_the_backbone():
    w = build_learner(tiny(channels_last=True)).model.block2.conv.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert build_learner(tiny()).model.block2.conv.weight.is_contiguous()
