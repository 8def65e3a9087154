"""Omniglot in its official folder layout, with the MAML and background/evaluation protocols.

Layout (``data_root`` is the folder that holds both sets, as the official zips unpack)::

    data_root/images_background/<Alphabet>/characterNN/<id>_<drawer>.png   30 alphabets, 964 characters
    data_root/images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png   20 alphabets, 659 characters

Every character has 20 drawings (105 x 105, 1-bit). Characters are ordered by (set, alphabet,
character folder name), files by name, so the index is the same on every file system.

Protocols (option ``protocol``):

- ``"maml"`` (Finn et al. 2017; Santoro et al. 2016): the 1623 characters of both sets are
  pooled and shuffled with a fixed permutation (``PCG64(split_seed)``, default split_seed 1),
  the first 1200 are meta-training characters and the remaining 423 the test characters. As in
  Finn et al.'s code, the last ``val_characters`` (default 100) of the 1200 are carved out for
  validation, so train/val/test have 1100/100/423 characters. Rotations by 90, 180 and 270
  degrees are new classes by default (4400/400/1692 classes).
- ``"background"`` (Lake et al.): train = ``images_background``, test = ``images_evaluation``;
  validation is carved out of the background set in the same way (``val_characters``
  characters, shuffled by ``split_seed``). No rotations by default.

Images are resized to ``image_size`` (default 28) with a Lanczos filter and inverted (strokes 1,
background 0); decoded images are cached in memory per process (about 100 MB for all of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ImageFileDataset, rotation_groups
from .errors import DataError
from .transforms import GrayscaleTransform

__all__ = ["OMNIGLOT_SETS", "OmniglotCharacter", "build_omniglot", "omniglot_characters"]

OMNIGLOT_SETS = ("images_background", "images_evaluation")
MAML_TRAIN_CHARACTERS = 1200


class OmniglotCharacter:
    """One character folder: its set, alphabet, folder and sorted PNG files."""

    __slots__ = ("alphabet", "files", "folder", "set")

    def __init__(self, set_: str, alphabet: str, folder: Path, files: list[Path]) -> None:
        self.set = set_
        self.alphabet = alphabet
        self.folder = folder
        self.files = files

    @property
    def name(self) -> str:
        """``<Alphabet>/characterNN``."""
        return f"{self.alphabet}/{self.folder.name}"


def _expected_layout(root: Path) -> str:
    return (
        f"expected the Omniglot folder holding {OMNIGLOT_SETS[0]}/ and {OMNIGLOT_SETS[1]}/ "
        f"(each <Alphabet>/characterNN/*.png), as the official zips unpack; got {root}"
    )


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"omniglot: --data-root {root} is not a folder; {_expected_layout(root)}")
    if root.name in OMNIGLOT_SETS:
        raise DataError(
            f"omniglot: --data-root {root} is one of the two sets; pass its parent folder, "
            f"which must hold both {OMNIGLOT_SETS[0]}/ and {OMNIGLOT_SETS[1]}/"
        )
    for set_ in OMNIGLOT_SETS:
        if not (root / set_).is_dir():
            zipped = root / f"{set_}.zip"
            hint = f" ({zipped.name} is there: unzip it in place)" if zipped.exists() else ""
            raise DataError(f"omniglot: missing folder {root / set_}{hint}; {_expected_layout(root)}")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def omniglot_characters(root: str | Path, set_: str) -> list[OmniglotCharacter]:
    """All characters of one set, sorted by (alphabet, character folder).

    Raises:
        DataError: the set folder is missing, holds no alphabets, or a character folder holds no
            PNG files (the message names the folder).
    """
    root = Path(root)
    _check_root(root)
    folder = root / set_
    alphabets = _visible_dirs(folder)
    if not alphabets:
        raise DataError(f"omniglot: {folder} holds no alphabet folders; {_expected_layout(root)}")
    chars = []
    for alpha in alphabets:
        char_dirs = _visible_dirs(alpha)
        if not char_dirs:
            raise DataError(
                f"omniglot: alphabet folder {alpha} holds no character folders; expected "
                f"{alpha}/characterNN/*.png"
            )
        for cdir in char_dirs:
            files = sorted(p for p in cdir.iterdir() if p.suffix.lower() == ".png")
            if not files:
                raise DataError(f"omniglot: character folder {cdir} holds no .png drawings")
            chars.append(OmniglotCharacter(set_, alpha.name, cdir, files))
    return chars


def _carve(chars: list, n_val: int, split_seed: int, what: str) -> tuple[list, list]:
    """Split ``chars`` into (train, val) with the last n_val of a fixed shuffle as val."""
    if not 0 <= n_val < len(chars):
        raise DataError(
            f"omniglot: val_characters={n_val} must be >= 0 and below the {len(chars)} {what}"
        )
    order = np.random.Generator(np.random.PCG64(split_seed)).permutation(len(chars))
    shuffled = [chars[i] for i in order]
    return shuffled[: len(chars) - n_val], shuffled[len(chars) - n_val :]


def split_characters(
    root: str | Path,
    split: str,
    *,
    protocol: str = "maml",
    val_characters: int = 100,
    split_seed: int = 1,
    train_characters: int = MAML_TRAIN_CHARACTERS,
) -> list[OmniglotCharacter]:
    """The characters of one split under a protocol (see the module docstring)."""
    if protocol == "maml":
        pool = omniglot_characters(root, OMNIGLOT_SETS[0]) + omniglot_characters(root, OMNIGLOT_SETS[1])
        if not 0 < train_characters < len(pool):
            raise DataError(
                f"omniglot: the maml protocol takes {train_characters} meta-training characters "
                f"and tests on the rest, but {root} holds {len(pool)} characters (the complete "
                f"Omniglot has 1623)"
            )
        order = np.random.Generator(np.random.PCG64(split_seed)).permutation(len(pool))
        shuffled = [pool[i] for i in order]
        if split == "test":
            return shuffled[train_characters:]
        first = shuffled[:train_characters]
        if not 0 <= val_characters < len(first):
            raise DataError(
                f"omniglot: val_characters={val_characters} must be >= 0 and below the "
                f"{len(first)} meta-training characters"
            )
        cut = len(first) - val_characters
        return first[:cut] if split == "train" else first[cut:]
    if protocol == "background":
        if split == "test":
            return omniglot_characters(root, OMNIGLOT_SETS[1])
        background = omniglot_characters(root, OMNIGLOT_SETS[0])
        train, val = _carve(background, val_characters, split_seed, "background characters")
        return train if split == "train" else val
    raise DataError(f"omniglot: protocol={protocol!r} is not one of 'maml', 'background'")


def build_omniglot(
    root: str | Path,
    split: str,
    *,
    image_size: int = 28,
    augment: bool = False,
    seed: int = 0,
    protocol: str = "maml",
    rotations: bool | None = None,
    val_characters: int = 100,
    split_seed: int = 1,
    train_characters: int = MAML_TRAIN_CHARACTERS,
) -> ImageFileDataset:
    """One split of Omniglot (see the module docstring for layout and protocols).

    Args:
        root: the folder holding ``images_background/`` and ``images_evaluation/``.
        split: "train", "val" or "test".
        rotations: 90-degree rotations as new classes (default: True for "maml", False for
            "background"). Class ``4 * k + r`` is character ``k`` rotated by ``90 * r`` degrees.
        val_characters: characters carved out of the training characters for validation.
        split_seed: seed of the fixed character shuffle (not the training seed, so the split
            stays put when the run's seed changes).
        train_characters: the maml protocol's meta-training characters (1200).

    Returns:
        an :class:`ImageFileDataset` with 1-channel images of shape (1, image_size, image_size).
    """
    if rotations is None:
        rotations = protocol == "maml"
    chars = split_characters(
        root,
        split,
        protocol=protocol,
        val_characters=val_characters,
        split_seed=split_seed,
        train_characters=train_characters,
    )
    n_rot = 4 if rotations else 1
    paths, labels, rots, names, sources = [], [], [], [], []
    for k, ch in enumerate(chars):
        for r in range(n_rot):
            label = k * n_rot + r
            names.append(f"{ch.set}/{ch.name}" + (f"/rot{90 * r}" if rotations else ""))
            sources.append(str(ch.folder) + (f" (rotated {90 * r} degrees)" if r else ""))
            paths.extend(ch.files)
            labels.extend([label] * len(ch.files))
            rots.extend([r] * len(ch.files))
    ds = ImageFileDataset(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=names,
        class_sources=sources,
        transform=GrayscaleTransform(image_size, invert=True, augment=augment),
        mode="L",
        rotations=np.asarray(rots, dtype=np.int64) if rotations else None,
        cache=True,
        name="omniglot",
        split=split,
        channels=1,
        image_size=image_size,
        augment=augment,
        seed=seed,
    )
    if rotations:
        ds.class_groups = rotation_groups(ds.n_classes)
    return ds
