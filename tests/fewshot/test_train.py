"""fewshot-train / fewshot-test / fewshot-sweep end to end on the embedded glyphs, with tiny budgets."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dropgrad import load_checkpoint
from dropgrad_fewshot import cli, sweep
from dropgrad_fewshot.config import FewShotConfig, resolve_defaults
from dropgrad_fewshot.data import EpisodeBatches, build_dataset
from dropgrad_fewshot.methods import (
    build_learner,
    check_task_streams,
    make_dropgrad,
    use_batched,
    use_cuda_graph,
)
from dropgrad_fewshot.run import evaluate, load_split

TINY = [
    "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2", "--inner-steps", "2",
    "--meta-batch", "2", "--epochs", "2", "--episodes-per-epoch", "4", "--val-episodes", "4",
    "--test-episodes", "6", "--no-progress",
]


def tiny_config(**changes) -> FewShotConfig:
    base = dict(way=3, shot=1, query=2, test_query=2, inner_steps=2, meta_batch=2, epochs=2,
                episodes_per_epoch=4, val_episodes=4, test_episodes=6, progress=False)
    base.update(changes)
    return resolve_defaults(FewShotConfig(**base))


def first_epoch_losses(out) -> list[float]:
    """The first epoch's training and validation losses from a run's ``metrics.jsonl``.

    Two runs that compute the same steps with sums in another order (compiled, folded) are
    compared on their first epoch only: Adam's first steps are ``lr * g / |g|``, so weights whose
    gradient is about zero, float32 rounding noise (a conv bias before BatchNorm), move by up to
    ``lr`` either way, and later epochs drift apart by more than any fixed tolerance.
    """
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [v for line in lines if line["epoch"] == 0 for k, v in sorted(line.items()) if k.endswith("loss")]
    assert len(losses) >= 3, lines  # the steps' training losses, then the epoch's training and validation loss
    return losses


def test_default_run_end_to_end_writes_the_whole_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.train_main(["--out", str(out), *TINY]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    assert printed == results
    assert results["test_episodes"] == 6 and 0 <= results["test_acc_mean"] <= 100 and results["test_acc_ci95"] >= 0
    for name in ("config.json", "metrics.jsonl", "log.txt", "checkpoints/best.pt", "checkpoints/last.pt",
                 "val_loss.png", "val_acc.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "glyphs" and config["epochs"] == 2 and config["dropgrad"] == "gaussian"
    assert config["app"] == "fewshot-train"  # names the app for other apps' commands given this folder
    vals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert [v["epoch"] for v in vals] == [0, 1] and all("val_acc" in v and "val_loss" in v for v in vals)


def test_fewshot_test_rescores_the_run_and_writes_cams(tmp_path, capsys):
    out = tmp_path / "run"
    cli.train_main(["--out", str(out), *TINY])
    trained = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert cli.test_main([str(out), "--episodes", "6", "--cam", "--no-progress"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    # Conv4 at 28 px: a 1x1 last map, so the CAMs say nothing about where; one warning says so.
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "last feature map is 1x1" in warnings[0], captured.err
    # Same best model, same test stream: the same episodes and the same accuracies.
    assert again["test_acc_mean"] == pytest.approx(trained["test_acc_mean"])
    assert (out / "cam.png").stat().st_size > 0
    assert (out / "test_glyphs_test_3w1s.json").is_file()
    # Other settings go to another file, not over the run's own test.
    assert cli.test_main([str(out), "--episodes", "4", "--query", "1", "--seed", "5", "--no-progress"]) == 0
    assert (out / "test_glyphs_test_3w1s_1q_4ep_seed5.json").is_file()
    for option in ("--shot", "--query"):
        with pytest.raises(SystemExit) as exc:
            cli.test_main([str(out), option, "0", "--no-progress"])
        assert exc.value.code == 2 and f"{option} must be >= 1, got 0" in capsys.readouterr().err
    # A CAM path under a file: refused before the test runs, not after it.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as exc:
        cli.test_main([str(out), "--cam", str(tmp_path / "afile" / "x.png"), "--no-progress"])
    assert exc.value.code == 2 and "afile is a file; give the image's file name" in capsys.readouterr().err


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    cli.train_main(["--out", str(whole), *TINY])

    part = tmp_path / "part"
    original = EpisodeBatches.batch
    calls = {"n": 0}

    def crash_in_second_epoch(self, index):
        # Training batches of epoch 1 have index >= 2; crash once, at the first of them.
        if self.tasks_per_batch == 2 and index == 3 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(EpisodeBatches, "batch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.train_main(["--out", str(part), *TINY])
    assert not (part / "results.json").exists()
    assert cli.train_main(["--out", str(part), "--resume", "--no-progress"]) == 0
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.loads((whole / "results.json").read_text())["test_acc_mean"] == pytest.approx(
        json.loads((part / "results.json").read_text())["test_acc_mean"]
    )


def test_resume_before_the_first_checkpoint_starts_over_with_a_clean_log(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    cli.train_main(["--out", str(whole), *TINY])
    part = tmp_path / "part"
    original = EpisodeBatches.batch

    def crash_in_first_epoch(self, index):
        if self.tasks_per_batch == 2 and index == 1:
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(EpisodeBatches, "batch", crash_in_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.train_main(["--out", str(part), *TINY])
    monkeypatch.undo()
    stale = (part / "log.txt").read_text()
    assert stale.count("learner:") == 1 and not (part / "checkpoints" / "last.pt").exists()
    assert cli.train_main(["--out", str(part), "--resume", "--no-progress"]) == 0
    # The killed attempt's lines are gone: the log reads like the uninterrupted run's.
    log = (part / "log.txt").read_text()
    assert log.count("learner:") == 1 and log.count("data:") == 1 and "nothing to resume" in log
    assert [json.loads(l)["event"] for l in (part / "metrics.jsonl").read_text().splitlines()][:1] == \
        [json.loads(l)["event"] for l in (whole / "metrics.jsonl").read_text().splitlines()][:1]
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("method", ["maml", "metasgd", "metasgd-star", "mamlpp"])
@pytest.mark.parametrize("regularizer", ["none", "dropout", "spatialdropout"])
def test_every_method_and_regularizer_takes_a_meta_step(method, regularizer, tmp_path, monkeypatch):
    from dropgrad_fewshot import run

    cfg = tiny_config(method=method, regularizer=regularizer, dropgrad="binary", p=0.3, pretrain_epochs=1)
    torch.manual_seed(0)
    learner = build_learner(cfg)
    if method == "metasgd-star":
        # Pre-train on 10 glyph classes (the full base split is the real run's job).
        small = build_dataset("glyphs", "train", image_size=28, n_classes=10)
        monkeypatch.setattr(run, "load_split", lambda *a, **k: small)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        run._pretrain(cfg, learner, tmp_path, torch.device("cpu"), lambda line: None)
        monkeypatch.undo()
        assert (tmp_path / "pretrained.pt").is_file()
        after = learner.model.state_dict()
        assert not torch.equal(after["block1.conv.weight"], before["block1.conv.weight"])
        assert torch.equal(after["fc.weight"], before["fc.weight"]), "the N-way head is not pre-trained"
        # A second call (a resumed run) loads the saved backbone instead of training again.
        fresh = build_learner(cfg)
        run._pretrain(cfg, fresh, tmp_path, torch.device("cpu"), lambda line: None)
        assert torch.equal(fresh.model.state_dict()["block1.conv.weight"], after["block1.conv.weight"])
    data = load_split(cfg, "train")
    tasks = EpisodeBatches(data, n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=0).batch(0)
    before = {k: v.detach().clone() for k, v in learner.state_dict().items() if torch.is_tensor(v)}
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    out = learner.meta_backward(tasks, batched=False)
    assert torch.isfinite(out.loss)
    opt.step()
    changed = [k for k, v in learner.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any(k.startswith("model.") for k in changed)
    if method in ("metasgd", "metasgd-star", "mamlpp"):
        assert any(k.startswith("lrs.") for k in changed), "learned step sizes are meta-trained"


def test_dropgrad_is_off_at_test_time():
    """Evaluation with DropGrad on (p=0.5) equals evaluation of the same weights without DropGrad."""
    cfg = tiny_config(dropgrad="binary", p=0.5)
    torch.manual_seed(0)
    noisy = build_learner(cfg)
    clean = build_learner(tiny_config(dropgrad="none"))
    clean.load_state_dict(noisy.state_dict())
    data = load_split(cfg, "test")
    kw = dict(way=3, shot=1, query=2, episodes=4, seed=5, device=torch.device("cpu"), batched=False)
    a = evaluate(noisy, data, **kw)
    b = evaluate(clean, data, **kw)
    np.testing.assert_array_equal(a["acc"], b["acc"])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    # ... while in training mode the same learner's adaptation is noisy.
    tasks = EpisodeBatches(data, n_way=3, n_shot=1, n_query=2, tasks_per_batch=1, seed=5).batch(0)
    noisy.train()
    clean.train()
    assert not torch.allclose(noisy.meta_loss(tasks).loss, clean.meta_loss(tasks).loss)


def test_dropgrad_layers_select_resnet_groups():
    dg = make_dropgrad(FewShotConfig(backbone="resnet18", dropgrad_layers="conv,block1"))
    assert dg.selected(["conv1.weight", "bn1.bias", "layer1.0.conv2.weight", "layer2.0.conv1.weight", "fc.weight"]) == (
        True, True, True, False, False,
    )


def test_defaults_match_the_papers_sources():
    cfg = resolve_defaults(FewShotConfig())
    assert (cfg.inner_steps, cfg.inner_lr, cfg.meta_batch, cfg.outer_lr) == (5, 0.01, 4, 1e-3)
    assert (cfg.query, cfg.test_query, cfg.test_episodes) == (16, 15, 600)
    assert (cfg.dropgrad, cfg.p, cfg.dropout_p) == ("gaussian", 0.1, 0.3)
    cub = resolve_defaults(FewShotConfig(dataset="cub", data_root="x", shot=1))
    assert (cub.epochs, cub.episodes_per_epoch) == (2400, 100)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--p", "1.0"], "--p"),
        (["--way", "1"], "--way"),
        (["--dataset", "omniglot"], "--data-root"),
        (["--episodes-per-epoch", "5"], "multiple of --meta-batch"),
        (["--dataset", "omniglot", "--data-root", "no/such/folder"], "no/such/folder"),
        (["--way", "5000"], "5000"),
        (["--task-streams", "2", "--device", "cpu"], "--task-streams needs a CUDA device"),
        (["--compile"], "--first-order"),
        (["--batched", "off", "--task-chunk", "2"], "--task-chunk applies to batched meta-training"),
        (["--dropgrad-schedule", "linear", "--epochs", "1"], "--dropgrad-schedule linear needs --epochs >= 2"),
        (["--dropgrad-layers", "block9"], "params entry 'block9' matches no parameter"),
        (["--dataset", "miniimagenet", "--data-root", "m", "--test-dataset", "cub"], "--test-dataset cub needs --test-data-root"),
        (["--patience", "0"], "--patience must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_user_errors_are_one_line_before_training(argv, expected, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dropgrad_fewshot.cli", "--out", str(tmp_path / "r"), *argv, "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()
    if argv[0] in ("--dropgrad-schedule", "--dropgrad-layers", "--patience", "--seed"):
        # checked with the options, before the run directory is written
        assert not (tmp_path / "r").exists()


def test_a_corrected_rerun_takes_over_the_directory_a_failed_start_left(tmp_path, capsys):
    out = tmp_path / "r"
    with pytest.raises(SystemExit) as exc:
        cli.train_main(["--out", str(out), *TINY, "--dataset", "omniglot", "--data-root", str(tmp_path / "none")])
    assert exc.value.code == 2 and (out / "config.json").is_file()
    assert cli.train_main(["--out", str(out), *TINY, "--epochs", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["dataset"] == "glyphs"
    assert "omniglot" not in (out / "log.txt").read_text()


def test_sweep_runs_the_grid_once_per_distinct_run_and_reuses_finished_runs(tmp_path, capsys):
    spec = {
        "out": str(tmp_path / "sweep"),
        "base": {"way": 3, "shot": 1, "query": 2, "test_query": 2, "inner_steps": 1, "meta_batch": 2,
                 "epochs": 1, "episodes_per_epoch": 2, "val_episodes": 2, "test_episodes": 4},
        "grid": {"regularizer": ["none", "binary", "gaussian"], "p": [0.1, 0.3]},
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(spec))
    assert sweep.main([str(path), "--no-progress"]) == 0
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(runs) == 5  # none once, binary and gaussian at two p each
    tables = (tmp_path / "sweep" / "tables.md").read_text()
    assert "binary (p=0.3)" in tables and "gaussian (p=0.1)" in tables and "Fig. 2" in tables
    assert (tmp_path / "sweep" / "p_sweep.png").is_file()
    mtime = (tmp_path / "sweep" / runs[0] / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert sweep.main([str(path), "--no-progress"]) == 0
    assert (tmp_path / "sweep" / runs[0] / "results.json").stat().st_mtime_ns == mtime
    # Another base: the runs there are not this sweep's, and are not reported as if they were.
    path.write_text(json.dumps({**spec, "base": {**spec["base"], "test_episodes": 6}}))
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), "--no-progress"])
    assert exc.value.code == 2
    assert "holds a run with other options than this sweep's" in capsys.readouterr().err
    # Another seed is another run too, not a place a run may be resumed from.
    path.write_text(json.dumps({**spec, "base": {**spec["base"], "seed": 7}}))
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), "--no-progress"])
    assert exc.value.code == 2
    assert "holds a run with other options than this sweep's" in capsys.readouterr().err
    path.write_text(json.dumps({**spec, "base": {**spec["base"], "test_episodes": 6}}))
    # A cell whose start failed (no checkpoint yet; here: the first cell's run files removed)
    # starts afresh with the sweep's options instead.
    for cell in (tmp_path / "sweep").iterdir():
        if cell.is_dir() and cell.name != runs[0]:
            shutil.rmtree(cell)
    shutil.rmtree(tmp_path / "sweep" / runs[0] / "checkpoints")
    (tmp_path / "sweep" / runs[0] / "results.json").unlink()
    assert sweep.main([str(path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "sweep" / runs[0] / "config.json").read_text())["test_episodes"] == 6


@pytest.mark.parametrize("text, message", [
    ("out: o\nbase: [1, 2]\ngrid: {shot: [1]}\n", "base must be a mapping of option names to values"),
    ("out: o\nbase: epochs\ngrid: {shot: [1]}\n", "base must be a mapping of option names to values"),
    ("out: o\ngrid: [shot, way]\n", "grid must be a mapping of option names to values"),
    ("out: o\ngrid: {shots: [1, 5]}\n", "unknown key 'shots' (did you mean 'shot'?)"),
    ("out: o\ngrid: {shot: ['1']}\n", "key 'shot': expected an integer"),
])
def test_a_malformed_sweep_file_is_one_error_naming_it(tmp_path, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(path) in err and message in err and "Traceback" not in err, err


def test_sweep_grid_points_sharing_a_run_directory_are_refused_before_any_run(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    # Before: the first point trained, then the second failed as a run "with other options".
    base = "{epochs: 1, episodes_per_epoch: 4, val_episodes: 2, test_episodes: 2, query: 1, test_query: 1}"
    path.write_text(f"out: {tmp_path / 'sweep'}\nbase: {base}\ngrid: {{dropgrad_layers: ['conv4,fc', 'conv4, fc']}}\n")
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "would share the run directory" in err and "dropgrad_layers-conv4+fc" in err, err
    assert not (tmp_path / "sweep").exists()


def test_sweep_tables_keep_dropgrad_with_dropout_apart_from_dropgrad_alone():
    runs = sweep.expand_grid({"epochs": 1}, {"regularizer": ["none", "dropout"], "dropgrad": ["gaussian"], "p": [0.1, 0.2]})
    records = [{**label, "method": c.method, "shot": c.shot, "dropgrad": c.dropgrad, "regularizer": c.regularizer,
                "p": c.p, "test_acc_mean": 40.0 + i, "test_acc_ci95": 0.5} for i, (label, c) in enumerate(runs)]
    text = sweep.format_tables(records, rows=[k for label, _ in runs for k in label])
    # Before: both runs of each p shared the "gaussian (p=...)" cell, the first overwritten.
    for i in range(4):
        assert f"{40 + i:.2f} ± 0.50" in text.split("## Binary")[0] and f"{40 + i:.2f} ± 0.50" in text.split("## Binary")[1], text
    assert "| dropout + gaussian (p=0.1) |" in text
    spatial = [{**r, "regularizer": "spatialdropout"} for r in records if r["regularizer"] == "dropout"]
    assert "| spatialdropout + gaussian (p=0.1) |" in sweep.format_tables(records[:1] + spatial[:1])


def test_sweep_p_plot_keeps_dropgrad_with_dropout_a_line_of_its_own(tmp_path, monkeypatch):
    import matplotlib.axes

    labels, draw = [], matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, **kw: labels.append((kw["label"], list(x))) or draw(self, x, y, **kw))
    records = [{"method": "maml", "shot": 1, "regularizer": reg, "dropgrad": "gaussian", "p": p,
                "test_acc_mean": 40.0, "test_acc_ci95": 0.5} for reg in ("none", "dropout") for p in (0.1, 0.2)]
    sweep.plot_p_sweep(records, tmp_path / "p.png")
    assert sorted(labels) == [("dropout + gaussian", [0.1, 0.2]), ("gaussian", [0.1, 0.2])]


def test_sweep_grid_of_dropgrad_kinds_keeps_every_p():
    runs = sweep.expand_grid({"dropgrad": "none", "epochs": 1}, {"dropgrad": ["none", "gaussian"], "p": [0.1, 0.2]})
    assert [label for label, _ in runs] == [
        {"dropgrad": "none"}, {"dropgrad": "gaussian", "p": 0.1}, {"dropgrad": "gaussian", "p": 0.2}]
    assert [(cfg.dropgrad, cfg.p) for _, cfg in runs][1:] == [("gaussian", 0.1), ("gaussian", 0.2)]
    runs = sweep.expand_grid({"epochs": 1}, {"dropgrad": ["none"], "p": [0.1, 0.2]})
    assert [label for label, _ in runs] == [{"dropgrad": "none"}]  # p changes nothing without DropGrad


def test_sweep_grid_runs_default_dropgrad_at_every_p_and_labels_set_their_regulariser():
    # FewShotConfig's default DropGrad is Gaussian: a p grid without a dropgrad option is p runs.
    runs = sweep.expand_grid({"epochs": 1}, {"p": [0.1, 0.2]})
    assert [(label, cfg.dropgrad, cfg.p) for label, cfg in runs] == [({"p": 0.1}, "gaussian", 0.1), ({"p": 0.2}, "gaussian", 0.2)]
    # A DropGrad column is DropGrad alone, whatever regulariser the base names.
    runs = sweep.expand_grid({"epochs": 1, "regularizer": "dropout"}, {"regularizer": ["gaussian", "dropout"]})
    assert [(cfg.dropgrad, cfg.regularizer) for _, cfg in runs] == [("gaussian", "none"), ("none", "dropout")]
    # The DropGrad schedule only varies DropGrad runs.
    runs = sweep.expand_grid({"epochs": 2}, {"regularizer": ["none", "gaussian"], "dropgrad_schedule": ["constant", "linear"]})
    assert [label for label, _ in runs] == [{"regularizer": "none"}, {"regularizer": "gaussian", "dropgrad_schedule": "constant"},
                                            {"regularizer": "gaussian", "dropgrad_schedule": "linear"}]


def _fig2_records(**vary):
    (key, values), = vary.items()
    return [{"method": "maml", "shot": 1, key: v, "regularizer": kind, "dropgrad": kind, "p": p,
             "test_acc_mean": 40.0 + 10 * i + 2 * (kind == "gaussian") + 100 * p, "test_acc_ci95": 0.5}
            for i, v in enumerate(values) for kind in ("binary", "gaussian") for p in (0.1, 0.2)]


def test_sweep_fig2_table_puts_each_kind_in_its_column_and_keeps_every_layer_choice():
    lines = sweep.format_tables(_fig2_records(dropgrad_layers=["all", "block4,fc"]), rows=["dropgrad_layers"]).splitlines()
    fig2 = lines[lines.index("## Binary vs Gaussian DropGrad over p (the paper's Fig. 2)") + 2:]
    assert fig2 == [
        "| method | shot | dropgrad_layers | p | binary | gaussian |", "|---|---|---|---|---|---|",
        "| maml | 1 | all | 0.1 | 50.00 ± 0.50 | 52.00 ± 0.50 |", "| maml | 1 | all | 0.2 | 60.00 ± 0.50 | 62.00 ± 0.50 |",
        "| maml | 1 | block4,fc | 0.1 | 60.00 ± 0.50 | 62.00 ± 0.50 |", "| maml | 1 | block4,fc | 0.2 | 70.00 ± 0.50 | 72.00 ± 0.50 |",
    ]


def test_sweep_p_plot_draws_one_line_per_kind_and_setting(tmp_path, monkeypatch):
    import matplotlib.axes

    lines, draw = [], matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, **kw: lines.append((list(x), list(y))) or draw(self, x, y, **kw))
    sweep.plot_p_sweep(_fig2_records(shot=[1, 5]), tmp_path / "p.png")
    assert sorted(lines) == [([0.1, 0.2], [50.0, 60.0]), ([0.1, 0.2], [52.0, 62.0]), ([0.1, 0.2], [60.0, 70.0]),
                             ([0.1, 0.2], [62.0, 72.0])]


def test_sweep_tables_give_each_varied_option_a_row():
    recs = [{"method": "maml", "shot": 1, "way": way, "regularizer": "none", "dropgrad": "none",
             "test_acc_mean": acc, "test_acc_ci95": 0.5} for way, acc in ((5, 40.0), (20, 17.0))]
    lines = sweep.format_tables(recs, rows=["way", "regularizer"]).splitlines()
    assert lines[2] == "| method | shot | way | none |"
    assert lines[4:6] == ["| maml | 1 | 5 | 40.00 ± 0.50 |", "| maml | 1 | 20 | 17.00 ± 0.50 |"]


def test_cross_domain_protocol_trains_and_validates_on_miniimagenet_and_tests_on_cub(monkeypatch):
    from dropgrad_fewshot import run

    calls = []
    monkeypatch.setattr(run, "build_dataset", lambda name, split, **kw: calls.append((name, split, kw["data_root"], kw["image_size"])))
    cfg = resolve_defaults(FewShotConfig(dataset="miniimagenet", data_root="mini", test_dataset="cub",
                                         test_data_root="CUB_200_2011", backbone="resnet18"))
    run.load_split(cfg, "train")
    run.load_split(cfg, "val")
    run.load_split(cfg, "test", test=True)
    assert calls == [("miniimagenet", "train", "mini", 224), ("miniimagenet", "val", "mini", 224),
                     ("cub", "test", "CUB_200_2011", 224)]
    with pytest.raises(ValueError, match="3-channel"):
        run.load_split(resolve_defaults(FewShotConfig(test_dataset="cub", test_data_root="x")), "test", test=True)


def test_closerlooks_cross_domain_protocol_trains_on_every_class_and_validates_on_the_test_set(monkeypatch):
    # CloserLook's "cross": meta-train on all 100 mini-ImageNet classes (all.json), select on
    # CUB's val classes, test on CUB's novel ones.
    from dropgrad_fewshot import run
    from dropgrad_fewshot.data import ClassUnion

    calls = []

    def fake(name, split, **kw):
        calls.append((name, split, kw["data_root"]))
        return build_dataset("glyphs", split, n_classes={"train": 4, "val": 2, "test": 3}[split], images_per_class=2)

    monkeypatch.setattr(run, "build_dataset", fake)
    cfg = resolve_defaults(FewShotConfig(dataset="miniimagenet", data_root="mini", test_dataset="cub", test_data_root="CUB",
                                         val_dataset="cub", train_classes="all"))
    train = run.load_split(cfg, "train")
    assert isinstance(train, ClassUnion) and train.n_classes == 9 and len(train) == 18
    assert train.labels.tolist() == [c for c in range(9) for _ in range(2)]
    run.load_split(cfg, "val")
    run.load_split(cfg, "test", test=True)
    assert calls == [("miniimagenet", "train", "mini"), ("miniimagenet", "val", "mini"), ("miniimagenet", "test", "mini"),
                     ("cub", "val", "CUB"), ("cub", "test", "CUB")]
    # Every image of the union is its part's image.
    parts = train.parts
    assert torch.equal(train.load(8), parts[1].load(0)) and torch.equal(train.load(17), parts[2].load(5))
    for bad, message in (({"val_dataset": None}, "needs --test-dataset and --val-dataset"),
                         ({"test_dataset": None, "val_dataset": None}, "needs --test-dataset and --val-dataset"),
                         ({"cache": "c"}, "does not combine with --cache"),
                         ({"val_dataset": "omniglot"}, "--val-dataset must be --dataset (miniimagenet) or --test-dataset (cub)")):
        opts = dict(dataset="miniimagenet", data_root="mini", test_dataset="cub", test_data_root="CUB", val_dataset="cub",
                    train_classes="all")
        with pytest.raises(ValueError, match=re.escape(message)):
            FewShotConfig(**{**opts, **bad})


def test_verify_images_and_preload_name_the_first_unreadable_file(tmp_path):
    from dropgrad_fewshot.data import DataError, GrayscaleTransform, ImageFileDataset
    from dropgrad_fewshot.run import verify_images
    from PIL import Image

    paths = []
    for k in range(4):
        path = tmp_path / f"{k}.png"
        Image.new("L", (8, 8), 40 * k).save(path)
        paths.append(path)
    paths[2].write_bytes(b"not a png")

    def make(cache: bool) -> ImageFileDataset:
        return ImageFileDataset(
            paths=paths, labels=[0, 0, 1, 1], class_names=["a", "b"], class_sources=["a/", "b/"],
            transform=GrayscaleTransform(8, invert=False), mode="L", cache=cache, name="omniglot",
            split="train", channels=1, image_size=8, augment=False, seed=0,
        )

    with pytest.raises(DataError, match=r"1 of 4 images cannot be read.*2\.png"):
        verify_images(make(False))
    with pytest.raises(DataError, match=r"2\.png"):
        make(True).preload()
    paths[2].unlink()
    Image.new("L", (8, 8), 80).save(paths[2])
    verify_images(make(False))
    # Preloading a cached set decodes every file once, to the tensors a lazy load gives.
    cached = make(True)
    assert cached.preload(threads=2) == 4 and make(False).preload() == 0
    for i in range(4):
        paths[i].unlink()  # from now on only the cache can answer
        assert torch.equal(cached.load(i), torch.full((1, 8, 8), 40 * i / 255))


def test_prefetched_meta_batches_equal_direct_ones_in_and_out_of_sequence():
    from dropgrad_fewshot.run import _Prefetched

    data = load_split(tiny_config(), "train")
    direct = EpisodeBatches(data, n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=3)
    workers = EpisodeBatches(data, n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=3, num_workers=1)
    stream = _Prefetched(workers, stop=8)
    for i in (0, 1, 2, 5, 6):  # 5 is a jump, as after a resume
        for a, b in zip(stream.get(i), direct.batch(i)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("method, regularizer", [("maml", "none"), ("mamlpp", "none"), ("maml", "dropout")])
def test_evaluation_with_vmap_equals_the_per_task_loop(method, regularizer):
    cfg = tiny_config(method=method, regularizer=regularizer)
    torch.manual_seed(0)
    learner = build_learner(cfg)
    assert use_batched(learner, "on", training=False)
    assert not use_batched(learner, "auto", training=False), "auto loops on a CPU"
    data = load_split(cfg, "val")
    kw = dict(way=3, shot=1, query=2, episodes=10, seed=7, device=torch.device("cpu"))
    loop = evaluate(learner, data, batched=False, **kw)
    vmap = evaluate(learner, data, batched=True, **kw)
    np.testing.assert_array_equal(loop["acc"], vmap["acc"])
    np.testing.assert_allclose(loop["loss"], vmap["loss"], rtol=1e-4, atol=1e-5)


def test_auto_batches_first_order_training_and_evaluation_but_loops_second_order_training(monkeypatch):
    from dropgrad_fewshot import methods

    monkeypatch.setattr(methods, "_on_gpu", lambda learner: True)  # the decision made on a GPU
    second = build_learner(tiny_config(first_order=False))
    first = build_learner(tiny_config(first_order=True))
    assert not use_batched(second, "auto", training=True), "second order: slower and larger batched (H200)"
    assert use_batched(second, "auto", training=False)
    assert use_batched(first, "auto", training=True)
    assert use_batched(second, "on", training=True), "'on' still batches second order"
    assert not use_batched(first, "auto", training=True, graphed=True), "graph replay: the loop is faster (H200)"
    assert use_batched(first, "on", training=True, graphed=True)
    assert not use_batched(first, "auto", training=False, graphed=True), "replayed evaluation loops too"
    assert use_batched(first, "on", training=False, graphed=True)


def test_batched_fold_folds_the_tasks_and_insists(monkeypatch):
    from dropgrad_fewshot import methods

    learner = build_learner(tiny_config(batched="fold"))
    assert learner.batch_with == "fold" and build_learner(tiny_config(batched="on")).batch_with == "vmap"
    assert use_batched(learner, "fold", training=True) and use_batched(learner, "fold", training=False)
    monkeypatch.setattr(methods, "_on_gpu", lambda learner: True)
    assert use_batched(learner, "fold", training=True, graphed=True), "fold is asked for: auto's rules do not apply"
    mamlpp = build_learner(tiny_config(method="mamlpp", batched="fold"))  # BatchNorm running statistics
    with pytest.raises(ValueError, match="--batched fold: batched adaptation \\(fold\\) cannot update the running"):
        use_batched(mamlpp, "fold", training=True)
    # The core's way out names its Python argument; the command line names the option.
    with pytest.raises(ValueError, match=r"ConsistentDropout masks; use --batched off \(or auto\)$"):
        use_batched(build_learner(tiny_config(regularizer="dropout", batched="on")), "on", training=True)
    tiny_config(batched="fold", compile=True, compile_second_order=True)  # folded steps compile whole too


@pytest.mark.parametrize("order", [(), ("--first-order",)])
def test_training_with_folded_tasks_equals_the_per_task_loop(order, tmp_path):
    curves = {}
    for batched in ("off", "fold"):
        out = tmp_path / batched
        # DropGrad off: batched steps draw one noise tensor for all tasks, the loop one per task.
        assert cli.train_main(["--out", str(out), *TINY, *order, "--dropgrad", "none", "--batched", batched]) == 0
        curves[batched] = first_epoch_losses(out)
        log = (out / "log.txt").read_text()
        assert ("training: tasks folded into the batch" in log) == (batched == "fold")
    np.testing.assert_allclose(curves["fold"], curves["off"], rtol=1e-5)
    assert cli.test_main([str(tmp_path / "fold"), "--episodes", "4", "--no-progress"]) == 0  # re-tests folded


@pytest.mark.parametrize("batched", [False, True])
def test_evaluation_through_a_captured_runner_scores_the_same_episodes(batched):
    # On a CPU CapturedEvaluation runs eagerly, but evaluate() still hands it whole chunks
    # (what one graph needs) and drops the padding tasks of the last: 10 episodes = 8 + 2 of 8.
    from dropgrad import CapturedEvaluation

    cfg = tiny_config()
    torch.manual_seed(0)
    learner = build_learner(cfg)
    data = load_split(cfg, "val")
    kw = dict(way=3, shot=1, query=2, episodes=10, seed=7, device=torch.device("cpu"), batched=batched)
    eager = evaluate(learner, data, **kw)
    calls = []

    class Recording(CapturedEvaluation):
        def __call__(self, tasks):
            calls.append(tasks.n_tasks)
            return super().__call__(tasks)

    whole = evaluate(learner, data, runner=Recording(learner, batched=batched), **kw)
    assert calls == [8, 8]
    assert len(whole["acc"]) == 10
    np.testing.assert_array_equal(whole["acc"], eager["acc"])
    np.testing.assert_allclose(whole["loss"], eager["loss"], rtol=1e-6, atol=1e-7)
    calls.clear()
    sliced = evaluate(learner, data, runner=lambda tasks: calls.append(tasks.n_tasks) or learner.meta_loss(tasks), **kw)
    assert calls == [8, 2]
    np.testing.assert_array_equal(sliced["acc"], eager["acc"])
    np.testing.assert_allclose(sliced["loss"], eager["loss"], rtol=1e-6, atol=1e-7)


def test_cuda_graph_is_for_gpus_only():
    learner = build_learner(tiny_config())
    assert not use_cuda_graph(learner, "auto") and not use_cuda_graph(learner, "off")
    with pytest.raises(ValueError, match="--cuda-graph on needs a CUDA device"):
        use_cuda_graph(learner, "on")


@pytest.mark.parametrize(("batched", "extra"), [
    ("off", []),
    pytest.param("fold", [], marks=pytest.mark.torch_at_least(
        2, 11, "on torch 2.6 the compiled losses are 4.6e-5 (relative) off eager's, past this test's 1e-5")),
    pytest.param("fold", ["--compile-combo"], marks=pytest.mark.torch_at_least(
        2, 11, "torch 2.6's inductor fails an assertion in its scheduler with combo kernels")),
    pytest.param("fold", ["--compile-forms", "unfold,idxpool,grouped"], marks=pytest.mark.torch_at_least(
        2, 14, "torch 2.11's inductor writes CPU code for the indexed pooling's bounds check that does not compile")),
], ids=["loop", "fold", "fold-combo", "fold-forms"])
def test_compiled_first_order_training_equals_eager_training(batched, extra, tmp_path, monkeypatch):
    from dropgrad import folded

    # unfold: the glyphs' 1-channel 3x3 convolution as a matmul; grouped: the others; idxpool: the pooling
    unfolded, grouped, pooled = [], [], []
    real, real_grouped, real_pool = folded._unfolded_conv, folded._grouped_conv, folded._indexed_max_pool
    monkeypatch.setattr(folded, "_unfolded_conv", lambda *a, **k: unfolded.append(1) or real(*a, **k))
    monkeypatch.setattr(folded, "_grouped_conv", lambda *a, **k: grouped.append(1) or real_grouped(*a, **k))
    monkeypatch.setattr(folded, "_indexed_max_pool", lambda *a: pooled.append(1) or real_pool(*a))
    curves = {}
    for flags in (["--no-compile"], ["--compile", *extra]):
        out = tmp_path / flags[0].strip("-")
        assert cli.train_main(["--out", str(out), *TINY, "--first-order", "--batched", batched, *flags]) == 0
        curves[flags[0]] = first_epoch_losses(out)
        log = (out / "log.txt").read_text()
        assert ("forward compiled (torch.compile)" in log) == (flags[0] == "--compile")
        assert ("with combo kernels" in log) == ("--compile-combo" in flags)
        assert ("and compiled forms unfold,idxpool,grouped" in log) == ("--compile-forms" in flags)
    assert bool(unfolded) == bool(grouped) == bool(pooled) == ("--compile-forms" in extra)
    # The validation loss follows two Adam steps. Any other order of float32 sums (the unfolded
    # convolution's; inductor's own for the folded step on an AVX-512 CPU) flips the sign of the
    # Adam steps of the conv biases, whose gradients before BatchNorm are rounding noise, and of a
    # few dozen conv weights with near-zero gradients: a 0.35% change, measured for both.
    # tests/core/test_compile.py holds the compiled folded step to 1e-10 in float64.
    np.testing.assert_allclose(curves["--compile"][:-1], curves["--no-compile"][:-1], rtol=1e-5)
    np.testing.assert_allclose(curves["--compile"][-1], curves["--no-compile"][-1], rtol=1e-2)


def test_compiled_second_order_training_step_equals_eager(tmp_path):
    # The first step's training loss, computed before any update. Later losses are not compared:
    # Adam turns the float32 rounding noise of gradients that are zero in exact arithmetic (a conv
    # bias before BatchNorm) into full-size steps, so the runs drift apart within a few steps.
    # tests/core/test_compile.py holds the compiled steps to the eager ones in float64.
    losses = {}
    for flags in ((), ("--compile", "--compile-second-order")):
        out = tmp_path / ("compiled" if flags else "eager")
        assert cli.train_main(["--out", str(out), *TINY, "--epochs", "1", "--episodes-per-epoch", "2", *flags]) == 0
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first["event"] == "train" and first["step"] == 1
        losses[flags] = first["loss"]
        assert ("second-order steps compiled whole" in (out / "log.txt").read_text()) == bool(flags)
    eager, compiled = losses.values()
    assert compiled == pytest.approx(eager, rel=1e-5)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (dict(compile=True), "--first-order"),
        (dict(compile_second_order=True), "--compile-second-order needs --compile"),
        (dict(compile_combo=True, first_order=True), "--compile-combo needs --compile"),
        (dict(compile_forms="unfold", first_order=True, batched="fold"), "--compile-forms unfold needs --compile and --batched fold"),
        (dict(compile=True, compile_forms="pwpool", first_order=True), "needs --compile and --batched fold"),
        (dict(compile=True, compile_forms="unfold,im2col", first_order=True, batched="fold"),
         "--compile-forms must be none or distinct comma-separated names among pwpool, pad8, unfold, grouped, idxpool, tpool, got 'unfold,im2col'"),
        (dict(compile=True, compile_forms="idxpool,pwpool", first_order=True, batched="fold"),
         "--compile-forms: pwpool and idxpool are forms of the same max pooling; give one"),
        (dict(compile=True, compile_forms="tpool,idxpool,unfold", first_order=True, batched="fold"),
         "--compile-forms: idxpool and tpool are forms of the same max pooling; give one"),
        (dict(compile=True, compile_forms="pad8,pad8", first_order=True, batched="fold"), "distinct"),
        (dict(compile=True, compile_combo=True, compile_forms="unfold,grouped", first_order=True, batched="fold"),
         "--compile-forms grouped with --compile-combo crashed on an H200"),
        (dict(compile=True, compile_second_order=True, compile_combo=True, compile_forms="grouped", batched="fold"),
         "--compile-forms grouped with --compile-combo crashed on an H200"),
        (dict(compile=True, compile_second_order=True, first_order=True), "no second-order step to compile"),
        (dict(compile=True, compile_second_order=True, checkpoint=True), "does not support --checkpoint"),
        (dict(compile=True, compile_second_order=True, batched="on"), "not vmap's \\(--batched on\\)"),
        (dict(compile=True, first_order=True, regularizer="dropout"), "--regularizer dropout"),
        (dict(compile=True, method="mamlpp", first_order_epochs=0), "--first-order-epochs"),
        (dict(task_streams=1), "--task-streams must be >= 2"),
        (dict(task_streams=2, method="mamlpp"), "--task-streams does not support --method mamlpp"),
    ],
)
def test_compile_and_task_streams_are_checked_up_front(changes, expected):
    with pytest.raises(ValueError, match=expected):
        tiny_config(**changes)


def test_task_streams_are_for_the_per_task_loop_on_a_gpu():
    learner = build_learner(tiny_config(task_streams=2))
    with pytest.raises(ValueError, match="--task-streams needs a CUDA device"):
        check_task_streams(learner, batched=False)
    check_task_streams(build_learner(tiny_config()), batched=True)  # not asked for: nothing to check


def test_compile_and_task_streams_reach_the_learner():
    learner = build_learner(tiny_config(compile=True, first_order=True, task_streams=3))
    assert learner.compiled and learner.task_streams == 3 and not learner.compiled_second_order
    plain = build_learner(tiny_config())
    assert not plain.compiled and plain.task_streams is None
    assert build_learner(tiny_config(compile=True, compile_second_order=True, method="mamlpp")).compiled_second_order


def test_compile_forms_reach_the_learner():
    cfg = tiny_config(compile=True, first_order=True, batched="fold", compile_forms=" pad8, unfold ,pwpool,grouped")
    assert cfg.folded_forms == {"channel_multiple": 8, "unfold_depth": 27, "pointwise_max_pool": True,
                                "grouped_tasks": True}
    assert build_learner(cfg).folded_forms == cfg.folded_forms
    assert build_learner(tiny_config(compile=True, first_order=True, batched="fold")).folded_forms == {}


def test_compile_combo_reaches_inductor_options(monkeypatch):
    import dropgrad.inner

    seen = []
    real = dropgrad.inner._compile_kwargs
    monkeypatch.setattr(dropgrad.inner, "_compile_kwargs", lambda arg: seen.append(arg) or real(arg))
    assert build_learner(tiny_config(compile=True, compile_combo=True, first_order=True)).compiled
    assert seen == [{"options": {"combo_kernels": True}}]
    seen.clear()
    build_learner(tiny_config(compile=True, first_order=True))
    assert seen == [True]


# --------------------------------------------------------------------------- fewshot-test's scoring
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run whose training and test query sizes differ (1 and 3)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    args = list(TINY)
    args[args.index("--query") + 1], args[args.index("--test-query") + 1] = "1", "3"
    assert cli.train_main(["--out", str(out), *args]) == 0
    return out


def test_fewshot_test_scores_the_runs_test_protocol_with_a_1_96_std_over_sqrt_n_interval(tiny_run, monkeypatch):
    from dropgrad_fewshot import testing
    from dropgrad_fewshot.run import TEST_STREAM

    calls = []
    accs = np.array([40.0, 60.0, 70.0, 90.0, 50.0])

    def fake_evaluate(learner, dataset, **kw):
        calls.append((learner.training, kw))
        return {"acc": accs.copy(), "loss": np.zeros(5)}

    monkeypatch.setattr(testing, "evaluate", fake_evaluate)
    res = testing.test_run(tiny_run, episodes=5, progress=False)
    cfg = json.loads((tiny_run / "config.json").read_text())
    (training, kw), = calls
    assert not training  # the best model in eval mode: no DropGrad, no dropout
    assert (kw["way"], kw["shot"], kw["query"], kw["episodes"]) == (3, 1, 3, 5)  # the test query, not the training one
    assert kw["seed"] == cfg["seed"] + TEST_STREAM
    # mean 62, population std sqrt(296): 1.96 * sqrt(296 / 5) = 15.08054 (CloserLook's np.std)
    assert res["test_acc_mean"] == pytest.approx(62.0) and res["test_acc_ci95"] == pytest.approx(15.08054, abs=1e-5)
    assert res["query"] == 3 and res["test_episodes"] == 5


def test_cams_are_the_adapted_models_on_each_classs_first_queries(tiny_run, monkeypatch):
    from dropgrad_fewshot import testing
    from dropgrad_fewshot.models import class_activation_maps

    cfg, learner, dev = testing.load_run(tiny_run, "cpu")
    dataset = load_split(testing.test_config(cfg, None, None), "test", test=True)
    got = {}
    monkeypatch.setattr(testing, "save_cam_grid", lambda path, images, cams, labels, preds, **kw: got.update(
        images=images, cams=cams, labels=labels, preds=preds))
    testing.write_cams(learner, dataset, 3, 1, 3, 11, dev, tiny_run / "cam.png")
    pick = [0, 1, 3, 4, 6, 7]  # two of each class's three query images
    assert got["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    task = EpisodeBatches(dataset, n_way=3, n_shot=1, n_query=3, tasks_per_batch=1, seed=11).batch(0).task(0)
    params = learner.adapt(task.support_x, task.support_y)[-1]  # after the last inner step
    with torch.no_grad():
        pred = learner(task.query_x, params).argmax(-1)
    maps = class_activation_maps(learner.model, params, task.query_x, pred, forward=lambda x: learner(x, params))
    assert torch.equal(got["images"], task.query_x[pick]) and torch.equal(got["preds"], pred[pick])
    torch.testing.assert_close(got["cams"], maps[pick], rtol=0, atol=1e-6)


def test_fewshot_test_tags_only_a_folder_other_than_the_runs_own(tmp_path, monkeypatch):
    from dropgrad_fewshot.config import FewShotConfig
    from dropgrad_fewshot.testing import _other_folder

    monkeypatch.chdir(tmp_path)
    cfg = FewShotConfig(dataset="miniimagenet", data_root="mini", test_dataset="cub", test_data_root="CUB")
    assert not _other_folder(cfg, None, None)
    assert not _other_folder(cfg, "cub", "CUB") and not _other_folder(cfg, None, str(tmp_path / "x" / ".." / "CUB"))
    assert not _other_folder(cfg, "miniimagenet", "./mini")
    assert _other_folder(cfg, "cub", "CUB2") and _other_folder(cfg, None, "mini")  # None: the run's test set, CUB
    assert _other_folder(cfg, "omniglot", "omni")  # a data set the run never read


def test_fewshot_test_reads_a_cached_run_from_its_cache_and_a_separate_test_folder_by_name():
    from dropgrad_fewshot.testing import _other_folder, test_config

    # A run trained from episode caches has no data folder: testing it needs none...
    cached = resolve_defaults(FewShotConfig(dataset="cub", cache="caches"))
    assert test_config(cached, "cub", None).test_data_root is None
    # ... and a folder given for it is another folder than the run's, tagged so that its file does
    # not take the name of the run's own test.
    assert _other_folder(cached, None, "CUB") and _other_folder(cached, "cub", "CUB")
    # The run's own test folder of its data set, asked for by name or by default alike.
    split = resolve_defaults(FewShotConfig(dataset="miniimagenet", data_root="mini", test_data_root="mini-test"))
    assert test_config(split, "miniimagenet", None).test_data_root == test_config(split, None, None).test_data_root == "mini-test"


def test_fewshot_test_honours_shot_and_names_the_file_by_what_differs(tiny_run, monkeypatch):
    from dropgrad_fewshot import testing
    from dropgrad_fewshot.data import DataError

    calls = []
    monkeypatch.setattr(testing, "evaluate", lambda learner, dataset, **kw: calls.append(kw) or {"acc": np.full(4, 50.0)})
    # The run's own test query (3, not the training query 1) needs no "_3q"; 4 episodes is not the run's 6.
    res = testing.test_run(tiny_run, episodes=4, progress=False)
    assert Path(res["written"]).name == "test_glyphs_test_3w1s_4ep.json" and calls[-1]["query"] == 3
    res = testing.test_run(tiny_run, episodes=6, shot=2, query=1, progress=False)
    assert (calls[-1]["shot"], calls[-1]["query"], res["shot"]) == (2, 1, 2)
    assert Path(res["written"]).name == "test_glyphs_test_3w2s_1q.json"
    # Tasks the split cannot give are refused before any evaluation.
    with pytest.raises(DataError, match="--shot|images"):
        testing.test_run(tiny_run, episodes=4, shot=10_000, progress=False)
    assert len(calls) == 2


def test_cams_of_a_one_query_test_take_each_classs_only_query(tiny_run, monkeypatch):
    from dropgrad_fewshot import testing

    cfg, learner, dev = testing.load_run(tiny_run, "cpu")
    dataset = load_split(testing.test_config(cfg, None, None), "test", test=True)
    got = {}
    monkeypatch.setattr(testing, "save_cam_grid", lambda path, images, cams, labels, preds, **kw: got.update(labels=labels))
    testing.write_cams(learner, dataset, 3, 1, 1, 11, dev, tiny_run / "cam.png")
    assert got["labels"].tolist() == [0, 1, 2]


def test_use_batched_leaves_the_learners_mode_as_it_was():
    # fewshot-train asks for evaluation's batching after training's, then trains: a learner left
    # in eval mode would meta-train with DropGrad and dropout off.
    learner = build_learner(tiny_config(regularizer="dropout"))
    assert learner.training
    assert use_batched(learner, "on", training=False)
    assert learner.training and learner.dropgrad.training
    learner.eval()
    with pytest.raises(ValueError, match="--batched on"):
        use_batched(learner, "on", training=True)  # consistent dropout while training: not batchable
    assert not learner.training and not learner.dropgrad.training


def test_sweep_tables_and_plot_of_a_grid_keep_every_varied_option_and_sort_p(tmp_path, monkeypatch):
    """run_sweep end to end with a stub trainer: `way` varies, so tables.md gets a way column and
    one row per way (not one cell overwritten); Fig. 2 rows and plot lines run over sorted p."""
    import matplotlib.axes
    from dropgrad_fewshot import run

    def fake_train(cfg, run_dir, resume=False):
        acc = 10.0 * cfg.way + (100 * cfg.p if cfg.dropgrad != "none" else 0.0)
        return {"test_acc_mean": acc, "test_acc_ci95": 0.5, "way": cfg.way, "shot": cfg.shot, "method": cfg.method,
                "dropgrad": cfg.dropgrad, "p": cfg.p, "regularizer": cfg.regularizer}

    monkeypatch.setattr(run, "train", fake_train)
    lines, draw = [], matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, **kw: lines.append((list(x), list(y))) or draw(self, x, y, **kw))
    spec = {"out": str(tmp_path / "s"), "base": {"epochs": 1},
            "grid": {"way": [3, 5], "regularizer": ["none", "gaussian"], "p": [0.3, 0.1, 0.2]}}
    records = sweep.run_sweep(spec, progress=False)
    assert len(records) == 8
    table = (tmp_path / "s" / "tables.md").read_text().splitlines()
    assert table[2] == "| method | shot | way | none | gaussian (p=0.3) | gaussian (p=0.1) | gaussian (p=0.2) |"
    assert table[4:6] == ["| maml | 1 | 3 | 30.00 ± 0.50 | 60.00 ± 0.50 | 40.00 ± 0.50 | 50.00 ± 0.50 |",
                          "| maml | 1 | 5 | 50.00 ± 0.50 | 80.00 ± 0.50 | 60.00 ± 0.50 | 70.00 ± 0.50 |"]
    fig2 = [line.split(" | ")[2:4] for line in table if line.startswith("| maml | 1 | 3 | 0.")]
    assert fig2 == [["3", "0.1"], ["3", "0.2"], ["3", "0.3"]]
    assert sorted(lines) == [([0.1, 0.2, 0.3], [40.0, 50.0, 60.0]), ([0.1, 0.2, 0.3], [60.0, 70.0, 80.0])]


# --------------------------------------------------------------------------- what train() scores, and in which unit
def test_train_validates_on_the_val_split_and_tests_the_test_datasets_test_split(tmp_path, monkeypatch):
    # Model selection on the test split would report a selected-on-test number: the splits
    # train() loads are recorded and the run stopped once they are (no training needed).
    from dropgrad_fewshot import run

    loaded = []

    class Loaded(Exception):
        pass

    def record(cfg, name, root, split, augment):
        loaded.append((name, split, augment))
        if len(loaded) == 3:
            raise Loaded
        return None

    monkeypatch.setattr(run, "_dataset", record)
    cfg = tiny_config(dataset="omniglot", data_root=str(tmp_path), test_dataset="glyphs", augment=True)
    with pytest.raises(Loaded):
        run.train(cfg, tmp_path / "run")
    assert loaded == [("omniglot", "train", True), ("omniglot", "val", False), ("glyphs", "test", False)]


def test_train_scores_in_percent_on_separate_validation_and_test_streams(tmp_path, monkeypatch):
    from dropgrad_fewshot import run

    calls = []
    real = run.evaluate

    def recording(learner, dataset, **kw):
        calls.append((dataset.split, kw["seed"], kw["episodes"], kw["query"]))
        return real(learner, dataset, **kw)

    monkeypatch.setattr(run, "evaluate", recording)
    args = list(TINY)
    args[args.index("--inner-steps") + 1] = "1"
    assert cli.train_main(["--out", str(tmp_path / "run"), *args, "--seed", "5"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert calls == [("val", 5 + run.VAL_STREAM, 4, 2)] * 2 + [("test", 5 + run.TEST_STREAM, 6, 2)]
    # 3-way, 2 queries per class: an episode's accuracy is a multiple of 100/6 percent, an epoch's
    # training record (2 steps of 2 tasks) and a validation (4 episodes) of 100/24, the test (6) of 100/36.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [(r["acc"], 24) for r in records if r["event"] == "train" and "acc" in r]
    values += [(r["val_acc"], 24) for r in records if "val_acc" in r] + [(results["test_acc_mean"], 36)]
    assert len(values) >= 4 and max(v for v, _ in values) > 1.0  # percent, not a fraction
    for v, n in values:
        assert abs(v * n / 100 - round(v * n / 100)) < 1e-4, (v, n)  # float32 sums


def test_evaluate_scores_each_episode_in_percent_and_restores_the_learners_mode():
    # A runner whose predictions are right for the first e % 7 of episode e's 6 queries: the
    # expected accuracies are known without a model; 10 episodes are a chunk of 8 and one of 2.
    from dropgrad import MetaOutput

    data = load_split(tiny_config(), "val")
    seen = []

    def runner(tasks):
        e = torch.arange(len(seen), len(seen) + tasks.n_tasks)
        seen.extend(e.tolist())
        j = torch.arange(tasks.query_y.shape[1])
        pred = torch.where(j < (e % 7).view(-1, 1), tasks.query_y, (tasks.query_y + 1) % 3)
        return MetaOutput(torch.tensor(0.0), e.float(), torch.nn.functional.one_hot(pred, 3).float())

    learner = torch.nn.Linear(1, 1)  # with a runner only its train/eval mode is used
    kw = dict(way=3, shot=1, query=2, episodes=10, seed=7, device=torch.device("cpu"), batched=False, runner=runner)
    for mode in (False, True):
        seen.clear()
        learner.train(mode)
        out = evaluate(learner, data, **kw)
        assert learner.training == mode  # evaluation adapts in eval mode and hands the mode back
        np.testing.assert_allclose(out["acc"], [100 * (e % 7) / 6 for e in range(10)], rtol=1e-6)
        np.testing.assert_array_equal(out["loss"], np.arange(10, dtype=np.float32))


def test_a_meta_batch_of_one_task_per_process_is_allowed_and_fewer_refused(tmp_path, monkeypatch):
    import dropgrad
    from dropgrad_fewshot import run

    class Stop(Exception):
        pass

    def stop(*args):
        raise Stop  # past the check, at the first data set: enough

    monkeypatch.setattr(run, "_dataset", stop)
    for meta_batch, world_size in ((1, 1), (2, 2), (1, 2)):
        ctx = dropgrad.DistributedContext(rank=0, world_size=world_size)
        monkeypatch.setattr(ctx, "init", lambda device: torch.device("cpu"))
        cfg = tiny_config(meta_batch=meta_batch)
        if meta_batch >= world_size:
            with pytest.raises(Stop):
                run.train(cfg, tmp_path, dist=ctx)
        else:
            with pytest.raises(ValueError, match="--meta-batch 1 cannot be split over 2 processes"):
                run.train(cfg, tmp_path, dist=ctx)


def test_a_cached_run_reads_the_cache_even_with_its_data_root_and_files_for_another_folder(tmp_path):
    # --cache with the run's own --data-root (a reloaded config.json has both): the cache; a
    # data set with a folder of its own (fewshot-test --data-root elsewhere): that folder's files.
    from dropgrad_fewshot import run
    from dropgrad_fewshot.data import CachedDataset, DataError, build_cache

    cfg = tiny_config(cache=str(tmp_path), data_root=str(tmp_path), data_options=["n_classes=3", "images_per_class=4"])
    build_cache("glyphs", "val", None, 28, tmp_path, seed=cfg.seed, **cfg.loader_options("glyphs"))
    assert isinstance(run.load_split(cfg, "val"), CachedDataset)
    with pytest.raises(DataError, match="reads no files, but --data-root .*elsewhere was given"):  # the file path's check
        run._dataset(cfg, "glyphs", str(tmp_path / "elsewhere"), "val", False)
