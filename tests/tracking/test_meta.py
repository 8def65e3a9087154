"""``dropgrad_tracking.meta``: the registry, the shared learner and checkpoints of track-train runs.

Uses the test-only toy definition of ``_toy_meta.py`` and a real (short) track-train run directory.
"""

import json
import shutil
import warnings

import pytest
import torch
from dropgrad import CheckpointError, DropGrad, MetaSGD, load_checkpoint
from dropgrad_tracking.meta import (
    BACKBONE_RANDOM,
    available_meta_trackers,
    build_learner,
    load_learner,
    load_seeded_learner,
    meta_tracker,
    register_meta_tracker,
)
from dropgrad_tracking.training import TrackTrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "run"
    cfg = TrackTrainConfig(tracker="toy", synthetic_sequences=3, synthetic_frames=8, synthetic_height=64, synthetic_width=96,
                           val_sequences=1, val_tasks=2, epochs=2, steps_per_epoch=2, tasks_per_batch=2, outer_lr=0.05,
                           progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-backbone warning
        train(cfg, out)
    return out


def test_registry_lists_finds_and_refuses(toy):
    assert "toy" in available_meta_trackers() and available_meta_trackers() == sorted(available_meta_trackers())
    assert meta_tracker("TOY") is meta_tracker("toy")
    with pytest.raises(ValueError, match=r"--tracker 'nope' is not a meta-learned tracker; choose from .*toy"):
        meta_tracker("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_meta_tracker(toy.ToyDef())


def test_build_learner_is_one_step_metasgd_over_the_adapted_parameters(toy):
    dg = DropGrad(0.2, "gaussian")
    learner, source = build_learner(meta_tracker("toy"), None, dg, first_order=True)
    assert isinstance(learner, MetaSGD) and learner.steps == 1 and learner.first_order and learner.dropgrad is dg
    assert source == BACKBONE_RANDOM
    assert learner.fast_names == ["3.weight", "3.bias"] and set(learner.lrs) == {"3__weight", "3__bias"}
    assert all(torch.all(a == toy.ToyDef.inner_lr) for a in learner.lrs.values())
    assert learner.lrs["3__weight"].shape == learner.model[3].weight.shape  # one step size per element
    assert not build_learner(meta_tracker("toy"), None)[0].first_order  # second order unless asked


def test_one_inner_step_is_theta_minus_alpha_times_the_gradient():
    # An independent reference: the gradient by autograd on a copy, the update by hand.
    torch.manual_seed(0)
    learner, _ = build_learner(meta_tracker("toy"), None)
    with torch.no_grad():
        learner.lrs["3__weight"].uniform_(0.01, 0.2)
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([1, 1, 0, 0, 0, 1])
    learner.eval()
    adapted = learner.adapt(x, y)[-1]
    w = learner.model[3].weight.detach().clone().requires_grad_()
    b = learner.model[3].bias.detach().clone().requires_grad_()
    hidden = learner.model[2](learner.model[1](x.flatten(1)))
    loss = torch.nn.functional.cross_entropy(hidden.detach() @ w.T + b, y)
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert torch.allclose(adapted["3.weight"], w - learner.lrs["3__weight"] * gw, atol=1e-6)
    assert torch.allclose(adapted["3.bias"], b - learner.lrs["3__bias"] * gb, atol=1e-6)


def test_dropgrad_acts_while_training_and_is_off_in_eval_mode():
    torch.manual_seed(0)
    learner, _ = build_learner(meta_tracker("toy"), None, DropGrad(0.5, "gaussian"))
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([1, 1, 0, 0, 0, 1])
    learner.train()
    a, b = (learner.adapt(x, y)[-1]["3.weight"] for _ in range(2))
    assert not torch.allclose(a, b)  # fresh noise per call
    learner.eval()
    a, b = (learner.adapt(x, y)[-1]["3.weight"] for _ in range(2))
    assert torch.equal(a, b)


def test_load_learner_round_trip_through_a_run_directory(run_dir):
    with pytest.warns(UserWarning, match="randomly initialised"):
        learner, metadata = load_learner("toy", run_dir, None, CPU)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state = learner.state_dict()
    for key, value in best["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(state[key], value), key
    assert not learner.training
    assert metadata == {"backbone": "random-init", "checkpoint": str(run_dir), "checkpoint_epoch": best["epoch"],
                        "dropgrad": "gaussian:0.2"}
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["tracker"], config["backbone_source"], config["dropgrad"]) == ("toy", "random-init", "gaussian")


def test_untrained_initialisation_is_flagged():
    with pytest.warns(UserWarning, match="randomly initialised"):
        _, metadata = load_learner("toy", None, None, CPU)
    assert metadata == {"backbone": "random-init", "checkpoint": "untrained-init"}


def test_backbone_weights_are_recorded_and_silence_the_warning(tmp_path):
    weights = tmp_path / "toy-backbone.pt"
    torch.manual_seed(3)
    state = {k: v.clone() for k, v in torch.nn.Linear(3 * 8 * 8, 16).state_dict().items()}
    torch.save(state, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner, metadata = load_learner("toy", None, weights, CPU)
    assert metadata["backbone"] == "toy-backbone.pt"
    assert torch.equal(learner.model[1].weight, state["weight"])


def _copy_with(run_dir, dest, **changes):
    """A copy of the run directory with ``changes`` written into its config.json."""
    shutil.copytree(run_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **changes}))
    return dest


def test_a_run_of_another_tracker_is_refused(run_dir, tmp_path):
    other = _copy_with(run_dir, tmp_path / "other", tracker="metasdnet")
    with pytest.raises(ValueError, match=r"a run of --tracker 'metasdnet', not 'toy'"):
        load_learner("toy", other, None, CPU)


def test_broken_run_directories_are_refused(run_dir, tmp_path):
    with pytest.raises(ValueError, match="no config.json; expected a track-train run directory"):
        load_learner("toy", tmp_path, None, CPU)
    fewshot = tmp_path / "fewshot"  # another tool's run directory
    fewshot.mkdir()
    (fewshot / "config.json").write_text('{"dataset": "glyphs", "method": "maml"}')
    with pytest.raises(ValueError, match=r"fewshot/config.json names no tracker; expected a track-train run directory"):
        load_learner("toy", fewshot, None, CPU)
    (fewshot / "config.json").write_text('{"app": "fewshot-train", "dataset": "glyphs", "method": "maml"}')
    with pytest.raises(ValueError, match=r"fewshot is a run folder of dropgrad-fewshot \(fewshot-train\), not a track-train run"):
        load_learner("toy", fewshot, None, CPU)
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt is not a complete checkpoint"):
        load_learner("toy", broken, None, CPU)
    (broken / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match="best.pt does not exist"):
        load_learner("toy", broken, None, CPU)


def test_seeded_untrained_learner_depends_on_the_seed_only_and_leaves_the_global_stream(toy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-backbone warning
        torch.manual_seed(1)
        a, _ = load_seeded_learner("toy", None, None, CPU, 5)
        torch.manual_seed(2)
        before = torch.get_rng_state()
        b, _ = load_seeded_learner("toy", None, None, CPU, 5)
        assert torch.equal(torch.get_rng_state(), before)
        c, _ = load_seeded_learner("toy", None, None, CPU, 6)
    sa, sb, sc = ({k: v for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)} for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_checkpoints_backbone_source_is_reported_without_the_random_backbone_warning(run_dir, tmp_path):
    # The checkpoint holds the backbone it was trained from; no --backbone-weights are needed at eval.
    trained = _copy_with(run_dir, tmp_path / "trained", backbone_source="imagenet-vgg-m.mat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, metadata = load_learner("toy", trained, None, CPU)
    assert metadata["backbone"] == "imagenet-vgg-m.mat"
