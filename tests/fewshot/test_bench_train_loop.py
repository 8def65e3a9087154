"""Smoke tests of tools/bench_train_loop.py: fewshot-train's loop against its meta-step, on a CPU.
No timing is asserted (benchmarks print tables)."""

import importlib
import json
import sys
from pathlib import Path

import pytest
from dropgrad import training
from dropgrad.inner import FOLDED_FORMS_OFF
from dropgrad_fewshot import cli
from dropgrad_fewshot.data import CachedEpisodeBatches

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(TOOLS))
    return importlib.import_module("bench_train_loop")


def test_rows_map_to_fewshot_train_options_or_are_refused(tool):
    impls = tool.bench_maml.IMPLS
    assert tool.train_options(impls["fold+bf16+cl+compile+combo+graph"]) == [
        "--first-order", "--batched", "fold", "--cuda-graph", "on", "--bf16", "--channels-last", "--compile",
        "--compile-combo"]
    assert tool.train_options(impls["loop+bf16+cl+graph+streams4"]) == [
        "--first-order", "--batched", "off", "--cuda-graph", "on", "--bf16", "--channels-last", "--task-streams", "4"]
    assert tool.train_options(impls["vmap"])[:3] == ["--first-order", "--batched", "on"]
    assert tool.train_options(impls["fold+bf16+cl+compile+combo+unfold+pwpool+graph"])[-2:] == [
        "--compile-forms", "pwpool,unfold"]
    assert tool.train_options(impls["fold+bf16+cl+compile+combo+pad8+graph"])[-2:] == ["--compile-forms", "pad8"]
    assert tool.train_options(impls["fold+bf16+cl+compile+combo+unfold+grouped+graph"])[-2:] == [
        "--compile-forms", "unfold,grouped"]
    assert tool.train_options(impls["fold+bf16+cl+compile+combo+unfold+grouped+idxpool+graph"])[-2:] == [
        "--compile-forms", "unfold,grouped,idxpool"]
    assert tool.train_options(impls["fold+bf16+cl+compile+unfold+grouped+tpool+graph"])[-2:] == [
        "--compile-forms", "unfold,grouped,tpool"]
    for name in ("naive", "fold+bf16+cl+compile+stockpool+graph", "vmap+bf16+ckpt", "loop+bf16+cl+autotune+graph",
                 "fold+bf16+cl+compile+combo+cdt+unfold+grouped+graph", "fold+bf16+cl+compile+combosame+unfold+grouped+graph"):
        with pytest.raises(ValueError):
            tool.train_options(impls[name])
    odd = tool.bench_maml.Impl(batched=True, batch_with="fold", compile=True, unfold_depth=9)
    with pytest.raises(ValueError, match="do not give {'unfold_depth': 9}"):
        tool.compile_forms_options(odd)
    for name, impl in impls.items():  # every row with forms maps to options fewshot-train accepts or refuses
        if impl.folded_forms() and not impl.stock_pool and not impl.tune_blocks and not impl.combo_same_size:
            args = cli.train_parser().parse_args(tool.train_options(impl))
            if impl.combo and impl.grouped_tasks:  # crashed on an H200: refused (docs/performance.md)
                with pytest.raises(ValueError, match="--compile-forms grouped with --compile-combo"):
                    cli.load_train_config(args)
                continue
            cfg = cli.load_train_config(args)
            assert cfg.folded_forms == {k: v for k, v in impl.folded_forms().items() if v != FOLDED_FORMS_OFF[k]}, name


def test_quick_run_reports_the_step_and_the_training_loops(tool, tmp_path, capsys):
    out = tmp_path / "loop.json"
    assert tool.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("step_tasks_per_s", "train_tasks_per_s", "train_unstaged_tasks_per_s", "train_per_step_reads_tasks_per_s"):
        assert report[key] > 0, key
    printed = capsys.readouterr().out
    assert "fewshot-train, per-step reads" in printed and "vs step" in printed
    assert "fewshot-train, batches in step stream" in printed
    assert "training complete" not in printed  # fewshot-train's own log stays in its run directory
    assert training._as_floats.__name__ == "_as_floats"  # the per-step-reads patch is undone
    assert CachedEpisodeBatches.stage.__name__ == "stage"  # and the unstaged one


def test_too_few_steps_for_three_records_is_refused(tool, capsys):
    with pytest.raises(SystemExit):
        tool.main(["--quick", "--steps", "20"])
    assert "--steps must be >= 30 (three train records), got 20" in capsys.readouterr().err
