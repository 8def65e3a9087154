"""Shared test settings: `gpu` tests skip without CUDA; real data samples come from ../shared/data."""

import os
from pathlib import Path

# The tests run many small tensor ops; with torch's default of one thread per core, a second
# thread spins waiting for a busy core on a loaded 2-core machine (measured: 10-40x slower
# meta-steps). One thread, inherited by the CLI subprocesses too, unless the caller sets it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data samples in ../shared/data (skips the test when that folder is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (the ../shared folder beside the repo)")
    return SHARED_DATA


@pytest.fixture
def no_tf32():
    """Full fp32 convolutions and matmuls for GPU comparisons: with TF32 (cuDNN's default) the
    grouped convolutions vmap runs and the per-task loop's plain ones round differently, 5e-3
    apart on ResNet-18 after 2 inner steps (seen on an H200); with it off they agree to 1e-3."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
