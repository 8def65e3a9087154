"""Bad list and cache files: one DataError naming the file and line, never a silent duplicate."""

import json

import numpy as np
import pytest
from dropgrad_fewshot.data import DataError, build_cache, build_dataset, open_cache
from dropgrad_fewshot.data.cache import _labels_checksum
from PIL import Image


def _mini_csv(root, rows_per_class=3):
    (root / "images").mkdir(parents=True)
    for split, first in (("train", 0), ("val", 5), ("test", 10)):
        lines = ["filename,label"]
        for c in range(first, first + 5):
            for k in range(rows_per_class):
                name = f"n{c:08d}{k:08d}.jpg"
                Image.new("RGB", (10, 8), (c * 10, k * 40, 90)).save(root / "images" / name)
                lines.append(f"{name},n{c:08d}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_duplicate_row_is_refused(tmp_path):
    root = _mini_csv(tmp_path / "mini")
    csv = root / "train.csv"
    csv.write_text(csv.read_text() + csv.read_text().splitlines()[1] + "\n")
    with pytest.raises(DataError, match=r"train\.csv line 17 lists .* again \(already listed at .*train\.csv line 2\)"):
        build_dataset("miniimagenet", "train", data_root=root, check_sizes=False)


def test_csv_not_utf8_names_the_file(tmp_path):
    root = _mini_csv(tmp_path / "mini")
    with open(root / "train.csv", "ab") as f:
        f.write(b"caf\xe9.jpg,n00000000\n")
    with pytest.raises(DataError, match=r"train\.csv: byte \d+ is not UTF-8"):
        build_dataset("miniimagenet", "train", data_root=root, check_sizes=False)


def test_closerlook_duplicate_label_name_is_refused(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(
        {"label_names": ["n1", "n1"], "image_names": ["/x/n1/a.jpg", "/x/n1/b.jpg"], "image_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"base\.json: label_names lists 'n1' twice"):
        build_dataset("miniimagenet", "train", data_root=tmp_path, filelist_dir=tmp_path, check_sizes=False)


def _cub(root):
    cub = root / "CUB_200_2011"
    (cub / "images" / "001.A").mkdir(parents=True)
    Image.new("RGB", (10, 8)).save(cub / "images" / "001.A" / "a.jpg")
    (cub / "classes.txt").write_text("1 001.A\n")
    (cub / "images.txt").write_text("1 001.A/a.jpg\n")
    (cub / "image_class_labels.txt").write_text("1 1\n")
    return cub


@pytest.mark.parametrize("name", ["images.txt", "classes.txt", "image_class_labels.txt"])
def test_cub_repeated_id_is_refused(tmp_path, name):
    cub = _cub(tmp_path)
    path = cub / name
    path.write_text(path.read_text() * 2)
    with pytest.raises(DataError, match=rf"{name} line 2: id 1 again \(already on line 1\)"):
        build_dataset("cub", "train", data_root=cub, check_sizes=False)


def test_cub_not_utf8_names_the_file(tmp_path):
    cub = _cub(tmp_path)
    (cub / "images.txt").write_bytes(b"1 001.A/caf\xe9.jpg\n")
    with pytest.raises(DataError, match=r"images\.txt: byte \d+ is not UTF-8"):
        build_dataset("cub", "train", data_root=cub, check_sizes=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(pixels={}), "pixels {} is not a pixel format"),
        (lambda m: m["pixels"].update(mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0]), r"pixels\.mean has 3 values for 1 channel"),
        (lambda m: m.update(class_sources=m["class_sources"] + ["extra"]), "class_sources must list one entry per class"),
        (lambda m: m.update(class_names=7), "class_names must be a list"),
        (lambda m: m.update(source="x"), "source must be an object"),
        (lambda m: m.update(labels=["a"] * len(m["labels"])), "labels must be a list of class indices"),
        # Edits that keep the checksum consistent (the checks after it still hold).
        (lambda m: m.update(labels=[2] * len(m["labels"]), checksum=_labels_checksum(np.full(len(m["labels"]), 2), m["shape"])),
         r"labels outside 0\.\.1"),
        (lambda m: m.update(image_size=32), "shape .* does not match image_size 32"),
    ],
)
def test_cache_sidecar_fields_are_checked(tmp_path, edit, message):
    path = build_cache("glyphs", "val", None, 28, tmp_path, n_classes=2, images_per_class=2)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"sidecar .*glyphs-val-28\.json: {message}"):
        open_cache(tmp_path, "glyphs", "val", 28, options={"n_classes": 2, "images_per_class": 2})


def test_cache_sidecar_intact_still_opens(tmp_path):
    build_cache("glyphs", "val", None, 28, tmp_path, n_classes=2, images_per_class=2)
    ds = open_cache(tmp_path, "glyphs", "val", 28, options={"n_classes": 2, "images_per_class": 2})
    assert ds.n_classes == 2 and np.isfinite(ds.load(0).numpy()).all()


def test_a_cache_renamed_to_another_split_is_refused(tmp_path):
    # glyphs-val-28.* copied to glyphs-test-28.*: testing on it would score validation classes.
    src = build_cache("glyphs", "val", None, 28, tmp_path, n_classes=2, images_per_class=2)
    for suffix in (".u8", ".json"):
        (tmp_path / f"glyphs-test-28{suffix}").write_bytes(src.with_suffix(suffix).read_bytes())
    with pytest.raises(DataError, match=r"glyphs-test-28\.u8 holds glyphs val, expected glyphs test"):
        open_cache(tmp_path, "glyphs", "test", 28, options={"n_classes": 2, "images_per_class": 2})


def test_a_run_folder_of_another_app_is_one_line(tmp_path, capsys):
    # A track-train run's config.json (its keys, as that app writes them): fewshot-train --resume,
    # --config and fewshot-test say in one line that it is another app's run.
    from dropgrad_fewshot import cli

    run = tmp_path / "track-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "tracker": "metasdnet", "horizon": 3, "source": "synthetic", "root": None, "dropgrad": "gaussian",
        "dropgrad_p": 0.2, "synthetic_frames": 60, "tasks_per_batch": 8, "seed": 0, "device": "auto"}))
    for main, argv in ((cli.train_main, ["--out", str(run), "--resume"]),
                       (cli.train_main, ["--out", str(tmp_path / "new"), "--config", str(run / "config.json")]),
                       (cli.test_main, [str(run)])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        assert f"error: {run} is another app's run folder, not a fewshot-train run" in err
        assert "expected a fewshot-train run folder" in err
    assert not (tmp_path / "new").exists()
    # Written since config.json names its app: the message names it too, and its commands.
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "app": "track-train"}))
    for main, argv in ((cli.train_main, ["--out", str(run), "--resume"]), (cli.test_main, [str(run)])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        assert (f"error: {run} is a run folder of dropgrad-tracking (track-train), not a fewshot-train run; "
                "open it with track-train --resume or track-eval --checkpoint; expected a fewshot-train run folder") in err


def _missing_image_errors(tmp_path, shared_data):
    """The missing-image error of every loader that checks its files up front, by data set."""
    mini = _mini_csv(tmp_path / "mini")
    next((mini / "images").iterdir()).unlink()
    ilsvrc, lists = tmp_path / "ilsvrc", tmp_path / "lists"
    lists.mkdir()
    (ilsvrc / "train" / "n01").mkdir(parents=True)
    Image.new("RGB", (10, 8)).save(ilsvrc / "train" / "n01" / "a.JPEG")
    for name in ("base.json", "val.json", "novel.json"):
        (lists / name).write_text(json.dumps({
            "label_names": ["n01", "n02"], "image_labels": [0, 1],
            "image_names": ["/home/u/ILSVRC2015/train/n01/a.JPEG", "/home/u/ILSVRC2015/train/n02/b.JPEG"]}))
    cases = [
        ("cub", dict(data_root=shared_data / "cub" / "CUB_200_2011")),  # the sample lacks most images
        ("miniimagenet", dict(data_root=mini, check_sizes=False)),  # csv layout
        ("miniimagenet", dict(data_root=ilsvrc, filelist_dir=lists, check_sizes=False)),  # closerlook layout
    ]
    for dataset, kwargs in cases:
        with pytest.raises(DataError, match="which does not exist") as err:
            build_dataset(dataset, "train", **kwargs)
        yield dataset, kwargs, str(err.value)


def test_a_missing_image_error_suggests_only_options_and_flags_that_work(tmp_path, shared_data):
    """Every KEY=VALUE the error suggests is accepted by that data set's loader (and following it
    gets past the check), and every flag it names is the named command's own."""
    import re
    from pathlib import Path

    import dropgrad_fewshot.data as data_package
    from dropgrad_fewshot.cache_cli import cache_parser
    from dropgrad_fewshot.cli import train_parser
    from dropgrad_fewshot.data.build import parse_data_option

    # Every loader that checks its files is covered below.
    sources = Path(data_package.__file__).parent.glob("*.py")
    assert sum(p.read_text().count(".check_files(") for p in sources) == 3
    flags = {"fewshot-train": train_parser(), "fewshot-cache": cache_parser()}
    seen = []
    for dataset, kwargs, msg in _missing_image_errors(tmp_path, shared_data):
        for command, flag in re.findall(r"(fewshot-[a-z]+) (--[a-z-]+)", msg):
            assert flag in flags[command]._option_string_actions, (command, flag, msg)
        for text in re.findall(r"\b([a-z_]+=[a-z0-9_]+)\b", msg):
            key, value = parse_data_option(dataset, text)  # a DataError for a key the loader lacks
            build_dataset(dataset, "train", **{**kwargs, key: value})
            seen.append((dataset, text))
        if dataset == "miniimagenet":
            assert "check_files" not in msg and "--data-options" not in msg, msg
    assert seen == [("cub", "check_files=false")]
