# Postponed annotations on purpose: the module must resolve them with get_type_hints.
from __future__ import annotations

import argparse
import dataclasses
import doctest
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import dropgrad
import dropgrad.config
from dropgrad.config import (
    ConfigError,
    ConfigFileValues,
    add_dataclass_arguments,
    build_config,
    config_to_dict,
    load_config_file,
    namespace_values,
    save_config,
)


def _h(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class Cfg:
    lr: float = _h("outer learning rate", default=1e-3)
    n_way: int = _h("classes per episode", default=5)
    method: Literal["maml", "metasgd", "mamlpp"] = _h("meta-learner", default="maml")
    noise: Literal["none", "binary", "gaussian"] = _h("DropGrad noise", default="gaussian")
    first_order: bool = _h("first-order MAML", default=False)
    augment: bool = _h("data augmentation", default=True)
    max_epochs: int | None = _h("stop after this many epochs", default=None)
    p: float | None = _h("drop rate in %", default=0.1)
    name: str | None = _h("run name", default=None)
    milestones: tuple[int, ...] = _h("epochs where the lr decays", default=(10, 20))
    groups: list[str] = _h("parameter groups", default_factory=lambda: ["conv", "block1"])
    image_size: tuple[int, int] = _h("height,width", default=(84, 84))
    data_root: Path = _h("data directory", default=Path("data"))
    kind: Literal["none", "binary"] | None = _h("optional literal", default=None)


@dataclass
class Required:
    dataset: str = _h("data set name")
    seed: int = _h("seed", default=0)


@dataclass
class Undocumented:
    lr: float = _h("documented", default=0.1)
    steps: int = 5


@dataclass
class Unsupported:
    table: dict[str, int] = _h("a mapping", default_factory=dict)


def _parse(argv, cls=Cfg, **kw):
    parser = argparse.ArgumentParser(prog="train")
    add_dataclass_arguments(parser, cls, **kw)
    return namespace_values(parser.parse_args(argv), cls)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_help_lists_every_field_with_help_and_default(capsys):
    parser = argparse.ArgumentParser(prog="train")
    add_dataclass_arguments(parser, Cfg)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(Cfg):
        assert "--" + f.name.replace("_", "-") in text
        assert f.metadata["help"] in text
    assert "--first-order, --no-first-order" in text
    assert "(default: 0.001)" in text and "(default: 10,20)" in text
    assert "(default: none)" in text and "(default: conv,block1)" in text
    assert "drop rate in % (default: 0.1)" in text


def test_missing_help_and_unsupported_type_are_type_errors():
    with pytest.raises(TypeError, match=r"Undocumented\.steps has no metadata\['help'\]"):
        add_dataclass_arguments(argparse.ArgumentParser(), Undocumented)
    # Excluded fields need no help.
    add_dataclass_arguments(argparse.ArgumentParser(), Undocumented, exclude=["steps"])
    with pytest.raises(TypeError, match=r"Unsupported\.table.*not supported"):
        add_dataclass_arguments(argparse.ArgumentParser(), Unsupported)
    with pytest.raises(ValueError, match="not fields of Cfg"):
        add_dataclass_arguments(argparse.ArgumentParser(), Cfg, exclude=["nope"])
    with pytest.raises(TypeError, match="dataclass"):
        add_dataclass_arguments(argparse.ArgumentParser(), int)


def test_only_given_options_are_returned():
    assert _parse([]) == {}
    assert build_config(Cfg, None, _parse([])) == Cfg()
    assert _parse(["--lr", "0.5", "--n-way", "20"]) == {"lr": 0.5, "n_way": 20}


def test_bool_flags_and_literal_choices(capsys):
    assert _parse(["--first-order", "--no-augment"]) == {"first_order": True, "augment": False}
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Cfg)
    method = next(a for a in parser._actions if a.dest == "method")
    assert method.choices == ["maml", "metasgd", "mamlpp"]
    assert _parse(["--method", "metasgd"]) == {"method": "metasgd"}
    with pytest.raises(SystemExit):
        _parse(["--method", "reptile"])
    assert "--method" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--n-way", "five"])
    assert "expected an integer, got 'five'" in capsys.readouterr().err


def test_none_and_comma_parsing(capsys):
    assert _parse(["--max-epochs", "none"]) == {"max_epochs": None}
    assert _parse(["--max-epochs", "7", "--p", "None", "--name", "none"]) == {
        "max_epochs": 7,
        "p": None,
        "name": None,
    }
    # A Literal choice spelt "none" is the choice, not None.
    assert _parse(["--noise", "none", "--kind", "none"]) == {"noise": "none", "kind": "none"}
    assert _parse(["--milestones", "5, 15,25"]) == {"milestones": (5, 15, 25)}
    assert _parse(["--milestones", ""]) == {"milestones": ()}
    assert _parse(["--groups", "block3,fc"]) == {"groups": ["block3", "fc"]}
    assert _parse(["--image-size", "32,48"]) == {"image_size": (32, 48)}
    assert _parse(["--data-root", "x/y"]) == {"data_root": Path("x/y")}
    with pytest.raises(SystemExit):
        _parse(["--image-size", "1,2,3"])
    assert "expected 2 comma-separated values" in capsys.readouterr().err
    cfg = build_config(Cfg, None, _parse(["--milestones", "3", "--groups", "a"]))
    assert cfg.milestones == (3,) and cfg.groups == ["a"]


def test_precedence_defaults_file_cli(tmp_path):
    p = _write(tmp_path, "run.yaml", "lr: 0.01\nn_way: 10\nmilestones: [1, 2]\n")
    cfg = build_config(Cfg, load_config_file(p), _parse(["--n-way", "20"]))
    assert cfg.lr == 0.01  # file over default
    assert cfg.n_way == 20  # command line over file
    assert cfg.milestones == (1, 2)
    assert cfg.method == "maml"  # default


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    p = _write(tmp_path, "run.json", json.dumps({"lr": 0.1, "n-way": 5, "zzz": 1}))
    with pytest.raises(ConfigError) as err:
        build_config(Cfg, load_config_file(p), {})
    msg = str(err.value)
    assert str(p) in msg and "'n-way'" in msg and "'zzz'" in msg
    assert "did you mean 'n_way'?" in msg
    assert "valid keys for Cfg: augment, data_root" in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match="config file 'mine.yaml': unknown key 'x'"):
        build_config(Cfg, {"x": 1}, {}, source="mine.yaml")
    with pytest.raises(ConfigError, match="namespace_values"):
        build_config(Cfg, None, {"config": "run.yaml"})


@pytest.mark.parametrize(
    "values, match",
    [
        ({"first_order": "true"}, r"key 'first_order': expected a boolean.*'true' \(str\)"),
        ({"first_order": 1}, "expected a boolean"),
        ({"n_way": 5.0}, "expected an integer"),
        ({"n_way": True}, "expected an integer"),
        ({"lr": "0.1"}, "expected a number"),
        ({"lr": None}, "got null"),
        ({"method": "reptile"}, "one of 'maml', 'metasgd', 'mamlpp'"),
        ({"milestones": "1,2"}, "expected a list"),
        ({"milestones": [1, "2"]}, r"milestones'\[1\]: expected an integer"),
        ({"image_size": [1, 2, 3]}, "expected a list of 2 items"),
        ({"name": False}, "quote it in YAML"),
    ],
)
def test_type_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        build_config(Cfg, ConfigFileValues(values, source="c.yaml"), {})


def test_coercions():
    cfg = build_config(
        Cfg, {"lr": 1, "p": None, "data_root": "a/b", "groups": ("x",), "image_size": [3, 4]}, {}
    )
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.p is None and cfg.data_root == Path("a/b")
    assert cfg.groups == ["x"] and cfg.image_size == (3, 4)


def test_required_field():
    with pytest.raises(ConfigError, match=r"no value for --dataset \(config key 'dataset'\)"):
        build_config(Required, None, {})
    assert build_config(Required, {"dataset": "cub"}, {}) == Required("cub", 0)
    assert "(required)" in _help(Required)


def _help(cls) -> str:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    return parser.format_help()


def test_round_trip_save_load_build(tmp_path):
    cfg = Cfg(
        lr=0.25,
        method="mamlpp",
        first_order=True,
        max_epochs=3,
        p=None,
        milestones=(),
        groups=["block4"],
        image_size=(32, 32),
        data_root=Path("some/dir"),
        kind="binary",
    )
    path = save_config(tmp_path / "run" / "config.json", cfg)
    assert path == tmp_path / "run" / "config.json"
    assert os.listdir(path.parent) == ["config.json"]  # no temporary file left behind
    text = path.read_text()
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    assert build_config(Cfg, load_config_file(path), {}) == cfg
    assert json.loads(text) == config_to_dict(cfg)
    assert config_to_dict(cfg)["data_root"] == "some/dir"


def test_save_is_atomic_on_failure(tmp_path):
    path = save_config(tmp_path / "config.json", Cfg())
    before = path.read_text()
    with pytest.raises(TypeError, match="cannot store"):
        save_config(path, {"x": object()})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["config.json"]


def test_yaml_and_json_equivalent(tmp_path):
    y = _write(
        tmp_path,
        "a.yml",
        "# comment\nlr: 1e-3\nmilestones:\n  - 4\n  - 8\nfirst_order: true\nname: null\n",
    )
    j = _write(tmp_path, "a.json", '{"lr": 0.001, "milestones": [4, 8], "first_order": true,'
               ' "name": null}')
    vy, vj = load_config_file(y), load_config_file(j)
    assert vy == vj and vy.source == str(y)
    assert build_config(Cfg, vy, {}) == build_config(Cfg, vj, {})
    assert load_config_file(_write(tmp_path, "b.YAML", "lr: -2.5E+2\n")) == {"lr": -250.0}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.yaml", "lr: 0.1\nsteps: [1, 2\n", r"bad\.yaml', line 3.*invalid YAML"),
        ("bad.json", '{\n  "lr": 0.1,\n  "x": }', r"bad\.json', line 3 column 8: invalid JSON"),
        ("dup.yaml", "lr: 0.1\nn_way: 5\nlr: 0.2\n", r"line 3.*duplicate key 'lr'.*line 1"),
        ("dup.json", '{"lr": 0.1, "lr": 0.2}', "key 'lr' appears more than once"),
        ("list.yaml", "- 1\n- 2\n", "top level is a list; expected a mapping"),
        ("empty.yaml", "# nothing\n", "is empty"),
        ("keys.yaml", "1: a\n", "key 1 is not a string"),
        ("run.toml", "lr = 1", r"unsupported extension '\.toml'"),
    ],
)
def test_load_errors_name_the_file(tmp_path, name, text, match):
    p = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config_file(p)
    assert str(p) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' does not exist"):
        load_config_file(tmp_path / "nope.yaml")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config_file(tmp_path / "dir.json")


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "base: &b {lr: 0.1, n_way: 5}\nrun:\n  <<: *b\n  lr: 0.2\n"
    assert load_config_file(_write(tmp_path, "m.yaml", text))["run"] == {"lr": 0.2, "n_way": 5}


def test_docstring_examples():
    result = doctest.testmod(dropgrad.config, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@dataclass
class WithPaths:
    root: str | None = field(default=None, metadata={"help": "data folder", "path": True})
    out: Path = field(default=Path("runs"), metadata={"help": "run folder", "path": True})
    name: str = field(default="a/b", metadata={"help": "not a path"})


def test_path_fields_are_made_absolute_from_file_and_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = build_config(WithPaths, {"root": "data/mini"}, {"name": "x/y"})
    assert cfg.root == str(tmp_path / "data" / "mini") and isinstance(cfg.root, str)
    assert cfg.name == "x/y"  # only fields marked as paths
    assert cfg.out == Path("runs")  # defaults stay as written: resolving them is the app's choice
    cfg = build_config(WithPaths, None, {"root": "~/d", "out": Path("r")})
    assert cfg.root == os.path.join(os.path.expanduser("~"), "d") and cfg.out == tmp_path / "r"
    assert build_config(WithPaths, None, {}).root is None


def test_resume_compares_folders_as_stored_and_refuses_other_options(tmp_path, monkeypatch):
    from dropgrad.rundir import resume_run, run_config, start_run

    @dataclass
    class Opt:
        root: str | None = field(default=None, metadata={"help": "data folder", "path": True})
        lr: float = field(default=0.1, metadata={"help": "step size"})
        device: str = field(default="auto", metadata={"help": "device"})

    monkeypatch.chdir(tmp_path)
    run = start_run(tmp_path / "run", run_config(Opt, "unused", {"root": "data"}))
    # The same folder spelled relative to the working directory; an option given again, equal.
    assert run_config(Opt, run, {"root": "data", "device": "cpu"}, resume=True) == Opt(str(tmp_path / "data"), 0.1, "cpu")
    assert resume_run(run, Opt, {"lr": 0.1}).lr == 0.1
    with pytest.raises(ConfigError, match=r"--resume: option root=.*other.* differs from root=.*data"):
        resume_run(run, Opt, {"root": "other"})
    with pytest.raises(ConfigError, match="option lr=0.5 differs"):
        resume_run(run, Opt, {"lr": 0.5})


def test_a_new_run_may_reuse_only_a_directory_without_progress(tmp_path):
    from dropgrad.rundir import start_run

    @dataclass
    class Opt:
        lr: float = field(default=0.1, metadata={"help": "step size"})

    run = start_run(tmp_path / "run", Opt(0.5))
    (run / "log.txt").write_text("the failed attempt's lines\n")
    (run / "metrics.jsonl").write_text('{"kind": "train"}\n')
    # A start that stopped before its first checkpoint (e.g. on a bad data folder): a corrected
    # rerun takes the directory over, without the attempt's log and metrics.
    assert start_run(run, Opt(0.2)) == run
    assert json.loads((run / "config.json").read_text()) == {"lr": 0.2}
    assert not (run / "log.txt").exists() and not (run / "metrics.jsonl").exists()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="already exists and is not empty; pass --resume"):
        start_run(run, Opt(0.3))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        start_run(other, Opt(0.3))  # not a run directory: never touched
    assert (other / "todo.txt").read_text() == "mine"


@dataclass
class Optionals:
    rotations: bool | None = _h("optional switch", default=None)
    test_dataset: Literal["glyphs", "cub"] | None = _h("optional choice without a 'none'", default=None)
    device: str = _h("a plain string", default="auto")
    steps: int = _h("an integer", default=1)
    order: Literal[1, 2] = _h("an integer choice", default=1)


def test_optional_bool_and_optional_literal_take_none_on_the_command_line(capsys):
    # fewshot-train's --rotations (bool | None) and --test-dataset (Literal[...] | None).
    assert _parse(["--rotations", "none", "--test-dataset", "none"], Optionals) == {"rotations": None, "test_dataset": None}
    assert _parse(["--rotations", "false", "--test-dataset", "cub"], Optionals) == {"rotations": False, "test_dataset": "cub"}
    with pytest.raises(SystemExit):
        _parse(["--test-dataset", "omniglot"], Optionals)
    assert "invalid choice 'omniglot'" in capsys.readouterr().err
    # "none" is None only where the type allows it: a plain string keeps the word, an int refuses it.
    assert _parse(["--device", "none", "--order", "2"], Optionals) == {"device": "none", "order": 2}
    with pytest.raises(SystemExit):
        _parse(["--steps", "none"], Optionals)
    assert "expected an integer, got 'none'" in capsys.readouterr().err


def test_a_boolean_is_not_a_number_nor_an_integer_choice():
    # YAML's yes/no/true are booleans: never silently 1.0 (e.g. "p: yes" as a drop rate of 1).
    with pytest.raises(ConfigError, match=r"key 'lr': expected a number, got True \(bool\)"):
        build_config(Cfg, ConfigFileValues({"lr": True}, source="c.yaml"), {})
    with pytest.raises(ConfigError, match=r"key 'order': expected one of 1, 2, got True \(bool\)"):
        build_config(Optionals, {"order": True}, {})
    assert build_config(Optionals, {"order": 2}, {}).order == 2

    @dataclass
    class BoolChoice:
        flag: Literal[True, False] = _h("a Literal of booleans", default=True)

    with pytest.raises(TypeError, match="not supported"):
        build_config(BoolChoice, None, {})


def test_numpy_and_torch_scalars_are_saved_as_json_numbers(tmp_path):
    import numpy as np
    import torch

    path = save_config(tmp_path / "c.json", {"a": np.int64(3), "b": np.float32(0.5), "c": torch.tensor(2), "d": [np.bool_(True)]})
    assert json.loads(path.read_text()) == {"a": 3, "b": 0.5, "c": 2, "d": [True]}


def test_a_list_option_given_twice_is_refused_not_overwritten(capsys):
    # argparse keeps the last value: the first --groups would be dropped without a word.
    with pytest.raises(SystemExit) as exc:
        _parse(["--groups", "conv", "--groups", "fc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--groups is given twice; give all its values once, comma-separated" in err
    assert _parse(["--groups", "conv,fc", "--milestones", "1,2", "--n-way", "3", "--n-way", "4"]) == {
        "groups": ["conv", "fc"], "milestones": (1, 2), "n_way": 4}


def test_a_run_folder_of_another_app_is_one_line_naming_the_folder(tmp_path):
    # Another app's config.json: most keys unknown. One line saying so, not a list of guesses.
    run = tmp_path / "track-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"tracker": "metasdnet", "horizon": 3, "source": "synthetic",
                                                 "dropgrad_p": 0.2, "lr": 0.1}))
    for call in (lambda: build_config(Cfg, load_config_file(run / "config.json"), {}, app="my-train"),
                 lambda: dropgrad.run_config(Cfg, run, {}, resume=True, app="my-train")):
        with pytest.raises(ConfigError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(f"{run} is another app's run folder, not a my-train run: 4 of the 5 keys")
        assert "expected a my-train run folder" in msg and "\n" not in msg and "did you mean" not in msg
    # A config.json of this app with a stray key keeps the key-by-key message.
    (run / "config.json").write_text(json.dumps({"lr": 0.1, "n_way": 5, "zzz": 1}))
    with pytest.raises(ConfigError, match="unknown key 'zzz'"):
        dropgrad.run_config(Cfg, run, {}, resume=True, app="my-train")


def test_another_apps_run_needs_more_than_half_its_keys_unknown_and_a_config_json(tmp_path):
    # Exactly half unknown (1 of 2) is still this app's config with a stray key; a --config file of
    # another name with most keys mistyped is the user's own file: both keep the key-by-key message.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"lr": 0.1, "nway": 5}))
    with pytest.raises(ConfigError, match=r"unknown key 'nway' \(did you mean 'n_way'\?\)"):
        build_config(Cfg, load_config_file(run / "config.json"), {}, app="my-train")
    (run / "config.json").write_text(json.dumps({"lr": 0.1, "nway": 5, "firstorder": True}))
    with pytest.raises(ConfigError, match="is another app's run folder, not a my-train run: 2 of the 3 keys"):
        build_config(Cfg, load_config_file(run / "config.json"), {}, app="my-train")
    mine = tmp_path / "my.json"
    mine.write_text(json.dumps({"lr": 0.1, "nway": 5, "firstorder": True}))
    with pytest.raises(ConfigError, match=r"unknown keys 'nway' \(did you mean 'n_way'\?\), 'firstorder'"):
        build_config(Cfg, load_config_file(mine), {}, app="my-train")


def test_a_run_records_its_app_and_reloads_as_its_own(tmp_path):
    # start_run(app=) marks config.json; the app's own --resume and --config then read it as before.
    run = dropgrad.start_run(tmp_path / "run", Cfg(lr=0.5), app="fewshot-train")
    saved = json.loads((run / "config.json").read_text())
    assert saved["app"] == "fewshot-train" and saved["lr"] == 0.5
    assert dropgrad.run_config(Cfg, run, {}, resume=True, app="fewshot-train").lr == 0.5
    assert dropgrad.run_config(Cfg, "new", {}, config_file=run / "config.json", app="fewshot-train").lr == 0.5
    assert build_config(Cfg, load_config_file(run / "config.json"), {}).lr == 0.5  # no app given: the keys decide

    @dataclass
    class WithApp:
        app: str = _h("a config that has an option of the marker's name", default="x")

    with pytest.raises(TypeError, match="has an option 'app'"):
        dropgrad.start_run(tmp_path / "other", WithApp(), app="fewshot-train")
    assert build_config(WithApp, {"app": "y"}, {}).app == "y"  # an option of that name stays an option


def test_another_apps_marked_run_folder_names_the_app_that_wrote_it(tmp_path):
    run = dropgrad.start_run(tmp_path / "track-run", Cfg(), app="track-train")
    for call in (lambda: build_config(Cfg, load_config_file(run / "config.json"), {}, app="fewshot-train"),
                 lambda: dropgrad.run_config(Cfg, run, {}, resume=True, app="fewshot-train")):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == (
            f"{run} is a run folder of dropgrad-tracking (track-train), not a fewshot-train run; open it with "
            "track-train --resume or track-eval --checkpoint; expected a fewshot-train run folder")
    # A copy under another name is named itself, not its folder.
    copy = tmp_path / "opts.json"
    copy.write_text((run / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"opts\.json is a config of dropgrad-tracking \(track-train\), not a fewshot-train"):
        build_config(Cfg, load_config_file(copy), {}, app="fewshot-train")


@pytest.mark.parametrize("marker", ["fewshot-tran", 3, None])
def test_a_marker_naming_no_known_app_is_one_error_naming_file_and_value(tmp_path, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"app": marker, "lr": 0.1}))
    shown = "null" if marker is None else repr(marker)
    for app in ("fewshot-train", None):
        with pytest.raises(ConfigError) as err:
            dropgrad.run_config(Cfg, run, {}, resume=True, app=app)
        assert str(err.value).startswith(f"{run / 'config.json'}: key 'app' is {shown}, not an app this dropgrad knows "
                                          "(fewshot-train, track-train, viewpoint-train)")
