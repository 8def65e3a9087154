"""MetaTrainer: logs, checkpoints, early stopping, errors, plots, and kill-and-resume exactness."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from dropgrad.checkpoint import CheckpointError, load_checkpoint
from dropgrad.training import MetaTrainer, TrainConfig, load_best_model, plot_metrics, read_metrics

HERE = Path(__file__).resolve().parent


def _regression(seed: int = 0):
    """A tiny linear-regression 'meta-learner' and its data."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def step_fn(global_step: int) -> dict[str, float]:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return {"loss": loss.item(), "acc": torch.tensor(0.5)}  # a 0-d tensor is accepted too

    return model, optimizer, step_fn, x, y


def _trainer(run_dir, config, **kwargs):
    model, optimizer, step_fn, x, y = _regression()

    def validate_fn(epoch: int) -> dict[str, float]:
        return {"val_loss": ((model(x) - y) ** 2).mean().item()}

    kwargs.setdefault("validate_fn", validate_fn)
    lines: list[str] = []
    trainer = MetaTrainer(run_dir, config, model, optimizer, step_fn=step_fn, logger=lines.append, **kwargs)
    return trainer, model, lines


def test_fit_writes_run_dir(tmp_path):
    cfg = TrainConfig(epochs=3, steps_per_epoch=7, log_every_steps=3, progress=False)
    trainer, model, lines = _trainer(tmp_path, cfg)
    summary = trainer.fit()

    assert summary["epochs_completed"] == 3 and summary["global_step"] == 21
    assert summary["best_epoch"] == 2 and not summary["stopped_early"]
    assert summary["monitor"] == "val_loss"
    assert json.loads((tmp_path / "train_summary.json").read_text()) == summary
    assert json.loads((tmp_path / "train_config.json").read_text())["steps_per_epoch"] == 7

    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    # Windows of 3 steps restart each epoch, with a final partial window: steps 3, 6, 7 per epoch.
    assert [(r["epoch"], r["step"]) for r in train][:3] == [(0, 3), (0, 6), (0, 7)]
    assert len(train) == 9 and {"loss", "acc", "lr", "time"} <= set(train[0])
    val = read_metrics(tmp_path / "metrics.jsonl", "val")
    assert [r["epoch"] for r in val] == [0, 1, 2] and all(r["best"] for r in val)
    assert {"val_loss", "train_loss", "train_acc"} <= set(val[0])

    # Everything printed is in log.txt, and nothing else.
    assert (tmp_path / "log.txt").read_text().splitlines() == lines
    assert any(line.startswith("epoch 2 (3/3)") for line in lines)

    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 3 and last["global_step"] == 21 and last["step_in_epoch"] == 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(last["model"][name], tensor)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["value"] == pytest.approx(val[-1]["val_loss"])


def test_early_stopping_keeps_best_epoch(tmp_path):
    cfg = TrainConfig(epochs=20, steps_per_epoch=3, patience=2, progress=False)
    worsening = [3.0, 1.0, 2.0, 2.5, 2.7, 3.0]  # best at epoch 1, then worse and worse
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    trainer, model, _ = _trainer(tmp_path, cfg)

    def validate_fn(epoch: int) -> dict[str, float]:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_loss": worsening[epoch]}

    trainer.validate_fn = validate_fn
    summary = trainer.fit()
    assert summary["stopped_early"] and summary["epochs_completed"] == 4
    assert summary["best_epoch"] == 1 and summary["best_value"] == 1.0

    fresh = nn.Linear(3, 1)
    info = load_best_model(tmp_path, fresh)
    assert info["epoch"] == 1 and info["monitor"] == "val_loss" and info["value"] == 1.0
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name])
    assert "early stopping" in (tmp_path / "log.txt").read_text()
    # Resuming a run that stopped early trains no further.
    again, _, _ = _trainer(tmp_path, cfg, validate_fn=validate_fn)
    assert again.fit(resume=True)["global_step"] == summary["global_step"]


class _Interrupt(Exception):
    pass


def test_resume_keeps_the_early_stopping_count(tmp_path):
    # Stopped after epoch 2 (one epoch without improvement so far): the resumed run must stop
    # after epoch 3, as the uninterrupted run above does.
    cfg = TrainConfig(epochs=20, steps_per_epoch=3, patience=2, progress=False)
    worsening = [3.0, 1.0, 2.0, 2.5, 2.7, 3.0]

    def crashing(epoch: int) -> dict[str, float]:
        if epoch == 3:
            raise _Interrupt
        return {"val_loss": worsening[epoch]}

    trainer, _, _ = _trainer(tmp_path, cfg, validate_fn=crashing)
    with pytest.raises(_Interrupt):
        trainer.fit()
    again, _, _ = _trainer(tmp_path, cfg, validate_fn=lambda epoch: {"val_loss": worsening[epoch]})
    summary = again.fit(resume=True)
    assert summary["stopped_early"] and summary["epochs_completed"] == 4 and summary["best_epoch"] == 1


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_tie_is_not_an_improvement(tmp_path, mode):
    cfg = TrainConfig(epochs=20, steps_per_epoch=2, patience=2, monitor_mode=mode, progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg, validate_fn=lambda epoch: {"val_loss": 1.0})
    summary = trainer.fit()
    assert summary["best_epoch"] == 0 and summary["stopped_early"] and summary["epochs_completed"] == 3
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 0


def test_validation_rows_log_each_epochs_mean_training_metrics(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=4, log_every_steps=1, progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg)
    trainer.fit()
    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    for row in read_metrics(tmp_path / "metrics.jsonl", "val"):
        losses = [r["loss"] for r in train if r["epoch"] == row["epoch"]]
        assert len(losses) == 4 and row["train_loss"] == pytest.approx(sum(losses) / 4)


def test_monitor_max_and_train_metric_without_validation(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, monitor="train_loss", progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg, validate_fn=None)
    summary = trainer.fit()
    assert summary["best_epoch"] == 1  # loss goes down
    with pytest.raises(ValueError, match="needs a validate_fn"):
        _trainer(tmp_path / "other", TrainConfig(progress=False), validate_fn=None)


def test_train_records_are_window_means_and_step_fn_gets_the_global_step(tmp_path):
    # Windows restart each epoch (steps 3, 6 and a partial 7 of 7); each record is the mean of
    # its own steps, the partial window's over its 1 step; step_fn sees 0, 1, ... across epochs
    # (apps draw their tasks from it: an epoch index would repeat the first epoch's tasks).
    model, optimizer, _, x, y = _regression()
    seen: list[int] = []

    def step_fn(global_step: int) -> dict[str, float]:
        seen.append(global_step)
        ((model(x) - y) ** 2).mean().backward()
        return {"v": float(global_step)}

    cfg = TrainConfig(epochs=2, steps_per_epoch=7, log_every_steps=3, monitor="train_v", progress=False)
    MetaTrainer(tmp_path, cfg, model, optimizer, step_fn=step_fn, logger=lambda line: None).fit()
    assert seen == list(range(14))
    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert [(r["epoch"], r["step"], r["v"]) for r in train] == [
        (0, 3, 1.0), (0, 6, 4.0), (0, 7, 6.0), (1, 10, 8.0), (1, 13, 11.0), (1, 14, 13.0)]
    assert [r["train_v"] for r in read_metrics(tmp_path / "metrics.jsonl", "val")] == [3.0, 10.0]


def test_grad_clip_covers_every_optimised_tensor_and_plateau_schedulers_get_the_monitor(tmp_path):
    # Learned inner step sizes (MetaSGD, MAML++) sit in the optimiser, outside the model: the
    # clipped norm is over all of them. ReduceLROnPlateau is stepped with the monitored value.
    model = nn.Linear(2, 1)
    extra = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([*model.parameters(), extra], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0)

    def step_fn(global_step: int) -> dict[str, float]:
        loss = model(torch.ones(1, 2)).sum() + 100.0 * extra.sum()
        loss.backward()
        return {"loss": loss.item()}

    values = iter([1.0, 2.0, 3.0])
    cfg = TrainConfig(epochs=3, steps_per_epoch=1, grad_clip=1.0, progress=False)
    trainer = MetaTrainer(tmp_path, cfg, model, optimizer, step_fn=step_fn, scheduler=scheduler,
                          validate_fn=lambda epoch: {"val_loss": next(values)}, logger=lambda line: None)
    trainer.fit()
    norm = math.sqrt(3 * 100.0**2 + 3 * 1.0)  # d/d extra = 100 each; d/dw = 1, 1; d/db = 1
    assert read_metrics(tmp_path / "metrics.jsonl", "train")[0]["grad_norm"] == pytest.approx(norm)
    # Three steps of size lr * clipped gradient: extra moves by 3 * 100 / norm each, not by 300.
    torch.testing.assert_close(extra.detach(), torch.full((3,), -100.0 / norm * (1.0 + 1.0 + 0.5)))
    assert optimizer.param_groups[0]["lr"] == 0.25  # epochs 1 and 2 did not improve


class _Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["mid-window", "epoch boundary"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path, where):
    # In process (the SIGKILL test below runs its own script and can only hope to hit a given
    # step): a step draws from the global RNG, on_epoch_start too (at a boundary, its draws
    # belong to the restored stream); stopped after a mid-epoch checkpoint that holds a part
    # of a log window, or as an epoch starts.
    def run(run_dir, stop_at=None, resume=False):
        model, optimizer, _, x, y = _regression()
        scale = [0.0]

        def step_fn(global_step: int) -> dict[str, float]:
            if stop_at == ("step", global_step):
                raise _Stop
            loss = ((model(x + scale[0] * torch.randn_like(x)) - y) ** 2).mean()
            loss.backward()
            return {"loss": loss.item()}

        def on_epoch_start(epoch: int) -> None:
            if stop_at == ("epoch", epoch):
                raise _Stop
            scale[0] = float(torch.rand(())) if where == "epoch boundary" else 0.1

        cfg = TrainConfig(epochs=3, steps_per_epoch=5, log_every_steps=2, checkpoint_every_steps=3, progress=False)
        trainer = MetaTrainer(run_dir, cfg, model, optimizer, step_fn=step_fn, on_epoch_start=on_epoch_start,
                              validate_fn=lambda epoch: {"val_loss": ((model(x) - y) ** 2).mean().item()},
                              logger=lambda line: None)
        torch.manual_seed(123 if resume else 0)  # a resumed process starts from other RNG states
        trainer.fit(resume=resume)
        return model

    reference = run(tmp_path / "reference")
    stop = ("step", 4) if where == "mid-window" else ("epoch", 1)  # after the checkpoints of step 3 / epoch 0
    with pytest.raises(_Stop):
        run(tmp_path / "stopped", stop_at=stop)
    assert load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["global_step"] in (3, 5)
    resumed = run(tmp_path / "stopped", resume=True)
    for a, b in zip(resumed.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)

    def records(run_dir):
        return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir / "metrics.jsonl")
                if r["event"] != "resume"]

    assert records(tmp_path / "stopped") == records(tmp_path / "reference")


def test_missing_monitor_key_names_it(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, monitor="val_acc", progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg)
    with pytest.raises(ValueError, match=r"'val_acc'.*present: .*val_loss"):
        trainer.fit()


def test_resume_without_checkpoint_starts_over_and_fresh_over_existing_is_refused(tmp_path):
    # A run stopped before its first checkpoint: --resume starts it from the beginning, giving
    # what a fresh run gives (its directory, config.json written, would refuse a fresh start).
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, progress=False)
    torch.manual_seed(0)
    fresh, fresh_model, _ = _trainer(tmp_path / "fresh", cfg)
    fresh.fit()
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')  # a killed attempt's
    torch.manual_seed(0)
    trainer, model, lines = _trainer(tmp_path / "killed", cfg)
    trainer.fit(resume=True)
    assert any("nothing to resume" in line for line in lines)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
    assert [r["epoch"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl", "val")] == [0, 1]
    # ... and the killed attempt's own records are gone: the file holds the fresh run's alone.
    assert [(r["event"], r["step"]) for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == [
        (r["event"], r["step"]) for r in read_metrics(tmp_path / "fresh" / "metrics.jsonl")]
    again, _, _ = _trainer(tmp_path / "killed", cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        again.fit()


def test_corrupt_last_checkpoint_is_a_clear_error(tmp_path):
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg)
    trainer.fit()
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    again, _, _ = _trainer(tmp_path, cfg)
    with pytest.raises(CheckpointError, match="last.pt is not a complete checkpoint.*best.pt") as err:
        again.fit(resume=True)
    # best.pt holds weights only: the message must not offer a resume from it (that would restart
    # the run and replace best.pt), but say to copy it aside.
    assert "resume from" not in str(err.value) and "replaces best.pt (copy that aside first" in str(err.value)


def test_a_checkpoint_write_killed_midway_leaves_no_temporary_file_after_the_resume(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg)
    trainer.fit()
    killed = tmp_path / "checkpoints" / ".last.pt.k3j_x9.tmp"  # atomic_write's name for its temporary file
    killed.write_bytes(b"half a checkpoint")
    killed_best = tmp_path / "checkpoints" / ".best.pt.q1w2e3.tmp"  # best.pt is written the same way
    killed_best.write_bytes(b"half the best weights")
    kept = tmp_path / "checkpoints" / "notes.tmp"
    kept.write_text("not ours")
    again, _, _ = _trainer(tmp_path, cfg)
    again.fit(resume=True)
    assert not killed.exists() and not killed_best.exists() and kept.exists()


def test_step_fn_without_backward_is_reported(tmp_path):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = MetaTrainer(
        tmp_path, TrainConfig(epochs=1, steps_per_epoch=1, monitor="train_loss", progress=False),
        model, opt, step_fn=lambda step: {"loss": 1.0}, logger=lambda line: None,
    )
    with pytest.raises(RuntimeError, match="backward"):
        trainer.fit()


def _tensor_metrics_run(run_dir, log_every: int, monkeypatch) -> tuple[int, list[dict]]:
    """A run whose step_fn returns 0-d tensors; how many times the trainer read a tensor as a float."""
    model, optimizer, _, x, y = _regression()

    def step_fn(global_step: int) -> dict[str, torch.Tensor]:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return {"loss": loss.detach(), "acc": torch.tensor(0.5)}

    reads = Counter()
    to_float = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.update(["read"]) or to_float(t))
    cfg = TrainConfig(epochs=1, steps_per_epoch=40, log_every_steps=log_every, grad_clip=10.0, monitor="train_loss",
                      progress=True)
    MetaTrainer(run_dir, cfg, model, optimizer, step_fn=step_fn, logger=lambda line: None).fit()
    return reads["read"], read_metrics(run_dir / "metrics.jsonl", "train")


def test_tensor_step_metrics_are_read_when_logged_not_every_step(tmp_path, monkeypatch):
    # Reading a GPU tensor waits for the GPU: the trainer keeps the step metrics (and the clipped
    # gradient norm) as tensors and reads them per log window, epoch and checkpoint.
    reads, lazy = _tensor_metrics_run(tmp_path / "a", 20, monkeypatch)
    # 2 windows x 3 metrics (+ the progress bar's 3 epoch means each), the epoch's 3, the checkpoint's 3
    assert reads <= 2 * 6 + 3 + 3 < 40
    model, optimizer, _, x, y = _regression()  # the same numbers as Python floats summed each step
    losses = []
    for _ in range(40):
        model.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    assert [r["loss"] for r in lazy] == [sum(losses[:20]) / 20, sum(losses[20:]) / 20]
    assert [r["acc"] for r in lazy] == [0.5, 0.5] and all(r["grad_norm"] > 0 for r in lazy)


def test_a_step_metric_that_is_not_one_number_is_refused(tmp_path):
    model, optimizer, _, x, y = _regression()

    def step_fn(global_step: int) -> dict[str, torch.Tensor]:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return {"loss": loss.detach(), "per_sample": (model(x) - y).detach()}

    cfg = TrainConfig(epochs=1, steps_per_epoch=2, monitor="train_loss", progress=False)
    trainer = MetaTrainer(tmp_path, cfg, model, optimizer, step_fn=step_fn, logger=lambda line: None)
    with pytest.raises(TypeError, match=r"step_fn returned 'per_sample' = a torch.float32 tensor of shape \(32, 1\), which is not a number"):
        trainer.fit()


def test_grad_clip_scheduler_dropgrad_progress_and_modes(tmp_path):
    from dropgrad.noise import DropGrad

    dg = DropGrad(p=0.2, kind="gaussian", schedule="linear")
    seen: list[tuple[int, float, bool]] = []
    cfg = TrainConfig(epochs=3, steps_per_epoch=2, grad_clip=0.01, progress=False)
    trainer, model, _ = _trainer(tmp_path, cfg, dropgrad=dg)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    trainer.scheduler = scheduler

    def validate_fn(epoch: int) -> dict[str, float]:
        # Gradients are available at validation time (adaptation needs them) ...
        assert torch.is_grad_enabled()
        # ... and the model and DropGrad are in eval mode.
        seen.append((epoch, dg.progress, model.training or dg.training))
        return {"val_loss": 1.0 / (epoch + 1)}

    trainer.validate_fn = validate_fn
    trainer.on_epoch_start = lambda epoch: seen.append((epoch, -1.0, model.training))
    trainer.fit()
    assert [s for s in seen if s[1] >= 0] == [(0, 0.0, False), (1, 0.5, False), (2, 1.0, False)]
    assert scheduler.get_last_lr() == [0.05 * 0.5**3]
    train = read_metrics(tmp_path / "metrics.jsonl", "train")
    assert all(r["grad_norm"] > 0 for r in train)
    assert model.training


def test_a_linear_dropgrad_schedule_over_one_epoch_is_refused(tmp_path):
    from dropgrad.noise import DropGrad

    # Progress would stay 0 for the only epoch: a run asked for DropGrad would get none.
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, progress=False)
    with pytest.raises(ValueError, match="schedule linear needs TrainConfig.epochs >= 2"):
        _trainer(tmp_path / "a", cfg, dropgrad=DropGrad(0.2, schedule="linear"))
    assert not (tmp_path / "a").exists()
    _trainer(tmp_path / "b", cfg, dropgrad=DropGrad(0.2))
    _trainer(tmp_path / "c", cfg, dropgrad=DropGrad(0.2, kind="none", schedule="linear"))
    _trainer(tmp_path / "d", cfg, dropgrad=DropGrad(0.0, schedule="linear"))  # no noise asked for: nothing lost


def test_a_run_without_any_finite_validation_value_says_so_when_its_best_model_is_loaded(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, progress=False)
    trainer, model, lines = _trainer(tmp_path, cfg, validate_fn=lambda epoch: {"val_loss": float("nan")})
    trainer.fit()
    assert sum("warning: epoch" in line and "val_loss not finite; the run has diverged" in line for line in lines) == 2
    with pytest.raises(CheckpointError, match=r"best.pt was never written: no epoch of the run had a finite val_loss"):
        load_best_model(tmp_path, model)
    # A run that had a best model whose file is gone: the plain error.
    other, other_model, _ = _trainer(tmp_path / "other", cfg)
    other.fit()
    (tmp_path / "other" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"best.pt does not exist"):
        load_best_model(tmp_path / "other", other_model)


def test_bad_config_values_name_the_option():
    with pytest.raises(ValueError, match="TrainConfig.patience"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="TrainConfig.monitor_mode"):
        TrainConfig(monitor_mode="lowest")  # type: ignore[arg-type]
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(TrainConfig))


def test_plot_metrics(tmp_path):
    cfg = TrainConfig(epochs=2, steps_per_epoch=2, progress=False)
    trainer, _, _ = _trainer(tmp_path, cfg)
    trainer.fit()
    out = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "val.png", ["train_loss", "val_loss"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "train.png", "loss", event="train")
    with pytest.raises(ValueError, match="'nope'.*present"):
        plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "x.png", "nope")


# ----------------------------------------------------------------------------- kill and resume
SCRIPT = HERE / "_resumable_train.py"


def _run_script(run_dir: Path, *extra: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(run_dir), *extra], check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path):
    reference = tmp_path / "reference"
    _run_script(reference)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(killed)], stdout=subprocess.DEVNULL)
    try:
        last = killed / "checkpoints" / "last.pt"
        metrics = killed / "metrics.jsonl"
        deadline = time.monotonic() + 60
        # Wait for a mid-epoch checkpoint after the first epoch (global step 21 = epoch 1,
        # step 1), then for a train record written after it (records every 2 steps, the next
        # checkpoint 7 steps later), so the kill leaves log lines that resume must cut off.
        checkpoint_step = None
        while True:
            assert proc.poll() is None, "training finished before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            if checkpoint_step is None and last.exists():
                step = load_checkpoint(last)["global_step"]
                checkpoint_step = step if step >= 21 and step % 20 else None
            elif checkpoint_step is not None:
                steps = [r["step"] for r in read_metrics(metrics, "train")]
                if steps and steps[-1] > checkpoint_step:
                    break
            time.sleep(0.003)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (killed / "final.pt").exists()
    state = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert 0 < state["global_step"] < 120 and state["step_in_epoch"] > 0
    assert (killed / "metrics.jsonl").stat().st_size > state["log_sizes"]["metrics.jsonl"]

    _run_script(killed, "--resume")
    want = torch.load(reference / "final.pt", weights_only=True)
    got = torch.load(killed / "final.pt", weights_only=True)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name

    ref_records = read_metrics(reference / "metrics.jsonl")
    records = read_metrics(killed / "metrics.jsonl")
    train_keys = [(r["epoch"], r["step"]) for r in records if r["event"] == "train"]
    assert not [k for k, n in Counter(train_keys).items() if n > 1], "duplicated train records"
    assert train_keys == [(r["epoch"], r["step"]) for r in ref_records if r["event"] == "train"]
    assert sum(r["event"] == "resume" for r in records) == 1

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "time"} for r in rs if r["event"] != "resume"]

    assert strip(records) == strip(ref_records)  # identical metrics, only timings differ
    assert load_checkpoint(killed / "checkpoints" / "best.pt")["epoch"] == load_checkpoint(
        reference / "checkpoints" / "best.pt"
    )["epoch"]


def test_progress_bar_and_stdout_logging(tmp_path, capsys):
    model, optimizer, step_fn, x, y = _regression()
    cfg = TrainConfig(epochs=2, steps_per_epoch=3, monitor="train_loss", progress=True)
    MetaTrainer(tmp_path, cfg, model, optimizer, step_fn=step_fn).fit()
    out = capsys.readouterr().out.splitlines()
    assert out == (tmp_path / "log.txt").read_text().splitlines()
    assert out[-1].startswith("training complete")


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_on_more_processes_gives_other_ranks_their_own_noise_stream(tmp_path, rank):
    from dropgrad.distributed import DistributedContext
    from dropgrad.noise import DropGrad

    cfg = TrainConfig(epochs=3, steps_per_epoch=2, progress=False)
    saved = DropGrad(0.2, schedule="linear", generator=torch.Generator().manual_seed(1))
    trainer, _, _ = _trainer(tmp_path, cfg, dropgrad=saved)
    trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert "ranks" not in state  # written by one process

    own = DropGrad(0.2, schedule="linear", generator=torch.Generator().manual_seed(1000 + rank))
    fresh = own.generator.get_state()
    resumed, _, _ = _trainer(tmp_path / "two", cfg, dropgrad=own)
    resumed.distributed = DistributedContext(rank, 2)  # what _restore reads of a launched rank
    resumed._restore(state)
    assert own.progress == saved.progress == 1.0 and resumed.epoch == 3
    expected = saved.generator.get_state() if rank == 0 else fresh
    assert torch.equal(own.generator.get_state(), expected)


def test_read_metrics_leaves_out_only_an_unfinished_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "val", "epoch": 0}\n{"event": "val", "ep')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: left out an unfinished last line"):
        assert read_metrics(path) == [{"event": "val", "epoch": 0}]
    path.write_text('{"event": "val", "ep\n{"event": "val", "epoch": 0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON line"):
        read_metrics(path)
    path.write_text('{"event": "val", "ep\n')  # a whole line: not what a stopped write leaves
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON line"):
        read_metrics(path)
