"""``dropgrad_viewpoint.pipeline``: what the training run feeds the trainer and the evaluation."""

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
