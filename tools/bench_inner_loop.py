#!/usr/bin/env python
"""Inner-loop benchmark: ``dropgrad.MAML`` against a naive research-code MAML, DropGrad off and on.

One meta-step is one meta-batch of ``--tasks`` N-way K-shot Q-query tasks: per task, ``--steps``
inner SGD steps on the support set, then the query cross-entropy, back-propagated into the
meta-parameters (mean over tasks; no optimiser step, for both implementations).

* ``ours``:  ``dropgrad.MAML(...).meta_backward(tasks, batched=False)`` (one fused noise draw and
  one ``_foreach`` update per inner step).
* ``naive``: the style of the original research code: ``torch.autograd.grad`` over the parameter
  list, then a Python loop over the tensors that draws each tensor's noise separately and
  updates ``w - lr * g * n`` one tensor at a time; forward with ``torch.func.functional_call``.

Before timing, both are run on small float64 problems with the noise off and must give the same
query loss and meta-gradients. Each configuration then runs in a fresh subprocess of this script
(``--single``) so its peak memory is its own: ``torch.cuda.max_memory_allocated`` on CUDA, the
process's peak RSS on CPU.

Examples::

    python tools/bench_inner_loop.py --models conv4
    python tools/bench_inner_loop.py --models resnet18 --iters 1 --resnet18-size 112 --json r.json
    python tools/bench_inner_loop.py --quick --device cpu          # seconds; what the smoke test runs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

try:
    import dropgrad
except ImportError:  # not pip-installed: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "core" / "src"))
    import dropgrad

MODELS = ("conv4", "resnet18")
ORDERS = ("first", "second")
IMPLS = ("ours", "naive")
DEFAULT_SIZE = {"conv4": 84, "resnet18": 224}
QUICK_SIZE = {"conv4": 32, "resnet18": 64}
MIN_SIZE = {"conv4": 16, "resnet18": 32}
DEFAULTS = {"tasks": 4, "ways": 5, "shots": 5, "queries": 16, "steps": 5, "warmup": 1, "iters": 3}
QUICK = {"tasks": 1, "steps": 2, "warmup": 1, "iters": 1}
INNER_LR = 0.01
P = 0.1  # DropGrad (gaussian) when on


# ----------------------------------------------------------------------------- models
def conv4(image_size: int, n_classes: int, batch_stats: bool = False) -> nn.Module:
    """4 x (conv3x3-64, BatchNorm, ReLU, maxpool 2), then a linear head (64*5*5 -> n at 84 px).

    ``batch_stats``: BatchNorm without running statistics (what batched adaptation needs).
    """
    layers: list[nn.Module] = []
    channels, size = 3, image_size
    for _ in range(4):
        bn = nn.BatchNorm2d(64, track_running_stats=not batch_stats)
        layers += [nn.Conv2d(channels, 64, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2)]
        channels, size = 64, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * size * size, n_classes))


def build_model(name: str, image_size: int, n_classes: int, batch_stats: bool = False) -> nn.Module:
    """conv4 or torchvision's resnet18; ``batch_stats``: BatchNorm without running statistics."""
    if name == "conv4":
        return conv4(image_size, n_classes, batch_stats)
    if name != "resnet18":
        raise ValueError(f"unknown model {name!r}; expected conv4 or resnet18")
    import torchvision  # only needed here; importing it costs seconds per process

    norm = (lambda c: nn.BatchNorm2d(c, track_running_stats=False)) if batch_stats else None
    return torchvision.models.resnet18(weights=None, num_classes=n_classes, norm_layer=norm)


def make_tasks(
    n_tasks: int, ways: int, shots: int, queries: int, size: int, device: torch.device, dtype: torch.dtype
) -> dropgrad.Task:
    """Random images; support_x ``(T, ways*shots, 3, size, size)``, query_x ``(T, ways*queries, ...)``."""
    sy = torch.arange(ways, device=device).repeat_interleave(shots).repeat(n_tasks, 1)
    qy = torch.arange(ways, device=device).repeat_interleave(queries).repeat(n_tasks, 1)
    sx = torch.randn(n_tasks, ways * shots, 3, size, size, device=device, dtype=dtype)
    qx = torch.randn(n_tasks, ways * queries, 3, size, size, device=device, dtype=dtype)
    return dropgrad.Task(sx, sy, qx, qy)


# ------------------------------------------------------------------- the two meta-steps
def naive_meta_backward(
    model: nn.Module, tasks: dropgrad.Task, *, lr: float, steps: int, first_order: bool, noise_std: float
) -> Tensor:
    """Research-code MAML: per task, per step, per tensor. Returns the detached mean query loss."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = [p for p in model.parameters() if p.requires_grad]
    n_tasks = tasks.support_x.shape[0]
    total = 0.0
    for t in range(n_tasks):
        fast = list(theta)
        for _ in range(steps):
            out = functional_call(model, dict(zip(names, fast)), (tasks.support_x[t],))
            loss = F.cross_entropy(out, tasks.support_y[t])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            new = []
            for w, g in zip(fast, grads):
                if noise_std > 0:
                    n = torch.randn(g.shape, device=g.device, dtype=g.dtype) * noise_std + 1
                    new.append(w - lr * g * n)
                else:
                    new.append(w - lr * g)
            fast = new
        out = functional_call(model, dict(zip(names, fast)), (tasks.query_x[t],))
        query_loss = F.cross_entropy(out, tasks.query_y[t])
        (query_loss / n_tasks).backward()
        total = total + query_loss.detach() / n_tasks
    return total  # type: ignore[return-value]


def make_meta_step(
    impl: str, model: nn.Module, tasks: dropgrad.Task, *, steps: int, first_order: bool, noise_on: bool
) -> Callable[[], Tensor]:
    """A closure doing one meta-step (grads zeroed, then accumulated into the model's parameters)."""
    if impl == "ours":
        learner = dropgrad.MAML(
            model,
            inner_lr=INNER_LR,
            steps=steps,
            first_order=first_order,
            dropgrad=dropgrad.DropGrad(P, "gaussian") if noise_on else None,
        )

        def step() -> Tensor:
            model.zero_grad(set_to_none=True)
            return learner.meta_backward(tasks, batched=False).loss

        return step
    std = math.sqrt(P / (1 - P)) if noise_on else 0.0

    def naive_step() -> Tensor:
        model.zero_grad(set_to_none=True)
        return naive_meta_backward(model, tasks, lr=INNER_LR, steps=steps, first_order=first_order, noise_std=std)

    return naive_step


# ------------------------------------------------------------ the noise operator alone
def _timed(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def noise_cost(name: str, size: int, settings: dict[str, int], device: torch.device, reps: int = 5) -> dict[str, Any]:
    """DropGrad on one inner step's gradients: fused call vs a per-tensor loop vs that step's backward."""
    torch.manual_seed(0)
    model = build_model(name, size, settings["ways"]).to(device)
    tasks = make_tasks(1, settings["ways"], settings["shots"], 1, size, device, torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward() -> list[Tensor]:
        loss = F.cross_entropy(model(tasks.support_x[0]), tasks.support_y[0])
        return list(torch.autograd.grad(loss, params))

    grads = forward_backward()
    fused = dropgrad.DropGrad(P, "gaussian")
    std = math.sqrt(P / (1 - P))
    per_tensor = lambda: [g * (torch.randn(g.shape, device=g.device, dtype=g.dtype) * std + 1) for g in grads]
    t_step = _timed(forward_backward, device, reps)
    t_fused = _timed(lambda: fused(grads), device, reps * 10)
    t_naive = _timed(per_tensor, device, reps * 10)
    return {
        "model": name, "px": size, "tensors": len(grads), "elements": sum(g.numel() for g in grads),
        "support_fwd_bwd_ms": 1e3 * t_step, "fused_ms": 1e3 * t_fused, "per_tensor_ms": 1e3 * t_naive,
        "fused_share_of_step": t_fused / t_step, "per_tensor_share_of_step": t_naive / t_step,
    }


def format_noise_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "",
        f"DropGrad operator alone (gaussian p={P}) on one inner step's gradients, median times; "
        "'share' = time / that step's support forward+backward",
        f"{'model':8}  {'px':>3}  {'tensors':>7}  {'elements':>10}  {'fwd+bwd ms':>10}  {'fused ms':>8}  "
        f"{'share':>6}  {'per-tensor ms':>13}  {'share':>6}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:8}  {r['px']:>3}  {r['tensors']:>7}  {r['elements']:>10}  {r['support_fwd_bwd_ms']:>10.1f}  "
            f"{r['fused_ms']:>8.3f}  {100 * r['fused_share_of_step']:>5.2f}%  {r['per_tensor_ms']:>13.3f}  "
            f"{100 * r['per_tensor_share_of_step']:>5.2f}%"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ equivalence check
def equivalence_check(models: list[str], orders: list[str], device: torch.device) -> dict[str, Any]:
    """Noise off, float64, small shapes: ours and naive must agree on loss and meta-gradients."""
    checks = []
    for name in models:
        size = MIN_SIZE[name]
        for order in orders:
            torch.manual_seed(0)
            base = build_model(name, size, 3).to(device=device, dtype=torch.float64)
            tasks = make_tasks(2, 3, 2, 2, size, device, torch.float64)
            results = {}
            for impl in IMPLS:
                model = copy.deepcopy(base)
                loss = make_meta_step(impl, model, tasks, steps=2, first_order=order == "first", noise_on=False)()
                results[impl] = [loss.detach()] + [p.grad for p in model.parameters()]
            ours, naive = results["ours"], results["naive"]
            diff = max((a - b).abs().max().item() for a, b in zip(ours, naive))
            ok = all(torch.allclose(a, b, rtol=1e-6, atol=1e-10) for a, b in zip(ours, naive))
            checks.append({"model": name, "px": size, "order": order, "max_abs_diff": diff, "passed": ok})
    return {
        "passed": all(c["passed"] for c in checks),
        "max_abs_diff": max(c["max_abs_diff"] for c in checks),
        "setup": "float64, noise off, 2 tasks 3-way 2-shot 2-query, 2 inner steps; loss and every meta-gradient",
        "checks": checks,
    }


# ------------------------------------------------------------------- one configuration
@dataclass(frozen=True)
class RunConfig:
    model: str
    px: int
    order: str
    impl: str
    dropgrad: bool
    tasks: int
    ways: int
    shots: int
    queries: int
    steps: int
    warmup: int
    iters: int
    device: str


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    Linux: ``VmHWM`` from ``/proc/self/status``. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux
    carries ``ru_maxrss`` over ``execve``, so a child spawned by a 2 GiB parent (subprocess uses
    vfork) starts with the parent's peak. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def run_single(cfg: RunConfig) -> dict[str, Any]:
    """Time one configuration in this process; returns tasks/s and peak memory."""
    baseline_rss = peak_rss_bytes()
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    result: dict[str, Any] = {"status": "ok", "baseline_rss_bytes": baseline_rss}
    torch.manual_seed(0)
    try:
        model = build_model(cfg.model, cfg.px, cfg.ways).to(device)
        tasks = make_tasks(cfg.tasks, cfg.ways, cfg.shots, cfg.queries, cfg.px, device, torch.float32)
        step = make_meta_step(
            cfg.impl, model, tasks, steps=cfg.steps, first_order=cfg.order == "first", noise_on=cfg.dropgrad
        )
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(cfg.warmup):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(cfg.iters):
            loss = step()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    except Exception as exc:
        if not _is_oom(exc):
            raise
        result.update(status="oom", message=str(exc).splitlines()[0][:300])
        return result
    result.update(
        seconds=seconds,
        step_s=seconds / cfg.iters,
        tasks_per_s=cfg.tasks * cfg.iters / seconds,
        final_loss=float(loss),
        peak_mem_bytes=torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes(),
        peak_mem_kind="cuda_max_memory_allocated" if cuda else "process_peak_rss",
        threads=torch.get_num_threads(),
    )
    return result


def run_in_subprocess(cfg: RunConfig) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--single", json.dumps(asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode == -signal.SIGKILL:
        return {"status": "oom", "message": "subprocess killed (SIGKILL), most likely by the kernel's OOM killer"}
    tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "(no stderr)"
    sys.stderr.write(proc.stderr[-4000:])
    return {"status": "error", "message": f"exit {proc.returncode}: {tail}"}


# ------------------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


# What nvidia-smi reports of the card's state: two starts of the same card model have timed the
# same Conv4 row 7% apart (docs/performance.md), and clocks, power or heat may tell why.
GPU_STATE_FIELDS = ("clocks.sm", "clocks.max.sm", "clocks.mem", "power.draw", "power.limit", "temperature.gpu",
                    "pstate", "clocks_throttle_reasons.active")


def gpu_state() -> dict[str, str] | None:
    """nvidia-smi's readings of the first visible GPU (``GPU_STATE_FIELDS``), or ``None`` without it.

    Only a record next to the timings; nothing is judged on it. The last field, which older and
    newer drivers name differently, is dropped when nvidia-smi refuses it.
    """
    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    for fields in (GPU_STATE_FIELDS, GPU_STATE_FIELDS[:-1]):
        cmd = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        if visible:
            cmd.append(f"--id={visible}")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and lines:
            values = [v.strip() for v in lines[0].split(",")]
            if len(values) == len(fields):
                return dict(zip(fields, values))
    return None


def format_gpu_state(state: dict[str, str] | None) -> str:
    """One line of :func:`gpu_state`'s readings ("" for ``None``)."""
    if not state:
        return ""
    line = (f"SM {state['clocks.sm']}/{state['clocks.max.sm']} MHz, memory {state['clocks.mem']} MHz, "
            f"{state['power.draw']}/{state['power.limit']} W, {state['temperature.gpu']} C, {state['pstate']}")
    reasons = state.get("clocks_throttle_reasons.active")
    return line + (f", clock limits {reasons}" if reasons else "")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def _cell(run: dict[str, Any], key: str) -> str:
    if run["status"] == "oom":
        return "OOM"
    if run["status"] != "ok":
        return "ERROR"
    return _mib(run[key]) if key == "peak_mem_bytes" else f"{run[key]:.3g}"


def summarise(runs: dict[tuple[str, str, str, bool], dict[str, Any]], sizes: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for (model, order, impl, on), run in runs.items():
        if on:
            continue
        off, on_run = run, runs[(model, order, impl, True)]
        row: dict[str, Any] = {"model": model, "px": sizes[model], "order": order, "impl": impl,
                               "off": off, "on": on_run, "overhead_pct": None, "ours_over_naive": None}
        if off["status"] == on_run["status"] == "ok":
            row["overhead_pct"] = 100.0 * (on_run["step_s"] - off["step_s"]) / off["step_s"]
        if impl == "ours":
            naive = runs.get((model, order, "naive", True))
            if naive and naive["status"] == on_run["status"] == "ok":
                row["ours_over_naive"] = on_run["tasks_per_s"] / naive["tasks_per_s"]
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], header: list[str]) -> str:
    cols = ["model", "px", "order", "impl", "tasks/s DG off", "tasks/s DG on", "DG overhead",
            "peak mem DG off", "peak mem DG on", "ours / naive (DG on)"]
    body = []
    for r in rows:
        body.append([
            r["model"], str(r["px"]), r["order"], r["impl"],
            _cell(r["off"], "tasks_per_s"), _cell(r["on"], "tasks_per_s"),
            "-" if r["overhead_pct"] is None else f"{r['overhead_pct']:+.1f}%",
            _cell(r["off"], "peak_mem_bytes"), _cell(r["on"], "peak_mem_bytes"),
            "" if r["ours_over_naive"] is None else f"{r['ours_over_naive']:.2f}x",
        ])
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = header + ["", line(cols), line(["-" * w for w in widths])] + [line(b) for b in body]
    return "\n".join(out)


# ------------------------------------------------------------------------------- CLI
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time one MAML meta-step (meta-batch of --tasks tasks, --steps inner SGD steps at lr "
            f"{INNER_LR}, cross-entropy, backward of the mean query loss into the meta-parameters, no "
            "optimiser step) for dropgrad.MAML ('ours') and a naive per-tensor research-code loop "
            f"('naive'), with DropGrad off and on (gaussian, p={P}). Prints one table: tasks/s, "
            "DropGrad overhead, peak memory, ours/naive speed ratio. Inputs are torch.randn images "
            "made once on the device before timing."
        ),
        epilog=(
            "Each (model, order, impl, DropGrad) config runs in a fresh subprocess of this script. Peak "
            "memory: on CUDA torch.cuda.max_memory_allocated; on CPU the whole process's peak RSS "
            "(torch runtime included). A config that runs out of memory is reported as OOM and the "
            "others still run. Before timing, ours and naive must agree (noise off, float64, small "
            "shapes) on the loss and every meta-gradient, else the script stops with exit status 1."
        ),
    )
    parser.add_argument("--models", type=_choices(MODELS), default=list(MODELS),
                        help="comma-separated benchmark models: conv4 (4 x conv3x3-64/BN/ReLU/maxpool + "
                             "linear head) and/or resnet18 (torchvision, random init); default conv4,resnet18")
    parser.add_argument("--orders", type=_choices(ORDERS), default=list(ORDERS),
                        help="comma-separated MAML orders: first (FOMAML) and/or second (through the inner gradients); default first,second")
    parser.add_argument("--tasks", type=_positive, default=None,
                        help=f"tasks per meta-batch (default {DEFAULTS['tasks']}; {QUICK['tasks']} with --quick)")
    parser.add_argument("--ways", type=_positive, default=None, help=f"classes per task, N (default {DEFAULTS['ways']})")
    parser.add_argument("--shots", type=_positive, default=None,
                        help=f"support images per class, K (default {DEFAULTS['shots']})")
    parser.add_argument("--queries", type=_positive, default=None,
                        help=f"query images per class (default {DEFAULTS['queries']})")
    parser.add_argument("--steps", type=_positive, default=None,
                        help=f"inner SGD steps per task (default {DEFAULTS['steps']}; {QUICK['steps']} with --quick)")
    for name in MODELS:
        parser.add_argument(f"--{name}-size", type=_positive, default=None, dest=f"{name}_size",
                            help=f"image side in pixels for {name} (default {DEFAULT_SIZE[name]}; "
                                 f"{QUICK_SIZE[name]} with --quick; at least {MIN_SIZE[name]})")
    parser.add_argument("--warmup", type=_non_negative, default=None,
                        help=f"untimed meta-steps per configuration before timing (default {DEFAULTS['warmup']})")
    parser.add_argument("--iters", type=_positive, default=None,
                        help=f"timed meta-steps per configuration (default {DEFAULTS['iters']}; "
                             f"{QUICK['iters']} with --quick)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when available, else CPU; the default), cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test shapes: 1 task, 2 inner steps, conv4 at 32 px, resnet18 at 64 px, "
                             "1 timed iteration; options given explicitly still win")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write every raw number (each run, the table rows, the equivalence check) to PATH")
    parser.add_argument("--single", default=None, metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    return parser


def resolve(args: argparse.Namespace) -> tuple[dict[str, int], dict[str, int]]:
    settings = {k: getattr(args, k) for k in DEFAULTS}
    for key, default in DEFAULTS.items():
        if settings[key] is None:
            settings[key] = QUICK.get(key, default) if args.quick else default
    sizes = {}
    for name in MODELS:
        given = getattr(args, f"{name}_size")
        sizes[name] = given if given is not None else (QUICK_SIZE if args.quick else DEFAULT_SIZE)[name]
    return settings, sizes


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.single is not None:
        print(json.dumps(run_single(RunConfig(**json.loads(args.single)))), flush=True)
        return 0
    settings, sizes = resolve(args)
    for name in args.models:
        if sizes[name] < MIN_SIZE[name]:
            parser.error(f"--{name}-size must be at least {MIN_SIZE[name]} px, got {sizes[name]}")
    if settings["ways"] * settings["shots"] < 2:
        parser.error("--ways * --shots must be at least 2 (BatchNorm needs more than one support image)")
    try:
        device = dropgrad.select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))

    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    log(f"equivalence check (ours vs naive, noise off) on {device} ...")
    equivalence = equivalence_check(args.models, args.orders, device)
    data: dict[str, Any] = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "settings": {**settings, "inner_lr": INNER_LR, "dropgrad": f"gaussian p={P}", "sizes": sizes,
                     "models": args.models, "orders": args.orders},
        "equivalence": equivalence, "runs": [], "rows": [],
    }
    eq_line = (f"equivalence check ({equivalence['setup']}): "
               f"{'passed' if equivalence['passed'] else 'FAILED'}, max |ours - naive| = {equivalence['max_abs_diff']:.2e}")
    if not equivalence["passed"]:
        log(eq_line + "\n" + json.dumps(equivalence["checks"], indent=2))
        log("ours and naive disagree with the noise off, so timing them would compare different computations; stopping")
        if args.json:
            write_json(args.json, data)
        return 1
    log(eq_line)

    configs = [
        RunConfig(model, sizes[model], order, impl, on, device=str(device), **settings)
        for model in args.models for order in args.orders for impl in IMPLS for on in (False, True)
    ]
    runs: dict[tuple[str, str, str, bool], dict[str, Any]] = {}
    for i, cfg in enumerate(configs, 1):
        run = run_in_subprocess(cfg)
        runs[(cfg.model, cfg.order, cfg.impl, cfg.dropgrad)] = run
        data["runs"].append({**asdict(cfg), **run})
        what = f"[{i}/{len(configs)}] {cfg.model} {cfg.px}px {cfg.order} {cfg.impl} dropgrad={'on' if cfg.dropgrad else 'off'}"
        if run["status"] == "ok":
            log(f"{what}: {run['tasks_per_s']:.3g} tasks/s, peak {_mib(run['peak_mem_bytes'])}")
        elif run["status"] == "oom":
            log(f"{what}: OUT OF MEMORY ({run['message']}); reported as OOM, continuing")
        else:
            log(f"{what}: FAILED ({run['message']}); continuing")

    data["rows"] = summarise(runs, sizes)
    s = settings
    if device.type == "cuda":
        mem_note = "peak mem: torch.cuda.max_memory_allocated over warm-up + timed steps (model and data included)"
    else:
        baselines = [r["baseline_rss_bytes"] for r in runs.values() if "baseline_rss_bytes" in r]
        base = f"; import-only baseline ~{_mib(min(baselines))}" if baselines else ""
        mem_note = ("peak mem (CPU): WHOLE-PROCESS peak RSS (VmHWM) of a fresh process per config, "
                    f"including the torch runtime and the input data{base}")
    header = [
        f"MAML inner-loop benchmark: {s['tasks']} tasks/meta-step, {s['ways']}-way {s['shots']}-shot "
        f"{s['queries']}-query, {s['steps']} inner steps, lr {INNER_LR}, DropGrad gaussian p={P} when on",
        f"device: {data['device']}   torch {torch.__version__}",
        f"timing: {s['warmup']} warm-up + {s['iters']} timed meta-steps per config (per-task loop, "
        "backward of the mean query loss, no optimiser step); tasks/s = tasks * iters / seconds",
        eq_line,
        mem_note,
        "DG overhead = (step time on - step time off) / step time off; ours / naive = tasks/s ratio with DropGrad on",
    ]
    print(format_table(data["rows"], header), flush=True)
    data["noise_op"] = [noise_cost(name, sizes[name], settings, device) for name in args.models]
    print(format_noise_table(data["noise_op"]), flush=True)
    if args.json:
        write_json(args.json, data)
    failed = [r for r in runs.values() if r["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
