"""fewshot-train under torchrun: 2 gloo CPU processes against 1 process doing the same tasks.

The launches are real: ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m
dropgrad_fewshot.cli -- ...`` in a subprocess with ``OMP_NUM_THREADS=1`` (``--`` shields
fewshot-train's ``--p`` from torchrun's own option parser).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dropgrad import load_checkpoint
from dropgrad_fewshot import cli

TINY = [
    "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2", "--inner-steps", "2",
    "--epochs", "2", "--episodes-per-epoch", "4", "--val-episodes", "8", "--test-episodes", "8",
    "--no-progress", "--device", "cpu",
]


def torchrun(*args: str, nproc: int = 2, timeout: float = 150) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dropgrad_fewshot.cli", "--", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.fixture
def one_thread():
    """The in-process reference run on one thread, as the torchrun ranks are: CPU kernels may
    split a reduction differently with more threads, which would break the bitwise comparisons
    whatever the caller's OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_train_exactly_like_one_and_only_rank_0_writes(tmp_path, capsys, one_thread):
    one, two = tmp_path / "one", tmp_path / "two"
    # Meta-batch 2 on 2 ranks: each rank adapts one task, weighted 1/2, and the all-reduce adds
    # the two halves, the very addition the single process's per-task loop makes; so with no
    # DropGrad noise the runs agree bit for bit (tolerance 0). With more tasks per rank the sum
    # is associated differently (float32: ~1e-7), see test_uneven_split_with_gaussian_dropgrad.
    proc = torchrun("--out", str(two), "--meta-batch", "2", "--dropgrad", "none", *TINY)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert cli.train_main(["--out", str(one), "--meta-batch", "2", "--dropgrad", "none", *TINY]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Rank 0 alone wrote the run directory and printed: the same files, each record once, one
    # results line on stdout; the test scores (sharded over the ranks) are the same.
    assert files(two) == files(one)
    ra, rb = records(one), records(two)
    assert [(r["event"], r["step"]) for r in rb] == [(r["event"], r["step"]) for r in ra]
    for x, y in zip(ra, rb):
        assert y["loss" if x["event"] == "train" else "val_acc"] == pytest.approx(
            x["loss" if x["event"] == "train" else "val_acc"], abs=1e-5)
    printed = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1
    results = json.loads(printed[0])
    assert results == json.loads((two / "results.json").read_text())
    assert results.pop("processes") == 2 and single.pop("processes") == 1
    assert results == single
    log = (two / "log.txt").read_text()
    assert log.count("training complete") == 1 and "distributed: 2 processes (gloo)" in log


def test_an_error_on_one_rank_before_training_stops_every_rank(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "other.txt").write_text("another run's file\n")
    t0 = time.perf_counter()
    # Rank 0 refuses the non-empty run directory; rank 1 (which does not check it) must not
    # train or hang: it learns of the failure at the end of the setup and exits too.
    proc = torchrun("--out", str(out), "--meta-batch", "2", *TINY, timeout=120)
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    assert both.count("fewshot-train: error: run directory") == 1, both[-3000:]
    assert "Traceback" not in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["other.txt"]
    assert time.perf_counter() - t0 < 110


@pytest.mark.slow
def test_uneven_split_with_gaussian_dropgrad_is_reproducible_and_close_to_one_process(tmp_path, one_thread):
    # Meta-batch 3 on 2 ranks: 2 + 1 tasks, gradients weighted 2/3 and 1/3.
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        proc = torchrun("--out", str(run), *TINY, "--meta-batch", "3", "--episodes-per-epoch", "6", "--p", "0.2")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    a, b = weights(runs[0]), weights(runs[1])
    for name in a:  # per-rank seeds: the same noise in every launch
        assert torch.equal(a[name], b[name]), name
    # Without noise the uneven split matches one process up to float32 summation order (the
    # weights 2/3, 1/3 and the sum over ranks associate differently). Adam divides each gradient
    # by its own running magnitude, so elements whose meta-gradient is at rounding level move by
    # up to +-lr per step whatever the order: above all the conv biases feeding BatchNorm, whose
    # meta-gradient is exactly 0 in real arithmetic. Hence: conv biases within 10 lr (4 steps of
    # lr 1e-3); every other element within 1e-4, and 99.9% of them within 1e-6 (measured: 3 of
    # 111,875 elements above 1e-6, the largest 4.3e-6).
    none = [tmp_path / "n2", tmp_path / "n1"]
    proc = torchrun("--out", str(none[0]), *TINY, "--meta-batch", "3", "--episodes-per-epoch", "6", "--dropgrad", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli.train_main(["--out", str(none[1]), *TINY, "--meta-batch", "3", "--episodes-per-epoch", "6",
                           "--dropgrad", "none"]) == 0
    x, y = weights(none[0]), weights(none[1])
    rest = []
    for name in x:
        diff = (x[name] - y[name]).abs().flatten()
        if name.endswith("conv.bias"):
            assert diff.max() <= 1e-2, name
        else:
            rest.append(diff)
    rest = torch.cat(rest)
    assert rest.max() <= 1e-4 and (rest > 1e-6).float().mean() < 1e-3
    # DropGrad on rank 1 draws from its own stream: the noisy run differs from the noise-free one.
    assert any(not torch.equal(a[name], x[name]) for name in a)


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_weights(tmp_path):
    # Gaussian DropGrad draws from each rank's own RNG stream, so only a per-rank resume of
    # those streams (last.pt keeps every rank's) reproduces the uninterrupted run bit for bit.
    args = [*TINY, "--meta-batch", "2", "--epochs", "3", "--episodes-per-epoch", "16"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    proc = torchrun("--out", str(whole), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dropgrad_fewshot.cli", "--", "--out", str(part), *args]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = part / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 150
    while not last.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, 9)  # the launcher and both ranks, mid-run
    run.wait(timeout=30)
    assert load_checkpoint(last)["epoch"] < 3 and not (part / "results.json").exists()

    proc = torchrun("--out", str(part), "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(whole), weights(part)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((part / "results.json").read_text()) == json.loads((whole / "results.json").read_text())
