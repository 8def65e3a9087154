"""``build_dataset``: one entry point for every data set, with its options validated up front."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from .base import FewShotDataset
from .errors import DataError

__all__ = ["DATASETS", "GRAYSCALE", "PATH_OPTIONS", "build_dataset", "dataset_options", "format_data_option", "parse_data_option"]

DATASETS = ("glyphs", "omniglot", "miniimagenet", "cub")
# The single-channel data sets; every other one is RGB.
GRAYSCALE = frozenset({"glyphs", "omniglot"})
SPLITS = ("train", "val", "test")
# The data sets' own default image sizes; the RGB sets follow the backbone (84 Conv4, 224 ResNet).
DEFAULT_IMAGE_SIZE = {"glyphs": 28, "omniglot": 28, "miniimagenet": 84, "cub": 84}


def _builder(name: str):
    if name == "glyphs":
        from .glyphs import GlyphDataset

        return GlyphDataset
    if name == "omniglot":
        from .omniglot import build_omniglot

        return build_omniglot
    if name == "miniimagenet":
        from .miniimagenet import build_miniimagenet

        return build_miniimagenet
    if name == "cub":
        from .cub import build_cub

        return build_cub
    # A name added to DATASETS without a builder here must not be read as CUB.
    raise DataError(f"data set {name!r} is in DATASETS but has no builder; add one to data/build.py _builder")


_COMMON = {"split", "root", "image_size", "augment", "seed"}


def dataset_options(name: str) -> dict[str, Any]:
    """The extra keyword options of data set ``name`` and their defaults.

    >>> dataset_options("omniglot")["protocol"]
    'maml'
    >>> sorted(dataset_options("glyphs"))
    ['images_per_class', 'n_classes', 'rotations']
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    sig = inspect.signature(_builder(name))
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in _COMMON and p.kind == inspect.Parameter.KEYWORD_ONLY
    }


def parse_data_option(dataset: str, text: str, option: str = "--option") -> tuple[str, Any]:
    """``KEY=VALUE`` of a data-set option, typed by the option's default; errors name ``option``.

    >>> parse_data_option("omniglot", "protocol=background")
    ('protocol', 'background')
    >>> parse_data_option("glyphs", "rotations=true"), parse_data_option("glyphs", "n_classes=50")
    (('rotations', True), ('n_classes', 50))
    """
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    allowed = dataset_options(dataset)
    if not sep or key not in allowed:
        raise DataError(
            f"{option} {text!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed)) or '(none)'} for {dataset}"
        )
    default = allowed[key]
    low = value.strip().lower()
    if isinstance(default, bool) or (default is None and low in ("true", "false")):
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise DataError(f"{option} {text!r}: {key} must be true or false")
        return key, low in ("true", "1", "yes")
    if isinstance(default, int) or (default is None and key in ("n_classes",)):
        try:
            return key, int(value)
        except ValueError:
            raise DataError(f"{option} {text!r}: {key} must be an integer") from None
    return key, value


def format_data_option(key: str, value: Any) -> str:
    """``KEY=VALUE`` as :func:`parse_data_option` reads it back.

    >>> format_data_option("check_sizes", False), format_data_option("n_classes", 50)
    ('check_sizes=false', 'n_classes=50')
    """
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def build_dataset(
    name: Literal["glyphs", "omniglot", "miniimagenet", "cub"],
    split: Literal["train", "val", "test"],
    *,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    augment: bool = False,
    seed: int = 0,
    **options: Any,
) -> FewShotDataset:
    """Build one split of a few-shot data set.

    Args:
        name: "glyphs" (embedded, procedural; needs no files), "omniglot", "miniimagenet",
            "cub".
        split: "train", "val" or "test" (mini-ImageNet/CUB: CloserLook's base/val/novel).
        data_root: the data set's folder (ignored by glyphs unless given: then an error).
        image_size: side in pixels; None: glyphs/omniglot 28, RGB sets 84 (pass 224 for ResNets).
        augment: training augmentation (see :mod:`dropgrad_fewshot.data.transforms`).
        seed: glyph universe and augmentation streams.
        **options: per data set (see DATA.md and :func:`dataset_options`):
            glyphs ``n_classes``, ``images_per_class``, ``rotations``;
            omniglot ``protocol`` ("maml" | "background"), ``rotations``, ``val_characters``,
            ``split_seed``, ``train_characters``;
            miniimagenet ``layout`` ("auto" | "csv" | "closerlook" | "mamlpp"), ``csv_dir``,
            ``filelist_dir``, ``class_maps``, ``check_sizes``;
            cub ``check_files``, ``check_sizes``.

    Raises:
        DataError: unknown name/split/option, bad option value, or a data problem found while
            indexing the files (wrong folder, list line naming a missing file, ...).

    >>> ds = build_dataset("glyphs", "train", n_classes=50, images_per_class=4)
    >>> ds.describe()
    'glyphs train: 50 classes, 200 images, 1x28x28'
    >>> build_dataset("glyphs", "train", colour=True)
    Traceback (most recent call last):
    ...
    dropgrad_fewshot.data.errors.DataError: glyphs: unknown option 'colour'; expected one of images_per_class, n_classes, rotations
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r} (--dataset); expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[name]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise DataError(f"image_size (--image-size) must be an integer >= 4, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed (--seed) must be a non-negative integer, got {seed!r}")
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(
            f"{name}: unknown option {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
        )
    _check_option_types(name, options, allowed)
    builder = _builder(name)
    if name == "glyphs":
        if data_root is not None:
            raise DataError(
                f"glyphs is generated procedurally and reads no files, but --data-root {data_root} "
                "was given; drop it, or choose --dataset omniglot/miniimagenet/cub"
            )
        return builder(split, image_size=image_size, augment=bool(augment), seed=seed, **options)
    if data_root is None:
        raise DataError(f"{name}: --data-root is required (the folder of the data set; see DATA.md)")
    return builder(
        Path(data_root).expanduser(), split, image_size=image_size, augment=bool(augment), seed=seed, **options
    )


#: Options naming a folder or file.
PATH_OPTIONS = ("csv_dir", "filelist_dir", "class_maps")

_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "n_classes": (int,),
    "images_per_class": (int,),
    "rotations": (bool,),
    "protocol": (str,),
    "val_characters": (int,),
    "split_seed": (int,),
    "train_characters": (int,),
    "layout": (str,),
    "csv_dir": (str, Path),
    "filelist_dir": (str, Path),
    "class_maps": (str, Path),
    "check_sizes": (bool,),
    "check_files": (bool,),
}


def _check_option_types(name: str, options: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Reject values of the wrong type (e.g. the string "false" for a bool) and bad counts."""
    for key, value in options.items():
        if value is None and defaults[key] is None:
            continue
        types = _OPTION_TYPES.get(key, (object,))
        ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        if not ok:
            expected = " or ".join("true/false" if t is bool else t.__name__ for t in types)
            raise DataError(f"{name}: option {key}={value!r} must be {expected}")
        if types == (int,) and value < (0 if key in ("val_characters", "split_seed") else 1):
            raise DataError(f"{name}: option {key}={value!r} must be >= {0 if key in ('val_characters', 'split_seed') else 1}")
