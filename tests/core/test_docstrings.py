"""Every public docstring example in the core library runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import dropgrad

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(dropgrad.__path__, prefix="dropgrad.")
) + ["dropgrad"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_is_importable_from_the_package():
    for name in dropgrad.__all__:
        assert hasattr(dropgrad, name), name
