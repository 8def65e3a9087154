"""dropgrad.distributed: shard maths, and the all-reduce against a single-process reference (gloo, 2 CPU processes)."""

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import dropgrad.distributed
import pytest
import torch
from dropgrad import DistributedContext, DistributedError, load_checkpoint
from dropgrad.distributed import RANK_SEED_STRIDE, shard_bounds
from hypothesis import given
from hypothesis import strategies as st

WORKER = Path(__file__).with_name("_distributed_worker.py")

# float32 sums over 2 ranks in another order than one process's: a few ulps per gradient.
ATOL = 1e-6


def test_doctests():
    result = doctest.testmod(dropgrad.distributed, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@given(st.integers(0, 50), st.integers(1, 9))
def test_shards_partition_the_items_evenly_and_their_weights_sum_to_one(n, world):
    shards = [shard_bounds(n, r, world) for r in range(world)]
    # Naive reference: deal the items out by counting.
    assert [i for s in shards for i in s.indices] == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if n:
        assert sum(s.weight for s in shards) == pytest.approx(1.0)
        assert all(s.weight == pytest.approx(len(s) / n) for s in shards)
    else:
        assert all(s.weight == 0 for s in shards)


def test_uneven_split_examples():
    assert [(s.start, s.stop) for s in (shard_bounds(5, r, 2) for r in range(2))] == [(0, 3), (3, 5)]
    assert [len(shard_bounds(2, r, 4)) for r in range(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="rank must be in"):
        shard_bounds(4, 2, 2)
    with pytest.raises(ValueError, match="n_items"):
        shard_bounds(-1, 0, 2)


def test_env_parsing_and_single_process_context():
    ctx = DistributedContext.from_env({})
    assert (ctx.rank, ctx.world_size, ctx.is_distributed, ctx.is_main) == (0, 1, False, True)
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    ctx = DistributedContext.from_env(env)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (1, 3, 1, False)
    assert ctx.rank_seed(5) == 5 + RANK_SEED_STRIDE
    with pytest.raises(DistributedError, match="MASTER_ADDR"):
        DistributedContext.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK=.x. is not an integer"):
        DistributedContext.from_env({"RANK": "x"})
    with pytest.raises(DistributedError, match="RANK must be in"):
        DistributedContext(rank=2, world_size=2)
    # Under torchrun an explicit GPU index is refused before any process group exists.
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        DistributedContext(rank=0, world_size=2).init("cuda:1")
    # The single-process context: everything passes through, agree() raises the caller's own error.
    single = DistributedContext()
    assert single.init("cpu") == torch.device("cpu")
    assert single.shard(3).slice == slice(0, 3) and single.all_gather_object(7) == [7]
    assert single.broadcast_object({"a": 1}) == {"a": 1}
    single.barrier()
    single.agree()
    with pytest.raises(KeyError):
        single.agree(KeyError("mine"))


def test_fail_votes_once_and_only_while_the_setup_phase_is_open(monkeypatch):
    # A rank failing after agree(final=True) (training started) must not vote: the other ranks
    # are in training collectives, not in agree, and a vote would hang them. Nor does it vote twice.
    monkeypatch.setattr(dropgrad.distributed.dist, "is_initialized", lambda: True)
    for final in (False, True):
        ctx = DistributedContext(rank=0, world_size=2)
        votes = []
        monkeypatch.setattr(ctx, "all_gather_object", lambda obj, votes=votes: votes.append(obj) or [obj, None])
        ctx.agree(final=final)
        assert votes == [None]
        assert ctx.fail(RuntimeError("late")) is (not final)
        assert ctx.fail(RuntimeError("later")) is (not final)
        assert votes == ([None] if final else [None, "late"])


def test_local_rank_defaults_to_the_rank():
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert DistributedContext.from_env(env).local_rank == 1  # one node: rank r uses cuda:r


# ----------------------------------------------------------------- 2 processes
def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """One torchrun launch of 2 gloo processes running every distributed check of this module."""
    out = tmp_path_factory.mktemp("two_ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_all_reduce_of_two_gloo_processes_equals_the_single_process_mean(two_ranks):
    got = torch.load(two_ranks / "reduce.rank0.pt", weights_only=True)
    other = torch.load(two_ranks / "reduce.rank1.pt", weights_only=True)
    # Reference in this process (float64): the mean over all 5 tasks; rank 1's dropped bias
    # gradient makes the bias rank 0's weighted part only.
    worker = _load_worker()
    ref, x, y = worker.model_and_tasks()
    worker.meta_grads(ref, x, y, range(3))
    bias_part = ref[3].bias.grad.clone() * 3 / 5
    stats0 = {n: b.clone() for n, b in ref.named_buffers()}
    ref, x, y = worker.model_and_tasks()
    worker.meta_grads(ref, x, y, range(3, 5))
    stats1 = {n: b.clone() for n, b in ref.named_buffers()}
    ref, x, y = worker.model_and_tasks()
    worker.meta_grads(ref, x, y, range(5))
    expected = {n: p.grad for n, p in ref.named_parameters()}
    expected["3.bias"] = bias_part
    for name, grad in expected.items():
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-12, rtol=0)
        assert torch.equal(got["grads"][name], other["grads"][name]), name  # identical on both ranks
    assert got["unused"] is None and other["unused"] is None
    # Running statistics: the task-weighted mean of the ranks' values; the integer count is rank 0's.
    for name in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(got["buffers"][name], 0.6 * stats0[name] + 0.4 * stats1[name], atol=1e-12, rtol=0)
    assert int(got["buffers"]["1.num_batches_tracked"]) == 3
    for name, buf in got["buffers"].items():
        assert torch.equal(buf, other["buffers"][name]), name
    assert got["metrics"] == other["metrics"] == {"loss": pytest.approx(0.6 * 1 + 0.4 * 2)}
    assert got["votes"] == [0, 10] and got["value"] == other["value"] == {"v": 0}
    assert got["agreed"] == "process 1 of 2 failed before training: bad input on rank 1"
    assert other["agreed"] == "own: bad input on rank 1"


def test_broadcasts_and_reductions_without_a_shard_or_with_explicit_weights(two_ranks):
    got = [torch.load(two_ranks / f"reduce.rank{r}.pt", weights_only=True) for r in (0, 1)]
    # broadcast_module: rank 0's module (seed rank_seed(0) = 0, running_mean + 1) on both ranks.
    torch.manual_seed(0)
    want = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    want[1].running_mean.add_(1)
    expected = {**dict(want.named_parameters()), **dict(want.named_buffers())}
    for rank in (0, 1):
        assert set(got[rank]["broadcast"]) == set(expected)
        for name, value in expected.items():
            assert torch.equal(got[rank]["broadcast"][name], value.detach()), (rank, name)
        assert torch.equal(got[rank]["extra"], torch.zeros(2))  # the extra tensors too
        # float32 gradient of rank 0 only (weight 0.5), kept float32; the int64 count exactly rank 0's.
        assert got[rank]["single"].dtype == torch.float32 and torch.equal(got[rank]["single"], torch.full((3,), 0.125))
        assert int(got[rank]["count"]) == 2**24 + 1
    for rank in (0, 1):
        # Default weight 1/2: the mean, in float64 (float32 would give exactly 1.0).
        mean = 0.5 * (1 + 1e-10) + 0.5 * (1 + 2e-10)
        assert float((got[rank]["fine"] - mean).abs().max()) < 1e-14
        assert got[rank]["plain"] == {"m": pytest.approx(0.5)}
        # Explicit weights 1 and 0: rank 0's values alone; rank 1's NaN gradient and metric do not count.
        assert torch.equal(got[rank]["explicit"], torch.ones(2, dtype=torch.float64))
        assert got[rank]["weighted"] == {"loss": 2.0}


def _records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_meta_trainer_on_two_processes_matches_one_writes_once_and_resumes_exactly(two_ranks, tmp_path):
    # The 2-process run stopped after 2 of 3 epochs and resumed (see _distributed_worker.py).
    one, two = tmp_path / "one", two_ranks / "run"
    _load_worker().train(DistributedContext(), str(one), 3)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(load_checkpoint(two / "checkpoints" / "last.pt")["ranks"]) == 2

    ref = torch.load(f"{one}.rank0.pt", weights_only=True)
    got = [torch.load(f"{two}.rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in (0, 1):
        for a, b in zip(got[rank]["params"], ref["params"]):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        assert got[rank]["summary"]["global_step"] == ref["summary"]["global_step"] == 9
        assert got[rank]["summary"]["best_epoch"] == ref["summary"]["best_epoch"]
    # Each rank resumed its own global RNG stream: 9 draws after its own seed.
    for rank in (0, 1):
        torch.manual_seed(rank * RANK_SEED_STRIDE)
        for _ in range(9):
            torch.randn(())
        assert torch.equal(got[rank]["rng"], torch.get_rng_state()), rank
    # Written once, by rank 0: one train and one val record per epoch; logged losses are the
    # means over all 4 tasks (reduced), as in the single process.
    for event, key in (("train", "loss"), ("val", "val_loss")):
        a, b = _records(two, event), _records(one, event)
        assert len(a) == len(b) == 3
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], abs=1e-6)
    assert len(_records(two, "resume")) == 1
