"""Name variants of OTB targets map onto one canonical name."""

import pytest
from dropgrad_tracking.data.names import (
    OTB100_NAMES,
    NameMap,
    canonical_name,
    got10k_name,
)


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("Jogging-1", "Jogging-1"), ("Jogging.1", "Jogging-1"), ("jogging_1", "Jogging-1"), ("JOGGING 1", "Jogging-1"),
        ("Jogging_2", "Jogging-2"), ("skating2.2", "Skating2-2"), ("Skating2-1", "Skating2-1"),
        ("Human4-2", "Human4-2"), ("human4_2", "Human4-2"), ("Human4", "Human4-2"),
        ("BasketBall", "Basketball"), ("basketball", "Basketball"), ("CARSCALE", "CarScale"), ("Car24", "Car24"),
    ],
)
def test_variants_map_to_the_canonical_name(variant, expected):
    assert canonical_name(variant) == expected


def test_the_100_names_are_distinct_and_round_trip():
    assert len(OTB100_NAMES) == len(set(OTB100_NAMES)) == 100
    for name in OTB100_NAMES:
        assert canonical_name(name) == name
        assert canonical_name(name.upper()) == name
        assert canonical_name(got10k_name(name)) == name


def test_unknown_names_pass_through_and_namemap_rejects_ambiguous_sets():
    assert canonical_name("Synthetic-03") == "Synthetic-03"
    assert NameMap(["a-1"])("b") is None
    with pytest.raises(ValueError, match="differ only in spelling"):
        NameMap(["Jogging-1", "jogging_1"])


def test_got10k_names():
    assert [got10k_name(n) for n in ("Jogging-2", "Skating2-1", "Human4-2", "Car4")] == ["Jogging.2", "Skating2.1", "Human4", "Car4"]
