"""Every docstring example in dropgrad_tracking runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import dropgrad_tracking
import pytest

MODULES = sorted(m.name for m in pkgutil.walk_packages(dropgrad_tracking.__path__, prefix="dropgrad_tracking.")) + [
    "dropgrad_tracking"
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_is_importable():
    for name in dropgrad_tracking.__all__:
        assert hasattr(dropgrad_tracking, name), name
