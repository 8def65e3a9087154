"""fewshot-train and fewshot-test with their steps replayed from a CUDA graph (marked gpu: skipped without CUDA)."""

import json
import shutil

import pytest
import torch
from dropgrad import CapturedEvaluation, CapturedMetaStep, load_checkpoint
from dropgrad_fewshot import cli, testing
from dropgrad_fewshot.config import FewShotConfig, resolve_defaults
from dropgrad_fewshot.data import EpisodeBatches, build_dataset
from dropgrad_fewshot.methods import build_learner, check_task_streams, use_batched
from dropgrad_fewshot.run import evaluate

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")  # these tests are about CUDA graphs: no other device will do

TINY = [
    "--way", "3", "--shot", "1", "--query", "2", "--test-query", "2", "--inner-steps", "2",
    "--meta-batch", "2", "--epochs", "2", "--episodes-per-epoch", "4", "--val-episodes", "4",
    "--test-episodes", "6", "--no-progress", "--device", "cuda",
]


@pytest.mark.parametrize("method", ["maml", "metasgd", "metasgd-star", "mamlpp"])
def test_every_method_trains_from_a_cuda_graph(method, tmp_path):
    out = tmp_path / "run"
    # mamlpp: epoch 1 leaves the multi-step loss and turns second order, so a second graph is recorded.
    extra = ["--pretrain-epochs", "1", "--msl-epochs", "1", "--first-order-epochs", "1"]
    assert cli.train_main(["--out", str(out), *TINY, "--method", method, "--cuda-graph", "on", *extra]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test_acc_mean"] <= 100
    log = (out / "log.txt").read_text()
    assert "replayed from a CUDA graph, " in log and "evaluation: per-task loop replayed from a CUDA graph" in log
    model = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if torch.is_tensor(v) and v.is_floating_point())


@pytest.mark.parametrize("method, first_order", [("maml", False), ("maml", True), ("mamlpp", False)])
def test_graph_steps_equal_eager_steps_on_the_fewshot_models(method, first_order, no_tf32):
    # Step by step at the same parameters: comparing whole runs would compare Adam's first
    # updates, which are about lr * sign(g) and so flip on round-off of near-zero gradients.
    cfg = resolve_defaults(FewShotConfig(method=method, first_order=first_order, dropgrad="none", way=3, shot=1, query=2,
                                         inner_steps=2, meta_batch=2, msl_epochs=1, progress=False))
    torch.manual_seed(0)
    learner = build_learner(cfg).to(CUDA)
    batched = use_batched(learner, "auto")
    step = CapturedMetaStep(learner, batched=batched)
    batches = EpisodeBatches(build_dataset("glyphs", "train", image_size=28, n_classes=20),
                             n_way=3, n_shot=1, n_query=2, tasks_per_batch=2, seed=0)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    params = [p for p in learner.parameters() if p.requires_grad]
    for k in range(4):
        if method == "mamlpp":
            learner.set_epoch(k // 2)  # epoch 1 leaves the multi-step loss: a new graph
        tasks = batches.batch(k).to("cuda")
        opt.zero_grad(set_to_none=True)
        eager = learner.meta_backward(tasks, batched=batched)
        want = [None if p.grad is None else p.grad.clone() for p in params]
        opt.zero_grad(set_to_none=True)
        got = step(tasks)
        torch.testing.assert_close(got.task_losses, eager.task_losses, rtol=1e-5, atol=1e-6)
        for p, g in zip(params, want):
            if g is None:
                assert p.grad is None
            else:
                torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
        opt.step()
    assert step.captures == (2 if method == "mamlpp" else 1)


# Not named "benchmark": pytest-benchmark, where installed, claims that fixture name.
@pytest.mark.parametrize("cudnn_benchmark", [True, False])
def test_compiled_training_from_a_cuda_graph_and_the_cudnn_choice(cudnn_benchmark, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    out = tmp_path / "run"
    flag = "--cudnn-benchmark" if cudnn_benchmark else "--no-cudnn-benchmark"
    argv = ["--out", str(out), *TINY, "--first-order", "--compile", "--cuda-graph", "on", flag]
    assert cli.train_main(argv) == 0
    assert torch.backends.cudnn.benchmark is cudnn_benchmark
    log = (out / "log.txt").read_text()
    assert "replayed from a CUDA graph, forward compiled (torch.compile)" in log
    assert 0 <= json.loads((out / "results.json").read_text())["test_acc_mean"] <= 100


@pytest.mark.parametrize("order", [
    ["--first-order", "--compile"], ["--first-order", "--compile", "--compile-combo"],
    ["--first-order", "--compile", "--compile-combo", "--compile-forms", "unfold"],
    ["--first-order", "--compile", "--compile-forms", "unfold,grouped"],
    ["--first-order", "--compile", "--compile-combo", "--compile-forms", "unfold,tpool"],
    ["--first-order", "--compile", "--compile-forms", "unfold,grouped,tpool"],
    ["--compile", "--compile-second-order"],
], ids=["first", "first-combo", "first-combo-forms", "first-forms", "first-combo-tpool", "first-forms-tpool", "second"])
def test_folded_compiled_training_from_a_cuda_graph(order, tmp_path):
    # The fastest Conv4 setting that trained on an H200 (first order, combo kernels, unfold), the
    # grouped form without combo kernels (with them it crashed there: docs/performance.md) and
    # folded second order compiled whole; evaluation folds the tasks too, replayed.
    out = tmp_path / "run"
    argv = ["--out", str(out), *TINY, *order, "--batched", "fold", "--bf16", "--channels-last", "--cuda-graph", "on"]
    assert cli.train_main(argv) == 0
    log = (out / "log.txt").read_text()
    assert "training: tasks folded into the batch replayed from a CUDA graph, forward compiled" in log
    assert "evaluation: tasks folded into the batch replayed from a CUDA graph" in log
    forms = order[order.index("--compile-forms") + 1] if "--compile-forms" in order else None
    assert ("and compiled forms" in log) == (forms is not None)
    assert forms is None or f"and compiled forms {forms}" in log
    assert 0 <= json.loads((out / "results.json").read_text())["test_acc_mean"] <= 100
    model = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if torch.is_tensor(v) and v.is_floating_point())


def test_compiled_second_order_mamlpp_training_from_a_cuda_graph(tmp_path):
    # First order in epoch 0 (the compiled forward), second order from epoch 1 (whole steps
    # compiled), both recorded in CUDA graphs; MAML++'s running statistics inside the compiled steps.
    out = tmp_path / "run"
    argv = ["--out", str(out), *TINY, "--method", "mamlpp", "--first-order-epochs", "1", "--msl-epochs", "1",
            "--compile", "--compile-second-order", "--cuda-graph", "on"]
    assert cli.train_main(argv) == 0
    log = (out / "log.txt").read_text()
    assert "replayed from a CUDA graph, forward compiled (torch.compile) in first-order steps, second-order steps " \
           "compiled whole" in log
    assert 0 <= json.loads((out / "results.json").read_text())["test_acc_mean"] <= 100
    model = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if torch.is_tensor(v) and v.is_floating_point())


def test_task_streams_refuse_vmap_batched_training():
    learner = build_learner(resolve_defaults(FewShotConfig(task_streams=2, first_order=True))).to(CUDA)
    with pytest.raises(ValueError, match="--batched off"):
        check_task_streams(learner, batched=True)
    check_task_streams(learner, batched=False)


def test_training_with_tasks_on_cuda_streams_from_a_cuda_graph(tmp_path):
    out = tmp_path / "run"
    argv = ["--out", str(out), *TINY, "--task-streams", "2", "--cuda-graph", "on", "--batched", "off"]
    assert cli.train_main(argv) == 0
    assert "replayed from a CUDA graph, tasks on 2 CUDA streams" in (out / "log.txt").read_text()
    assert 0 <= json.loads((out / "results.json").read_text())["test_acc_mean"] <= 100


@pytest.mark.parametrize("method", ["maml", "mamlpp"])
def test_replayed_evaluation_scores_the_episodes_eager_evaluation_scores(method, no_tf32):
    cfg = resolve_defaults(FewShotConfig(method=method, way=3, shot=1, query=2, inner_steps=2, progress=False))
    torch.manual_seed(0)
    learner = build_learner(cfg).to(CUDA)
    data = build_dataset("glyphs", "val", image_size=28, n_classes=20)
    kw = dict(way=3, shot=1, query=2, episodes=19, seed=5, device=CUDA, batched=False)  # 8 + 8 + 3 of 8
    eager = evaluate(learner, data, **kw)
    runner = CapturedEvaluation(learner)
    for _ in range(2):  # the second pass replays the first pass's graph
        replayed = evaluate(learner, data, runner=runner, **kw)
        assert (replayed["acc"] == eager["acc"]).all()
        torch.testing.assert_close(torch.from_numpy(replayed["loss"]), torch.from_numpy(eager["loss"]), rtol=1e-5, atol=1e-6)
    assert runner.captures == 1


def test_fewshot_test_replays_evaluation_and_scores_what_eager_evaluation_scores(tmp_path, monkeypatch, no_tf32):
    out = tmp_path / "run"
    assert cli.train_main(["--out", str(out), *TINY, "--cuda-graph", "on"]) == 0
    eager_run = tmp_path / "eager"
    shutil.copytree(out, eager_run)
    config = json.loads((eager_run / "config.json").read_text())
    config["cuda_graph"] = "off"
    (eager_run / "config.json").write_text(json.dumps(config))

    made: list[CapturedEvaluation] = []

    class Counted(CapturedEvaluation):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(testing, "CapturedEvaluation", Counted)
    # 19 episodes: two whole chunks of 8 and a last one of 3, padded to 8 under replay.
    replayed = testing.test_run(out, episodes=19, progress=False)
    assert len(made) == 1 and made[0].captures == 1
    eager = testing.test_run(eager_run, episodes=19, progress=False)
    assert len(made) == 1, "cuda_graph off: fewshot-test evaluates eagerly"
    assert replayed["test_episodes"] == eager["test_episodes"] == 19
    assert replayed["test_acc_mean"] == pytest.approx(eager["test_acc_mean"], abs=1e-12)


def test_cuda_batches_copied_from_pinned_memory_equal_the_cpu_ones():
    dataset = build_dataset("glyphs", "train", image_size=28, n_classes=20)
    options = {"n_way": 3, "n_shot": 1, "n_query": 2, "tasks_per_batch": 2, "seed": 0}
    cpu, gpu = EpisodeBatches(dataset, **options), EpisodeBatches(dataset, **options, device="cuda")
    for k in range(3):
        want, got = cpu.batch(k), gpu.batch(k)  # queued copies: read back after the host has moved on
        for x, y in zip(want, got):
            assert y.device.type == "cuda" and torch.equal(y.cpu(), x)
