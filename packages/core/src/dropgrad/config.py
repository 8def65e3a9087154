"""Dataclass configs, their command-line options and their JSON/YAML config files.

Every app describes a run with a dataclass whose fields carry ``metadata={"help": ...}``. This
module turns such a dataclass into ``argparse`` options, reads config files, and merges

    dataclass defaults  <  config file  <  options given on the command line

into one validated instance, which the run directory then stores with ``save_config`` so that
the run can be reloaded with ``--config run_dir/config.json``. Nothing is silently ignored: an
unknown key, a value of the wrong type (a string "true" for a bool), or a duplicate key is a
``ConfigError`` naming the file or option.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``pathlib.Path``,
``Literal[...]`` (of str or int), ``X | None`` of any of these, and ``tuple[X, ...]``,
``tuple[X, Y, ...]`` (fixed length) or ``list[X]`` of the scalar ones.
"""

import argparse
import dataclasses
import difflib
import json
import numbers
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Literal, Protocol, TypeVar

import yaml

from .atomic import write_json

__all__ = [
    "RUN_APPS",
    "ConfigError",
    "ConfigFileValues",
    "add_dataclass_arguments",
    "build_config",
    "check_app_marker",
    "config_to_dict",
    "load_config_file",
    "namespace_values",
    "save_config",
]

T = TypeVar("T")

_SUFFIXES = (".json", ".yaml", ".yml")

APP_KEY = "app"
"""The key of a run's ``config.json`` naming the command that wrote the run (``start_run(app=...)``)."""

# The apps whose run folders carry that marker: command -> (package, the commands that open such a
# folder). Kept here, not in the apps (which never import each other), so that every app can tell
# a user pointing it at another app's folder which tools that folder belongs to.
RUN_APPS: dict[str, tuple[str, str]] = {
    "fewshot-train": ("dropgrad-fewshot", "fewshot-train --resume or fewshot-test"),
    "track-train": ("dropgrad-tracking", "track-train --resume or track-eval --checkpoint"),
    "viewpoint-train": ("dropgrad-viewpoint", "viewpoint-train --resume or viewpoint-eval"),
}


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message names the file/option."""


class ConfigFileValues(dict):
    """The mapping read from a config file; ``source`` (the file name) is used in errors.

    >>> values = ConfigFileValues({"lr": 0.1}, source="run.yaml")
    >>> values, values.source
    ({'lr': 0.1}, 'run.yaml')
    """

    def __init__(self, data: Mapping[str, Any] = (), source: str | None = None) -> None:
        super().__init__(data)
        self.source = source


# ---------------------------------------------------------------------------------------------
# Field types


@dataclasses.dataclass(frozen=True)
class _Type:
    """A parsed field type; ``elems`` holds element types of tuples/lists."""

    kind: str  # bool, int, float, str, path, literal, seq
    optional: bool = False
    choices: tuple[Any, ...] = ()
    elems: tuple["_Type", ...] = ()
    variadic: bool = True
    container: type = tuple


_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}


def _parse_type(tp: Any, where: str) -> _Type:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _parse_type(rest[0], where)
            if inner.optional:
                raise TypeError(f"{where}: nested Optional in {tp!r} is not supported")
            return dataclasses.replace(inner, optional=True)
    elif tp in _SCALARS:
        return _Type(_SCALARS[tp])
    elif isinstance(tp, type) and issubclass(tp, PurePath):
        return _Type("path")
    elif origin is Literal:
        choices = typing.get_args(tp)
        if choices and (
            all(isinstance(c, str) for c in choices)
            or all(isinstance(c, int) and not isinstance(c, bool) for c in choices)
        ):
            return _Type("literal", choices=choices)
    elif origin in (tuple, list):
        args = typing.get_args(tp)
        variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        elem_args = args[:1] if variadic else args
        if elem_args and Ellipsis not in elem_args:
            elems = tuple(_parse_type(a, where) for a in elem_args)
            if all(e.kind != "seq" and not e.optional for e in elems):
                return _Type("seq", elems=elems, variadic=variadic, container=origin)
    raise TypeError(
        f"{where}: type {tp!r} is not supported in configs; use bool, int, float, str, Path, "
        "Literal[...], X | None, tuple[X, ...], tuple[X, Y] or list[X]"
    )


def _describe(t: _Type) -> str:
    if t.kind == "seq":
        if t.variadic:
            text = f"a list whose items are each {_describe(t.elems[0])}"
        else:
            text = f"a list of {len(t.elems)} items ({', '.join(_describe(e) for e in t.elems)})"
    elif t.kind == "literal":
        text = "one of " + ", ".join(repr(c) for c in t.choices)
    else:
        text = {
            "bool": "a boolean (true/false)",
            "int": "an integer",
            "float": "a number",
            "str": "a string",
            "path": "a path string",
        }[t.kind]
    return text + (" or null" if t.optional else "")


def _coerce(t: _Type, value: Any, where: str) -> Any:
    """Check ``value`` against ``t`` and convert it (int -> float, list -> tuple, str -> Path)."""
    if value is None and t.optional:
        return None
    kind = t.kind
    ok = False
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif kind == "float":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "path":
        ok = isinstance(value, (str, PurePath))
        value = Path(value) if ok else value
    elif kind == "literal":
        # type() check so that True does not pass for 1, nor 1 for "1".
        ok = any(value == c and type(value) is type(c) for c in t.choices)
    elif kind == "seq" and isinstance(value, (list, tuple)):
        if not t.variadic and len(value) != len(t.elems):
            raise ConfigError(
                f"{where}: expected {_describe(t)}, got {len(value)} items: {list(value)!r}"
            )
        elems = t.elems * len(value) if t.variadic else t.elems
        items = [_coerce(e, v, f"{where}[{i}]") for i, (e, v) in enumerate(zip(elems, value))]
        return t.container(items)
    if ok:
        return value
    hint = ""
    if kind in ("str", "path", "literal") and isinstance(value, (bool, int, float)):
        hint = " (quote it in YAML: words like yes/no/on/off and numbers are not strings there)"
    shown = "null" if value is None else repr(value)
    got = f"{shown} ({type(value).__name__})"
    raise ConfigError(f"{where}: expected {_describe(t)}, got {got}{hint}")


def _field_hints(cls: type) -> dict[str, Any]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    try:
        return typing.get_type_hints(cls)
    except Exception as err:  # NameError etc. from unresolvable string annotations
        raise TypeError(f"cannot resolve the type hints of {cls.__name__}: {err}") from err


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Command line


class _AddsArguments(Protocol):
    def add_argument(self, *args: Any, **kwargs: Any) -> Any: ...


def _show(value: Any) -> str:
    """A default as the user would type it on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value) if value else "''"
    if isinstance(value, str) and not value:
        return "''"
    return str(value)


def _cli_scalar(t: _Type, text: str) -> Any:
    s = text.strip()
    if t.kind == "literal":
        for c in t.choices:
            if str(c) == s:
                return c
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r} (choose from {', '.join(str(c) for c in t.choices)})"
        )
    if t.kind == "int":
        try:
            return int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if t.kind == "float":
        try:
            return float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if t.kind == "bool":
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    if t.kind == "path":
        return Path(text)
    return text


def _cli_converter(t: _Type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        # A Literal choice spelt "none" wins over the None of "Literal[...] | None".
        if t.kind == "literal" and any(str(c) == text.strip() for c in t.choices):
            return _cli_scalar(t, text)
        if t.optional and text.strip().lower() == "none":
            return None
        if t.kind != "seq":
            return _cli_scalar(t, text)
        parts = [p for p in text.split(",")] if text.strip() else []
        if not t.variadic and len(parts) != len(t.elems):
            raise argparse.ArgumentTypeError(
                f"expected {len(t.elems)} comma-separated values, got {len(parts)} in {text!r}"
            )
        elems = t.elems * len(parts) if t.variadic else t.elems
        return t.container(_cli_scalar(e, p) for e, p in zip(elems, parts))

    return convert


def _metavar(t: _Type) -> str:
    if t.kind == "seq":
        names = [_metavar(e) for e in t.elems]
        text = f"{names[0]},..." if t.variadic else ",".join(names)
    elif t.kind == "literal":
        text = "{" + ",".join(str(c) for c in t.choices) + "}"
    else:
        text = t.kind.upper()
    return text + ("|none" if t.optional else "")


def add_dataclass_arguments(
    parser: _AddsArguments, cls: type, *, exclude: Iterable[str] = ()
) -> None:
    """Add one ``--field-name`` option per field of the dataclass ``cls`` to ``parser``.

    Options are documented from ``field.metadata["help"]`` plus the default. Options the user
    does not give are absent from the parsed namespace (their default is
    ``argparse.SUPPRESS``), so ``namespace_values`` returns exactly what was given on the
    command line, and ``build_config`` can put it above the config file.

    Mapping of types: ``bool`` -> ``--flag/--no-flag``; ``Literal[...]`` -> ``choices``;
    ``X | None`` -> also accepts the word ``none``; tuples and lists -> comma-separated values
    (``--milestones 10,20``; an empty string gives an empty list).

    Args:
        parser: an ``argparse.ArgumentParser`` or argument group.
        cls: the dataclass type.
        exclude: field names to leave out (e.g. set by the app itself).

    Raises:
        TypeError: if a field has no ``metadata["help"]`` or an unsupported type.
        ValueError: if ``exclude`` names a field that ``cls`` does not have.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Opt:
    ...     lr: float = field(default=0.01, metadata={"help": "learning rate"})
    ...     steps: tuple[int, ...] = field(default=(5,), metadata={"help": "inner steps"})
    >>> parser = argparse.ArgumentParser()
    >>> add_dataclass_arguments(parser, Opt)
    >>> namespace_values(parser.parse_args(["--steps", "1,2"]), Opt)
    {'steps': (1, 2)}
    """
    hints = _field_hints(cls)
    fields = _init_fields(cls)
    exclude = set(exclude)
    unknown = exclude - {f.name for f in fields}
    if unknown:
        raise ValueError(
            f"exclude names {', '.join(sorted(unknown))}, which are not fields of {cls.__name__}"
        )
    for f in fields:
        if f.name in exclude:
            continue
        where = f"{cls.__name__}.{f.name}"
        help_text = f.metadata.get("help")
        if not isinstance(help_text, str) or not help_text.strip():
            raise TypeError(
                f"{where} has no metadata['help']; every config field must be documented, "
                "e.g. field(default=..., metadata={'help': '...'})"
            )
        t = _parse_type(hints[f.name], where)
        default = _default(f)
        shown = "required" if default is dataclasses.MISSING else f"default: {_show(default)}"
        # argparse %-formats help strings, so a literal % must be doubled.
        full_help = f"{help_text.strip()} ({shown})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": full_help}
        if t.kind == "bool" and not t.optional:
            parser.add_argument(_option(f.name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs.update(type=_cli_converter(t), metavar=_metavar(t))
        if t.kind == "literal" and not t.optional:
            kwargs["choices"] = list(t.choices)
        if t.kind == "seq" and t.variadic:
            # A list is given once, comma-separated: a repeated option would silently drop the
            # values given first (argparse keeps the last), where a user may expect them added.
            kwargs["action"] = _ListOnce
        parser.add_argument(_option(f.name), **kwargs)


class _ListOnce(argparse.Action):
    """Store a list option's value; refuse the option given a second time."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if hasattr(namespace, self.dest):
            parser.error(f"{option_string} is given twice; give all its values once, comma-separated "
                         f"({option_string} A,B)")
        setattr(namespace, self.dest, values)


def namespace_values(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that the user gave on the command line, as a dict.

    Other options of the same parser (``--config``, ``--out``, ...) are left out.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     seed: int = 0
    >>> namespace_values(argparse.Namespace(seed=3, config="run.yaml"), Opt)
    {'seed': 3}
    """
    _field_hints(cls)
    given = vars(namespace)
    return {f.name: given[f.name] for f in _init_fields(cls) if f.name in given}


# ---------------------------------------------------------------------------------------------
# Config files


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so ``lr: 1e-3``
    would be the string "1e-3"; that is the form everyone writes learning rates in.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may legitimately be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:
                continue  # unhashable key: the base class reports it
            if seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _DuplicateKey(Exception):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_config_file(path: str | os.PathLike) -> ConfigFileValues:
    """Read a ``.json``, ``.yaml`` or ``.yml`` config file into a dict of option values.

    Args:
        path: the config file.

    Returns:
        A ``ConfigFileValues`` (a dict that remembers the file name for later errors).

    Raises:
        ConfigError: if the file is missing, has another extension, does not parse (the message
            gives the line), repeats a key, or its top level is not a mapping of names.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d, "run.yaml")
    ...     _ = p.write_text("lr: 1e-3\\nsteps: [1, 2]\\n")
    ...     load_config_file(p)
    {'lr': 0.001, 'steps': [1, 2]}
    """
    p = Path(path)
    name = f"config file '{p}'"
    if p.suffix.lower() not in _SUFFIXES:
        raise ConfigError(
            f"{name}: unsupported extension {p.suffix or '(none)'!r}; expected .json, .yaml or .yml"
        )
    if not p.exists():
        raise ConfigError(f"{name} does not exist")
    if not p.is_file():
        raise ConfigError(f"{name} is not a regular file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{name} cannot be read: {err.strerror}") from None

    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_json_pairs)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{name}, line {err.lineno} column {err.colno}: invalid JSON: {err.msg}"
            ) from None
        except _DuplicateKey as err:
            raise ConfigError(f"{name}: key {err.args[0]!r} appears more than once") from None
    else:
        try:
            data = yaml.load(text, Loader=_YamlLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = err.problem or err.context or "parse error"
            raise ConfigError(f"{name}{where}: invalid YAML: {problem}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{name}: invalid YAML: {err}") from None

    if data is None:
        raise ConfigError(f"{name} is empty; expected a mapping of option names to values")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: top level is a {type(data).__name__}; expected a mapping of option names "
            "to values"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{name}: key {bad[0]!r} is not a string; option names are strings")
    return ConfigFileValues(data, source=str(p))


def build_config(
    cls: type[T],
    file_values: Mapping[str, Any] | None,
    cli_values: Mapping[str, Any],
    *,
    source: str | os.PathLike | None = None,
    app: str | None = None,
) -> T:
    """Merge defaults < config file < command line into a validated ``cls`` instance.

    Args:
        cls: the dataclass type.
        file_values: values from ``load_config_file`` (or any mapping), or None.
        cli_values: values given on the command line, from ``namespace_values``.
        source: the file name for error messages; taken from ``file_values.source`` if unset.
        app: the command whose options ``cls`` holds (``fewshot-train``), for error messages and
            to check the file's ``"app"`` key, the marker ``start_run`` writes into a run's
            ``config.json``: it must name ``app`` (see :func:`check_app_marker`), and is then dropped.

    Fields whose metadata has ``"path": True`` are made absolute (``~`` expanded, relative to the
    working directory), so the stored config names the same files from anywhere.

    Raises:
        ConfigError: for an unknown key in the file (the message names the file and the key
            and lists the valid keys), a value of the wrong type (no truthy strings: "true"
            is not a bool), or a field without a default that is given nowhere.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 0.01
    ...     seed: int = 0
    >>> build_config(Opt, {"lr": 1, "seed": 4}, {"seed": 7})
    Opt(lr=1.0, seed=7)
    """
    hints = _field_hints(cls)
    fields = _init_fields(cls)
    valid = sorted(f.name for f in fields)
    specs = {f.name: _parse_type(hints[f.name], f"{cls.__name__}.{f.name}") for f in fields}
    values: dict[str, Any] = {}

    if file_values is not None:
        src = source if source is not None else getattr(file_values, "source", None)
        name = f"config file '{src}'" if src is not None else "config file"
        if not isinstance(file_values, Mapping):
            raise ConfigError(f"{name}: expected a mapping of option names to values")
        if APP_KEY not in specs:  # a config with its own "app" option has no room for the marker
            file_values = check_app_marker(file_values, app, src)
        unknown = [k for k in file_values if k not in specs]
        if src is not None and Path(str(src)).name == "config.json" and 2 * len(unknown) > len(file_values):
            raise ConfigError(_foreign_run(Path(str(src)), unknown, len(file_values), app or cls.__name__))
        if unknown:
            hints_ = []
            for k in unknown:
                close = difflib.get_close_matches(str(k).replace("-", "_"), valid, n=1)
                hints_.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{name}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints_)}; "
                f"valid keys for {cls.__name__}: {', '.join(valid)}"
            )
        for key, value in file_values.items():
            values[key] = _coerce(specs[key], value, f"{name}: key {key!r}")

    for key, value in cli_values.items():
        if key not in specs:
            raise ConfigError(
                f"command-line value {key!r} is not a field of {cls.__name__} (valid: "
                f"{', '.join(valid)}); pass namespace_values(args, {cls.__name__})"
            )
        values[key] = _coerce(specs[key], value, f"option {_option(key)}")

    for f in fields:
        # A run's config.json is read again by other commands (fewshot-test, viewpoint-eval,
        # --config) from other working directories: a folder given relative to this one must
        # still name the same folder there.
        if f.metadata.get("path") and isinstance(values.get(f.name), (str, PurePath)):
            values[f.name] = type(values[f.name])(os.path.abspath(os.path.expanduser(values[f.name])))

    missing = [
        f.name for f in fields if f.name not in values and _default(f) is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{cls.__name__}: no value for "
            + ", ".join(f"{_option(m)} (config key {m!r})" for m in missing)
            + "; give it on the command line or in the config file"
        )
    return cls(**values)


def check_app_marker(
    values: Mapping[str, Any], app: str | None, source: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``values`` (a config file's) without the ``"app"`` marker that ``start_run`` writes, after
    checking that the marker lets the command ``app`` use them.

    No marker (a run folder from before the marker, a config file of the user's) or a marker
    naming ``app`` passes; so does one of ``RUN_APPS`` when ``app`` is None (the keys decide).
    A marker of another app of ``RUN_APPS`` is one line naming that app and its commands.

    Raises:
        ConfigError: for another app's marker, or a marker that is not an app of ``RUN_APPS``
            (the message names the file and the value).

    >>> check_app_marker({"app": "fewshot-train", "lr": 0.1}, "fewshot-train")
    {'lr': 0.1}
    >>> check_app_marker({"app": "track-train", "lr": 0.1}, "fewshot-train", "runs/t/config.json")
    Traceback (most recent call last):
    ...
    dropgrad.config.ConfigError: runs/t is a run folder of dropgrad-tracking (track-train), not a fewshot-train run; open it with track-train --resume or track-eval --checkpoint; expected a fewshot-train run folder
    """
    rest = {k: v for k, v in values.items() if k != APP_KEY}
    marker = values.get(APP_KEY)
    known = isinstance(marker, str) and marker in RUN_APPS
    if APP_KEY not in values or (marker == app and app is not None) or (app is None and known):
        return rest
    path = Path(str(source)) if source is not None else None
    expected = f"; expected a {app} run folder" if app is not None else ""
    if not known:
        where = f"{path}: key" if path is not None else "config key"
        shown = "null" if marker is None else repr(marker)
        raise ConfigError(
            f"{where} {APP_KEY!r} is {shown}, not an app this dropgrad knows ({', '.join(RUN_APPS)}){expected}"
        )
    package, commands = RUN_APPS[marker]
    # A run's config.json stands for its folder; any other file (a copy of one) for itself.
    if path is not None and path.name == "config.json":
        what = f"{path.parent} is a run folder"
    else:
        what = f"{path if path is not None else 'the config'} is a config"
    raise ConfigError(
        f"{what} of {package} ({marker}), not a {app} run; open it with {commands}{expected}"
    )


def _foreign_run(path: Path, unknown: list[Any], total: int, app: str) -> str:
    """One line for a run's ``config.json`` written by another app (most of its keys unknown here):
    a list of every unknown key with guesses would hide that the folder is the wrong one.

    >>> _foreign_run(Path("runs/t/config.json"), ["tracker", "horizon"], 3, "fewshot-train")
    "runs/t is another app's run folder, not a fewshot-train run: 2 of the 3 keys of its config.json are not fewshot-train options (e.g. 'tracker', 'horizon'); expected a fewshot-train run folder"
    """
    shown = ", ".join(repr(k) for k in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
    return (
        f"{path.parent} is another app's run folder, not a {app} run: {len(unknown)} of the {total} keys of its "
        f"config.json are not {app} options (e.g. {shown}); expected a {app} run folder"
    )


# ---------------------------------------------------------------------------------------------
# Saving


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item(), where)
    raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} in a JSON config")


def config_to_dict(obj: Any) -> dict[str, Any]:
    """The init fields of the dataclass instance ``obj`` as a JSON-ready dict.

    Paths become strings and tuples lists; ``build_config`` turns them back.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     steps: tuple[int, ...] = (1, 2)
    >>> config_to_dict(Opt())
    {'steps': [1, 2]}
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")
    name = type(obj).__name__
    return {
        f.name: _jsonable(getattr(obj, f.name), f"{name}.{f.name}")
        for f in _init_fields(type(obj))
    }


def save_config(path: str | os.PathLike, obj: Any) -> Path:
    """Write a dataclass instance (or a mapping) as JSON with sorted keys, atomically.

    The text goes to a temporary file in the same directory, is flushed and fsynced, and then
    replaces ``path`` in one step, so a crash never leaves a half-written config. Parent
    directories are created.

    Args:
        path: destination, normally ``run_dir / "config.json"``.
        obj: a dataclass instance or a mapping of JSON-ready values.

    Returns:
        ``path`` as a ``Path``.

    >>> import tempfile, pathlib
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 0.1
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_config(pathlib.Path(d, "config.json"), Opt())
    ...     build_config(Opt, load_config_file(p), {})
    Opt(lr=0.1)
    """
    p = Path(path)
    if isinstance(obj, Mapping):
        data = _jsonable(obj, "config")
    else:
        data = config_to_dict(obj)
    return write_json(p, data, sort_keys=True)
