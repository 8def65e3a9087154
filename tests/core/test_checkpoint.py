"""Atomic checkpoint writing and weights_only-only loading with clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from dropgrad.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from dropgrad.runtime import capture_rng_state


def _payload() -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng_state(),
            "epoch": 2, "best": None, "name": "run", "sizes": [1, 2.5]}


def test_round_trip(tmp_path):
    payload = _payload()
    path = save_checkpoint(tmp_path / "sub" / "last.pt", payload)
    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["version"] == CHECKPOINT_VERSION
    assert loaded["epoch"] == 2 and loaded["best"] is None and loaded["sizes"] == [1, 2.5]
    for k, v in payload["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    assert "format" not in payload  # the caller's dict is not modified
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left


def test_truncated_file_is_a_checkpoint_error_naming_it(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _payload())
    save_checkpoint(tmp_path / "best.pt", {"model": {}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message and "best.pt" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torch traceback
    assert isinstance(info.value, ValueError)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class Arbitrary:
    """A class a safe load must never instantiate."""

    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickle_with_arbitrary_class_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": Arbitrary()}, f)
    with pytest.raises(CheckpointError, match="safe .*load refuses.*print"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": Arbitrary()}, protocol=2))  # a legacy (non-zip) pickle
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_saving_an_unloadable_payload_fails_at_save_time(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="weights_only"):
        save_checkpoint(path, {"step": 2, "obj": Arbitrary()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_foreign_payloads_are_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a dropgrad checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "version": True}, tmp_path / "bool.pt")  # True == 1, but not a version
    with pytest.raises(CheckpointError, match="version True"):
        load_checkpoint(tmp_path / "bool.pt")


def test_failure_while_writing_leaves_old_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1, "w": torch.ones(1000)})
    before = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # part of the file is written ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file cleaned up


def test_weights_of_another_model_are_one_error_naming_the_file(tmp_path):
    from dropgrad import MetaTrainer, TrainConfig, load_best_model

    def trainer(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(_):
            loss = model(torch.ones(4, model.in_features)).sum()
            loss.backward()
            return {"loss": loss.item()}

        return MetaTrainer(tmp_path, TrainConfig(epochs=1, steps_per_epoch=1, monitor="train_loss", progress=False),
                           model, opt, step_fn=step, logger=lambda line: None)

    trainer(nn.Linear(2, 1)).fit()
    best = tmp_path / "checkpoints" / "best.pt"
    with pytest.raises(CheckpointError, match=rf"{best} holds the weights of another model \(other shapes: weight \(1, 2\), here \(1, 3\)\)"):
        load_best_model(tmp_path, nn.Linear(3, 1))
    with pytest.raises(CheckpointError, match=r"last.pt holds the weights of another model \(missing: .*; unexpected: weight, bias\)"):
        trainer(nn.Sequential(nn.Linear(2, 1))).fit(resume=True)
