"""One canonical name per OTB2015 target, whatever spelling a file or folder uses.

Result files and folders spell the two-target sequences in several ways (``Jogging-1``,
``Jogging.1``, ``jogging_1``, ``Jogging_1``) and change the case (``BasketBall``); got10k calls
the second Human4 target plain ``Human4``. :func:`canonical_name` folds all of them onto the
names of the OTB toolkit's ``tb_100`` list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ALIASES", "GOT10K_OTHER_FRAMES", "OTB100_NAMES", "NameMap", "canonical_name", "got10k_name", "name_key"]

#: The 100 targets of OTB2015 (TB-100), spelled as in the OTB toolkit's ``tb_100`` list.
OTB100_NAMES: tuple[str, ...] = (
    "Basketball", "Biker", "Bird1", "Bird2", "BlurBody", "BlurCar1", "BlurCar2", "BlurCar3",
    "BlurCar4", "BlurFace", "BlurOwl", "Board", "Bolt", "Bolt2", "Box", "Boy", "Car1", "Car2",
    "Car24", "Car4", "CarDark", "CarScale", "ClifBar", "Coke", "Couple", "Coupon", "Crossing",
    "Crowds", "Dancer", "Dancer2", "David", "David2", "David3", "Deer", "Diving", "Dog", "Dog1",
    "Doll", "DragonBaby", "Dudek", "FaceOcc1", "FaceOcc2", "Fish", "FleetFace", "Football",
    "Football1", "Freeman1", "Freeman3", "Freeman4", "Girl", "Girl2", "Gym", "Human2", "Human3",
    "Human4-2", "Human5", "Human6", "Human7", "Human8", "Human9", "Ironman", "Jogging-1",
    "Jogging-2", "Jump", "Jumping", "KiteSurf", "Lemming", "Liquor", "Man", "Matrix", "Mhyang",
    "MotorRolling", "MountainBike", "Panda", "RedTeam", "Rubik", "Shaking", "Singer1", "Singer2",
    "Skater", "Skater2", "Skating1", "Skating2-1", "Skating2-2", "Skiing", "Soccer", "Subway",
    "Surfer", "Suv", "Sylvester", "Tiger1", "Tiger2", "Toy", "Trans", "Trellis", "Twinnings",
    "Vase", "Walking", "Walking2", "Woman",
)

#: Names that are not a spelling variant but still mean one target: OTB2015 scores only the
#: second Human4 target, which got10k (one annotation file left after dropping the empty one)
#: calls ``Human4``.
ALIASES: dict[str, str] = {"human4": "Human4-2"}

_SEPARATORS = re.compile(r"[\s._-]+")


def name_key(name: str) -> str:
    """The spelling-independent key of a sequence name: lower case, one ``-`` per separator run.

    >>> name_key("Jogging.1"), name_key(" jogging_1 "), name_key("JOGGING-1")
    ('jogging-1', 'jogging-1', 'jogging-1')
    """
    return _SEPARATORS.sub("-", name.strip().lower()).strip("-")


class NameMap:
    """Maps any spelling of a name onto one of a fixed set of canonical names.

    Args:
        names: the canonical names (e.g. the sequences of a data set).
        aliases: extra ``{key: canonical}`` pairs, keys as :func:`name_key` makes them.

    Raises:
        ValueError: two canonical names share a key (they could not be told apart).

    >>> m = NameMap(["Jogging-1", "Jogging-2", "Basketball"])
    >>> m("jogging_2"), m("BasketBall"), m("Crossing") is None
    ('Jogging-2', 'Basketball', True)
    """

    def __init__(self, names: Iterable[str], aliases: dict[str, str] | None = None) -> None:
        self._by_key: dict[str, str] = {}
        for name in names:
            key = name_key(name)
            if key in self._by_key and self._by_key[key] != name:
                raise ValueError(f"sequence names {self._by_key[key]!r} and {name!r} differ only in spelling")
            self._by_key[key] = name
        for key, target in (aliases or {}).items():
            if target in self._by_key.values():
                self._by_key.setdefault(name_key(key), target)

    def __call__(self, name: str) -> str | None:
        return self._by_key.get(name_key(name))

    def __contains__(self, name: str) -> bool:
        return self(name) is not None


_OTB_MAP = NameMap(OTB100_NAMES, ALIASES)


def canonical_name(name: str) -> str:
    """The OTB2015 name for any spelling of it; names outside OTB2015 come back unchanged.

    >>> canonical_name("jogging.1"), canonical_name("BASKETBALL"), canonical_name("Human4_2")
    ('Jogging-1', 'Basketball', 'Human4-2')
    >>> canonical_name("synthetic-003")
    'synthetic-003'
    """
    return _OTB_MAP(name) or name


#: OTB2015 sequences that got10k's ``OTB`` dataset scores on other frames than the OTB toolkit.
GOT10K_OTHER_FRAMES: dict[str, str] = {"Tiger1": "all 354 images"}


def got10k_name(name: str) -> str:
    """The name got10k's OTB data set gives a target (``Jogging.1``, ``Human4``, ``Skating2.2``).

    >>> got10k_name("Jogging-1"), got10k_name("Human4-2"), got10k_name("Couple")
    ('Jogging.1', 'Human4', 'Couple')
    """
    if name == "Human4-2":
        return "Human4"
    match = re.fullmatch(r"(Jogging|Skating2)-(\d)", name)
    return f"{match.group(1)}.{match.group(2)}" if match else name
