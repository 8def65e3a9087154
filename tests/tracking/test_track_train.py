"""``track-train``: a short run through the CLI with DropGrad, exact resume, sources, task sampling, errors.

The tracker is the test-only toy of ``_toy_meta.py`` (crops + a 2-layer MLP); the MetaSDNet
end to end runs are in test_eval_trackers.py.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dropgrad import Task, load_checkpoint, read_metrics
from dropgrad_tracking.cli_train import main
from dropgrad_tracking.data import Sequence
from dropgrad_tracking.meta import meta_tracker
from dropgrad_tracking.training import (
    TaskSampler,
    TrackTrainConfig,
    discard_stale_synthetic,
    load_sources,
    split_sequences,
    stack_tasks,
    support_frames,
)
from dropgrad_tracking.training import tasks as tasks_module

SMALL = ["--synthetic-sequences", "4", "--synthetic-frames", "12", "--synthetic-height", "64", "--synthetic-width", "96",
         "--val-sequences", "1", "--val-tasks", "4", "--tasks-per-batch", "4", "--outer-lr", "0.01", "--no-progress"]


SMALL_CFG = {"tracker": "toy", "synthetic_sequences": 4, "synthetic_frames": 12, "synthetic_height": 64,
             "synthetic_width": 96}


def _train(out, *extra, capsys=None):
    code = main(["--tracker", "toy", "--out", str(out), *SMALL, *extra])
    captured = capsys.readouterr() if capsys is not None else None
    return code, captured


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "toy"
    assert main(["--tracker", "toy", "--out", str(out), *SMALL, "--epochs", "2", "--steps-per-epoch", "3"]) == 0
    return out


def test_short_run_with_dropgrad_writes_the_run_directory(toy_run):
    config = json.loads((toy_run / "config.json").read_text())
    assert config["tracker"] == "toy" and config["backbone_source"] == "random-init" and config["app"] == "track-train"
    assert config["dropgrad"] == "gaussian" and config["dropgrad_p"] == 0.2 and config["source"] == "synthetic"
    results = json.loads((toy_run / "results.json").read_text())
    assert results["dropgrad"] == "gaussian:0.2" and results["global_step"] == 6 and results["epochs_completed"] == 2
    assert results["val_sequences"] == ["Synthetic-04"] and results["train_sequences"] == 3 and results["val_tasks"] == 4
    assert np.isfinite(results["val_loss"]) and np.isfinite(results["val_loss_unadapted"])
    val = read_metrics(toy_run / "metrics.jsonl", "val")
    assert [r["epoch"] for r in val] == [0, 1] and all("val_loss_unadapted" in r for r in val)
    # results.json re-scores best.pt: the same number as its epoch's validation record.
    best = load_checkpoint(toy_run / "checkpoints" / "best.pt")
    assert results["val_loss"] == pytest.approx(val[best["epoch"]]["val_loss"], rel=1e-6)
    assert {k for k in best["model"] if k.startswith("lrs.")} == {"lrs.3__weight", "lrs.3__bias"}
    assert (toy_run / "val_loss.png").stat().st_size > 1000
    assert (toy_run / "synthetic-data" / "synthetic.json").is_file()
    assert "RANDOMLY INITIALISED" in (toy_run / "log.txt").read_text()


def test_the_meta_update_trains_theta_and_the_step_sizes(toy_run, toy):
    best = load_checkpoint(toy_run / "checkpoints" / "last.pt")["model"]
    lrs = best["lrs.3__weight"]
    assert not torch.allclose(lrs, torch.full_like(lrs, toy.ToyDef.inner_lr))  # alpha is meta-learned
    assert best["dropgrad._extra_state"]["progress"] == 1.0


def _interrupt_at(monkeypatch, step):
    original = tasks_module.TaskSampler.batch

    def batch(self, global_step, n_tasks):
        if global_step == step:
            raise KeyboardInterrupt
        return original(self, global_step, n_tasks)

    monkeypatch.setattr(tasks_module.TaskSampler, "batch", batch)


@pytest.mark.parametrize("stop_at, extra", [(3, []), (4, ["--checkpoint-every-steps", "2"])], ids=["epoch-end", "mid-epoch"])
def test_resume_is_exact(toy_run, tmp_path, monkeypatch, capsys, stop_at, extra):
    out = tmp_path / "run"
    args = ["--epochs", "2", "--steps-per-epoch", "3", *extra]
    _interrupt_at(monkeypatch, stop_at)
    with pytest.raises(KeyboardInterrupt):
        _train(out, *args)
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == stop_at
    code, captured = _train(out, "--resume", capsys=capsys)
    assert code == 0, captured.err
    a = load_checkpoint(toy_run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    strip = lambda r: {k: v for k, v in r.items() if k != "time"}
    assert [strip(r) for r in read_metrics(out / "metrics.jsonl", "val")] == [
        strip(r) for r in read_metrics(toy_run / "metrics.jsonl", "val")
    ]
    assert len(read_metrics(out / "metrics.jsonl", "resume")) == 1


def test_resume_of_a_run_stopped_while_writing_its_synthetic_set_starts_it_over(toy_run, tmp_path, monkeypatch, capsys):
    from dropgrad_tracking.data import synthetic

    original, calls = synthetic.atomic_write, []

    def stop_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill while the set is being written
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "atomic_write", stop_at_third)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _train(out, "--epochs", "2", "--steps-per-epoch", "3")
    monkeypatch.undo()
    assert not (out / "synthetic-data" / "synthetic.json").exists()
    with open(out / "log.txt", "a") as log:
        log.write("a line of the killed attempt\n")
    code, captured = _train(out, "--resume", capsys=capsys)
    assert code == 0, captured.err
    assert "killed attempt" not in (out / "log.txt").read_text()  # started over: its log too
    a = load_checkpoint(toy_run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


def test_dropgrad_none_is_recorded_and_changes_the_run(toy_run, tmp_path):
    out = tmp_path / "none"
    assert _train(out, "--epochs", "2", "--steps-per-epoch", "3", "--dropgrad", "none")[0] == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dropgrad"] == "none"
    a = load_checkpoint(toy_run / "checkpoints" / "last.pt")["model"]["model.3.weight"]
    b = load_checkpoint(out / "checkpoints" / "last.pt")["model"]["model.3.weight"]
    assert not torch.equal(a, b)  # same seed and tasks: only the noise differs


def test_config_file_and_options(tmp_path, capsys, monkeypatch):
    samplers = []  # (horizon, seed) of each TaskSampler the run builds: training's, then validation's
    original_init = tasks_module.TaskSampler.__init__

    def recording_init(self, definition, model, sequences, horizon, seed):
        samplers.append((horizon, seed))
        original_init(self, definition, model, sequences, horizon, seed)

    monkeypatch.setattr(tasks_module.TaskSampler, "__init__", recording_init)
    config = tmp_path / "opts.yaml"
    config.write_text("epochs: 1\nsteps_per_epoch: 2\ndropgrad: binary\ndropgrad_p: 0.1\nhorizon: 2\nseed: 7\n")
    code, captured = _train(tmp_path / "run", "--config", str(config), capsys=capsys)
    assert code == 0, captured.err
    # --horizon is the tasks' horizon (not the tracker's default 3); validation draws from its own stream.
    assert samplers == [(2, 7), (2, 7 + tasks_module.VAL_STREAM)]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["dropgrad"], saved["dropgrad_p"], saved["epochs"]) == ("binary", 0.1, 1)
    assert json.loads(captured.out.strip().splitlines()[-1])["dropgrad"] == "binary:0.1"
    assert "track-train: warning:" in captured.err and "RANDOMLY INITIALISED" in captured.err
    # Once on the terminal (stderr, not also the log echo on stdout), once in the run's log.
    assert (captured.out + captured.err).count("RANDOMLY INITIALISED") == 1
    assert (tmp_path / "run" / "log.txt").read_text().count("RANDOMLY INITIALISED") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tracker", "nope"], "--tracker 'nope' is not a meta-learned tracker; choose from"),
        (["--dropgrad-p", "1.0"], "--dropgrad-p must satisfy 0 <= --dropgrad-p < 1"),
        (["--source", "vid", "--root", "."], "--source vid needs --list-file"),
        (["--source", "otb"], "--source otb needs --root"),
        (["--source", "otb", "--root", "/nonexistent/otb"], "OTB2015 not found: --root /nonexistent/otb"),
        (["--source", "vot", "--root", "/nonexistent/vot"], "VOT root /nonexistent/vot is not a directory"),
        (["--annotations", "x.json"], "--annotations is for --source otb"),
        (["--val-sequences", "4"], "4 usable sequence(s), but --val-sequences 4 held out needs at least 5"),
        (["--backbone-weights", "/nonexistent/w.pt"], "--backbone-weights /nonexistent/w.pt: file not found"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--epochs", "1", "--dropgrad-schedule", "linear"], "--dropgrad-schedule linear needs --epochs >= 2"),
        (["--sequences", "Synthetic-99"], "no sequence named 'Synthetic-99'"),
        (["--source", "otb", "--root", "no-such-folder"], "track-train --source synthetic"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["--tracker", "toy", "--out", str(out), *SMALL, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert "track-train: error: " in err and message in err, err
    assert "Traceback" not in err
    if "--val-sequences" not in args and "--sequences" not in args:
        assert not out.exists()  # nothing is written before the options and data are checked


def test_a_corrected_rerun_starts_where_a_failed_start_left_its_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--tracker", "toy", "--out", str(out), *SMALL, "--val-sequences", "4"]) == 2
    assert (out / "config.json").is_file()  # the synthetic set is made inside the run directory first
    capsys.readouterr()
    code, captured = _train(out, "--epochs", "1", "--steps-per-epoch", "2", capsys=capsys)
    assert code == 0, captured.err
    assert json.loads((out / "config.json").read_text())["val_sequences"] == 1


def test_a_rerun_with_other_synthetic_options_replaces_the_failed_starts_set(tmp_path, capsys):
    out = tmp_path / "run"
    # The first start makes its 4-sequence set inside the run directory, then fails on --val-sequences.
    assert main(["--tracker", "toy", "--out", str(out), *SMALL, "--val-sequences", "4"]) == 2
    first = json.loads((out / "synthetic-data" / "synthetic.json").read_text())
    assert first["n_sequences"] == 4
    capsys.readouterr()
    code, captured = _train(out, "--synthetic-sequences", "3", "--epochs", "1", "--steps-per-epoch", "2", capsys=capsys)
    assert code == 0, captured.err
    assert json.loads((out / "synthetic-data" / "synthetic.json").read_text())["n_sequences"] == 3
    assert sorted(p.name for p in (out / "synthetic-data").iterdir() if p.is_dir()) == [
        "Synthetic-01", "Synthetic-02", "Synthetic-03"]


def test_taking_over_keeps_a_matching_set_and_never_touches_a_given_root(tmp_path, capsys):
    out = tmp_path / "run"
    assert discard_stale_synthetic(TrackTrainConfig(**SMALL_CFG), tmp_path) is False  # no set there: nothing to do
    assert main(["--tracker", "toy", "--out", str(out), *SMALL, "--val-sequences", "4"]) == 2
    frame = out / "synthetic-data" / "Synthetic-01" / "img" / "0001.jpg"
    marker = frame.stat().st_mtime_ns
    assert discard_stale_synthetic(TrackTrainConfig(**SMALL_CFG), out) is False  # the same set: kept
    assert frame.stat().st_mtime_ns == marker
    assert discard_stale_synthetic(TrackTrainConfig(**{**SMALL_CFG, "root": str(out / "synthetic-data"),
                                                        "synthetic_frames": 13}), out) is False
    assert frame.is_file()  # the user's own folder (--root) is never removed
    (out / "synthetic-data" / "synthetic.json").unlink()  # as if stopped while writing the set
    assert discard_stale_synthetic(TrackTrainConfig(**SMALL_CFG), out) is True
    assert not (out / "synthetic-data").exists()


def test_run_directory_errors(toy_run, tmp_path, capsys):
    code = main(["--tracker", "toy", "--out", str(toy_run), *SMALL])
    assert code == 2 and "already exists and is not empty; pass --resume" in capsys.readouterr().err
    code = main(["--out", str(tmp_path / "none"), "--resume"])
    assert code == 2 and "not found" in capsys.readouterr().err
    code = main(["--out", str(toy_run), "--resume", "--epochs", "5"])
    assert code == 2 and "differs from epochs=2" in capsys.readouterr().err
    code = main(["--out", str(toy_run), "--resume", "--config", "x.yaml"])
    assert code == 2 and "--config cannot be combined with --resume" in capsys.readouterr().err


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("--source", "--list-file", "--dropgrad {gaussian,binary,none}", "--dropgrad-p", "--val-sequences",
                   "--backbone-weights", "--resume", "--config", "--horizon", "--first-order"):
        assert option in out, option
    assert "--backbone-source" not in out
    # The --tracker line lists the registry (a registered tracker too), not a fixed pair.
    line = " ".join(out.split("\n  --tracker STR", 1)[1].split("\n  --source", 1)[0].split())
    from dropgrad_tracking.meta import available_meta_trackers

    assert {"metacrest", "metasdnet", "metasdnet-tiny"} <= set(available_meta_trackers())
    assert line == f"meta-learned tracker to train: {', '.join(available_meta_trackers())} (default: metasdnet)"


# ------------------------------------------------------------------ sources and tasks


def test_support_frames_need_a_visible_target_and_a_later_one():
    boxes = np.array([[0, 0, 5, 5], [0, 0, 0, 0], [np.nan] * 4, [1, 1, 5, 5], [1, 1, 5, 5], [0, 0, 5, -1.0],
                      [2, 2, 5, 0], [2, 2, 0, 5], [3, 3, 5, 5], [2, 2, 5, 0]])  # zero height / width: not visible
    seq = Sequence("s", [], boxes)
    # Naive reference: t visible and some k in 1..h with t + k < n visible.
    vis = [bool(np.isfinite(b).all() and b[2] > 0 and b[3] > 0) for b in boxes]
    for h in (1, 2, 3, 10):
        naive = [t for t in range(len(boxes)) if vis[t] and any(vis[t + k] for k in range(1, h + 1) if t + k < len(boxes))]
        assert support_frames(seq, h).tolist() == naive


def test_task_choice_is_a_pure_function_of_seed_and_step(tmp_path):
    cfg = TrackTrainConfig(tracker="toy", synthetic_sequences=4, synthetic_frames=12, synthetic_height=64, synthetic_width=96)
    seqs = load_sources(cfg, tmp_path)
    definition = meta_tracker("toy")
    model = definition.build_model(None)[0]
    a = TaskSampler(definition, model, seqs, 3, seed=5)
    b = TaskSampler(definition, model, seqs, 3, seed=5)
    assert a.choose(7, 6) == b.choose(7, 6) and a.choose(7, 6) != a.choose(8, 6) != TaskSampler(definition, model, seqs, 3, 6).choose(7, 6)
    picks = [p for step in range(50) for p in a.choose(step, 4)]
    assert {n for n, _ in picks} == set(seqs) and all(0 <= t < 12 - 1 for _, t in picks)
    t1, t2 = a.batch(3, 4), b.batch(3, 4)
    assert all(torch.equal(x, y) for x, y in zip(t1, t2))
    assert t1.support_x.shape == (4, 8, 3, 8, 8) and t1.query_y.shape == (4, 8)
    fixed = a.fixed(3)
    assert fixed == b.fixed(3) and len(fixed) == 12 and fixed[0] == ("Synthetic-01", 0)


def test_validation_tasks_do_not_depend_on_how_many_are_built_at_once(tmp_path):
    # Runs with another --tasks-per-batch (the validation chunk) must validate on the same tasks.
    from dropgrad_tracking.meta import build_learner
    from dropgrad_tracking.training.loop import evaluate_tasks

    cfg = TrackTrainConfig(tracker="toy", synthetic_sequences=3, synthetic_frames=12, synthetic_height=64, synthetic_width=96)
    seqs = load_sources(cfg, tmp_path)
    definition = meta_tracker("toy")
    learner, _ = build_learner(definition, None)
    sampler = TaskSampler(definition, learner.model, seqs, 3, seed=11)
    picks = sampler.fixed(3)
    scores = [evaluate_tasks(learner, sampler, picks, torch.device("cpu"), chunk=c) for c in (2, 3, len(picks))]
    assert scores[0] == pytest.approx(scores[1], rel=1e-6) and scores[0] == pytest.approx(scores[2], rel=1e-6)


def test_split_holds_out_the_last_sequences_and_names_unusable_ones():
    good = np.array([[0, 0, 5, 5.0]] * 4)
    seqs = {n: Sequence(n, [], good) for n in ("c", "a", "b")}
    seqs["d"] = Sequence("d", [], np.array([[0, 0, 5, 5], [0, 0, 0, 0.0]]))
    with pytest.warns(UserWarning, match="give no task: d"):
        split = split_sequences(seqs, 1, horizon=1)
    assert list(split.train) == ["a", "b"] and list(split.val) == ["c"]


def test_split_keeps_the_held_out_videos_out_of_training():
    # Meta-Tracker's vot-otb.txt lists vot2014/tunnel and vot2016/tunnel; VID gives several
    # snippets of one video. Validation on a video trained on would flatter the validation loss.
    good = np.array([[0, 0, 5, 5.0]] * 4)
    for names, shared, train in ((["vot2014/tunnel", "vot2015/bag", "vot2016/tunnel"], "vot2014/tunnel", ["vot2015/bag"]),
                                 (["vot2014/tunnel", "vot2015/bag", "vot2016/Tunnel"], "vot2014/tunnel", ["vot2015/bag"]),
                                 (["0001:vid_a", "0002:vid_b", "0003:vid_a"], "0001:vid_a", ["0002:vid_b"])):
        seqs = {n: Sequence(n, [], good) for n in names}
        with pytest.warns(UserWarning, match=rf"1 sequence\(s\) come from a video held out for validation .*: {shared}$"):
            split = split_sequences(seqs, 1, horizon=1)
        assert list(split.val) == [names[-1]] and list(split.train) == train
    with pytest.raises(ValueError, match="no sequence left to train on"), pytest.warns(UserWarning, match="Jogging-1"):
        split_sequences({n: Sequence(n, [], good) for n in ("Jogging-1", "Jogging-2")}, 1, horizon=1)
    # Only OTB's own multi-target videos share a key; any other "-N" name is a video of its own.
    split = split_sequences({n: Sequence(n, [], good) for n in ("car-1", "car-2")}, 1, horizon=1)
    assert list(split.train) == ["car-1"] and list(split.val) == ["car-2"]


def test_stack_tasks_refuses_shapes_that_differ():
    t = Task(torch.zeros(4, 2), torch.zeros(4), torch.zeros(6, 2), torch.zeros(6))
    u = Task(torch.zeros(4, 2), torch.zeros(4), torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="query_x of different shapes"):
        stack_tasks([t, u])


def test_otb_source_on_the_real_sample(otb_dir, tmp_path):
    cfg = TrackTrainConfig(tracker="toy", source="otb", root=str(otb_dir / "OTB2015-sample"))
    seqs = load_sources(cfg, tmp_path)
    assert list(seqs) == ["Couple", "Crossing", "Football1"] and len(seqs["Football1"]) == 74
    split = split_sequences(seqs, 1, horizon=10)
    assert list(split.val) == ["Football1"]
    task = TaskSampler(meta_tracker("toy"), meta_tracker("toy").build_model(None)[0], split.train, 10, 0).batch(0, 2)
    assert task.support_x.shape == (2, 8, 3, 8, 8)


def test_otb_json_source_checks_frames(otb_dir, tmp_path):
    cfg = TrackTrainConfig(tracker="toy", source="otb", annotations=str(otb_dir / "OTB100.json"),
                           root=str(otb_dir / "OTB2015-sample"), sequences="Couple,Crossing")
    assert list(load_sources(cfg, tmp_path)) == ["Couple", "Crossing"]
    cfg = TrackTrainConfig(tracker="toy", source="otb", annotations=str(otb_dir / "OTB100.json"), root=str(tmp_path))
    with pytest.raises(ValueError, match="frame file .* not found"):
        load_sources(cfg, tmp_path)


def _write_frames(folder: Path, n: int, names: str = "{:08d}.jpg", start: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / names.format(i + start)), np.full((40, 60, 3), 30 * i, np.uint8))


def test_vot_source_with_a_list_file(tmp_path):
    root = tmp_path / "vot"
    _write_frames(root / "vot2014" / "ball", 4)
    _write_frames(root / "vot2016" / "car" / "color", 4)
    (root / "vot2014" / "ball" / "groundtruth.txt").write_text("1,2,10,12\n" * 4)
    (root / "vot2016" / "car" / "groundtruth.txt").write_text("1,1,11,1,11,9,1,9\n" * 4)
    listing = tmp_path / "list.txt"
    listing.write_text("vot2016/car\nvot2014/ball\n")  # not in name order: load_sources sorts by name
    cfg = TrackTrainConfig(tracker="toy", source="vot", root=str(root), list_file=str(listing))
    seqs = load_sources(cfg, tmp_path)
    assert list(seqs) == ["vot2014/ball", "vot2016/car"]
    with pytest.raises(ValueError, match="--sequences and --list-file both choose VOT sequences"):
        load_sources(TrackTrainConfig(tracker="toy", source="vot", root=str(root), list_file=str(listing),
                                      sequences="vot2014/ball"), tmp_path)
    assert seqs["vot2016/car"].boxes[0].tolist() == [1, 1, 10, 8]
    listing.write_text("vot2014/ball\nvot2015/missing\n")
    with pytest.raises(ValueError, match="vot2015/missing: no groundtruth.txt"):
        load_sources(cfg, tmp_path)


def test_vid_source_with_meta_trackers_list(tmp_path):
    entries = [{"seq_name": "ILSVRC2015_train_00000000", "start_frame": 2, "end_frame": 4,
                "gt": [[1, 2, 10, 12]] * 3, "im_width": 60, "im_height": 40}]
    listing = tmp_path / "ilsvrc_train.json"
    listing.write_text(json.dumps(entries))
    root = tmp_path / "train"
    _write_frames(root / "ILSVRC2015_VID_train_0000" / "ILSVRC2015_train_00000000", 5, "{:06d}.JPEG", start=0)
    cfg = TrackTrainConfig(tracker="toy", source="vid", root=str(root), list_file=str(listing))
    seqs = load_sources(cfg, tmp_path)
    (name, seq), = seqs.items()
    assert name == "0000:ILSVRC2015_train_00000000" and [f.name for f in seq.frames] == ["000001.JPEG", "000002.JPEG", "000003.JPEG"]
    cfg = TrackTrainConfig(tracker="toy", source="vid", root=str(tmp_path / "empty"), list_file=str(listing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="ILSVRC2015_train_00000000: no folder"):
        load_sources(cfg, tmp_path)


def test_vid_source_reads_meta_trackers_real_list(shared_data, tmp_path):
    listing = shared_data / "otb" / "meta-tracker-lists" / "ilsvrc_train.json"
    if not listing.is_file():
        pytest.skip(f"{listing} not found")
    cfg = TrackTrainConfig(tracker="toy", source="vid", root=str(tmp_path), list_file=str(listing))
    with pytest.raises(ValueError, match="no folder .*Data/VID/train"):
        load_sources(cfg, tmp_path)  # the list is read; the frames are not here, and the error says where it looked


def test_a_synthetic_root_that_is_not_a_synthetic_set_is_refused_before_the_run_starts(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    code, _ = _train(tmp_path / "run", "--root", str(root), capsys=capsys)
    assert code == 2 and not (tmp_path / "run").exists()


def test_a_given_synthetic_root_is_shared_between_runs(tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("a", "b"):
        code, captured = _train(tmp_path / name, "--root", str(root), "--epochs", "1", "--steps-per-epoch", "1", capsys=capsys)
        assert code == 0, captured.err
    assert not (tmp_path / "a" / "synthetic-data").exists() and (root / "synthetic.json").is_file()
    code, captured = _train(tmp_path / "c", "--root", str(root), "--synthetic-frames", "13", capsys=capsys)
    assert code == 2 and "holds a synthetic set made with other settings" in captured.err


def test_relative_folders_are_stored_absolute_so_resume_and_config_work_from_anywhere(tmp_path, monkeypatch, capsys):
    from dropgrad import build_config

    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    original = TaskSampler.batch
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _train(out, "--root", "data", "--epochs", "2", "--steps-per-epoch", "1")
    monkeypatch.setattr(tasks_module.TaskSampler, "batch", original)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 1
    assert json.loads((out / "config.json").read_text())["root"] == str(work / "data")
    # --resume and --config from another working directory read the same set, not a new one there.
    monkeypatch.chdir(other)
    code, captured = _train(out, "--resume", capsys=capsys)
    assert code == 0, captured.err
    code, captured = _train(tmp_path / "again", "--config", str(out / "config.json"), capsys=capsys)
    assert code == 0, captured.err
    assert not (other / "data").exists() and list(other.iterdir()) == []
    assert json.loads((tmp_path / "again" / "config.json").read_text())["root"] == str(work / "data")
    # The other file options are made absolute alike.
    otb = build_config(TrackTrainConfig, {"source": "otb", "annotations": "a.json", "backbone_weights": "w.mat"}, {})
    vot = build_config(TrackTrainConfig, {"source": "vot", "root": "v", "list_file": "l.txt"}, {})
    assert (otb.annotations, otb.backbone_weights, vot.root, vot.list_file) == tuple(
        str(other / n) for n in ("a.json", "w.mat", "v", "l.txt"))


def test_sources_are_listed_once_and_a_source_without_a_loader_says_so(capsys):
    import typing

    from dropgrad_tracking.cli_train import build_parser
    from dropgrad_tracking.training import SOURCES
    from dropgrad_tracking.training import config as config_module

    assert SOURCES == typing.get_args(config_module.Source)
    choices = next(a.choices for a in build_parser()._actions if a.dest == "source")
    assert tuple(choices) == SOURCES
    # A name added to Source without its branch in load_sources: a programming error that names
    # the place to edit, not a user error saying the name is "not one of" the listed choices.
    cfg = TrackTrainConfig(tracker="toy", source="otb", root=".")
    cfg.source = "folder"
    with pytest.raises(NotImplementedError, match="load_sources .* has no branch"):
        load_sources(cfg, ".")


# ------------------------------------------------------------------ mutation round 5 (m5k)


def test_results_report_the_best_checkpoints_step_sizes_and_the_outer_lr_is_used(toy_run):
    results = json.loads((toy_run / "results.json").read_text())
    best = load_checkpoint(toy_run / "checkpoints" / "best.pt")
    best = best.get("model", best)
    alphas = torch.cat([v.flatten().double() for k, v in best.items() if k.startswith("lrs.")])
    assert results["step_size_mean"] == pytest.approx(float(alphas.mean()), rel=1e-6)
    assert results["step_size_abs_max"] == pytest.approx(float(alphas.abs().max()), rel=1e-6)
    last = load_checkpoint(toy_run / "checkpoints" / "last.pt")
    assert [g["lr"] for g in last["optimizer"]["param_groups"]] == [0.01]  # --outer-lr 0.01 of SMALL


def test_step_size_mean_is_signed(tmp_path, monkeypatch, toy):
    # Meta-SGD's step sizes may turn negative; results.json reports their signed mean and largest |alpha|.
    from dropgrad_tracking.training import loop

    original = loop.load_best_model

    def load_then_flip(out, learner, **kwargs):
        original(out, learner, **kwargs)
        with torch.no_grad():
            for a in learner.lrs.values():
                a.copy_(torch.linspace(-0.3, 0.1, a.numel()).reshape(a.shape))

    monkeypatch.setattr(loop, "load_best_model", load_then_flip)
    cfg = TrackTrainConfig(**SMALL_CFG, epochs=1, steps_per_epoch=1, val_sequences=1, val_tasks=1, tasks_per_batch=2,
                           progress=False)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        results = loop.train(cfg, tmp_path / "run")
    sizes = [torch.linspace(-0.3, 0.1, n) for n in (16 * 2, 2)]  # the toy's adapted head: 3.weight (2, 16), 3.bias
    alphas = torch.cat(sizes).double()
    assert results["step_size_mean"] == pytest.approx(float(alphas.mean()), rel=1e-6)
    assert results["step_size_abs_max"] == pytest.approx(0.3, rel=1e-6)


def test_make_dropgrad_keeps_the_schedule():
    from dropgrad_tracking.training.loop import make_dropgrad

    d = make_dropgrad(TrackTrainConfig(dropgrad="binary", dropgrad_p=0.3, dropgrad_schedule="linear", epochs=2))
    assert (d.kind, d.schedule) == ("binary", "linear")


def test_validation_scores_are_the_query_losses_after_one_alpha_step_and_of_theta(tmp_path):
    # Reference by hand in float64: one step theta - alpha * grad of the support loss on the adapted
    # parameters ("3.*"), DropGrad off; the query loss of the adapted and of the unadapted parameters.
    import copy

    import torch.nn.functional as F
    from dropgrad_tracking.meta import build_learner
    from dropgrad_tracking.training.loop import evaluate_tasks, make_dropgrad
    from torch.func import functional_call

    cfg = TrackTrainConfig(tracker="toy", synthetic_sequences=2, synthetic_frames=12, synthetic_height=64,
                           synthetic_width=96, dropgrad_p=0.5)
    seqs = load_sources(cfg, tmp_path)
    definition = meta_tracker("toy")
    torch.manual_seed(0)
    learner, _ = build_learner(definition, None, make_dropgrad(cfg))
    with torch.no_grad():
        for a in learner.lrs.values():
            a.uniform_(0.5, 2.0)  # per-element step sizes, far from the initial 0.1
    sampler = TaskSampler(definition, learner.model, seqs, 3, seed=4)
    picks = sampler.fixed(2)
    learner.eval()
    scores = evaluate_tasks(learner, sampler, picks, torch.device("cpu"), chunk=3)
    assert not learner.training  # the mode it was called in is restored

    model = copy.deepcopy(learner.model).double()
    theta = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    tasks = sampler.build(picks, step=0)
    adapted, unadapted = [], []
    for k in range(tasks.n_tasks):
        sx, qx = tasks.support_x[k].double(), tasks.query_x[k].double()
        support_loss = F.cross_entropy(functional_call(model, theta, (sx,)), tasks.support_y[k])
        names = ["3.weight", "3.bias"]
        grads = torch.autograd.grad(support_loss, [theta[n] for n in names])
        fast = dict(theta)
        for n, g in zip(names, grads):
            fast[n] = theta[n] - learner.lrs[n.replace(".", "__")].detach().double() * g
        adapted.append(F.cross_entropy(functional_call(model, fast, (qx,)), tasks.query_y[k]).item())
        unadapted.append(F.cross_entropy(functional_call(model, theta, (qx,)), tasks.query_y[k]).item())
    assert scores["val_loss"] == pytest.approx(np.mean(adapted), rel=1e-5)
    assert scores["val_loss_unadapted"] == pytest.approx(np.mean(unadapted), rel=1e-5)
    assert abs(np.mean(adapted) - np.mean(unadapted)) > 1e-3  # the step matters, so a swap would show


def test_resume_refuses_a_backbone_other_than_the_runs(tmp_path, toy):
    import dataclasses

    from dropgrad_tracking.training.loop import train

    weights = []
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        torch.manual_seed(seed)
        torch.save(torch.nn.Linear(3 * 8 * 8, 16).state_dict(), tmp_path / name)
        weights.append(str(tmp_path / name))
    cfg = TrackTrainConfig(**SMALL_CFG, epochs=1, steps_per_epoch=1, val_sequences=1, val_tasks=1, tasks_per_batch=2,
                           backbone_weights=weights[0], progress=False)
    out = tmp_path / "run"
    assert train(cfg, out)["backbone_source"] == "a.pt"
    other = dataclasses.replace(cfg, backbone_weights=weights[1], backbone_source="a.pt")  # as read back on --resume
    with pytest.raises(ValueError, match="says backbone_source='a.pt', but the backbone now builds from 'b.pt'"):
        train(other, out, resume=True)


def test_split_and_sampler_use_the_horizon_for_usable_frames():
    # Visible at 0, 2 and 3: with horizon 2, frame 0 (target again at 2) and 2 are support frames;
    # with horizon 1 only frame 2. A sequence usable only through the horizon is kept.
    gap = Sequence("gap", [], np.array([[0, 0, 5, 5], [0, 0, 0, 0], [1, 1, 5, 5], [1, 1, 5, 5.0]]))
    good = Sequence("good", [], np.array([[0, 0, 5, 5.0]] * 4))
    only_gap = Sequence("only", [], np.array([[0, 0, 5, 5], [0, 0, 0, 0], [1, 1, 5, 5.0]]))  # frame 0 alone
    split = split_sequences({"a-only": only_gap, "b-gap": gap, "c-good": good}, 1, horizon=2)
    assert list(split.train) == ["a-only", "b-gap"]
    definition = meta_tracker("toy")
    sampler = TaskSampler(definition, definition.build_model(None)[0], split.train, 2, seed=0)
    assert sampler.frames["a-only"].tolist() == [0] and sampler.frames["b-gap"].tolist() == [0, 2]
    picks = {p for step in range(40) for p in sampler.choose(step, 4)}
    assert picks == {("a-only", 0), ("b-gap", 0), ("b-gap", 2)}  # every usable frame, the last one too


def test_fixed_validation_frames_are_rounded_evenly_spaced():
    seq = Sequence("s", [], np.array([[0, 0, 5, 5.0]] * 12))  # support frames 0 .. 10
    definition = meta_tracker("toy")
    sampler = TaskSampler(definition, definition.build_model(None)[0], {"s": seq}, 3, seed=0)
    # linspace(0, 10, 4) = 0, 3.33, 6.67, 10 -> 0, 3, 7, 10
    assert sampler.fixed(4) == [("s", 0), ("s", 3), ("s", 7), ("s", 10)]
    # more tasks asked than usable frames: each frame once (no duplicated validation task)
    short = Sequence("t", [], np.array([[0, 0, 5, 5.0]] * 4))  # support frames 0, 1, 2
    sampler = TaskSampler(definition, definition.build_model(None)[0], {"t": short}, 3, seed=0)
    assert sampler.fixed(5) == [("t", 0), ("t", 1), ("t", 2)]


def test_sampler_refuses_a_sequence_without_a_support_frame():
    definition = meta_tracker("toy")
    seqs = {"ok": Sequence("ok", [], np.array([[0, 0, 5, 5.0]] * 3)),
            "dark": Sequence("dark", [], np.array([[0, 0, 5, 5], [0, 0, 0, 0], [0, 0, 0, 0.0]]))}
    with pytest.raises(ValueError, match="sequence\\(s\\) dark have no usable support frame for horizon 1"):
        TaskSampler(definition, definition.build_model(None)[0], seqs, 1, seed=0)


def test_batch_k_is_built_with_rng_seed_k_i_and_frozen_features_carry_no_graph(tmp_path):
    from types import SimpleNamespace

    cfg = TrackTrainConfig(tracker="toy", synthetic_sequences=2, synthetic_frames=12, synthetic_height=64, synthetic_width=96)
    seqs = load_sources(cfg, tmp_path)
    toy_def = meta_tracker("toy")
    model = toy_def.build_model(None)[0]
    modes = []

    def sample_task(model, sequence, t, horizon, rng):
        # Like a tracker that computes frozen features with the model in eval mode.
        task = toy_def.sample_task(model, sequence, t, horizon, rng)
        model.eval()
        modes.append(torch.is_grad_enabled())
        return Task(model[1](task.support_x.flatten(1)), task.support_y, model[1](task.query_x.flatten(1)), task.query_y)

    definition = SimpleNamespace(sample_task=sample_task)
    sampler = TaskSampler(definition, model, seqs, 3, seed=5)
    model.train()
    batch = sampler.batch(6, 3)
    assert model.training and modes == [False] * 3  # the model's mode is restored; features built without grad
    assert not batch.support_x.requires_grad and batch.support_x.grad_fn is None
    # The documented contract: task i of batch k from sample_task with rng [seed, k, i + 1].
    for i, (name, t) in enumerate(sampler.choose(6, 3)):
        ref = sample_task(model, seqs[name], t, 3, np.random.default_rng([5, 6, i + 1]))
        torch.testing.assert_close(batch.query_x[i], ref.query_x.detach())


@pytest.mark.gpu
@pytest.mark.parametrize("tracker", ["metasdnet", "metasdnet-tiny", "metacrest"])
def test_tasks_of_a_gpu_model_are_built_on_the_gpu_and_train(tracker, tmp_path):
    from dropgrad_tracking.meta import build_learner

    definition = meta_tracker(tracker)
    cfg = TrackTrainConfig(tracker=tracker, synthetic_sequences=2, synthetic_frames=12, synthetic_height=96,
                           synthetic_width=128)
    seqs = load_sources(cfg, tmp_path)
    learner, _ = build_learner(definition, None)
    learner.to("cuda")
    tasks = TaskSampler(definition, learner.model, seqs, 3, seed=0).batch(0, 2)
    assert all(x.is_cuda for x in tasks)
    out = learner.meta_backward(tasks, batched=False)
    assert torch.isfinite(out.loss) and all(p.grad is None or p.grad.is_cuda for p in learner.parameters())
