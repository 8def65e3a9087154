"""``fewshot-test``: score a trained run's best model on fresh episodes, optionally with CAMs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from dropgrad import (
    CapturedEvaluation,
    CheckpointError,
    build_config,
    load_best_model,
    load_config_file,
    seed_everything,
    select_device,
    summarize,
    write_json,
)

from .config import FewShotConfig
from .data import EpisodeBatches, check_episodes
from .methods import build_learner, use_batched
from .models import class_activation_maps, save_cam_grid
from .run import TEST_STREAM, evaluate, load_split

__all__ = ["load_run", "test_run"]


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[FewShotConfig, Any, torch.device]:
    """The run's config and its best learner (on ``device``, default the run's own)."""
    run = Path(run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run} is not a run directory written by fewshot-train")
    cfg = build_config(FewShotConfig, load_config_file(config_path), {})
    if not (run / "checkpoints" / "best.pt").is_file():
        raise CheckpointError(f"{run / 'checkpoints' / 'best.pt'} not found: the run has not finished an epoch yet")
    dev = select_device(device or cfg.device)
    learner = build_learner(cfg).to(dev)
    load_best_model(run, learner, map_location=dev)
    learner.eval()
    return cfg, learner, dev


def test_run(
    run_dir: str | Path,
    *,
    test_dataset: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    episodes: int = 600,
    shot: int | None = None,
    query: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    cam: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Test the run's best model; writes ``test_<dataset>_<split>_<way>w<shot>s.json`` into the run.

    DropGrad and dropout are off (the learner is in eval mode); the episodes are a pure
    function of ``seed`` (default: the run's own test stream, the one ``fewshot-train`` used).
    """
    run = Path(run_dir)
    cfg, learner, dev = load_run(run, device)
    seed_everything(cfg.seed)
    changes: dict[str, Any] = {}
    if test_dataset is not None:
        changes["test_dataset"] = test_dataset
        changes["test_data_root"] = data_root
    elif data_root is not None:
        changes["test_data_root"] = data_root
    test_cfg = dataclasses.replace(cfg, **changes)
    shot = shot or cfg.shot
    query = query or cfg.test_query
    dataset = load_split(test_cfg, split, test=True)
    check_episodes(dataset, cfg.way, shot, query)
    if hasattr(dataset, "preload"):
        dataset.preload()
    stream = cfg.seed + TEST_STREAM if seed is None else seed
    # The run's --cuda-graph, on whatever device tests it: "on" does not fail on a CPU here.
    graphed = cfg.cuda_graph != "off" and dev.type == "cuda"
    batched = use_batched(learner, cfg.batched, training=False, graphed=graphed)
    scores = evaluate(
        learner, dataset, way=cfg.way, shot=shot, query=query, episodes=episodes, seed=stream,
        device=dev, batched=batched, progress=progress,
        runner=CapturedEvaluation(learner, batched=batched) if graphed else None,
    )
    acc = summarize(scores["acc"])
    results: dict[str, Any] = {
        "test_acc_mean": acc.mean,
        "test_acc_ci95": acc.ci95,
        "test_episodes": len(scores["acc"]),
        "test_dataset": test_cfg.test_dataset,
        "test_split": split,
        "way": cfg.way,
        "shot": shot,
        "query": query,
        "seed": stream,
        "trained_on": cfg.dataset,
        "method": cfg.method,
        "dropgrad": cfg.dropgrad,
        "p": cfg.p,
    }
    name = f"test_{test_cfg.test_dataset}_{split}_{cfg.way}w{shot}s.json"
    write_json(run / name, results, sort_keys=True)
    results["written"] = str(run / name)
    if cam is not None:
        cam_path = Path(cam) if Path(cam).is_absolute() or Path(cam).parent != Path(".") else run / cam
        write_cams(learner, dataset, cfg.way, shot, query, stream, dev, cam_path)
        results["cam"] = str(cam_path)
    return results


def write_cams(learner: Any, dataset: Any, way: int, shot: int, query: int, seed: int, device: torch.device, path: Path, per_class: int = 2) -> Path:
    """CAMs of the first test episode's query images after adaptation (the paper's Fig. 4)."""
    batches = EpisodeBatches(dataset, n_way=way, n_shot=shot, n_query=query, tasks_per_batch=1, seed=seed)
    task = batches.batch(0).to(device).task(0)
    learner.eval()
    params = learner.adapt(task.support_x, task.support_y)[-1]
    params = {k: v.detach() for k, v in params.items()}
    # The whole query batch goes through the network (batch-statistics BatchNorm normalises
    # with it, exactly as in the test forward); images are picked from the result.
    with torch.no_grad():
        pred = learner(task.query_x, params).argmax(-1)
        maps = class_activation_maps(
            learner.model, params, task.query_x, pred, forward=lambda x: learner(x, params)
        )
    pick = torch.cat([torch.arange(c * query, c * query + min(per_class, query)) for c in range(way)]).to(device)
    return save_cam_grid(path, task.query_x[pick].cpu(), maps[pick].cpu(), task.query_y[pick].cpu(), pred[pick].cpu())
