"""One few-shot run: build data and learner, meta-train with the core loop, test the best model.

The run directory (``--out``) ends up holding::

    config.json           every option, resolved (reload with --config, continue with --resume)
    metrics.jsonl         train records (loss, acc) and one val record per epoch (val_loss, val_acc)
    log.txt               every printed line
    checkpoints/          last.pt (full state, exact resume) and best.pt (best validation accuracy)
    pretrained.pt         metasgd-star only: the cross-entropy pre-trained backbone
    val_loss.png          validation loss over epochs (the paper's Fig. 3 curve)
    val_acc.png           validation accuracy over epochs
    results.json          test accuracy of best.pt: mean and 95% CI in percent, episode count

Episode streams are separated by seed offsets, and validation/test draw from class-disjoint
splits, so no test episode is ever trained or validated on.

Under torchrun (see ``dropgrad.DistributedContext``) every process builds the same meta-batch
and adapts its shard of the tasks; meta-gradients are averaged by the core trainer, validation
and test episodes are split across the processes and gathered, and only rank 0 writes files.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dropgrad import (
    MAML,
    CapturedEvaluation,
    CapturedMetaStep,
    DistributedContext,
    MAMLPlusPlus,
    MetaOutput,
    MetaTrainer,
    Task,
    TrainConfig,
    load_best_model,
    load_checkpoint,
    plot_metrics,
    save_checkpoint,
    seed_everything,
    summarize,
    write_json,
)

from .config import FewShotConfig
from .data import (
    CachedEpisodeBatches,
    ClassUnion,
    DataError,
    EpisodeBatches,
    build_dataset,
    check_episodes,
    episode_batches,
    open_cache,
)
from .data.build import GRAYSCALE
from .methods import build_learner, check_task_streams, use_batched, use_cuda_graph
from .models import pretrain_feature_extractor

__all__ = ["TEST_STREAM", "VAL_STREAM", "evaluate", "load_split", "train", "verify_images"]

VAL_STREAM, TEST_STREAM = 1_000_003, 2_000_003
# Validation/test tasks are adapted this many at a time (memory bound, not a result knob).
_EVAL_CHUNK = 8


def load_split(cfg: FewShotConfig, split: str, *, test: bool = False, augment: bool = False):
    """Build one split of the run's data: training (every class of the data set with
    ``--train-classes all``), validation (of ``--val-dataset``) or, ``test=True``, the test data
    set's."""
    if test:
        name, root = cfg.test_dataset or cfg.dataset, cfg.test_data_root
    elif split == "val" and cfg.val_dataset not in (None, cfg.dataset):
        name, root = cfg.val_dataset, cfg.test_data_root  # the config allows only the test data set
    else:
        name, root = cfg.dataset, cfg.data_root
    if split == "train" and not test and cfg.train_classes == "all":
        return ClassUnion([_dataset(cfg, name, root, s, augment) for s in ("train", "val", "test")])
    return _dataset(cfg, name, root, split, augment)


def _dataset(cfg: FewShotConfig, name: str, root: str | None, split: str, augment: bool):
    options: dict[str, Any] = {}
    if name == "omniglot":
        options = {"protocol": cfg.omniglot_protocol, "rotations": cfg.rotations}
    elif name == "glyphs":
        options = {"rotations": bool(cfg.rotations)}
    options.update(cfg.loader_options(name))
    channels = 1 if name in GRAYSCALE else 3
    if channels != cfg.channels:
        raise ValueError(
            f"--test-dataset {name} has {channels}-channel images but the model was trained on "
            f"{cfg.channels}-channel {cfg.dataset}; cross-domain testing needs two RGB data sets (e.g. miniimagenet -> cub)"
        )
    if cfg.cache and not (root is not None and root != cfg.data_root):
        # Decoded once by fewshot-cache; open_cache checks it is this run's data set, split and size.
        # A data set with a folder of its own (--test-data-root, fewshot-test --data-root) is read from files.
        # The run's folder for this data set (if any) is not read: it only completes the build command of an error.
        return open_cache(cfg.cache, name, split, cfg.image_size_resolved, options=options, augment=augment,
                          seed=cfg.seed, data_root=root)
    return build_dataset(
        name,  # type: ignore[arg-type]
        split,  # type: ignore[arg-type]
        data_root=root,
        image_size=cfg.image_size_resolved,
        augment=augment,
        seed=cfg.seed,
        **options,
    )


def verify_images(dataset: Any, progress: bool = False) -> None:
    """Decode every image of ``dataset``; one DataError naming the first unreadable file and the count.

    >>> from dropgrad_fewshot.data import build_dataset
    >>> verify_images(build_dataset("glyphs", "val", n_classes=2))  # procedural: nothing to read
    """
    from tqdm.auto import tqdm

    if getattr(dataset, "name", None) == "glyphs":
        return
    bad: list[str] = []
    for i in tqdm(range(len(dataset)), desc=f"verify {dataset.describe()}", disable=not progress, leave=False):
        try:
            dataset.load(i)
        except DataError as err:
            bad.append(str(err))
    if bad:
        raise DataError(f"{len(bad)} of {len(dataset)} images cannot be read ({dataset.describe()}); first: {bad[0]}")


def evaluate(
    learner: MAML,
    dataset: Any,
    *,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    seed: int,
    device: torch.device,
    batched: bool,
    progress: bool = False,
    desc: str = "test",
    dist: DistributedContext | None = None,
    runner: Callable[[Task], MetaOutput] | None = None,
) -> dict[str, np.ndarray]:
    """Adapt (no DropGrad, no dropout) and score ``episodes`` tasks; per-episode arrays.

    Returns ``{"acc": (episodes,) in percent, "loss": (episodes,)}``. The tasks are a pure
    function of ``seed``; the learner's train/eval mode is restored afterwards. With a
    ``dist`` context of several processes (call it on every rank), each adapts a contiguous
    share of the chunks of episodes and every rank returns all episodes' arrays, in order.
    ``runner`` adapts and scores a chunk of tasks (default ``learner.meta_loss``); pass one
    :class:`dropgrad.CapturedEvaluation` per run to replay every chunk from one CUDA graph.
    """
    from tqdm.auto import tqdm

    batches = episode_batches(dataset, n_way=way, n_shot=shot, n_query=query, tasks_per_batch=_EVAL_CHUNK, seed=seed, device=device)
    run = partial(learner.meta_loss, batched=batched) if runner is None else runner
    # A graph replays one shape: a smaller last chunk runs whole and its extra tasks are dropped
    # (tasks are adapted independently, so the kept ones score the same).
    whole_chunks = isinstance(runner, CapturedEvaluation)
    was_training = learner.training
    learner.eval()
    accs, losses = [], []
    n_chunks = -(-episodes // _EVAL_CHUNK)
    # Whole chunks per rank: each episode is adapted exactly as in a single process.
    share = range(n_chunks) if dist is None else dist.shard(n_chunks).indices
    bar = tqdm(share, desc=desc, unit="chunk", disable=not progress, leave=False)
    try:
        for i in bar:
            tasks = batches.batch(i).to(device)
            keep = min(_EVAL_CHUNK, episodes - i * _EVAL_CHUNK)
            if keep < _EVAL_CHUNK and not whole_chunks:
                tasks = type(tasks)(*(t[:keep] for t in tasks))
            out = run(tasks)
            accs.append(out.accuracy(tasks.query_y)[:keep].detach().float().cpu() * 100)
            losses.append(out.task_losses[:keep].detach().float().cpu())
            bar.set_postfix(acc=f"{torch.cat(accs).mean():.2f}")
    finally:
        learner.train(was_training)
    if dist is not None and dist.is_distributed:
        parts = dist.all_gather_object((torch.cat(accs).numpy() if accs else np.zeros(0, np.float32),
                                        torch.cat(losses).numpy() if losses else np.zeros(0, np.float32)))
        return {"acc": np.concatenate([a for a, _ in parts]), "loss": np.concatenate([b for _, b in parts])}
    return {"acc": torch.cat(accs).numpy(), "loss": torch.cat(losses).numpy()}


def _pretrain(cfg: FewShotConfig, learner: MAML, out: Path, device: torch.device, log) -> None:
    """MetaSGD*: cross-entropy pre-training of the backbone, done once per run directory."""
    path = out / "pretrained.pt"
    model = learner.model
    if path.is_file():
        state = load_checkpoint(path, map_location=device)["trunk"]
        log(f"metasgd-star: loaded the pre-trained backbone from {path}")
    else:
        train_set = load_split(cfg, "train", augment=cfg.augment)
        summary = pretrain_feature_extractor(
            model,
            train_set,
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.pretrain_batch,
            lr=cfg.pretrain_lr,
            device=device,
            seed=cfg.seed,
            progress=cfg.progress,
            # The run's speed options hold for its pre-training too.
            amp=cfg.bf16,
            num_workers=cfg.num_workers,
        )
        log(f"metasgd-star: pre-trained the backbone with cross-entropy: {summary}")
        # The classifier is the meta-learned N-way head; only the trunk is carried over.
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
        save_checkpoint(path, {"trunk": state, "summary": dict(summary)})
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith("fc.") for k in result.missing_keys):
        raise ValueError(
            f"{path}: does not fit backbone {cfg.backbone} (unexpected {result.unexpected_keys[:3]}, "
            f"missing {result.missing_keys[:3]}); delete it to pre-train again"
        )


class _Prefetched:
    """Meta-batch ``i`` on demand, read ahead by data-loader workers when there are any.

    Batches are a pure function of their index, so prefetching changes no number; a request
    out of sequence (a resumed run) restarts the read-ahead at that index.
    """

    def __init__(self, batches: EpisodeBatches | CachedEpisodeBatches, stop: int) -> None:
        self.batches, self.stop = batches, stop
        self._it: Any = None
        self._next = -1

    def get(self, index: int):
        if self.batches.num_workers == 0:
            return self.batches.batch(index)
        if self._it is None or index != self._next:
            self._it = self.batches.iterate(index, max(self.stop, index + 1))
        self._next = index + 1
        return next(self._it)

    def stage(self, index: int) -> None:
        """Let batches built on the device start on batch ``index`` now (see ``CachedEpisodeBatches.stage``)."""
        if isinstance(self.batches, CachedEpisodeBatches) and index < self.stop:
            self.batches.stage(index)


#: MAML++'s floor of the cosine-annealed meta learning rate (Antoniou et al.'s ``min_learning_rate``).
MIN_OUTER_LR = 1e-5


def outer_lr_scheduler(cfg: FewShotConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The meta-optimiser's schedule, stepped once per epoch: ``None`` (constant), or cosine
    annealing from ``--outer-lr`` to :data:`MIN_OUTER_LR` over ``--epochs`` (MAML++'s CA).

    A run resumed from a config written before the option existed (``None``) keeps its constant rate.
    """
    if cfg.outer_lr_schedule != "cosine":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=min(MIN_OUTER_LR, cfg.outer_lr))


def train(cfg: FewShotConfig, out: Path, resume: bool = False, dist: DistributedContext | None = None) -> dict[str, Any]:
    """Meta-train, keep the best model on validation accuracy, test it; returns ``results.json``.

    ``dist``: this process's context under torchrun (``init()``-ed, or it is initialised here);
    every rank calls ``train`` and gets the same results; only rank 0 writes into ``out``.
    """
    if cfg.epochs is None or cfg.episodes_per_epoch is None:
        raise ValueError("train() needs a resolved config: pass it through resolve_defaults first")
    out = Path(out)
    dist = DistributedContext() if dist is None else dist
    device = dist.init(cfg.device)
    if cfg.meta_batch < dist.world_size:
        raise ValueError(
            f"--meta-batch {cfg.meta_batch} cannot be split over {dist.world_size} processes: every process "
            "adapts at least one task of each meta-batch (start fewer processes or raise --meta-batch)"
        )
    seed_everything(cfg.seed)

    # Everything about the data is checked before the first step.
    train_set = load_split(cfg, "train", augment=cfg.augment)
    val_set = load_split(cfg, "val")
    test_set = load_split(cfg, "test", test=True)
    check_episodes(train_set, cfg.way, cfg.shot, cfg.query)
    check_episodes(val_set, cfg.way, cfg.shot, cfg.test_query)
    check_episodes(test_set, cfg.way, cfg.shot, cfg.test_query)
    if cfg.verify_images:
        for split in (train_set, val_set, test_set):
            verify_images(split, cfg.progress)
    preloaded = sum(split.preload() for split in (train_set, val_set, test_set) if hasattr(split, "preload"))

    learner = build_learner(cfg).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    graphed = use_cuda_graph(learner, cfg.cuda_graph)
    batched = use_batched(learner, cfg.batched, graphed=graphed)
    check_task_streams(learner, batched)
    eval_batched = use_batched(learner, cfg.batched, training=False, graphed=graphed)
    # One for the whole run: validation replays the graph recorded at the first epoch.
    eval_runner = CapturedEvaluation(learner, batched=eval_batched) if graphed else None
    messages: list[str] = []
    if cfg.method == "metasgd-star":
        if dist.is_main:
            _pretrain(cfg, learner, out, device, messages.append)
        dist.agree()  # the other ranks load the backbone rank 0 pre-trained and saved
        if not dist.is_main:
            _pretrain(cfg, learner, out, device, messages.append)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.outer_lr)
    scheduler = outer_lr_scheduler(cfg, optimizer)
    # A cached split gives CachedEpisodeBatches: tasks built (and augmented) on the device.
    batches = episode_batches(
        train_set,
        n_way=cfg.way,
        n_shot=cfg.shot,
        n_query=cfg.query,
        tasks_per_batch=cfg.meta_batch,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        device=device,
        # Under torchrun each rank builds only its own tasks of every meta-batch.
        shard=dist.shard(cfg.meta_batch).slice if dist.is_distributed else None,
    )
    stream = _Prefetched(batches, cfg.epochs * (cfg.episodes_per_epoch // cfg.meta_batch))

    meta_step = CapturedMetaStep(learner, batched=batched) if graphed else partial(learner.meta_backward, batched=batched)

    def step_fn(global_step: int) -> dict[str, torch.Tensor]:
        tasks = stream.get(global_step)
        if dist.is_distributed:
            # This rank's tasks of the meta-batch (built as the shard), weighted by their share.
            dist.meta_batch_shard(cfg.meta_batch)
        tasks = tasks.to(device)
        result = meta_step(tasks)
        # Tensors, not .item(): the trainer reads them when it logs, so the host need not wait
        # for the GPU every step. float64 before the * 100, as Python would multiply the float.
        metrics = {"loss": result.loss.detach(), "acc": result.accuracy(tasks.query_y).mean().double() * 100}
        # Queued after this step: on a GPU the next batch's copy and augmentation run beside it.
        stream.stage(global_step + 1)
        return metrics

    def validate_fn(epoch: int) -> dict[str, float]:
        scores = evaluate(
            learner, val_set, way=cfg.way, shot=cfg.shot, query=cfg.test_query, episodes=cfg.val_episodes,
            seed=cfg.seed + VAL_STREAM, device=device, batched=eval_batched, desc="val",
            progress=cfg.progress and dist.is_main, dist=dist, runner=eval_runner,
        )
        return {"val_loss": float(scores["loss"].mean()), "val_acc": float(scores["acc"].mean())}

    def on_epoch_start(epoch: int) -> None:
        if isinstance(learner, MAMLPlusPlus):
            learner.set_epoch(epoch)

    train_cfg = TrainConfig(
        epochs=cfg.epochs,
        steps_per_epoch=cfg.episodes_per_epoch // cfg.meta_batch,
        monitor="val_acc",
        monitor_mode="max",
        patience=cfg.patience,
        bf16=cfg.bf16,
        progress=cfg.progress,
    )
    trainer = MetaTrainer(
        out, train_cfg, learner, optimizer, step_fn=step_fn, validate_fn=validate_fn, scheduler=scheduler,
        dropgrad=learner.dropgrad, device=device, on_epoch_start=on_epoch_start, distributed=dist,
    )
    for line in messages:
        trainer.log(line)
    if preloaded:
        trainer.log(f"data: decoded {preloaded} images into memory before training")
    trainer.log(f"data: {train_set.describe()} | {val_set.describe()} | {test_set.describe()}")
    if cfg.cache and cfg.data_root is not None:
        # Kept (a config.json reloaded with --cache has both), but not silently: the cache wins.
        trainer.log(f"data: --data-root {cfg.data_root} is not read: --cache {cfg.cache} holds the {cfg.dataset} splits "
                    "(a data set with a folder of its own, --test-data-root, is read from its files)")
    how = {True: "tasks folded into the batch" if learner.batch_with == "fold" else "vmap over tasks",
           False: "per-task loop"}
    trainer.log(
        f"learner: {type(learner).__name__}; training: {how[batched]}{' replayed from a CUDA graph' if graphed else ''}"
        f"{', forward compiled (torch.compile) in first-order steps' if learner.compiled else ''}"
        f"{' with combo kernels' if cfg.compile_combo else ''}"
        f"{f' and compiled forms {cfg.compile_forms}' if learner.folded_forms else ''}"
        f"{', second-order steps compiled whole' if learner.compiled_second_order else ''}"
        f"{f', tasks on {learner.task_streams} CUDA streams' if learner.task_streams else ''}, "
        f"evaluation: {how[eval_batched]}{' replayed from a CUDA graph' if eval_runner else ''}; device {device}"
    )
    if dist.is_distributed:
        lo, hi = cfg.meta_batch // dist.world_size, -(-cfg.meta_batch // dist.world_size)
        trainer.log(
            f"distributed: {dist.world_size} processes ({dist.backend}), each adapting "
            f"{lo if lo == hi else f'{lo}-{hi}'} of the {cfg.meta_batch} tasks of every meta-batch"
        )
        # DropGrad noise and dropout masks come from the global RNGs: different on every rank,
        # reproducible from --seed; rank 0 keeps the single-process stream.
        if not dist.is_main:
            seed_everything(dist.rank_seed(cfg.seed))
    summary = trainer.fit(resume=resume)

    load_best_model(out, learner, map_location=device)
    scores = evaluate(
        learner, test_set, way=cfg.way, shot=cfg.shot, query=cfg.test_query, episodes=cfg.test_episodes,
        seed=cfg.seed + TEST_STREAM, device=device, batched=eval_batched, progress=cfg.progress and dist.is_main,
        dist=dist, runner=eval_runner,
    )
    acc = summarize(scores["acc"])
    results = {
        "test_acc_mean": acc.mean,
        "test_acc_ci95": acc.ci95,
        "test_episodes": len(scores["acc"]),
        "test_dataset": cfg.test_dataset,
        "test_split": "test",
        "way": cfg.way,
        "shot": cfg.shot,
        "test_query": cfg.test_query,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "dropgrad": cfg.dropgrad,
        "p": cfg.p,
        "regularizer": cfg.regularizer,
        "best_epoch": summary["best_epoch"],
        "best_val_acc": summary.get("best_value"),
        "epochs_completed": summary["epochs_completed"],
        "device": str(device),
        "processes": dist.world_size,
    }
    if not dist.is_main:
        dist.barrier()  # rank 0 writes results and plots
        return results
    write_json(out / "results.json", results, sort_keys=True)
    plot_metrics(out / "metrics.jsonl", out / "val_loss.png", ["val_loss"], title="validation loss")
    plot_metrics(out / "metrics.jsonl", out / "val_acc.png", ["val_acc"], title="validation accuracy (%)")
    trainer.log(f"test ({cfg.test_dataset}, {results['test_episodes']} episodes): {acc.mean:.2f} +- {acc.ci95:.2f} %")
    dist.barrier()
    return results

