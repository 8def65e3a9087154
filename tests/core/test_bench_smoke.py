"""Smoke test of tools/bench_inner_loop.py: a --quick CPU run completes and reports every config.

No timing is asserted (benchmarks print tables; tests only check that they run). Only conv4:
each config is a fresh process (~3 s of torch start-up on 2 cores), and adding resnet18 would
take the test past a minute without exercising any other code path than its model builder.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "bench_inner_loop.py"


def test_quick_cpu_run_reports_every_config(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--models", "conv4", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())

    assert data["equivalence"]["passed"], data["equivalence"]
    assert data["equivalence"]["max_abs_diff"] < 1e-6

    expected = {(m, o, i) for m in ("conv4",) for o in ("first", "second") for i in ("ours", "naive")}
    rows = {(r["model"], r["order"], r["impl"]): r for r in data["rows"]}
    assert set(rows) == expected
    for key, row in rows.items():
        for mode in ("off", "on"):
            run = row[mode]
            assert run["status"] == "ok", (key, mode, run)
            assert run["tasks_per_s"] > 0, (key, mode, run)
            assert run["peak_mem_bytes"] > 0, (key, mode, run)
    assert len(data["runs"]) == 2 * len(expected)

    # the printed table names every row and the ratio column
    assert "ours / naive" in proc.stdout
    table, noise_table = proc.stdout.split("DropGrad operator alone")
    assert table.count("\nconv4 ") == len(expected)
    # the noise-operator table: fused and per-tensor times next to one forward+backward
    (noise,) = data["noise_op"]
    assert noise["model"] == "conv4" and noise["tensors"] == 18
    assert noise["fused_ms"] > 0 and noise["per_tensor_ms"] > 0 and noise["support_fwd_bwd_ms"] > 0
    assert noise_table.count("\nconv4 ") == 1
