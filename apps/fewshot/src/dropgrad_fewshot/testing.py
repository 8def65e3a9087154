"""``fewshot-test``: score a trained run's best model on fresh episodes, optionally with CAMs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from dropgrad import (
    CapturedEvaluation,
    CheckpointError,
    build_config,
    folder_tag,
    load_best_model,
    load_config_file,
    seed_everything,
    select_device,
    summarize,
    write_json,
)

from .config import FewShotConfig
from .data import EpisodeBatches, check_episodes
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .methods import build_learner, use_batched
from .models import class_activation_maps, save_cam_grid
from .run import TEST_STREAM, evaluate, load_split

__all__ = ["load_run", "test_config", "test_run"]


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[FewShotConfig, Any, torch.device]:
    """The run's config and its best learner (on ``device``, default the run's own)."""
    run = Path(run_dir)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {run} is not a run directory written by fewshot-train")
    cfg = build_config(FewShotConfig, load_config_file(config_path), {}, app="fewshot-train")
    if not (run / "checkpoints" / "best.pt").is_file():
        raise CheckpointError(f"{run / 'checkpoints' / 'best.pt'} not found: the run has not finished an epoch yet")
    dev = select_device(device or cfg.device)
    learner = build_learner(cfg).to(dev)
    load_best_model(run, learner, map_location=dev)
    learner.eval()
    return cfg, learner, dev


def test_config(cfg: FewShotConfig, test_dataset: str | None, data_root: str | None) -> FewShotConfig:
    """The run's config with the data set to test on: ``test_dataset`` (default: the run's) from
    ``data_root``, or, not given, from the run's own folder for that data set.

    >>> cfg = FewShotConfig(dataset="miniimagenet", data_root="mini", test_dataset="cub", test_data_root="CUB")
    >>> [test_config(cfg, name, None).test_data_root for name in ("cub", "miniimagenet")]
    ['CUB', 'mini']
    >>> test_config(cfg, None, "CUB2").test_data_root
    'CUB2'
    >>> test_config(cfg, "omniglot", None)
    Traceback (most recent call last):
    ...
    ValueError: --test-dataset omniglot: this run did not use it; give its folder with --data-root
    """
    if test_dataset is None:
        return cfg if data_root is None else dataclasses.replace(cfg, test_data_root=data_root)
    known = {cfg.dataset: cfg.data_root, cfg.test_dataset: cfg.test_data_root}
    root = data_root if data_root is not None else known.get(test_dataset)
    if root is None and test_dataset != "glyphs" and cfg.cache is None:
        raise ValueError(f"--test-dataset {test_dataset}: this run did not use it; give its folder with --data-root")
    return dataclasses.replace(cfg, test_dataset=test_dataset, test_data_root=root)


def _other_folder(cfg: FewShotConfig, test_dataset: str | None, data_root: str | None) -> bool:
    """Whether ``data_root`` is a folder other than the run's own for that data set."""
    if data_root is None:
        return False
    try:
        own = test_config(cfg, test_dataset, None).test_data_root
    except ValueError:  # a data set the run never read
        return True
    return own is None or Path(own).resolve() != Path(data_root).resolve()


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
    """Test the run's best model; writes ``test_<dataset>_<split>_<way>w<shot>s[...].json`` into
    the run (with ``_<query>q``, ``_<episodes>ep``, ``_seed<seed>`` and ``_data-<folder_tag>``
    where those differ from the run's test, so tests with other settings do not overwrite each
    other).

    DropGrad and dropout are off (the learner is in eval mode); the episodes are a pure
    function of ``seed`` (default: the run's own test stream, the one ``fewshot-train`` used).
    A data set the run trained or tested on is read from the run's folder for it unless
    ``data_root`` is given.
    """
    for option, value in (("--shot", shot), ("--query", query)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    run = Path(run_dir)
    cam_path = None if cam is None else (Path(cam) if Path(cam).is_absolute() or Path(cam).parent != Path(".") else run / cam)
    if cam_path is not None:
        # Checked now, not after the whole test has run.
        blocking = next((p for p in cam_path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None or cam_path.is_dir():
            raise ValueError(f"--cam {cam}: {blocking or cam_path} is {'a file' if blocking else 'a folder'}; give the image's file name")
    cfg, learner, dev = load_run(run, device)
    seed_everything(cfg.seed)
    test_cfg = test_config(cfg, test_dataset, data_root)
    shot = cfg.shot if shot is None else shot
    query = cfg.test_query if query is None else query
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
    if test_cfg.test_data_root is not None:
        results["test_data_root"] = str(Path(test_cfg.test_data_root).resolve())
    extra = (f"_{query}q" if query != cfg.test_query else "") + (f"_{episodes}ep" if episodes != cfg.test_episodes else "")
    if _other_folder(cfg, test_dataset, data_root):
        extra += f"_data-{folder_tag(data_root)}"
    name = f"test_{test_cfg.test_dataset}_{split}_{cfg.way}w{shot}s{extra}" + (f"_seed{seed}" if seed is not None else "") + ".json"
    write_json(run / name, results, sort_keys=True)
    results["written"] = str(run / name)
    if cam_path is not None:
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
    shapes: list[tuple[int, ...]] = []
    hook = learner.model.last_block.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            pred = learner(task.query_x, params).argmax(-1)
    finally:
        hook.remove()
    if shapes and shapes[-1][-2:] == (1, 1):
        # A 1x1 map (Conv4 at 28 px) has no spatial layout: every CAM is constant, drawn as zeros.
        print(f"fewshot-test: warning: the backbone's last feature map is 1x1 at {task.query_x.shape[-1]} px, so the "
              f"class activation maps carry no spatial information (all zeros); train with a larger --image-size (e.g. 84)",
              file=sys.stderr, flush=True)
    with torch.no_grad():
        maps = class_activation_maps(
            learner.model, params, task.query_x, pred, forward=lambda x: learner(x, params)
        )
    pick = torch.cat([torch.arange(c * query, c * query + min(per_class, query)) for c in range(way)]).to(device)
    # RGB sets are ImageNet-normalised (data.transforms): undone for display, not stretched.
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if task.query_x.shape[1] == 3 else (None, None)
    return save_cam_grid(path, task.query_x[pick].cpu(), maps[pick].cpu(), task.query_y[pick].cpu(), pred[pick].cpu(),
                         mean=mean, std=std)
