"""Every docstring example in dropgrad_fewshot.models runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest
import torch
from dropgrad_fewshot import models

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(models.__path__, prefix="dropgrad_fewshot.models.")
) + ["dropgrad_fewshot.models"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Small convs on a shared 2-core machine: torch's second intra-op thread mostly spins waiting
    # for a core (the suite ran ~7x slower under load with 2 threads); restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_api_is_importable():
    for name in models.__all__:
        assert hasattr(models, name), name
