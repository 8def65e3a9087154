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
