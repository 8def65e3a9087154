"""Every docstring example in dropgrad_fewshot.data runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import dropgrad_fewshot.data
import pytest

MODULES = ["dropgrad_fewshot.data"] + sorted(
    m.name for m in pkgutil.walk_packages(dropgrad_fewshot.data.__path__, prefix="dropgrad_fewshot.data.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_is_importable():
    for name in dropgrad_fewshot.data.__all__:
        assert hasattr(dropgrad_fewshot.data, name), name
