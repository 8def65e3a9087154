"""viewpoint-train / viewpoint-eval end to end on a small synthetic set, and their error handling."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from dropgrad_viewpoint.cli import main_eval, main_train
from dropgrad_viewpoint.data.mat import save_mat

TINY = ["--dataset", "objectnet3d", "--shots", "5", "--query", "3", "--epochs", "3", "--steps-per-epoch", "20",
        "--val-categories", "1", "--val-draws", "1", "--eval-draws", "3", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(small_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    # The data folder is given relative to the training's working directory; viewpoint-eval
    # runs from another one and must still find it.
    here = os.getcwd()
    os.chdir(small_synthetic.parent)
    try:
        assert main_train(TINY + ["--data-root", small_synthetic.name, "--out", str(out)]) == 0
    finally:
        os.chdir(here)
    config = json.loads((out / "config.json").read_text())
    assert config["data_root"] == str(small_synthetic) and config["app"] == "viewpoint-train"
    return out


def test_train_writes_a_complete_run(tiny_run):
    for name in ("config.json", "metrics.jsonl", "log.txt", "split.json", "results.json", "examples.png",
                 "val_acc30.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tiny_run / name).is_file(), name
    res = json.loads((tiny_run / "results.json").read_text())
    assert set(res["categories"]) == {"shape04", "shape05"} and res["draws"] == 3
    for part in [res["pooled"], res["category_mean"], *res["categories"].values()]:
        assert 0 <= part["acc30"] <= 100 and 0 <= part["mederr"] <= 180 and part["runs"] == 3
    # A short meta-training already beats the unadapted initialisation (all copies alike).
    assert res["pooled"]["acc30"] > res["unadapted_pooled"]["acc30"]
    assert res["pooled"]["mederr"] < res["unadapted_pooled"]["mederr"]
    split = json.loads((tiny_run / "split.json").read_text())
    assert split["test"] == ["shape04", "shape05"] and len(split["val"]) == 1 and len(split["train"]) == 3


def test_eval_reproduces_the_training_run_evaluation_without_overwriting_it(tiny_run, small_synthetic):
    before = (tiny_run / "results.json").read_text()
    assert main_eval([str(tiny_run), "--draws", "3"]) == 0
    assert (tiny_run / "results.json").read_text() == before  # best_epoch and all
    shots = json.loads(before)["shots"]
    after = json.loads((tiny_run / f"eval_best_{shots}shot_{json.loads(before)['eval_steps']}step_3draw.json").read_text())
    before = json.loads(before)
    assert after["pooled"] == before["pooled"] and after["categories"] == before["categories"]
    assert main_eval([str(tiny_run), "--draws", "1", "--shots", "2", "--checkpoint", "last"]) == 0
    other = tiny_run / f"eval_last_2shot_{before['eval_steps']}step_1draw"
    last = json.loads(other.with_suffix(".json").read_text())
    assert last["shots"] == 2 and last["draws"] == 1 and last["pooled"]["runs"] == 1  # --draws, not the run's 3
    assert other.with_name(other.name + "_examples.png").is_file()
    assert json.loads((tiny_run / "results.json").read_text()) == before


def test_eval_on_another_data_folder_gets_its_own_file(tiny_run, small_synthetic, tmp_path):
    stem = f"eval_best_5shot_{json.loads((tiny_run / 'results.json').read_text())['eval_steps']}step_1draw"
    # The run's own folder, spelled another way, is the run's data: the plain name.
    spelled = small_synthetic.parent / ".." / small_synthetic.parent.name / small_synthetic.name
    assert main_eval([str(tiny_run), "--draws", "1", "--data-root", str(spelled)]) == 0
    plain = json.loads((tiny_run / f"{stem}.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(small_synthetic, copy)
    assert main_eval([str(tiny_run), "--draws", "1", "--data-root", str(copy)]) == 0
    tagged = sorted(tiny_run.glob(f"{stem}_data-*.json"))
    assert [t.name for t in tagged] == [f"{stem}_data-{hashlib.sha256(str(copy.resolve()).encode()).hexdigest()[:8]}.json"]
    assert tagged[0].with_name(tagged[0].stem + "_examples.png").is_file()
    other = json.loads(tagged[0].read_text())
    assert other["data_root"] == str(copy.resolve()) and plain["data_root"] == str(small_synthetic.resolve())
    assert other["pooled"] == plain["pooled"]  # same files, same draws: the file name alone differs
    assert json.loads((tiny_run / f"{stem}.json").read_text()) == plain  # not overwritten


def test_the_default_data_folder_is_stored_absolute_and_eval_finds_it_from_anywhere(small_synthetic, tmp_path, monkeypatch):
    from dropgrad_viewpoint import pipeline
    from dropgrad_viewpoint.data.synthetic import MARKER, SyntheticSpec

    # The default synthetic folder, already generated (with the small spec) in the training's
    # working directory.
    small = SyntheticSpec(**json.loads((small_synthetic / MARKER).read_text()))
    monkeypatch.setattr(pipeline, "SyntheticSpec", lambda: small)
    work, other = tmp_path / "work", tmp_path / "other"
    other.mkdir()
    shutil.copytree(small_synthetic, work / "runs" / "viewpoint-data")
    monkeypatch.chdir(work)
    quick = [a for a in TINY if a not in ("--dataset", "objectnet3d")]
    quick[quick.index("--epochs") + 1], quick[quick.index("--steps-per-epoch") + 1] = "1", "2"
    assert main_train(quick + ["--eval-draws", "1", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data_root"] == str(work / "runs" / "viewpoint-data")
    # From another folder: the stored set, not a new one generated there.
    monkeypatch.chdir(other)
    assert main_eval([str(tmp_path / "run"), "--draws", "1"]) == 0
    assert not (other / "runs").exists()
    res = json.loads(next((tmp_path / "run").glob("eval_best_*_1draw.json")).read_text())
    assert res["data_root"] == config["data_root"]
    # A run folder written before (data_root null) resolves the default as it always did: in
    # the working directory.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "run", old)
    (old / "config.json").write_text(json.dumps({**config, "data_root": None}))
    monkeypatch.chdir(work)
    assert main_eval([str(old), "--draws", "1"]) == 0
    assert json.loads(next(old.glob("eval_best_*_1draw.json")).read_text())["pooled"] == res["pooled"]


def test_resume_of_a_finished_run_keeps_its_results(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    before = json.loads((copy / "results.json").read_text())
    assert main_train(["--out", str(copy), "--resume", "--no-progress"]) == 0
    assert json.loads((copy / "results.json").read_text())["pooled"] == before["pooled"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_over(tiny_run, tmp_path):
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    shutil.copy(tiny_run / "config.json", unstarted / "config.json")
    (unstarted / "log.txt").write_text("a line of the killed attempt\n")
    (unstarted / "metrics.jsonl").write_text('{"event": "train", "epoch": 0}\n')
    assert main_train(["--out", str(unstarted), "--resume", "--no-progress"]) == 0
    assert "killed attempt" not in (unstarted / "log.txt").read_text()
    # The same options from the beginning: the run's numbers.
    assert json.loads((unstarted / "results.json").read_text())["pooled"] == json.loads((tiny_run / "results.json").read_text())["pooled"]
    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(unstarted) == records(tiny_run)  # the killed attempt's line is gone too


@pytest.mark.parametrize(
    "args, message",
    [
        (["--p", "1.0"], "--p"),
        (["--dataset", "objectnet3d"], "--dataset objectnet3d needs --data-root"),
        (["--shots", "0"], "--shots must be >= 1"),
        (["--weight-hidden", "-1"], "--weight-hidden must be >= 0"),
        (["--schedule", "linear", "--epochs", "1"], "--schedule linear needs --epochs >= 2"),
        (["--head-kernel", "2"], "--head-kernel must be 1 or 3"),
        (["--inner-lr", "-1"], "--inner-lr must be > 0"),
        (["--outer-lr", "0"], "--outer-lr must be > 0"),
        (["--weight-3d", "-1"], "--weight-3d must be >= 0"),
    ],
)
def test_bad_options_exit_2_before_anything_is_written(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main_train(args + ["--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "nodata")] if args[0] != "--dataset" else args + ["--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_malformed_annotation_exits_2_naming_file_and_field(small_synthetic, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(small_synthetic, root)
    bad = root / "Annotations" / "shape00_0003.mat"
    save_mat(bad, {"record": {"filename": "shape00_0003.png", "objects": [{"class": "shape00", "bbox": np.array([1.0, 2, 3])}]}})
    with pytest.raises(SystemExit) as exc:
        main_train(TINY + ["--data-root", str(root), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "record.objects(1).bbox" in err
    assert not (tmp_path / "run").exists()


def test_too_few_novel_objects_exits_2(small_synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main_train(TINY[:2] + ["--shots", "14", "--data-root", str(small_synthetic), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "novel category 'shape04'" in capsys.readouterr().err


def test_eval_of_a_non_run_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main_eval([str(tmp_path)])
    assert exc.value.code == 2 and "not a viewpoint-train run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--novel-categories", ","], "no novel (test) category"),
        (["--query", "20"], "fewer than --shots + --query = 25 usable objects"),
    ],
)
def test_data_too_small_for_the_options_exits_2_before_anything_is_written(small_synthetic, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main_train(TINY + args + ["--data-root", str(small_synthetic), "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_eval_steps_out_of_range_names_its_own_option(tmp_path, capsys):
    from dropgrad_viewpoint.cli import main_eval

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main_eval([str(tmp_path), "--steps", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--steps must be >= 1, got 0" in err and "--eval-steps" not in err
