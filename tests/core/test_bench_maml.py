"""Smoke tests of tools/bench_maml.py (issue 7's benchmark): it runs on a CPU, prints one table,
turns failures into rows, and writes --json. No timing is asserted (benchmarks print tables).

The full ``--quick`` run (every configuration: 24 s on 2 idle cores, minutes on a loaded
machine) is marked slow; the default run covers one configuration, a timeout and the table code.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "bench_maml.py"
CONFIGS = ("resnet18-fo", "resnet18-so", "conv4-fo")


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--json", str(out), *args],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads(out.read_text())


def _table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config "))
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


@pytest.mark.slow
def test_quick_cpu_run_prints_every_configuration(tmp_path):
    proc, data = _run(tmp_path)
    assert "torch" in proc.stdout and "device: CPU" in proc.stdout
    printed = _table_rows(proc.stdout)
    assert {r[0] for r in printed} == set(CONFIGS)
    assert len(printed) == len(data["rows"])
    for row in data["rows"]:
        res = row["result"]
        assert res["status"] == "ok", row
        assert res["tasks_per_s_off"] > 0 and res["tasks_per_s_on"] > 0 and res["peak_mem_bytes"] > 0
        if "check_max_abs_diff" in res:
            assert res["check_max_abs_diff"] < 1e-10, row
    # ours against the naive loop of the same run, and one summary line per configuration
    assert all(r.get("vs_naive") for r in data["rows"] if r["impl"] != "naive")
    assert [s.split(":")[0] for s in data["summary"]] == list(CONFIGS)


def test_quick_cpu_run_of_one_configuration(tmp_path):
    impls = "naive,loop,vmap+bf16+chunk2+ckpt,loop+compile"
    proc, data = _run(tmp_path, "--configs", "conv4-fo", "--impls", impls)
    assert [r["impl"] for r in data["rows"]] == impls.split(",")
    for row in data["rows"]:
        res = row["result"]
        assert res["status"] == "ok", row
        assert res["check_max_abs_diff"] < 1e-10  # float64 against the per-task loop
        assert res["tasks_per_s_on"] > 0 and "overhead_pct" in res
    printed = _table_rows(proc.stdout)
    assert [r[0] for r in printed] == ["conv4-fo"] * 4
    assert "vs naive" in proc.stdout and "DG overhead" in proc.stdout and "peak GiB" in proc.stdout
    assert data["device_type"] == "cpu" and data["torch"]
    # the compiled row's warm-up, which holds its compiling, is printed; the others' is in the JSON only
    warmup = data["rows"][-1]["result"]["warmup_s"]
    assert warmup > 0 and all("warmup_s" in r["result"] for r in data["rows"])
    assert f"warm-up of the compiled rows (compiling included): conv4-fo loop+compile {warmup:.1f} s" in proc.stdout


def test_min_time_times_more_steps_than_iters(tmp_path):
    bench = _load_module()
    spec = {"config": "conv4-fo", "model": "conv4", "order": "first", "impl": "loop", "px": 32, "tasks": 1, "ways": 2,
            "shots": 1, "queries": 1, "steps": 1, "warmup": 0, "iters": 1, "device": "cpu", "check": False}
    assert bench.run_row(bench.RowConfig(**spec))["iters"] == 1
    res = bench.run_row(bench.RowConfig(**spec, min_time_s=0.3))
    assert res["status"] == "ok" and res["iters"] > 1
    # the rate is over every timed step: iters steps took iters * step_s seconds
    assert res["tasks_per_s_on"] == pytest.approx(1 / res["step_s_on"])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--min-time-s", "-1"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2 and "--min-time-s must be >= 0, got -1" in proc.stderr


def test_a_row_over_its_time_cap_becomes_a_row(tmp_path):
    proc, data = _run(tmp_path, "--configs", "conv4-fo", "--impls", "loop,vmap", "--timeout-s", "0.001")
    assert [r["result"]["status"] for r in data["rows"]] == ["timeout", "timeout"]
    assert proc.stdout.count("TIMEOUT") == 2


def _load_module():
    sys.path.insert(0, str(SCRIPT.parent))
    return importlib.import_module("bench_maml")


def test_every_row_builds_compile_options_maml_accepts():
    from dropgrad.inner import _compile_kwargs

    bench = _load_module()
    assert bench.IMPLS["loop+bf16+cl+autotune+graph"].compile_forward() == {"mode": "max-autotune-no-cudagraphs"}
    assert bench.IMPLS["loop+bf16+cl+compile+combo+graph"].compile_forward() == {"options": {"combo_kernels": True}}
    assert bench.IMPLS["loop+bf16+cl+compile+graph"].compile_forward() is True
    assert bench.IMPLS["fold+bf16+cl+compile+combo+cdt+unfold+grouped+graph"].compile_forward() == {
        "options": {"combo_kernels": True, "coordinate_descent_tuning": True}}
    assert bench.IMPLS["fold+bf16+cl+compile+combosame+unfold+grouped+graph"].compile_forward() == {
        "options": {"combo_kernels": True, "combo_kernel_allow_mixed_sizes": 0}}
    for name, impl in bench.IMPLS.items():
        flag = impl.compile_forward()
        backend = bench.stock_inductor if impl.stock_pool else "inductor"
        assert flag is False if not impl.compile else _compile_kwargs(flag)["backend"] == backend, name
        assert bench.extra_seconds(impl) >= (bench.COMPILE_EXTRA_S if impl.compile else 0.0), name


def test_rows_with_compiled_forms_give_them_to_the_learner():
    import dropgrad

    bench = _load_module()
    assert bench.IMPLS["fold+bf16+cl+compile+combo+graph"].folded_forms() is None
    assert bench.IMPLS["fold+bf16+cl+compile+combo+unfold+pwpool+graph"].folded_forms() == {
        "pointwise_max_pool": True, "channel_multiple": 1, "unfold_depth": 27, "grouped_tasks": False,
        "indexed_pool_backward": False, "triton_pool": False}
    assert bench.IMPLS["fold+bf16+cl+compile+combo+unfold+grouped+graph"].folded_forms()["grouped_tasks"] is True
    assert bench.IMPLS["fold+bf16+cl+compile+combo+unfold+grouped+idxpool+graph"].folded_forms() == {
        "pointwise_max_pool": False, "channel_multiple": 1, "unfold_depth": 27, "grouped_tasks": True,
        "indexed_pool_backward": True, "triton_pool": False}
    assert bench.IMPLS["fold+bf16+cl+compile+unfold+grouped+tpool+graph"].folded_forms()["triton_pool"] is True
    assert bench.IMPLS["fold+bf16+cl+compile+combo+pad8+graph"].folded_forms()["channel_multiple"] == 8
    rows = [name for name, impl in bench.IMPLS.items() if impl.folded_forms() is not None]
    assert len(rows) >= 5
    for name in rows:  # every such row builds a learner that takes its forms (checked in MAML)
        impl = bench.IMPLS[name]
        learner = dropgrad.MAML(torch.nn.Linear(2, 2), compile_forward=impl.compile_forward(),
                                batch_with=impl.batch_with, folded_forms=impl.folded_forms())
        assert learner.folded_forms, name


def _square(x):
    return (x * x).sum()


def test_each_compiled_row_compiles_afresh_and_one_that_compiles_nothing_is_an_error(monkeypatch):
    # Rows in one process share Dynamo's cache: without a reset a later row reuses (or, past
    # the recompile limit, skips) compilation, and would time an eager step under its name.
    bench = _load_module()
    compiled = torch.compile(_square, backend="eager")
    x = torch.ones(3)
    monkeypatch.setattr(bench, "row_steps", lambda row, device: {False: lambda: compiled(x), True: lambda: compiled(x)})
    row = bench.RowConfig("conv4-fo", "conv4", "fo", "loop+bf16+cl+compile+graph", 84, 1, 5, 1, 1, 1, 1, 1, "cpu", check=False)
    for _ in range(3):
        assert bench._run_row(row)["status"] == "ok"
    monkeypatch.setattr(bench, "row_steps", lambda row, device: {False: lambda: _square(x), True: lambda: _square(x)})
    result = bench._run_row(row)
    assert result["status"] == "error" and "compiled no graph" in result["message"]


def test_a_crashed_row_says_why_and_keeps_the_end_of_its_stderr(monkeypatch):
    # An abort (exit -6) ends with stack frames; the row must name the exception, not a frame.
    bench = _load_module()
    abort = ("W1128 warning line\nterminate called after throwing an instance of 'c10::Error'\n"
             "  what():  CUDA error: misaligned address\nException raised from c10_cuda_check at x.cpp:1\n"
             "frame #0: f + 0x1\nframe #31: _start + 0x25\n")
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, -6, "", abort))
    row = bench.RowConfig("conv4-fo", "conv4", "fo", "loop", 84, 1, 5, 1, 1, 1, 1, 1, "cpu", check=False)
    [result] = bench.run_in_subprocess([row], 10.0)
    assert result["status"] == "error"
    assert result["message"] == "exit -6: what():  CUDA error: misaligned address"
    assert result["stderr_tail"][-1] == "frame #31: _start + 0x25"
    assert bench.crash_reason("Traceback\n  File x\nRuntimeError: boom\n") == "RuntimeError: boom"
    assert bench.crash_reason("") == "(no stderr)"


def test_failed_rows_are_reported_and_the_best_row_is_marked():
    bench = _load_module()
    ok = lambda rate, gib: {"status": "ok", "tasks_per_s_off": rate * 1.01, "tasks_per_s_on": rate,
                            "overhead_pct": 1.0, "peak_mem_bytes": gib * 2**30, "check_max_abs_diff": 0.0}
    rows = [
        ("resnet18-so", "naive", ok(3.0, 28.0)),
        ("resnet18-so", "vmap+bf16", ok(20.0, 20.0)),  # fastest, but over the 14 GiB target
        ("resnet18-so", "vmap+bf16+chunk2", ok(13.0, 9.0)),
        ("resnet18-so", "vmap+bf16+cl", {"status": "nyi", "message": "NotImplementedError: batch_norm"}),
        ("resnet18-so", "loop", {"status": "oom", "message": "CUDA out of memory"}),
    ]
    data = {"device": "fake", "device_type": "cuda", "torch": "x",
            "settings": {**bench.SETTINGS["full"]},
            "rows": [{"config": c, "px": 224, "impl": i, "result": r} for c, i, r in rows]}
    bench.summarise(data)
    table = bench.format_table(data)
    assert "NYI: NotImplementedError" in table and "OOM: CUDA out of memory" in table
    best = [r["impl"] for r in data["rows"] if r.get("best")]
    assert best == ["vmap+bf16+chunk2"]  # the fastest that meets the memory target
    assert data["rows"][2]["vs_naive"] == pytest.approx(13.0 / 3.0)
    assert "vmap+bf16+chunk2 13 tasks/s with DropGrad (target >= 12: met), peak 9.00 GiB (target <= 14: met)" \
        in data["summary"][0]


def test_the_queued_rate_gets_a_column_and_a_note_but_the_targets_are_judged_on_the_synced_one():
    bench = _load_module()
    row = {"status": "ok", "tasks_per_s_off": 395.0, "tasks_per_s_on": 390.0, "tasks_per_s_on_queued": 420.0,
           "overhead_pct": 1.0, "peak_mem_bytes": 2**30}
    data = {"device": "fake", "device_type": "cuda", "torch": "x", "settings": {**bench.SETTINGS["full"]},
            "rows": [{"config": "conv4-fo", "px": 84, "impl": "fold+bf16+cl+compile+combo+graph", "result": row},
                     {"config": "conv4-fo", "px": 84, "impl": "vmap", "result": {"status": "oom", "message": "m"}}]}
    bench.summarise(data)
    table = bench.format_table(data)
    assert "on, queued" in table and "targets are judged on 'tasks/s on'" in table
    assert "390 tasks/s with DropGrad (420 queued) (target >= 400: NOT met)" in data["summary"][0]
    header = next(line for line in table.splitlines() if line.startswith("config "))
    assert [c.strip() for c in header.split("  ") if c.strip()][:7] == [
        "config", "px", "impl", "tasks/s off", "tasks/s on", "on, queued", "DG overhead"]
    first = next(line for line in table.splitlines() if line.startswith("conv4-fo "))
    assert first.split()[3:7] == ["*", "395", "390", "420"]  # the best row's mark, then the rates


def test_gpu_state_reads_nvidia_smi_and_goes_into_the_table_header(tmp_path, monkeypatch):
    bench = _load_module()
    common = bench.common
    fake = tmp_path / "nvidia-smi"  # refuses the newest field once, as an older driver would
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$(dirname "$0")/calls"\n'
        'case "$1" in *clocks_throttle_reasons*) echo "Field is not a valid field to query." >&2; exit 2;; esac\n'
        'echo "1980, 1980, 3201, 132.50, 700.00, 41, P0"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{common.os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    state = common.gpu_state()
    assert state == {"clocks.sm": "1980", "clocks.max.sm": "1980", "clocks.mem": "3201", "power.draw": "132.50",
                     "power.limit": "700.00", "temperature.gpu": "41", "pstate": "P0"}
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and all(c.endswith("--id=3") for c in calls)
    line = common.format_gpu_state(state)
    assert line == "SM 1980/1980 MHz, memory 3201 MHz, 132.50/700.00 W, 41 C, P0"
    data = {"device": "fake", "device_type": "cuda", "torch": "x", "settings": {**bench.SETTINGS["full"]},
            "rows": [], "gpu_state": {"start": state, "end": None}, "summary": []}
    assert f"GPU state (nvidia-smi): start: {line}; end: not read" in bench.format_table(data)
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert common.gpu_state() is None and common.format_gpu_state(None) == ""


@pytest.mark.parametrize("rate, overhead, verdicts", [
    (11.97, 1.4, ("11.97 tasks/s with DropGrad (target >= 12: NOT met)", "(target <= 2%: met)")),
    (12.0, 2.04, ("12 tasks/s with DropGrad (target >= 12: met)", "+2.0% (target <= 2%: NOT met)")),
])
def test_the_summary_judges_the_targets_on_unrounded_numbers(rate, overhead, verdicts):
    bench = _load_module()
    result = {"status": "ok", "tasks_per_s_off": rate, "tasks_per_s_on": rate, "overhead_pct": overhead,
              "peak_mem_bytes": 6.2 * 2**30, "check_max_abs_diff": None}
    data = {"device": "fake", "device_type": "cuda", "torch": "x", "settings": {**bench.SETTINGS["full"]},
            "rows": [{"config": "resnet18-so", "px": 224, "impl": "loop+bf16+cl+compile-so+graph", "result": result}]}
    bench.summarise(data)
    for verdict in verdicts:
        assert verdict in data["summary"][0]


@pytest.mark.parametrize("by_op", [False, True])
def test_profile_meta_step_prints_the_step_time_and_its_top_operators_on_a_cpu(by_op):
    script = SCRIPT.parent / "profile_meta_step.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--device", "cpu", "--config", "conv4-fo", "--impl", "vmap+graph",
         "--steps", "1", "--warmup", "0", "--top", "5"] + (["--by-op"] if by_op else []),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert "impl vmap+graph" in lines[0] and lines[1].startswith("warm-up: 0 steps in ") and lines[2].startswith("step time ")
    assert int(lines[3].split()[4]) > 0 and lines[3].startswith("computing calls per step: ")
    table = lines[lines.index(next(l for l in lines if l.strip().startswith("share"))) + 1:]
    assert len(table) == 5 and all(l.split()[0].endswith("%") for l in table)
    assert any("convolution" in l for l in table)
    # --by-op: one row per operator and input shapes, e.g. "aten::convolution  [[12, 3, 32, 32], ...]"
    assert all(("  [[" in l) == by_op for l in table)


def test_profile_meta_step_counts_inductor_kernels_on_a_cpu():
    # A compiled step's computing calls are its generated (fused) kernels and ATen's convolutions:
    # fewer than the eager step's operators, and more than its convolutions alone.
    counts = {}
    for impl in ("loop", "loop+compile"):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT.parent / "profile_meta_step.py"), "--quick", "--device", "cpu", "--config",
             "conv4-fo", "--impl", impl, "--steps", "1", "--warmup", "1", "--top", "40"],
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        lines = proc.stdout.splitlines()
        convolutions = sum(float(l.split()[2]) for l in lines if l.split()[-1:] == ["aten::convolution"])
        counts[impl] = (int(lines[3].split()[4]), convolutions)
        # --quick has as many support as query images: one graph serves the inner steps (theta's
        # first one included) and the query
        assert lines[1].endswith("(compiling included; Dynamo compiled 1 graph)") == (impl == "loop+compile"), lines[1]
    (eager, _), (compiled, convolutions) = counts["loop"], counts["loop+compile"]
    assert 0 < convolutions < compiled < eager


def test_bench_evaluation_runs_on_a_cpu_and_checks_each_row_against_the_loop(tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "bench_evaluation.py"), "--quick", "--device", "cpu", "--models", "conv4",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"loop", "vmap", "loop+graph", "vmap+graph"}
    assert rows["loop"]["vs_loop"] == 1.0 and rows["loop+graph"]["max_abs_diff"] == 0.0  # eager on a CPU: same calls
    assert rows["vmap"]["max_abs_diff"] < 1e-4 and all(r["tasks_per_s"] > 0 for r in rows.values())
    assert rows["vmap+graph"]["ran_eagerly"] and not rows["vmap"]["ran_eagerly"]
    assert "ran eagerly: CUDA graphs need a GPU" in proc.stdout and "device: CPU" in proc.stdout


def test_meta_step_traffic_counts_bytes_that_follow_the_image_size():
    sys.path.insert(0, str(SCRIPT.parent))
    traffic = importlib.import_module("meta_step_traffic")
    # Activations grow with the pixels, so the counted bytes of convolutions must too: an
    # independent check that the count reads the real tensors (4x the pixels, > 3x the bytes).
    small, large = (traffic.measure("conv4", size, "second", "loop", False, 1, 0) for size in (16, 32))
    conv = [k for k in small.bytes if k.startswith("convolution ")]
    assert conv and all(large.bytes[k] > 3 * small.bytes[k] for k in conv)
    assert small.calls == large.calls, "the same operators at any size"
    assert not any(k.split()[0] in traffic._NO_DATA for k in small.bytes), "views move no data"
    decomposed = traffic.measure("conv4", 16, "second", "decomposed", False, 1, 0)
    assert any(k.startswith("var_mean") for k in decomposed.calls) and not any(k.startswith("var_mean") for k in small.calls)
    # Folded tasks: one convolution call per task and layer, as in the loop; BatchNorm once for all.
    loop, fold = (traffic.measure("conv4", 16, "first", v, False, 2, 0) for v in ("loop", "fold"))
    conv = "convolution (float32)"
    assert fold.calls[conv] == loop.calls[conv] > 0
    assert fold.calls["var_mean (float32)"] == loop.calls["native_batch_norm (float32)"] // 2


def test_a_crash_reason_is_the_last_error_and_the_tail_the_last_40_lines(monkeypatch):
    bench = _load_module()
    # A chained traceback: the last error line is the one that ended the process.
    chained = ("Traceback\nKeyError: 'x'\n\nDuring handling of the above exception, another exception occurred:\n"
               "Traceback\n  File y\nRuntimeError: CUDA error: an illegal memory access was encountered\n")
    assert bench.crash_reason(chained) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert bench.crash_reason("first\nSegmentation fault\n") == "Segmentation fault"
    assert bench.crash_reason("CUDA error: an illegal memory access was encountered\nframe #0: f\n") == \
        "CUDA error: an illegal memory access was encountered"
    long = "".join(f"frame #{i}: f\n" for i in range(100))
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, -11, "", long))
    row = bench.RowConfig("conv4-fo", "conv4", "fo", "loop", 84, 1, 5, 1, 1, 1, 1, 1, "cpu", check=False)
    [result] = bench.run_in_subprocess([row], 10.0)
    assert result["message"] == "exit -11: frame #99: f"
    assert result["stderr_tail"] == [f"frame #{i}: f" for i in range(60, 100)]


def test_rows_that_tune_kernel_blocks_get_the_autotune_compile_time():
    bench = _load_module()
    cdt = bench.IMPLS["fold+bf16+cl+compile+combo+cdt+unfold+grouped+graph"]
    assert bench.extra_seconds(cdt) == bench.AUTOTUNE_EXTRA_S
    assert bench.extra_seconds(bench.IMPLS["fold+bf16+cl+compile+combosame+unfold+grouped+graph"]) == bench.COMPILE_EXTRA_S
    alone = bench.Impl(batched=True, batch_with="fold", compile=True, tune_blocks=True)
    assert alone.compile_forward() == {"options": {"coordinate_descent_tuning": True}}
