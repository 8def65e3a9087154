"""The end-to-end run behind ``viewpoint-train``: data, split, meta-training, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from dropgrad import (
    DropGrad,
    EpisodeSampler,
    MetaTrainer,
    TrainConfig,
    folder_tag,
    load_best_model,
    plot_metrics,
    seed_everything,
    select_device,
    write_json,
)

from .config import DEFAULT_SYNTHETIC_ROOT, ViewpointConfig
from .data.objectnet3d import STARMAP_NOVEL, CategorySplit, ObjectNet3D, make_split
from .data.sources import CategorySource
from .data.synthetic import SyntheticSpec, ensure_synthetic
from .evaluation import evaluate, plot_examples
from .methods.metaview import MetaView
from .models import KeypointHead, build_trunk

__all__ = ["ViewpointData", "apply_threads", "build_model", "load_data", "run", "run_evaluation"]

_VAL_SEED, _TEST_SEED = 1_000_003, 2_000_003  # support-draw streams, apart from training's


@dataclass
class ViewpointData:
    """Everything a run needs from the data: the split and one source per category."""

    root: Path
    split: CategorySplit
    train: dict[str, CategorySource]
    val: dict[str, CategorySource]
    test: dict[str, CategorySource]


def _names(text: str, where: str) -> list[str]:
    """The comma-separated names of ``text``; a name given twice is a ValueError naming ``where``."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{where} names {', '.join(twice)} twice; expected each once")
    return names


def load_data(cfg: ViewpointConfig, log: Callable[[str], object] = print) -> ViewpointData:
    """Read (generating the synthetic set if needed) and split the data; checks happen here."""
    if cfg.dataset == "synthetic":
        root = Path(cfg.data_root or DEFAULT_SYNTHETIC_ROOT)
        if not (root / "synthetic.json").is_file():
            log(f"generating the synthetic data set in {root} ...")
        ensure_synthetic(root, SyntheticSpec())
    else:
        root = Path(cfg.data_root)  # type: ignore[arg-type]
    novel_file = root / "Image_sets" / "novel_categories.txt"
    if cfg.novel_categories:
        novel = _names(cfg.novel_categories, "--novel-categories")
    elif novel_file.is_file():
        try:
            text = novel_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{novel_file} is not a text file (byte {err.start} is not UTF-8); expected one category per line") from None
        novel = _names(text.replace("\n", ","), str(novel_file))
    else:
        novel = list(STARMAP_NOVEL)
    base = ObjectNet3D(root, _names(cfg.train_sets, "--train-sets"))
    novel_set = ObjectNet3D(root, _names(cfg.test_sets, "--test-sets"), categories=novel)
    for name, ds in (("training", base), ("test", novel_set)):
        if ds.unposed:
            counts = ", ".join(f"{c} {n}" for c, n in sorted(ds.unposed.items()))
            log(f"left out {sum(ds.unposed.values())} {name} object(s) without a viewpoint annotation: {counts}")
    split = make_split(base, novel_set, novel, cfg.val_categories, cfg.shots, cfg.seed)
    for c, why in split.excluded.items():
        log(f"excluded base category {c}: {why}")
    if len(split.train) == 0:
        raise ValueError(f"no training category in {root} image sets {cfg.train_sets}")

    def sources(ds: ObjectNet3D, cats: list[str], mode: str) -> dict[str, CategorySource]:
        return {c: CategorySource(ds, c, ds.usable(c, mode), cfg.image_size, cfg.preload) for c in cats}  # type: ignore[arg-type]

    train = sources(base, split.train, "train")
    short = [c for c in train if len(train[c]) < cfg.shots + cfg.query]
    if short:
        raise ValueError(
            f"training categories with fewer than --shots + --query = {cfg.shots + cfg.query} usable objects: "
            f"{', '.join(f'{c} ({len(train[c])})' for c in short)}; lower --query"
        )
    return ViewpointData(root, split, train, sources(base, split.val, "train"), sources(novel_set, split.test, "test"))


def apply_threads(threads: int) -> None:
    """Set torch's CPU thread count (0 keeps torch's default).

    On a CPU shared with other jobs, OpenMP threads that wait for each other at every
    operation can make a 2-thread run 10x slower than a 1-thread one (measured: see README).
    """
    if threads > 0:
        torch.set_num_threads(threads)


def build_model(cfg: ViewpointConfig) -> MetaView:
    """The MetaView learner with the configured trunk, head and DropGrad."""
    trunk = build_trunk(cfg.trunk)
    head = KeypointHead(trunk.out_channels, cfg.hidden, cfg.head_kernel)
    return MetaView(trunk, head, inner_lr=cfg.inner_lr, inner_lr_3d=cfg.inner_lr_3d, steps=cfg.inner_steps, first_order=cfg.first_order,
                    dropgrad=DropGrad(cfg.p, cfg.dropgrad, cfg.schedule), weight_3d=cfg.weight_3d,
                    learn_inner_lr=cfg.learn_inner_lr, weight_hidden=cfg.weight_hidden)  # type: ignore[arg-type]


def run(
    cfg: ViewpointConfig, out: Path, resume: bool = False, data: ViewpointData | None = None,
    log: Callable[[str], object] = print,
) -> dict:
    """Meta-train with validation and checkpoints, then evaluate the best model; returns results.

    ``data``: what :func:`load_data` returned for ``cfg`` (read here when not given).
    """
    device = select_device(cfg.device)
    apply_threads(cfg.threads)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg, log)
    write_json(out / "split.json", data.split.as_dict())
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)

    # One global index of training objects labelled by category: episode i of a 1-way sampler
    # is one task (a category, its support and query), a pure function of (seed, i).
    cats = list(data.train)
    labels = [c for c in cats for _ in range(len(data.train[c]))]
    offsets = {c: sum(len(data.train[x]) for x in cats[:i]) for i, c in enumerate(cats)}
    sampler = EpisodeSampler(labels, n_way=1, n_shot=cfg.shots, n_query=cfg.query, seed=cfg.seed)

    def step_fn(global_step: int) -> dict[str, torch.Tensor | float]:
        total: torch.Tensor | float = 0.0  # float64 sums of the task losses, read when the trainer logs
        for t in range(cfg.meta_batch):
            ep = sampler.sample(global_step * cfg.meta_batch + t)
            c = str(ep.classes[0])
            src = data.train[c]
            support = src.batch(ep.support - offsets[c], device)
            query = src.batch(ep.query - offsets[c], device)
            loss = model.task_loss(support, query)
            (loss / cfg.meta_batch).backward()
            total = total + loss.detach().double()
        return {"loss": total / cfg.meta_batch}

    validate_fn = None
    monitor, mode = "train_loss", "min"
    if data.val:
        monitor, mode = "val_acc30", "max"

        def validate_fn(epoch: int) -> dict[str, float]:
            res = evaluate(model, data.val, cfg.shots, cfg.val_draws, cfg.eval_steps, cfg.seed + _VAL_SEED, device)
            return {"val_acc30": res["pooled"]["acc30"], "val_mederr": res["pooled"]["mederr"]}

    train_cfg = TrainConfig(epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch, monitor=monitor,
                            monitor_mode=mode, progress=cfg.progress, log_every_steps=5)  # type: ignore[arg-type]
    trainer = MetaTrainer(out, train_cfg, model, optimizer, step_fn=step_fn, validate_fn=validate_fn,
                          dropgrad=model.dropgrad, device=device)
    summary = trainer.fit(resume=resume)
    if data.val:
        plot_metrics(out / "metrics.jsonl", out / "val_acc30.png", ["val_acc30"])
    results = run_evaluation(model, cfg, out, data, device, cfg.eval_draws, log=trainer.log)
    results["best_epoch"] = summary["best_epoch"]
    write_json(out / "results.json", results, sort_keys=True)
    return results


def evaluation_name(cfg: ViewpointConfig, draws: int, checkpoint: str, other_data: bool = False) -> str:
    """The stem of ``viewpoint-eval``'s files: every setting that changes its numbers, so one
    evaluation never overwrites another or the training run's ``results.json``.

    ``other_data``: the evaluation reads another data folder than the run's; the stem then ends
    in ``_data-<folder_tag>`` (the JSON file records the folder itself).

    >>> evaluation_name(ViewpointConfig(shots=10, eval_steps=5), 10, "best")
    'eval_best_10shot_5step_10draw'
    >>> evaluation_name(ViewpointConfig(shots=10, eval_steps=5, data_root="/data/a"), 10, "best", True)
    'eval_best_10shot_5step_10draw_data-46d2cd93'
    """
    name = f"eval_{checkpoint}_{cfg.shots}shot_{cfg.eval_steps}step_{draws}draw"
    if other_data:
        name += "_data-" + folder_tag(cfg.data_root or "")
    return name


def run_evaluation(model: MetaView, cfg: ViewpointConfig, out: Path, data: ViewpointData, device: torch.device,
                   draws: int, checkpoint: str = "best", log: Callable[[str], object] = print,
                   name: str = "results") -> dict:
    """Load the run's checkpoint, evaluate on the test categories, write ``<name>.json`` and the
    example crops (``examples.png`` for the training run's ``results``, else ``<name>_examples.png``)."""
    if checkpoint == "best":
        info = load_best_model(out, model, map_location=device)
    else:
        from dropgrad import load_checkpoint
        from dropgrad.checkpoint import load_weights

        path = out / "checkpoints" / "last.pt"
        state = load_checkpoint(path, map_location=device)
        load_weights(model, state["model"], path)
        # last.pt's "epoch" is the next epoch to run (the one being run if saved mid-epoch); report
        # the last epoch it trained, numbered from 0 as best.pt, best_epoch and metrics.jsonl are.
        epoch = state.get("epoch")
        info = {"epoch": epoch if epoch is None or state.get("step_in_epoch") else epoch - 1}
    model.eval()
    seed = cfg.seed + _TEST_SEED
    adapted = evaluate(model, data.test, cfg.shots, draws, cfg.eval_steps, seed, device)
    unadapted = evaluate(model, data.test, cfg.shots, 1, cfg.eval_steps, seed, device, unadapted=True)
    results = {
        **adapted,
        "unadapted_pooled": unadapted["pooled"],
        "shots": cfg.shots, "draws": draws, "eval_steps": cfg.eval_steps, "dropgrad": cfg.dropgrad, "p": cfg.p,
        "checkpoint": checkpoint, "checkpoint_epoch": info.get("epoch"), "device": str(device),
        "test_categories": list(data.test),
        "data_root": str(Path(cfg.data_root).resolve()) if cfg.data_root else None,
    }
    write_json(out / f"{name}.json", results, sort_keys=True)
    examples = "examples.png" if name == "results" else f"{name}_examples.png"
    plot_examples(model, data.test, cfg.shots, cfg.eval_steps, seed, device, out / examples)
    p = adapted["pooled"]
    log(f"test ({len(data.test)} categories, {cfg.shots}-shot, {draws} draws): Acc30 {p['acc30']:.2f} ± {p['acc30_std']:.2f}% "
        f"MedErr {p['mederr']:.2f} ± {p['mederr_std']:.2f} deg; unadapted Acc30 {unadapted['pooled']['acc30']:.2f}%")
    return results
