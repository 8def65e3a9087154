"""The end-to-end toy: MAML's sinusoid regression (Finn et al. 2017) through the real CLI."""

import json

import pytest
import torch

from dropgrad.examples.sinusoid import main, sinusoid_tasks

BUDGET = ["--epochs", "3", "--steps-per-epoch", "150", "--test-tasks", "300", "--val-tasks", "50", "--no-progress"]


@pytest.mark.parametrize("dropgrad", ["none", "gaussian"])
def test_meta_training_beats_unadapted_and_scratch(tmp_path, dropgrad, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--dropgrad", dropgrad, "--p", "0.1", "--device", "cpu", *BUDGET]) == 0
    res = json.loads((out / "results.json").read_text())
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == res
    # Held-out test tasks: adaptation from the meta-learned init beats both baselines clearly.
    # Paired over the same tasks, the gain's 95% interval excludes zero.
    assert res["test_gain_vs_scratch"] - res["test_gain_vs_scratch_ci95"] > 0
    assert res["test_gain_vs_unadapted"] - res["test_gain_vs_unadapted_ci95"] > 0
    assert res["test_mse_adapted"] < 0.6 * res["test_mse_unadapted"]
    assert res["test_mse_adapted"] < 0.8 * res["test_mse_scratch"]
    assert res["test_tasks"] == 300
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dropgrad"] == dropgrad and cfg["epochs"] == 3
    for name in ("metrics.jsonl", "log.txt", "checkpoints/best.pt", "checkpoints/last.pt", "val_mse.png", "example.png"):
        assert (out / name).is_file(), name


def test_task_streams_are_deterministic_and_disjoint():
    a = sinusoid_tasks(0, 5, 4, 10, 10)
    assert torch.equal(a.support_x, sinusoid_tasks(0, 5, 4, 10, 10).support_x)
    assert not torch.equal(a.support_x, sinusoid_tasks(0, 6, 4, 10, 10).support_x)
    assert not torch.equal(a.support_x, sinusoid_tasks(1, 5, 4, 10, 10).support_x)
    assert float(a.support_x.abs().max()) <= 5.0


def test_cli_errors(tmp_path):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "something").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "new"), "--p", "1.0"])
    assert not (tmp_path / "new").exists()  # nothing half-written
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "none"), "--resume"])


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be >= 1"), (["--meta-batch", "0"], "--meta-batch must be >= 1"),
    (["--n-query", "0"], "--n-query must be >= 1"), (["--k-shot", "0"], "--k-shot must be >= 1"),
    (["--test-tasks", "0"], "--test-tasks must be >= 1"), (["--val-tasks", "0"], "--val-tasks must be >= 1"),
    (["--inner-lr", "-1"], "--inner-lr must be > 0"), (["--outer-lr", "0"], "--outer-lr must be > 0"),
    (["--patience", "0"], "--patience must be >= 1"), (["--eval-steps", "-1"], "--eval-steps must be >= 0"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--schedule", "linear", "--epochs", "1"], "--schedule linear needs --epochs >= 2"),
])
def test_bad_options_are_one_line_before_the_run_directory(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_reproduces_the_run_and_keeps_its_options(tmp_path):
    out = tmp_path / "run"
    small = ["--epochs", "2", "--steps-per-epoch", "20", "--test-tasks", "20", "--val-tasks", "10",
             "--scratch-steps", "5", "--no-progress", "--device", "cpu"]
    assert main(["--out", str(out), *small]) == 0
    first = json.loads((out / "results.json").read_text())
    assert main(["--out", str(out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text()) == first
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--resume", "--p", "0.3"])
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--resume", "--config", str(out / "config.json")])


def test_bf16_autocast_run(tmp_path):
    out = tmp_path / "run"
    small = ["--epochs", "2", "--steps-per-epoch", "30", "--test-tasks", "20", "--val-tasks", "10",
             "--scratch-steps", "5", "--no-progress", "--device", "cpu", "--bf16"]
    assert main(["--out", str(out), *small]) == 0
    res = json.loads((out / "results.json").read_text())
    assert json.loads((out / "config.json").read_text())["bf16"] is True
    assert all(v == v and abs(v) < 1e3 for k, v in res.items() if k.startswith("test_mse"))  # finite
