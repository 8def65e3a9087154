"""``dropgrad_viewpoint.pipeline``: what the training run feeds the trainer and the evaluation."""

import copy
import json
import shutil

import pytest
import torch
from dropgrad_viewpoint import pipeline
from dropgrad_viewpoint.config import ViewpointConfig
from dropgrad_viewpoint.data.mat import load_mat, save_mat
from dropgrad_viewpoint.methods.metaview import MetaView


def _cfg(root, **over):
    base = dict(dataset="objectnet3d", data_root=str(root), shots=5, query=3, meta_batch=2, epochs=3, steps_per_epoch=2,
                val_categories=1, val_draws=1, eval_draws=1, threads=1, progress=False, seed=3)
    return ViewpointConfig(**{**base, **over})


def test_test_categories_are_served_with_the_test_filter(small_synthetic, tmp_path):
    root = tmp_path / "synth"
    shutil.copytree(small_synthetic, root)
    for image_id, flag in (("shape04_0000", "truncated"), ("shape04_0001", "occluded")):
        path = root / "Annotations" / f"{image_id}.mat"
        record = load_mat(path)
        record["record"]["objects"][flag] = 1.0
        save_mat(path, record)
    data = pipeline.load_data(_cfg(root), log=lambda _: None)
    novel = pipeline.ObjectNet3D(root, ["val"], categories=data.split.test)
    for c, source in data.test.items():
        assert [it.record_path for it in source.items] == [it.record_path for it in novel.usable(c, "test")]
    served = {it.record_path.stem for it in data.test["shape04"].items}
    assert {it.record_path.stem for it in novel.usable("shape04", "train")} - served == {"shape04_0000", "shape04_0001"}


def test_training_tasks_best_epoch_and_logged_loss(small_synthetic, tmp_path, monkeypatch):
    cfg = _cfg(small_synthetic)
    episodes = []

    class Recording(pipeline.EpisodeSampler):
        def sample(self, index):
            episodes.append(index)
            return super().sample(index)

    # Every task loss is 2.5 (no gradient): the logged training loss is their mean, 2.5.
    real_loss = MetaView.task_loss
    monkeypatch.setattr(MetaView, "task_loss", lambda self, s, q: real_loss(self, s, q) * 0 + 2.5)
    monkeypatch.setattr(pipeline, "EpisodeSampler", Recording)
    scripted = iter([10.0, 60.0, 30.0])  # val Acc30 of epochs 0, 1, 2: epoch 1 is the best
    val_seeds = []
    real_evaluate = pipeline.evaluate

    def evaluate(model, sources, shots, draws, steps, seed, device, unadapted=False):
        if set(sources) <= {"shape04", "shape05"}:  # the novel (test) categories
            return real_evaluate(model, sources, shots, draws, steps, seed, device, unadapted=unadapted)
        val_seeds.append(seed)
        return {"pooled": {"acc30": next(scripted), "mederr": 20.0}}

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    results = pipeline.run(cfg, tmp_path / "run", log=lambda _: None)
    # meta_batch distinct consecutive episodes per step: step s uses s * 2 and s * 2 + 1
    assert episodes == list(range(cfg.epochs * cfg.steps_per_epoch * cfg.meta_batch))
    assert results["best_epoch"] == 1
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    assert len(val_seeds) == 3 and cfg.seed not in val_seeds  # validation supports: a stream apart from training's
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in lines if r.get("event") == "train"]
    val = [r["train_loss"] for r in lines if r.get("event") == "val"]
    assert len(train) == len(val) == 3 and train + val == pytest.approx([2.5] * 6)


def test_build_model_takes_every_learner_option_from_the_config():
    cfg = ViewpointConfig(head_kernel=3, hidden=8, inner_lr=0.3, inner_lr_3d=0.02, inner_steps=2, eval_steps=4,
                          first_order=False, learn_inner_lr=False, weight_3d=2.5, weight_hidden=0.25,
                          dropgrad="binary", p=0.2, schedule="linear", epochs=3)
    model = pipeline.build_model(cfg)
    assert (model.inner_lr, model.inner_lr_3d, model.steps, model.first_order) == (0.3, 0.02, 2, False)
    assert (model.learn_inner_lr, model.weight_3d, model.weight_hidden) == (False, 2.5, 0.25)
    assert (model.dropgrad.kind, model.dropgrad.p, model.dropgrad.schedule) == ("binary", 0.2, "linear")
    first = model.head.heat[0]
    assert first.kernel_size == (3, 3) and first.out_channels == 8
    alphas = {n: float(a) for n, a in model.step_size().items()}
    assert alphas["geo.0.weight"] == pytest.approx(0.02) and alphas["heat.0.weight"] == pytest.approx(0.3)


def _short_run(root, out, monkeypatch, **over):
    """A 2-epoch, 1-step run whose scripted validation makes epoch 0 the best; no test evaluation."""
    cfg = _cfg(root, epochs=2, steps_per_epoch=1, meta_batch=1, **over)
    scripted = iter([60.0, 10.0])
    monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: {"pooled": {"acc30": next(scripted), "mederr": 20.0}})
    monkeypatch.setattr(pipeline, "run_evaluation", lambda *a, **k: {})
    pipeline.run(cfg, out, log=lambda _: None)
    return cfg


def test_run_seeds_itself_and_meta_trains_with_adam_at_the_outer_rate(small_synthetic, tmp_path, monkeypatch):
    runs = []
    for i, global_seed in enumerate((11, 12)):
        torch.manual_seed(global_seed)  # whatever the caller's RNG state: the run seeds from cfg.seed
        cfg = _short_run(small_synthetic, tmp_path / f"r{i}", monkeypatch, outer_lr=0.0123)
        runs.append(torch.load(tmp_path / f"r{i}" / "checkpoints" / "last.pt", weights_only=True))
    a, b = runs
    torch.testing.assert_close(a["model"], b["model"], rtol=0, atol=0)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [cfg.outer_lr]


def test_evaluating_the_last_checkpoint_loads_the_last_weights(small_synthetic, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _short_run(small_synthetic, out, monkeypatch)
    monkeypatch.undo()
    data = pipeline.load_data(cfg, log=lambda _: None)
    model = pipeline.build_model(cfg)
    seen = {}
    real_evaluate = pipeline.evaluate

    def evaluate(model, sources, shots, draws, steps, seed, device, unadapted=False):
        seen.setdefault("weights", copy.deepcopy(model.state_dict()))
        seen.setdefault("seeds", []).append((seed, unadapted))
        return real_evaluate(model, sources, shots, draws, steps, seed, device, unadapted=unadapted)

    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    monkeypatch.setattr(pipeline, "plot_examples", lambda *a, **k: None)
    cpu = torch.device("cpu")
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    res = pipeline.run_evaluation(model, cfg, out, data, cpu, 1, checkpoint="last", log=lambda _: None, name="x")
    torch.testing.assert_close(seen["weights"], last["model"], rtol=0, atol=0)
    # Epochs are numbered from 0 (metrics.jsonl, best_epoch): the last of 2 epochs is epoch 1.
    assert res["checkpoint_epoch"] == 1 and res["checkpoint"] == "last"
    # The unadapted baseline scores the queries of the adapted evaluation's first draw.
    assert seen["seeds"] == [(cfg.seed + pipeline._TEST_SEED, False), (cfg.seed + pipeline._TEST_SEED, True)]
    seen.clear()
    res = pipeline.run_evaluation(model, cfg, out, data, cpu, 1, checkpoint="best", log=lambda _: None, name="y")
    torch.testing.assert_close(seen["weights"], best["model"], rtol=0, atol=0)
    assert res["checkpoint_epoch"] == 0
    assert any(not torch.equal(last["model"][k], best["model"][k]) for k in last["model"] if torch.is_tensor(last["model"][k]))


def test_load_data_refuses_training_categories_one_object_short_and_splits_by_the_seed(small_synthetic, monkeypatch):
    seeds = []
    real_split = pipeline.make_split
    monkeypatch.setattr(pipeline, "make_split", lambda *a: seeds.append(a[-1]) or real_split(*a))
    data = pipeline.load_data(_cfg(small_synthetic, preload=False, seed=5), log=lambda _: None)
    assert seeds == [5]
    fewest = min(len(s) for s in data.train.values())
    # shots + query == the smallest training category: every task fits.
    pipeline.load_data(_cfg(small_synthetic, preload=False, query=fewest - 5), log=lambda _: None)
    with pytest.raises(ValueError, match=f"fewer than --shots \\+ --query = {fewest + 1} usable objects"):
        pipeline.load_data(_cfg(small_synthetic, preload=False, query=fewest - 4), log=lambda _: None)
