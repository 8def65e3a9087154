"""MAML++'s cosine annealing of the meta-optimiser (Antoniou et al. 2019, "CA"): on by default for
``--method mamlpp``, off for the others, and the rate it gives per epoch."""

import json
import math

import pytest
import torch
from dropgrad_fewshot import cli
from dropgrad_fewshot.config import FewShotConfig, resolve_defaults
from dropgrad_fewshot.data.episodes import EpisodeBatches
from dropgrad_fewshot.run import MIN_OUTER_LR, outer_lr_scheduler


def _cfg(**changes):
    return resolve_defaults(FewShotConfig(epochs=5, episodes_per_epoch=4, meta_batch=2, progress=False, **changes))


@pytest.mark.parametrize(("method", "expected"), [("mamlpp", "cosine"), ("maml", "constant"), ("metasgd", "constant")])
def test_default_schedule_per_method(method, expected):
    assert _cfg(method=method).outer_lr_schedule == expected


def test_an_explicit_schedule_is_kept():
    assert _cfg(method="mamlpp", outer_lr_schedule="constant").outer_lr_schedule == "constant"
    assert _cfg(method="maml", outer_lr_schedule="cosine").outer_lr_schedule == "cosine"


def test_cosine_anneals_per_epoch_from_outer_lr_to_the_floor():
    cfg = _cfg(method="mamlpp", outer_lr=1e-3)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.outer_lr)
    sched = outer_lr_scheduler(cfg, opt)
    rates = []
    for _ in range(cfg.epochs + 1):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [MIN_OUTER_LR + (1e-3 - MIN_OUTER_LR) * (1 + math.cos(math.pi * e / cfg.epochs)) / 2 for e in range(cfg.epochs + 1)]
    assert rates == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert rates[-1] == pytest.approx(MIN_OUTER_LR)


def test_constant_and_unresolved_configs_have_no_scheduler():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert outer_lr_scheduler(_cfg(method="maml"), opt) is None
    # A run directory written before the option existed resumes with its constant rate.
    old = FewShotConfig(method="mamlpp", epochs=5, episodes_per_epoch=4)
    assert old.outer_lr_schedule is None and outer_lr_scheduler(old, opt) is None


def _epoch_rates(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = {line["epoch"]: line["lr"] for line in lines if "lr" in line}
    return [rates[e] for e in sorted(rates)]


def test_fewshot_train_anneals_mamlpp_and_a_resumed_run_continues_the_schedule(tmp_path, monkeypatch):
    tiny = ["--method", "mamlpp", "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2",
            "--inner-steps", "1", "--meta-batch", "2", "--epochs", "3", "--episodes-per-epoch", "4",
            "--val-episodes", "2", "--test-episodes", "2", "--no-progress"]
    whole = tmp_path / "whole"
    assert cli.train_main(["--out", str(whole), *tiny]) == 0
    want = [MIN_OUTER_LR + (1e-3 - MIN_OUTER_LR) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert _epoch_rates(whole) == pytest.approx(want, rel=1e-6)

    part = tmp_path / "part"
    original = EpisodeBatches.batch
    crashed = []

    def crash_in_third_epoch(self, index):
        if self.tasks_per_batch == 2 and index == 4 and not crashed:  # the third epoch's first training batch
            crashed.append(index)
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(EpisodeBatches, "batch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        cli.train_main(["--out", str(part), *tiny])
    assert cli.train_main(["--out", str(part), "--resume", "--no-progress"]) == 0
    assert crashed and _epoch_rates(part) == pytest.approx(want, rel=1e-6)
