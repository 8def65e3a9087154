"""MetaSDNet: the tracker on real OTB and synthetic frames, its training tasks, DropGrad off when tracking."""

import dataclasses
import doctest
import warnings

import numpy as np
import pytest
import torch
from dropgrad import DropGrad, MetaSGD, Task
from dropgrad_tracking.data import load_otb_folders
from dropgrad_tracking.data.sequence import Sequence
from dropgrad_tracking.data.synthetic import SyntheticConfig, ensure_synthetic
from dropgrad_tracking.evaluation.report import build_report, evaluate_tracker
from dropgrad_tracking.meta import (
    BACKBONE_RANDOM,
    build_learner,
    load_learner,
    meta_tracker,
)
from dropgrad_tracking.trackers import (
    TrackerOptions,
    make_tracker,
    metasdnet,
    run_tracker,
)
from dropgrad_tracking.trackers.metasdnet import (
    METASDNET,
    METASDNET_TINY,
    MetaSDNetDef,
    MetaSDNetOptions,
    MetaSDNetTracker,
)

# Small counts: the algorithm is the same, the tests stay fast on 2 CPU cores.
SMALL = MetaSDNetOptions(n_candidates=64, n_pos_init=16, n_neg_init=32, n_bbreg=64, n_pos_update=8,
                         n_neg_update=24, long_interval=3, update_iters=2, batch_pos=8, batch_neg=16,
                         batch_neg_cand=64)


def _tiny_tracker(adapt_conv=False, seed=0, dropgrad=None, options=SMALL):
    torch.manual_seed(seed)
    definition = MetaSDNetDef("test-tiny", tiny=True, adapt_conv=adapt_conv, inner_lr=1e-2, options=options)
    learner, source = build_learner(definition, None, dropgrad=dropgrad)
    return definition.make_tracker(learner.eval(), {"backbone": source, "checkpoint": "untrained-init"}, seed), learner


def _check_boxes(boxes, sequence):
    h, w = sequence.image(0).shape[:2]
    assert boxes.shape == (len(sequence), 4) and np.isfinite(boxes).all()
    assert (boxes[:, 2:] >= 1).all() and (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 0] + boxes[:, 2] <= w + 1e-6).all() and (boxes[:, 1] + boxes[:, 3] <= h + 1e-6).all()


def test_docstring_examples():
    result = doctest.testmod(metasdnet, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_registered_for_train_and_eval():
    assert meta_tracker("metasdnet") is METASDNET and meta_tracker("metasdnet-tiny") is METASDNET_TINY
    assert METASDNET.adapt == ("conv.*", "fc.*") and METASDNET_TINY.adapt == ("fc.*",)
    assert METASDNET.options.n_candidates == 256 and METASDNET.options.top_k == 5
    assert METASDNET.options.long_interval == 10 and METASDNET.default_horizon == 10


def test_tracks_three_real_otb_sequences_with_valid_report(shared_data, tmp_path):
    folders = load_otb_folders(shared_data / "otb" / "OTB2015-sample")
    assert set(folders) == {"Couple", "Crossing", "Football1"}
    sequences = {n: Sequence(n, s.frames[:8], s.boxes[:8], s.attributes) for n, s in folders.items()}
    tracker, _ = _tiny_tracker()
    results = run_tracker(tracker, sequences, tmp_path, dataset="OTB2015", progress=False)
    for name, seq in sequences.items():
        _check_boxes(results[name].boxes, seq)
        assert (tmp_path / "results" / "test-tiny" / f"{name}.txt").is_file()
        assert len(results[name].times) == 8
    evaluation = evaluate_tracker("test-tiny", results, sequences, metadata=tracker.metadata)
    report = build_report([evaluation], "OTB2015", "exclude")
    overall = report["trackers"]["test-tiny"]["overall"]
    assert 0 <= overall["success_auc"] <= 1 and overall["fps"] > 0 and overall["first_frame_seconds"] > 0
    assert report["trackers"]["test-tiny"]["metadata"]["backbone"] == BACKBONE_RANDOM


def test_tracks_a_synthetic_sequence_through_the_registry(tmp_path):
    seq = ensure_synthetic(tmp_path / "syn", SyntheticConfig(n_sequences=1, n_frames=12, height=96, width=128))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = make_tracker("metasdnet-tiny", TrackerOptions(device="cpu", seed=3))
    assert any("randomly initialised" in str(w.message) for w in caught)
    assert tracker.metadata["backbone"] == BACKBONE_RANDOM and tracker.metadata["checkpoint"] == "untrained-init"
    assert tracker.metadata["dropgrad_while_tracking"] == "off"
    tracker.options = SMALL  # keep the registry's factory, shrink the counts
    results = run_tracker(tracker, seq, tmp_path / "out", dataset="Synthetic", progress=False)
    (name, sequence), = seq.items()
    _check_boxes(results[name].boxes, sequence)
    # the same seed gives the same boxes: the untrained initialisation and the sampling are seeded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = make_tracker("metasdnet-tiny", TrackerOptions(device="cpu", seed=3))
    again.options = SMALL
    np.testing.assert_array_equal(run_tracker(again, seq, tmp_path / "out2", progress=False)[name].boxes,
                                  results[name].boxes)


def test_follows_a_translating_target():
    # A bright textured square moving right over a flat background: even an unadapted random
    # network plus the online updates must follow it (the boxes move with the target).
    rng = np.random.default_rng(0)
    texture = rng.integers(150, 255, (24, 24, 3), dtype=np.uint8)
    frames, boxes = [], []
    for i in range(10):
        img = np.full((96, 160, 3), 40, np.uint8)
        x = 20 + 6 * i
        img[36:60, x:x + 24] = texture
        frames.append(img)
        boxes.append([x, 36, 24, 24])
    tracker, _ = _tiny_tracker(adapt_conv=True, options=MetaSDNetOptions(
        n_candidates=128, n_bbreg=0, n_pos_update=16, n_neg_update=32, long_interval=2, update_iters=5,
        batch_pos=16, batch_neg=32, batch_neg_cand=64, trans=1.0))
    tracker.init(frames[0], np.array(boxes[0], float))
    out = np.array([tracker.update(f) for f in frames[1:]])
    centres = out[:, 0] + out[:, 2] / 2
    truth = np.array(boxes[1:])[:, 0] + 12
    assert np.abs(centres - truth).mean() < 12  # a static box would be off by 30 px on average


def _moving_square(n=7):
    texture = np.random.default_rng(0).integers(150, 255, (24, 24, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        img = np.full((96, 160, 3), 40, np.uint8)
        img[36:60, 20 + 6 * i:44 + 6 * i] = texture
        frames.append(img)
    return frames


def test_boxes_do_not_depend_on_the_global_random_state():
    # The online updates' dropout draws from the tracker's own stream, seeded at init: got10k's
    # experiments do not reseed between sequences, so the global stream is whatever ran before.
    frames = _moving_square()
    runs = []
    for burn in (0, 1000):
        tracker, _ = _tiny_tracker()
        torch.manual_seed(123)
        torch.rand(burn)
        tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
        before = torch.get_rng_state()
        runs.append(np.array([tracker.update(f) for f in frames[1:]]))
        assert torch.equal(torch.get_rng_state(), before)  # nor does tracking move the global stream
    np.testing.assert_array_equal(runs[0], runs[1])
    # Seeded per init: the same tracker run twice gives the same boxes.
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    np.testing.assert_array_equal(np.array([tracker.update(f) for f in frames[1:]]), runs[0])


@pytest.mark.parametrize("box", [[50, 50, float("nan"), 20], [50, 50, 0, 0], [50, 50, 10, -1]])
def test_a_first_box_without_a_finite_positive_size_is_refused(box):
    tracker, _ = _tiny_tracker()
    with pytest.raises(ValueError, match="test-tiny.init: the first box must be finite with a positive width and height"):
        tracker.init(_moving_square(1)[0], box)


def test_first_frame_step_is_dropgrad_free_and_deterministic():
    strong = DropGrad(p=0.9, kind="gaussian")
    tracker, learner = _tiny_tracker(adapt_conv=True, dropgrad=strong)
    frame = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    box = np.array([30.0, 20.0, 30.0, 25.0])
    learner.train()  # a learner still being meta-trained: the step is noise-free anyway
    tracker.init(frame, box)
    assert learner.training and learner.dropgrad.training  # its mode is given back
    first = {k: v.clone() for k, v in tracker.net.state_dict().items()}
    tracker.init(frame, box)
    for k, v in tracker.net.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)
    # the same step without any DropGrad gives the same weights ...
    clean, _ = _tiny_tracker(adapt_conv=True, dropgrad=None)
    clean.init(frame, box)
    for k, v in clean.net.state_dict().items():
        torch.testing.assert_close(v, first[k])
    # ... the step did change the weights, and in training mode DropGrad would perturb it
    assert not torch.equal(first["fc.fc6.weight"], learner.model.fc.fc6.weight.detach())
    crops = torch.randn(6, 3, 107, 107) * 40
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    learner.train()
    noisy = learner.adapt(crops, labels)[-1]["fc.fc6.weight"]
    learner.eval()
    assert not torch.allclose(noisy, learner.adapt(crops, labels)[-1]["fc.fc6.weight"])


@pytest.mark.parametrize("adapt_conv", [False, True])
def test_tasks_stack_and_meta_backward(adapt_conv):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (15, 72, 96, 3), dtype=np.uint8)
    boxes = np.array([[20.0 + i, 15.0, 30.0, 24.0] for i in range(15)])
    boxes[3] = [0, 0, 0, 0]  # an invisible target: never a query frame
    seq = Sequence("toy", [], boxes)
    seq.image = lambda i: frames[i]
    d = MetaSDNetDef("t", tiny=True, adapt_conv=adapt_conv, n_support_pos=4, n_support_neg=6, n_query_pos=4,
                     n_query_neg=6, query_frames=2)
    torch.manual_seed(0)
    learner, _ = build_learner(d, None, dropgrad=DropGrad(0.2, kind="gaussian"))
    tasks = [d.sample_task(learner.model, seq, t, 10, np.random.default_rng(t)) for t in (0, 2, 13)]
    stacked = Task(*(torch.stack(field) for field in zip(*tasks)))
    item = (3, 107, 107) if adapt_conv else (288,)
    assert stacked.support_x.shape == (3, 10, *item) and stacked.query_x.shape == (3, 10, *item)
    assert stacked.support_y.tolist() == [[1] * 4 + [0] * 6] * 3 and stacked.query_y.shape == (3, 10)
    assert stacked.support_x.dtype == torch.float32 and stacked.support_y.dtype == torch.int64
    learner.train()
    out = learner.meta_backward(stacked, batched=False)
    assert torch.isfinite(out.loss) and out.query_output.shape == (3, 10, 2)
    lrs = dict(learner.lrs.items())
    assert all(p.grad is not None for p in lrs.values())
    assert learner.model.fc.fc6.weight.grad is not None
    if adapt_conv:
        assert learner.model.conv.conv1.weight.grad is not None
    # vmap-batched adaptation gives the same numbers (DropGrad off in eval mode)
    learner.eval()
    torch.testing.assert_close(learner.meta_loss(stacked, batched=True).loss, learner.meta_loss(stacked).loss)
    # same rng, same task
    again = d.sample_task(learner.model, seq, 2, 10, np.random.default_rng(2))
    torch.testing.assert_close(again.query_x, tasks[1].query_x)


def test_training_samples_around_a_box_past_the_frame_edge_keep_their_labels():
    # A VOT box 30% outside the left edge: samples stay in the frame, so they are drawn around
    # the part inside it, which all positives overlap by >= 0.7 and no negative by > 0.5.
    from dropgrad_tracking.trackers.sampling import overlap

    d = MetaSDNetDef("test-tiny", tiny=True, options=SMALL)
    image = np.zeros((480, 640, 3), np.uint8)
    box = np.array([-24.0, 200, 80, 80])
    pos, neg = d._boxes(image, box, 32, 96, np.random.default_rng(0))
    inside = np.array([0.0, 200, 56, 80])
    assert (overlap(pos, inside) >= 0.7).all() and (overlap(neg, inside) <= 0.5).all()


def test_task_errors_name_the_sequence_and_frame():
    frames = np.zeros((3, 60, 80, 3), np.uint8)
    seq = Sequence("toy", [], np.array([[10.0, 10, 20, 20], [0, 0, 0, 0], [10, 10, 20, 20]]))
    seq.image = lambda i: frames[i]
    d = METASDNET_TINY
    model, _ = d.build_model(None)
    with pytest.raises(ValueError, match="toy: frame 2 has no visible target"):
        d.sample_task(model, seq, 1, 10, np.random.default_rng(0))
    hidden = Sequence("toy", [], np.array([[10.0, 10, 20, 20], [0, 0, 0, 0], [0, 0, 0, 0]]))
    hidden.image = lambda i: frames[i]
    with pytest.raises(ValueError, match=r"toy: no frame with a visible target in frames 2\.\.3"):
        d.sample_task(model, hidden, 0, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside 0..2"):
        d.sample_task(model, seq, 3, 10, np.random.default_rng(0))


def test_options_are_validated():
    with pytest.raises(ValueError, match="top_k"):
        MetaSDNetOptions(n_candidates=3, top_k=5)
    with pytest.raises(ValueError, match="n_support_pos"):
        MetaSDNetDef("x", n_support_pos=0)
    with pytest.raises(TypeError, match="VGGM"):
        MetaSDNetTracker(MetaSGD(torch.nn.Linear(2, 2), steps=1), {})


def test_load_learner_puts_it_on_the_device_in_eval_mode():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learner, meta = load_learner("metasdnet-tiny", None, None, torch.device("cpu"))
    assert not learner.training and meta["backbone"] == BACKBONE_RANDOM


@pytest.mark.slow
def test_full_size_tracker_on_real_frames(shared_data, tmp_path):
    """The paper-size network and defaults on 4 frames of each real sequence (minutes on a CPU)."""
    folders = load_otb_folders(shared_data / "otb" / "OTB2015-sample")
    sequences = {n: Sequence(n, s.frames[:4], s.boxes[:4], s.attributes) for n, s in folders.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = make_tracker("metasdnet", TrackerOptions(device="auto"))
    results = run_tracker(tracker, sequences, tmp_path, progress=False)
    for name, seq in sequences.items():
        _check_boxes(results[name].boxes, seq)


@pytest.mark.gpu
def test_runs_on_cuda(shared_data, tmp_path):
    folders = load_otb_folders(shared_data / "otb" / "OTB2015-sample")
    seq = {"Couple": Sequence("Couple", folders["Couple"].frames[:20], folders["Couple"].boxes[:20])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = make_tracker("metasdnet", TrackerOptions(device="cuda"))
    assert tracker.device.type == "cuda" and tracker.net.fc.fc6.weight.is_cuda
    results = run_tracker(tracker, seq, tmp_path, progress=False)
    _check_boxes(results["Couple"].boxes, seq["Couple"])


def test_samples_follow_mdnets_overlap_ranges_at_init_and_update():
    # MDNet: positives IoU >= 0.7; negatives IoU <= 0.5 on the first frame, <= 0.3 in updates.
    from dropgrad_tracking.evaluation import box_iou

    # Every frame a success, so every update collects samples (an untrained net may score below 0).
    tracker, _ = _tiny_tracker(options=dataclasses.replace(SMALL, success_threshold=-1e9))
    drawn = []
    plain = tracker._draw

    def spy(generator, box, n, overlap_range=None, scale_range=None):
        boxes = plain(generator, box, n, overlap_range, scale_range)
        drawn.append((overlap_range, boxes, np.array(box, float)))
        return boxes

    tracker._draw = spy
    frames = _moving_square(4)
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    n_init = len(drawn)
    for f in frames[1:]:
        tracker.update(f)
    init, update = drawn[:n_init], drawn[n_init:]
    assert {r for r, _, _ in init} >= {(0.7, 1.0), (0.0, 0.5)} and (0.0, 0.3) not in {r for r, _, _ in init}
    assert {r for r, _, _ in update} == {(0.7, 1.0), (0.0, 0.3)}
    for (lo, hi), boxes, box in drawn:
        iou = box_iou(boxes, np.broadcast_to(box, boxes.shape))
        assert len(boxes) and (iou >= lo - 1e-9).all() and (iou <= hi + 1e-9).all()


def test_online_training_mines_the_hardest_negatives():
    # MDNet's hard negative mining: of the candidate negatives, the highest-scoring ones.
    tracker, _ = _tiny_tracker(options=dataclasses.replace(SMALL, n_candidates=16, update_iters=1, batch_pos=4,
                                                           batch_neg=4, batch_neg_cand=32))
    tracker.init(_moving_square(1)[0], np.array([20.0, 36, 24, 24]))
    pos, neg = torch.cat(tracker._pos_memory), torch.cat(tracker._neg_memory)
    with torch.no_grad():
        scores = tracker.net.head_without_dropout(neg)[:, 1]
    batches = []
    head = tracker.net.head
    tracker.net.head = lambda x: (batches.append(x.detach().clone()), head(x))[1]
    tracker._train(pos, neg)
    chosen = [int(torch.nonzero((neg == row).all(1))[0]) for row in batches[0][4:]]
    assert len(chosen) == 4 and (scores[chosen] >= scores.median()).all()


def test_online_update_keeps_mdnets_memories_and_fc6_rate():
    o = dataclasses.replace(SMALL, success_threshold=-1e9, n_frames_long=4, n_frames_short=2, long_interval=100)
    tracker, _ = _tiny_tracker(options=o)
    frames = _moving_square(7)
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    for f in frames[1:]:
        tracker.update(f)
    assert (len(tracker._pos_memory), len(tracker._neg_memory)) == (4, 2)
    # A failed frame trains at once on the short-term memory: the last n_frames_short frames.
    tracker.options = dataclasses.replace(o, success_threshold=1e9)
    seen = []
    tracker._train = lambda pos, neg: seen.append((len(pos), len(neg)))
    tracker.update(frames[-1])
    assert seen == [(2 * o.n_pos_update, 2 * o.n_neg_update)]
    rates = {n: g["lr"] for (n, _), g in zip(((n, p) for n, p in tracker.net.named_parameters() if n.startswith("fc.")),
                                              tracker._optimizer.param_groups)}
    assert rates and all(r == o.lr_update * (o.fc6_lr_mult if n.startswith("fc.fc6") else 1.0) for n, r in rates.items())
    assert any(n.startswith("fc.fc6") for n in rates) and o.fc6_lr_mult == 10.0


def test_update_schedule_is_mdnets_long_term_every_10_frames_short_term_on_failure():
    # MDNet / Meta-Tracker (py-MDNet's run_tracker, frames indexed from 0 = the initial frame):
    # a failed frame (mean top-5 target score <= 0) trains at once on the short-term memory and
    # nothing else; a successful frame whose index is a multiple of 10 trains on all of the
    # memory (after collecting its own samples); every other frame trains not at all. The frame
    # index is the test's own, and the scores' sign is forced per frame at the network's output.
    o = dataclasses.replace(SMALL, n_candidates=16, n_bbreg=0, long_interval=10, n_frames_short=2,
                            update_iters=1, batch_neg_cand=16)
    assert METASDNET.options.long_interval == o.long_interval and o.success_threshold == 0.0
    tracker, _ = _tiny_tracker(options=o)
    square = _moving_square(7)
    frames = [square[i % 7] for i in range(22)]  # frame 0 initialises, frames 1 .. 21 are tracked
    failures = {4, 20}  # a plain frame, and one that is also a long-term frame
    state = {"i": 0}
    head = tracker.net.head_without_dropout

    def forced(x):  # the target score's sign per frame; the candidates' ranking is the network's
        scores = head(x)
        return scores + scores.new_tensor([0.0, -1e3 if state["i"] in failures else 1e3])

    tracker.net.head_without_dropout = forced
    train, updates = tracker._train, []

    def spy(pos, neg):
        pos_mem, neg_mem = tracker._pos_memory, tracker._neg_memory
        if torch.equal(pos, torch.cat(pos_mem)) and torch.equal(neg, torch.cat(neg_mem)):
            kind = "long"
        elif torch.equal(pos, torch.cat(pos_mem[-o.n_frames_short:])) and torch.equal(neg, torch.cat(neg_mem)):
            kind = "short"
        else:
            kind = "other"
        updates.append((state["i"], kind, len(pos_mem)))
        train(pos, neg)

    tracker._train = spy
    for run in range(2):  # init restarts the frame count
        updates.clear()
        state["i"] = 0
        tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
        scores = []
        for i, frame in enumerate(frames[1:], start=1):
            state["i"] = i
            tracker.update(frame)
            scores.append(tracker.last_score)
        assert [i for i, s in enumerate(scores, start=1) if s <= 0] == sorted(failures)
        # (frame, update, frames in the positive memory: the initial one + each success so far)
        assert updates == [(4, "short", 4), (10, "long", 10), (20, "short", 19)], f"run {run}"


def _forced(tracker, success):
    """Force the sign of every candidate's target score (the ranking stays the network's)."""
    head = tracker.net.head_without_dropout
    tracker.net.head_without_dropout = lambda x: head(x) + head(x).new_tensor([0.0, 1e3 if success() else -1e3])


def test_search_widens_after_a_failure_and_narrows_after_a_success():
    o = dataclasses.replace(SMALL, n_bbreg=0, update_iters=0)
    tracker, _ = _tiny_tracker(options=o)
    state = {"ok": False}
    frames = _moving_square(4)
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    _forced(tracker, lambda: state["ok"])
    assert tracker._candidates.trans == o.trans
    tracker.update(frames[1])
    assert tracker.last_score < 0 and tracker._candidates.trans == o.trans_expand == 1.5
    state["ok"] = True
    tracker.update(frames[2])
    assert tracker._candidates.trans == o.trans == 0.6


def test_box_regression_gives_the_result_on_success_only():
    tracker, _ = _tiny_tracker(options=dataclasses.replace(SMALL, update_iters=0))
    state = {"ok": True}
    frames = _moving_square(3)
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    _forced(tracker, lambda: state["ok"])
    assert tracker._bbreg is not None
    tracker._bbreg.predict = lambda feats, boxes: np.tile([50.0, 30, 20, 22], (len(boxes), 1))
    np.testing.assert_allclose(tracker.update(frames[1]), [50.0, 30, 20, 22])
    state["ok"] = False
    out = tracker.update(frames[2])
    assert not np.allclose(out, [50.0, 30, 20, 22])
    np.testing.assert_allclose(out, tracker._target)  # a failure keeps the candidates' mean


def test_sampling_indices_cover_every_sample_in_whole_passes():
    tracker, _ = _tiny_tracker()
    tracker._rng = np.random.default_rng(0)
    idx = tracker._indices(10, 64)  # 6 full passes and 4 of a 7th: never a short batch
    assert len(idx) == 64 and set(np.bincount(idx, minlength=10)) <= {6, 7}
    for k in range(6):
        assert sorted(idx[10 * k:10 * (k + 1)]) == list(range(10))


def test_dropout_stream_is_seeded_from_the_trackers_seed_and_continues():
    tracker, _ = _tiny_tracker(seed=7)
    tracker._torch_rng = None  # as after init
    expected = torch.rand(6, generator=torch.Generator().manual_seed(7))
    with tracker._own_dropout_stream():
        first = torch.rand(3)
    torch.rand(5)  # the global stream moving in between changes nothing
    with tracker._own_dropout_stream():
        second = torch.rand(3)
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0)


@pytest.mark.parametrize("clip", [1e9, 0.05])
def test_online_update_is_one_sgd_step_on_mdnets_summed_loss(clip):
    # One iteration on exactly batch_pos positives and batch_neg negatives (all of them chosen,
    # no dropout): the step is lr * (grad of the SUMMED cross-entropy, clipped in norm, + wd * p),
    # with fc6 at 10x the rate; momentum only acts from the second step.
    o = dataclasses.replace(SMALL, update_iters=1, batch_pos=6, batch_neg=10, batch_neg_cand=10, grad_clip=clip)
    tracker, _ = _tiny_tracker(options=o)
    tracker.init(_moving_square(1)[0], np.array([20.0, 36, 24, 24]))
    tracker.net.fc.drop5.p = tracker.net.fc.drop6.p = 0.0
    torch.manual_seed(1)
    pos, neg = torch.randn(6, 288).abs(), torch.randn(10, 288).abs()
    fc = {n: p for n, p in tracker.net.named_parameters() if n.startswith("fc.")}
    before = {n: p.detach().clone().double().requires_grad_() for n, p in fc.items()}
    scores = torch.func.functional_call(tracker.net.fc, {n[3:]: v for n, v in before.items()},
                                        (torch.cat([pos, neg]).double(),))
    labels = torch.cat([torch.ones(6), torch.zeros(10)]).long()
    loss = torch.nn.functional.cross_entropy(scores, labels, reduction="sum")
    grads = dict(zip(before, torch.autograd.grad(loss, list(before.values()))))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    scale = min(1.0, clip / (float(norm) + 1e-6))
    assert (scale < 1) == (clip < 1)
    tracker._train(pos, neg)
    for n, p in fc.items():
        lr = o.lr_update * (o.fc6_lr_mult if n.startswith("fc.fc6") else 1.0)
        want = before[n].detach() - lr * (grads[n] * scale + o.weight_decay * before[n].detach())
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-4, atol=1e-7)


def test_query_frames_come_from_the_next_horizon_frames_only():
    frames = np.random.default_rng(0).integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)
    seq = Sequence("toy", [], np.array([[10.0, 10, 20, 16]] * 8))
    seen = []
    seq.image = lambda i: (seen.append(int(i)), frames[i])[1]
    d = MetaSDNetDef("t", tiny=True, adapt_conv=False, n_support_pos=2, n_support_neg=2, n_query_pos=2, n_query_neg=2)
    model, _ = d.build_model(None)
    queried = set()
    for r in range(12):
        seen.clear()
        d.sample_task(model, seq, 1, 2, np.random.default_rng(r))
        assert seen[0] == 1 and len(seen) == 2
        queried.add(seen[1])
    assert queried == {2, 3}  # t+1 .. t+horizon, both drawn over 12 seeds, never t+3


def test_first_frame_step_labels_positives_1_and_raises_their_margin():
    tracker, learner = _tiny_tracker()
    captured = {}
    adapt = learner.adapt
    learner.adapt = lambda x, y: (captured.update(x=x, y=y), adapt(x, y))[1]
    first = tracker.adapt_first_frame
    tracker.adapt_first_frame = lambda frame, box: captured.setdefault("boxes", first(frame, box))
    frame = _moving_square(1)[0]
    tracker.init(frame, np.array([20.0, 36, 24, 24]))
    pos, neg = captured["boxes"]
    assert captured["y"].tolist() == [1] * len(pos) + [0] * len(neg)
    x = captured["x"]  # conv3 features of the positives first, then the negatives
    with torch.no_grad():
        before = learner.model.head_without_dropout(x)
        after = tracker.net.head_without_dropout(x)
    margin = lambda s: (s[: len(pos), 1] - s[: len(pos), 0]).mean() - (s[len(pos):, 1] - s[len(pos):, 0]).mean()
    assert margin(after) > margin(before)  # the step moved the target score up on positives, down on negatives


def test_first_frame_memories_hold_the_features_of_every_support_sample():
    # The initial memories are the first frame's positives and negatives (an odd count too):
    # the long-term update's first frame, cached as conv3 features of exactly those boxes.
    from dropgrad_tracking.trackers.sampling import frame_tensor

    o = dataclasses.replace(SMALL, n_pos_init=9, n_neg_init=33)
    tracker, _ = _tiny_tracker(options=o)
    captured = {}
    first = tracker.adapt_first_frame
    tracker.adapt_first_frame = lambda frame, box: captured.setdefault("boxes", first(frame, box))
    image = _moving_square(1)[0]
    tracker.init(image, np.array([20.0, 36, 24, 24]))
    pos, neg = captured["boxes"]
    assert (len(pos), len(neg)) == (9, 33)
    frame = frame_tensor(image, tracker.device)
    torch.testing.assert_close(tracker._pos_memory[0], tracker._features(frame, pos))
    torch.testing.assert_close(tracker._neg_memory[0], tracker._features(frame, neg))


def test_box_regression_reads_the_top_candidates_boxes_and_their_own_features():
    from dropgrad_tracking.trackers.sampling import frame_tensor

    tracker, _ = _tiny_tracker(options=dataclasses.replace(SMALL, update_iters=0))
    frames = _moving_square(2)
    tracker.init(frames[0], np.array([20.0, 36, 24, 24]))
    _forced(tracker, lambda: True)
    seen = []
    predict = tracker._bbreg.predict
    tracker._bbreg.predict = lambda feats, boxes: (seen.append((feats.clone(), boxes.copy())), predict(feats, boxes))[1]
    tracker.update(frames[1])
    (feats, boxes), = seen
    # The top-k candidates (their mean is the target) ...
    assert boxes.shape == (SMALL.top_k, 4)
    np.testing.assert_allclose(boxes.mean(axis=0), tracker._target)
    # ... with each one's own conv3 features, in the same order.
    torch.testing.assert_close(feats, tracker._features(frame_tensor(frames[1], tracker.device), boxes))


def test_each_online_iteration_takes_the_next_minibatch():
    # Positives and negative candidates are consumed in whole passes: 3 iterations of 4 of 12
    # positives (and 8 of 24 candidates) see every sample once, not the first batch 3 times.
    o = dataclasses.replace(SMALL, update_iters=3, batch_pos=4, batch_neg=4, batch_neg_cand=8)
    tracker, _ = _tiny_tracker(options=o)
    tracker.init(_moving_square(1)[0], np.array([20.0, 36, 24, 24]))
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(12, 288, generator=g), torch.randn(24, 288, generator=g)
    batches, candidates = [], []
    head, mine = tracker.net.head, tracker.net.head_without_dropout
    tracker.net.head = lambda x: (batches.append(x.detach().clone()), head(x))[1]
    tracker.net.head_without_dropout = lambda x: (candidates.append(x.detach().clone()), mine(x))[1]
    tracker._train(pos, neg)
    assert len(batches) == len(candidates) == 3

    def rows(x, pool):
        return sorted(int(torch.nonzero((pool == r).all(1))[0]) for r in x)

    assert rows(torch.cat([b[:4] for b in batches]), pos) == list(range(12))
    assert rows(torch.cat(candidates), neg) == list(range(24))


def test_query_frames_are_distinct():
    frames = np.random.default_rng(0).integers(0, 255, (8, 48, 64, 3), dtype=np.uint8)
    seq = Sequence("toy", [], np.array([[10.0, 10, 20, 16]] * 8))
    seen = []
    seq.image = lambda i: (seen.append(int(i)), frames[i])[1]
    d = MetaSDNetDef("t", tiny=True, adapt_conv=False, n_support_pos=2, n_support_neg=2, n_query_pos=2,
                     n_query_neg=2, query_frames=2)
    model, _ = d.build_model(None)
    for r in range(8):
        seen.clear()
        d.sample_task(model, seq, 1, 2, np.random.default_rng(r))
        assert seen == [1, 2, 3]  # both frames of the horizon, each once, in order


@pytest.mark.parametrize("adapt_conv", [False, True])
def test_tasks_are_built_on_the_models_device(adapt_conv):
    """On a GPU a task cut on the CPU (hundreds of crops) and copied over cost more than its step;
    with the model on torch's meta device, any tensor made on the CPU would show up here."""
    frames = np.random.default_rng(0).integers(0, 255, (6, 72, 96, 3), dtype=np.uint8)
    seq = Sequence("toy", [], np.array([[20.0 + i, 15.0, 30.0, 24.0] for i in range(6)]))
    seq.image = lambda i: frames[i]
    d = MetaSDNetDef("t", tiny=True, adapt_conv=adapt_conv, n_support_pos=4, n_support_neg=6, n_query_pos=4,
                     n_query_neg=6, query_frames=2)
    learner, _ = build_learner(d, None)
    model = learner.model
    task = d.sample_task(model, seq, 0, 4, np.random.default_rng(0))
    # Positives first, then negatives, in the counts asked for (4 and 6: a swap would show).
    assert task.support_y.tolist() == [1] * 4 + [0] * 6 and task.query_y.tolist() == [1] * 4 + [0] * 6
    assert len(task.support_x) == 10 and len(task.query_x) == 10
    task = d.sample_task(model.to("meta"), seq, 0, 4, np.random.default_rng(0))
    assert [x.device.type for x in task] == ["meta"] * 4
