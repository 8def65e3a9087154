"""Helpers for the tracking tests: the OTB paths inside ../shared/data."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def otb_dir(shared_data) -> Path:
    path = shared_data / "otb"
    if not (path / "OTB100.json").is_file():
        pytest.skip(f"OTB samples not found in {path}")
    return path


@pytest.fixture(scope="session")
def otb_json(otb_dir):
    from dropgrad_tracking.data import load_otb_json

    return load_otb_json(otb_dir / "OTB100.json")


def _load_toy_meta():
    # pytest's importlib mode gives test files no package to import helpers from.
    import importlib.util
    import sys

    name = "_dropgrad_tracking_toy_meta"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_toy_meta.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session", autouse=True)
def toy():
    """The test-only meta-learned tracker of ``_toy_meta.py``, registered once per process as ``toy``."""
    return _load_toy_meta()
