"""Seeding, device selection, autocast and weights_only-safe RNG snapshots."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from dropgrad.runtime import autocast, capture_rng_state, restore_rng_state, seed_everything, select_device


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [float(np.random.standard_normal())],
        torch.rand(3),
        torch.randn(3),
    )


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_seed_everything_reproduces_all_rngs():
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    _assert_same(first, _draws())
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(True)


def test_seed_everything_gives_numpy_all_32_bits():
    seed_everything(2**31 + 5)
    high = np.random.rand(3)
    seed_everything(5)
    assert not np.array_equal(high, np.random.rand(3))  # 2**31 + 5 is not folded onto 5
    seed_everything(2**32 + 5)  # seed % 2**32, as documented
    wrapped = np.random.rand(3)
    np.random.seed(5)
    assert np.array_equal(wrapped, np.random.rand(3))


def test_restore_sets_every_cuda_devices_state(monkeypatch):
    state = capture_rng_state()
    state["torch_cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(3)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.append((device, int(s[0]))))
    restore_rng_state(state)
    assert calls == [(0, 0), (1, 1)]  # both devices present here, each its own state; the third is not here


def test_restore_reproduces_next_draws_including_cached_gaussians():
    seed_everything(7)
    random.gauss(0, 1)  # leaves a cached second gaussian in python's random (gauss_next)
    np.random.standard_normal()  # and in numpy's legacy RNG (has_gauss)
    state = capture_rng_state()
    assert state["python"]["gauss_next"] and state["numpy"]["has_gauss"] == 1
    expected = _draws()
    _draws()  # move everything on
    restore_rng_state(state)
    _assert_same(expected, _draws())


def test_state_survives_weights_only_round_trip():
    seed_everything(3)
    state = capture_rng_state()
    expected = _draws()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["numpy"]["keys"].dtype == torch.int64
    restore_rng_state(loaded)
    _assert_same(expected, _draws())


def test_restore_rejects_foreign_state():
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({"python": 1})
    state = capture_rng_state()
    del state["numpy"]
    with pytest.raises(ValueError, match="malformed"):
        restore_rng_state(state)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device"):
        select_device("tpu")
    with pytest.raises(ValueError, match="--device 'nonsense'"):
        select_device("nonsense")


def test_select_device_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=r"--device .*available: cpu only"):
            select_device(spec)


def test_select_device_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"cuda:3.*available: cpu, cuda:0"):
        select_device("cuda:3")
    with pytest.raises(ValueError, match=r"cuda:1.*does not exist"):
        select_device("cuda:1")  # one device: cuda:0 only


def test_autocast():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), enabled=True):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert (x @ x).dtype == torch.float32
