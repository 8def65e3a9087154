"""Shared test settings: `gpu` tests skip without CUDA, `torch_at_least(major, minor, why)` tests on an
older torch; real data samples come from ../shared/data."""

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
    from dropgrad.compiling import torch_release

    gpu_skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); none is available here")
    has_gpu, release = torch.cuda.is_available(), torch_release()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(gpu_skip)
        mark = item.get_closest_marker("torch_at_least")
        if mark is not None:
            major, minor, why = mark.args
            if release < (major, minor):
                item.add_marker(pytest.mark.skip(
                    reason=f"needs torch >= {major}.{minor} (torch {torch.__version__} here): {why}"))


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


@pytest.fixture
def fewshot_run_folder(tmp_path) -> Path:
    """A folder holding a fewshot-train run's config.json (its keys as that app writes them): another
    app's run folder for the tracking and viewpoint CLIs' checks."""
    import json

    run = tmp_path / "fewshot-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "dataset": "glyphs", "way": 5, "shot": 1, "query": 16, "backbone": "conv4", "method": "maml",
        "inner_steps": 5, "meta_batch": 4, "p": 0.1, "dropgrad": "gaussian", "seed": 0, "device": "auto",
        "test_query": 15, "val_episodes": 100, "test_episodes": 600, "episodes_per_epoch": 80, "regularizer": "none",
        "dropout_p": 0.3, "batched": "auto", "cuda_graph": "auto"}))
    return run


@pytest.fixture
def marked_fewshot_run_folder(fewshot_run_folder) -> Path:
    """``fewshot_run_folder`` as fewshot-train writes it now: its config.json names the app."""
    import json

    path = fewshot_run_folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "app": "fewshot-train"}))
    return fewshot_run_folder
