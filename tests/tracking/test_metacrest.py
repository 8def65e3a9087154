"""MetaCREST: VGG-16 backbone loading, correlation maths, tasks, DropGrad off, tracking end to end.

VGG-16 on two CPU cores is slow, so the trackers here use small search patches
(``MetaCRESTConfig(patch_size=64)``: 8x8 conv4_3, 15x15 response cells; 128 where the tracking
itself is checked) instead of the default 224.
"""

import doctest
import json
import pickle
import warnings

import cv2
import numpy as np
import pytest
import torch
import torchvision
from dropgrad import DropGrad, MetaSGD
from dropgrad_tracking.cli import main
from dropgrad_tracking.data import (
    Sequence,
    SyntheticConfig,
    load_otb_folders,
    write_synthetic,
)
from dropgrad_tracking.evaluation import build_report, evaluate_tracker, write_report
from dropgrad_tracking.meta import (
    BACKBONE_RANDOM,
    build_learner,
    load_learner,
    meta_tracker,
)
from dropgrad_tracking.models import vgg16 as vgg16_module
from dropgrad_tracking.models.vgg16 import (
    BackboneWeightsError,
    build_vgg16_conv4,
)
from dropgrad_tracking.trackers import (
    available_trackers,
    correlation,
    metacrest,
    run_tracker,
)
from dropgrad_tracking.trackers.correlation import (
    crop_patches,
    gaussian_labels,
    image_to_cells,
    peak_displacement,
    windowed_peak,
)
from dropgrad_tracking.trackers.metacrest import (
    CELL,
    CorrelationHead,
    MetaCRESTConfig,
    MetaCRESTDef,
    MetaCRESTNet,
    MetaCRESTTracker,
)
from scipy.signal import correlate
from torch import nn

SMALL = MetaCRESTConfig(patch_size=96)


def _vgg_features():
    """torchvision's own VGG-16 ``features`` module (conv1_1 .. conv5_3), randomly initialised."""
    torch.manual_seed(0)
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])


@pytest.fixture(scope="module")
def tv_features():
    return _vgg_features()


def test_doctests():
    for module in (vgg16_module, correlation, metacrest):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ---------------------------------------------------------------- backbone


def test_backbone_loads_torchvision_state_dicts_and_matches_torchvision(tv_features, tmp_path):
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        reference = tv_features[:23](x)  # torchvision's layers up to conv4_3 + ReLU
    # A features-only state dict, and the whole network's key layout ("features.N..." plus a
    # classifier; its real 500 MB classifier is replaced by a small stand-in, it is ignored anyway).
    torch.save(tv_features.state_dict(), tmp_path / "features.pth")
    full = {f"features.{k}": v for k, v in tv_features.state_dict().items()}
    full.update({"classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4)})
    torch.save(full, tmp_path / "vgg16.pth")
    for name in ("features.pth", "vgg16.pth"):
        net, source = build_vgg16_conv4(tmp_path / name)
        assert source == name and not any(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            torch.testing.assert_close(net(x), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_backbone_loads_a_genuine_torchvision_vgg16_state_dict(tmp_path):
    model = torchvision.models.vgg16(weights=None)
    torch.save(model.state_dict(), tmp_path / "vgg16-random.pth")
    net, _ = build_vgg16_conv4(tmp_path / "vgg16-random.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.features[:23](x))


class NotATensor:
    pass


def test_backbone_weight_errors_name_the_file_and_keys(tv_features, tmp_path):
    with pytest.raises(BackboneWeightsError, match="nope.pth: no such file"):
        build_vgg16_conv4(tmp_path / "nope.pth")
    state = {f"features.{k}": v for k, v in tv_features.state_dict().items()}
    del state["features.21.weight"], state["features.0.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(BackboneWeightsError, match=r"partial.pth: not a VGG-16 state dict; missing keys features.0.bias, features.21.weight"):
        build_vgg16_conv4(tmp_path / "partial.pth")
    state = {k: v for k, v in tv_features.state_dict().items()}
    state["19.weight"] = torch.zeros(512, 256, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(BackboneWeightsError, match=r"shape.pth: key 19.weight has shape \(512, 256, 3, 3\), expected \(512, 512, 3, 3\)"):
        build_vgg16_conv4(tmp_path / "shape.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(BackboneWeightsError, match="tensor.pth: holds a Tensor, not a state dict"):
        build_vgg16_conv4(tmp_path / "tensor.pth")
    # A pickle that refers to a class: never unpickled (weights_only).
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"0.weight": NotATensor()}, protocol=2))
    with pytest.raises(BackboneWeightsError, match="evil.pth: cannot be loaded safely"):
        build_vgg16_conv4(tmp_path / "evil.pth")
    (tmp_path / "text.pth").write_text("not a tensor file")
    with pytest.raises(BackboneWeightsError, match="text.pth"):
        build_vgg16_conv4(tmp_path / "text.pth")


def test_backbone_weights_flow_into_the_learner_and_metadata(tv_features, tmp_path):
    torch.save(tv_features.state_dict(), tmp_path / "features.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # real weights: no random-backbone warning
        learner, metadata = load_learner("metacrest", None, tmp_path / "features.pth", torch.device("cpu"))
    assert metadata == {"backbone": "features.pth", "checkpoint": "untrained-init"}
    torch.testing.assert_close(learner.model.backbone.features[21].weight, tv_features[21].weight)
    with pytest.warns(UserWarning, match="randomly initialised"):
        _, metadata = load_learner("metacrest", None, None, torch.device("cpu"))
    assert metadata["backbone"] == BACKBONE_RANDOM


# ------------------------------------------------------- correlation maths


def test_correlation_filter_is_scipy_correlate_and_its_peak_is_the_offset():
    rng = np.random.default_rng(0)
    c, n, k = 3, 15, 5
    head = CorrelationHead(8, c, k).double()
    z = rng.normal(size=(c, n, n))
    w = rng.normal(size=(c, k, k))
    with torch.no_grad():
        head.filter.weight.copy_(torch.from_numpy(w)[None])
        head.filter.bias.fill_(0.25)
        out = head.correlate(torch.from_numpy(z)[None])[0, 0].numpy()
    assert head.scale == 1 / np.sqrt(c * k * k)
    expected = head.scale * sum(correlate(z[i], w[i], mode="same") for i in range(c)) + 0.25
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)

    # A template placed at a known offset from the centre of an empty map: the response peaks
    # there, and the displacement in image pixels is offset * stride * side / size.
    centre = (n - 1) // 2
    template = rng.normal(size=(c, k, k))
    scene = np.zeros((c, n, n))
    oy, ox = -3, 4
    scene[:, centre + oy - k // 2 : centre + oy + k // 2 + 1, centre + ox - k // 2 : centre + ox + k // 2 + 1] = template
    with torch.no_grad():
        head.filter.weight.copy_(torch.from_numpy(template)[None])
        head.filter.bias.zero_()
        response = head.correlate(torch.from_numpy(scene)[None])[0, 0]
    index = int(response.argmax())
    assert divmod(index, n) == (centre + oy, centre + ox)
    side, size = 120.0, 60
    m, dx, dy = peak_displacement(n * n + index, n, CELL, [90.0, side], size)
    assert (m, dx, dy) == (1, ox * CELL * side / size, oy * CELL * side / size)


def test_windowed_peak_prefers_the_centre_and_handles_negative_maps():
    n = 9
    window = correlation.hann_window(n)
    flat = torch.zeros(2, n, n)
    flat[0, 1, 1] = 0.5  # a strong peak near the border loses to a weaker one near the centre
    flat[1, 4, 5] = 0.3
    assert divmod(int(windowed_peak(flat, window, torch.ones(2))), n * n) == (1, 4 * n + 5)
    assert int(windowed_peak(flat, window, torch.tensor([1.0, 0.01]))) == 1 * n + 1  # the penalty decides
    negative = flat - 5.0  # everywhere negative: still the same cell, not the window's zero border
    assert divmod(int(windowed_peak(negative, window, torch.ones(2))), n * n) == (1, 4 * n + 5)
    # Brute force over every cell.
    responses = torch.randn(3, n, n)
    penalties = torch.tensor([0.9, 1.0, 0.95])
    best = max(((responses[m, y, x] - responses.min()) * window[y, x] * penalties[m], m * n * n + y * n + x)
               for m in range(3) for y in range(n) for x in range(n))
    assert int(windowed_peak(responses, window, penalties)) == best[1]
    # One shift for all maps (scales stay comparable): map 0 peaks at 1.2, map 1 at 0.5 over a floor of -10.
    # Shifted by the common minimum -10 the centres score 11.2 and 10.5, so map 0 wins; a per-map
    # shift would score them 0.2 and 10.5 and pick map 1.
    two = torch.stack([torch.full((5, 5), 1.0), torch.full((5, 5), -10.0)])
    two[0, 2, 2], two[1, 2, 2] = 1.2, 0.5
    assert int(windowed_peak(two, correlation.hann_window(5), torch.ones(2))) == 2 * 5 + 2


def test_windowed_peak_multiplies_by_the_scale_penalty():
    # Map 0 peaks at 0.1, map 1 at 0.2 (both at the centre, floors 0), penalties 1 and 0.6: scored
    # 0.1 * 1 against 0.2 * 0.6 = 0.12, so map 1 wins (an added penalty would give 1.1 against 0.8).
    two = torch.zeros(2, 5, 5)
    two[0, 2, 2], two[1, 2, 2] = 0.1, 0.2
    assert divmod(int(windowed_peak(two, correlation.hann_window(5), torch.tensor([1.0, 0.6]))), 25) == (1, 12)
    assert divmod(int(windowed_peak(two, correlation.hann_window(5), torch.tensor([1.0, 0.4]))), 25) == (0, 12)


def test_interpolation_is_stride_4_and_commutes_with_the_reduction():
    head = CorrelationHead(6, 4, 3).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x, size=(9, 9), mode="bilinear", align_corners=True)
    # Every second stride-4 cell is a conv4_3 cell; the ones between are the midpoints.
    torch.testing.assert_close(up[..., ::2, ::2], x)
    torch.testing.assert_close(up[..., 1::2, ::2], (x[..., 1:, :] + x[..., :-1, :]) / 2)
    with torch.no_grad():
        # A non-zero filter and bias: the initial zero filter would make both sides 0 whatever the interpolation.
        head.filter.weight.normal_(generator=torch.Generator().manual_seed(0))
        head.filter.bias.fill_(0.5)
        torch.testing.assert_close(head.correlate(head.reduce(up)), head(x))


def test_gaussian_labels_against_a_naive_loop():
    centres = torch.tensor([[3.0, 5.5], [0.0, 2.0]], dtype=torch.float64)
    sigmas = torch.tensor([[1.5, 0.7], [2.0, 2.0]], dtype=torch.float64)
    got = gaussian_labels(centres, sigmas, 9)
    for b in range(2):
        for y in range(9):
            for x in range(9):
                (cx, cy), (sx, sy) = centres[b].tolist(), sigmas[b].tolist()
                want = np.exp(-((x - cx) ** 2) / (2 * sx**2) - ((y - cy) ** 2) / (2 * sy**2))
                assert got[b, 0, y, x].item() == pytest.approx(want, rel=1e-12)


def test_labels_sit_on_the_target_in_response_cells():
    d = MetaCRESTDef(SMALL)
    n = SMALL.response_size
    box = np.array([[100.0, 60.0, 30.0, 30.0]])
    centre, side = d.patch_geometry(box[0])
    assert side == pytest.approx(SMALL.context * 30)
    label = d.labels_for(box, centre[None], np.array([side]))
    assert divmod(int(label.argmax()), n) == ((n - 1) // 2, (n - 1) // 2) and label.max() == 1.0
    # The target 2 cells (2 * 4 patch px = 2 * 4 * side / size image px) right and 3 cells up.
    px = CELL * side / SMALL.patch_size
    moved = box + np.array([[2 * px, -3 * px, 0, 0]])
    label = d.labels_for(moved, centre[None], np.array([side]))
    assert divmod(int(label.argmax()), n) == ((n - 1) // 2 - 3, (n - 1) // 2 + 2)
    # sigma = 0.1 x the target's size in cells (CREST), per axis.
    cells = 30 * SMALL.patch_size / side / CELL
    ky = (n - 1) // 2 - 3
    ratio = label[0, 0, ky, (n - 1) // 2 + 3] / label[0, 0, ky, (n - 1) // 2 + 2]
    assert ratio.item() == pytest.approx(np.exp(-1 / (2 * (0.1 * cells) ** 2)), rel=1e-5)


def _bilinear_zero_padded(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """The image (H, W, C) at pixel-index point (x, y), bilinear in float64, zero outside."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = np.zeros(image.shape[2])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
                out += wy * wx * image[yy, xx].astype(np.float64)
    return out


def test_crops_match_cv2_warp_affine():
    rng = np.random.default_rng(1)
    image = rng.random((50, 70, 3)).astype(np.float32)
    centres = np.array([[30.3, 20.7], [5.0, 45.0]])
    sides = np.array([24.0, 40.0])
    size = 16
    got = crop_patches(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(centres).float(),
                       torch.from_numpy(sides).float(), size)
    # OpenCV 4 interpolates at 1/32 px (INTER_BITS 5): up to 1/32 of a neighbour difference (<= 1
    # here) off. OpenCV 5 is exact to float32.
    cv2_atol = 2e-3 if int(cv2.__version__.split(".")[0]) >= 5 else 1 / 32
    for i in range(2):
        s = sides[i] / size
        # cv2 maps output pixel index u to source index X with X = a*u + b (pixel-index coordinates):
        # patch point u + 0.5 shows image point cx + (u + 0.5 - size/2) * s, i.e. index that - 0.5.
        b = centres[i] + (0.5 - size / 2) * s - 0.5
        affine = np.array([[s, 0, b[0]], [0, s, b[1]]])
        ref = cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.testing.assert_allclose(got[i].permute(1, 2, 0).numpy(), ref, atol=cv2_atol)
        exact = np.array([[_bilinear_zero_padded(image, s * u + b[0], s * v + b[1]) for u in range(size)]
                          for v in range(size)])
        np.testing.assert_allclose(got[i].permute(1, 2, 0).numpy(), exact, atol=1e-5)
    # The patch centre (size / 2 = 8 patch px) is cell (8 - offset) / stride = 3.5 of a (stride 2, offset 1) grid.
    cells = image_to_cells(torch.tensor([[30.3, 20.7]]), torch.from_numpy(centres[:1]).float(), torch.from_numpy(sides[:1]).float(), size, 2.0, 1.0)
    torch.testing.assert_close(cells, torch.tensor([[3.5, 3.5]]))


# ------------------------------------------------------------- meta-learning


@pytest.fixture(scope="module")
def otb_sequences(shared_data):
    root = shared_data / "otb" / "OTB2015-sample"
    if not root.is_dir():
        pytest.skip(f"OTB sample sequences not found in {root}")
    return load_otb_folders(root)


def _first(sequence: Sequence, n: int) -> Sequence:
    return Sequence(sequence.name, sequence.frames[:n], sequence.boxes[:n], sequence.attributes)


def test_tasks_have_fixed_shapes_and_train_with_dropgrad(otb_sequences):
    d = MetaCRESTDef(MetaCRESTConfig(patch_size=64))
    learner, _ = build_learner(d, None, DropGrad(0.2, kind="gaussian"))
    rng = np.random.default_rng(0)
    couple = _first(otb_sequences["Couple"], 6)
    boxes = couple.boxes.copy()
    boxes[2] = 0  # an invisible target is skipped; the visible frames fill the horizon
    hidden = Sequence("Couple-hidden", couple.frames, boxes)
    tasks = [d.sample_task(learner.model, hidden, 0, 4, rng), d.sample_task(learner.model, _first(otb_sequences["Crossing"], 6), 4, 4, rng)]
    n = d.config.response_size
    for task in tasks:
        assert [tuple(x.shape) for x in task] == [(1, 512, 8, 8), (1, 1, n, n), (4, 512, 8, 8), (4, 1, n, n)]
        assert all(x.device.type == "cpu" and x.dtype == torch.float32 for x in task)
    # Queries of the hidden-frame task: frames 1, 3, 4 (2 is hidden), then 1 again; each patch
    # sits on the last visible box before its frame (frame 3's on frame 1's box).
    def label(frame, at):
        centre, side = d.patch_geometry(boxes[at])
        return d.labels_for(boxes[[frame]], centre[None], np.array([side]))[0]

    torch.testing.assert_close(tasks[0].query_y[0], label(1, 0))
    torch.testing.assert_close(tasks[0].query_y[1], label(3, 1))
    torch.testing.assert_close(tasks[0].query_y[2], label(4, 3))
    torch.testing.assert_close(tasks[0].query_x[3], tasks[0].query_x[0])
    torch.testing.assert_close(tasks[0].support_y[0], label(0, 0))
    late = boxes.copy()
    late[4:] = 0
    with pytest.raises(ValueError, match=r"no visible target in frames 5..8 after support frame 4"):
        d.sample_task(learner.model, Sequence("late", couple.frames, late), 3, 4, rng)

    stacked = type(tasks[0])(*(torch.stack(parts) for parts in zip(*tasks)))
    learner.train()
    out = learner.meta_backward(stacked, batched=False)
    assert torch.isfinite(out.task_losses).all()
    for name in ("model.head.filter.weight", "model.head.reduce.weight", "lrs.head__filter__weight"):
        grad = dict(learner.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in learner.model.backbone.parameters())
    # The vmap path gives the same numbers (without noise, so both see the same gradients).
    plain, _ = build_learner(d, None)
    plain.train()
    a = plain.meta_loss(stacked, batched=False).task_losses
    b = plain.meta_loss(stacked, batched=True).task_losses
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tasks_are_built_on_the_models_device(otb_sequences):
    # With the model on torch's meta device, a tensor made on the CPU (a GPU run's host round trip) shows up.
    d = MetaCRESTDef(MetaCRESTConfig(patch_size=64))
    learner, _ = build_learner(d, None)
    task = d.sample_task(learner.model.to("meta"), _first(otb_sequences["Couple"], 6), 0, 4, np.random.default_rng(0))
    assert [x.device.type for x in task] == ["meta"] * 4


def test_a_box_without_height_is_no_visible_target_in_a_task():
    # A box with a width but no height (w > 0, h = 0) is not a target: as a query frame its label,
    # and as the box the next query's patch is placed on, it would make the task NaN.
    cfg = MetaCRESTConfig(patch_size=64)
    d = MetaCRESTDef(cfg)
    net = MetaCRESTNet(PixelUnshuffle(), cfg)
    frames = np.random.default_rng(0).integers(0, 255, (4, 60, 80, 3), dtype=np.uint8)
    boxes = np.array([[20.0, 15, 20, 20], [22, 15, 20, 0], [24, 15, 20, 20], [26, 15, 20, 20]])
    seq = Sequence("flat", [], boxes)
    seq.image = lambda i: frames[i]
    task = d.sample_task(net, seq, 0, 3, np.random.default_rng(0))
    assert all(torch.isfinite(x).all() for x in task)
    with pytest.raises(ValueError, match="flat: frame 2 has no visible target"):
        d.sample_task(net, seq, 1, 3, np.random.default_rng(0))


def test_dropgrad_is_off_while_tracking():
    cfg = MetaCRESTConfig(patch_size=64)
    d = MetaCRESTDef(cfg)
    learner, _ = build_learner(d, None, DropGrad(0.2, kind="gaussian"))
    with torch.no_grad():  # a non-zero filter so the reduction's gradient is not zero either
        learner.model.head.filter.weight.normal_(0, 0.01)
    rng = np.random.default_rng(0)
    frame = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    box = np.array([60.0, 40.0, 20.0, 24.0])
    learner.train()  # the tracker must switch the learner to eval mode itself
    tracker = MetaCRESTTracker(learner, cfg)
    tracker.init(frame, box)
    first = tracker.params
    learner.train()  # back to meta-training between two runs: init itself must switch DropGrad off again
    tracker.init(frame, box)
    assert not learner.training and tracker.metadata["dropgrad_while_tracking"] == "off"
    # The same numbers twice, and exactly theta - alpha * grad without noise.
    feats, labels = tracker._first
    theta = {k: v.detach().clone().requires_grad_() for k, v in learner.initial_params().items()}
    loss = d.loss_fn(learner.functional_forward(theta, feats), labels)
    grads = torch.autograd.grad(loss, list(theta.values()))
    for (name, p), g in zip(theta.items(), grads):
        expected = p - learner.step_size(0)[name] * g
        torch.testing.assert_close(first[name], expected.detach())
        torch.testing.assert_close(tracker.params[name], first[name], rtol=0, atol=0)
    # Control: in train mode the same step is noisy (so the check above can fail).
    learner.train()
    noisy = learner.adapt(feats, labels)[-1]
    assert not torch.allclose(noisy["head.filter.weight"], first["head.filter.weight"])


class PixelUnshuffle(nn.Module):
    """A stand-in backbone with VGG's stride-8 cell geometry and sharp, position-specific features."""

    out_channels = 192

    def __init__(self):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(8)
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        return self.unshuffle(x)


def test_tracker_finds_a_known_translation():
    # The whole chain (crop -> features -> label -> one adaptation step -> response -> peak ->
    # pixels) on a textured frame shifted by a known amount: the error is below one cell.
    cfg = MetaCRESTConfig(patch_size=128, update_interval=0, scales=(1.0,))
    d = MetaCRESTDef(cfg)
    learner = MetaSGD(MetaCRESTNet(PixelUnshuffle(), cfg), inner_lr=cfg.inner_lr, steps=1, loss_fn=d.loss_fn, adapt=list(d.adapt))
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur((rng.random((240, 320, 3)) * 255).astype(np.uint8), (0, 0), 2)
    box = np.array([140.0, 100.0, 30.0, 40.0])
    cell = CELL * d.patch_geometry(box)[1] / cfg.patch_size
    for shift in [(0, 0), (6, -4), (-10, 8), (15, 0)]:
        tracker = MetaCRESTTracker(learner, cfg)
        tracker.init(frame, box)
        moved = cv2.warpAffine(frame, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (320, 240), borderMode=cv2.BORDER_REFLECT)
        out = tracker.update(moved)
        assert np.abs(out[:2] - box[:2] - shift).max() <= cell, (shift, out)
        np.testing.assert_allclose(out[2:], box[2:])


# ------------------------------------------------------------- end to end


def _report_is_valid(out, results, sequences):
    ev = evaluate_tracker("metacrest", results, sequences, metadata=json.loads((out / "results" / "metacrest" / "tracker.json").read_text()))
    report = build_report([ev], "OTB2015", "exclude")
    write_report(out, report, [ev])
    saved = json.loads((out / "report.json").read_text())
    entry = saved["trackers"]["metacrest"]
    overall = entry["overall"]
    assert 0.0 <= overall["success_auc"] <= 20 / 21 and 0.0 <= overall["precision_20"] <= 1.0
    assert overall["fps"] > 0 and overall["first_frame_seconds"] > 0
    for name, seq in sequences.items():
        boxes = np.loadtxt(out / "results" / "metacrest" / f"{name}.txt", delimiter=",")
        assert boxes.shape == (len(seq), 4) and np.isfinite(boxes).all() and (boxes[:, 2:] > 0).all()
        np.testing.assert_allclose(boxes[0], seq.boxes[0])
    return entry


def test_runs_on_the_real_otb_sequences_and_reports(otb_sequences, tmp_path):
    sequences = {name: _first(seq, 8) for name, seq in otb_sequences.items()}
    assert sorted(sequences) == ["Couple", "Crossing", "Football1"]
    cfg = MetaCRESTConfig(patch_size=64, update_interval=3)
    d = MetaCRESTDef(cfg)
    learner, source = build_learner(d, None)
    tracker = d.make_tracker(learner.eval(), {"backbone": source, "checkpoint": "untrained-init"}, seed=0)
    results = run_tracker(tracker, sequences, tmp_path, dataset="OTB2015", progress=False)
    entry = _report_is_valid(tmp_path, results, sequences)
    saved = json.loads((tmp_path / "results" / "metacrest" / "tracker.json").read_text())
    assert saved["backbone"] == "random-init" and saved["metacrest"]["patch_size"] == 64
    assert entry["metadata"]["backbone"] == "random-init" and entry["metadata"]["dropgrad_while_tracking"] == "off"


def test_cli_runs_metacrest_on_the_synthetic_set(tmp_path, monkeypatch, capsys):
    assert "metacrest" in available_trackers()
    definition = meta_tracker("metacrest")
    monkeypatch.setattr(definition, "config", MetaCRESTConfig(patch_size=64, update_interval=3))
    code = main(["--dataset", "synthetic", "--tracker", "metacrest", "--device", "cpu", "--synthetic-sequences", "1",
                 "--synthetic-frames", "8", "--no-progress", "--no-plots", "--json", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "randomly initialised" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])["trackers"]["metacrest"]
    assert summary["backbone"] == "random-init" and summary["checkpoint"] == "untrained-init"
    report = json.loads((tmp_path / "report.json").read_text())["trackers"]["metacrest"]
    assert report["overall"]["fps"] > 0 and "fps_without_first" in report["overall"]


def test_the_untrained_initialisation_follows_the_seed_alone():
    from dropgrad_tracking.trackers import TrackerOptions, make_tracker

    weights = []
    for seed, burn in ((0, 0), (0, 100), (1, 0)):
        torch.manual_seed(99)
        torch.rand(burn)
        before = torch.get_rng_state()
        with pytest.warns(UserWarning, match="randomly initialised"):
            tracker = make_tracker("metacrest", TrackerOptions(device="cpu", seed=seed))
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(torch.cat([p.detach().flatten() for p in tracker.learner.parameters()]))
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_cli_rejects_a_bad_backbone_file(tmp_path, capsys):
    (tmp_path / "bad.pth").write_text("junk")
    code = main(["--dataset", "synthetic", "--tracker", "metacrest", "--backbone-weights", str(tmp_path / "bad.pth"),
                 "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.pth" in err and "Traceback" not in err


def test_config_is_validated():
    with pytest.raises(ValueError, match="patch_size must be a multiple of 8"):
        MetaCRESTConfig(patch_size=100)
    with pytest.raises(ValueError, match="context must be > 1"):
        MetaCRESTConfig(context=1.0)
    assert SMALL.kernel_size % 2 == 1 and SMALL.response_size == 23
    assert MetaCRESTConfig().response_size == 55 and MetaCRESTConfig().kernel_size == 15
    cfg = MetaCRESTConfig(patch_size=64)
    learner, _ = build_learner(MetaCRESTDef(cfg), None)
    with pytest.raises(ValueError, match="the learner's filter is 5 cells wide"):
        MetaCRESTTracker(learner, SMALL)


def test_write_synthetic_sequence_tracks(tmp_path):
    # The procedural sequence through the runner with a periodic update on the way.
    root = write_synthetic(tmp_path / "syn", SyntheticConfig(n_sequences=1, n_frames=6, height=96, width=128))
    sequences = load_otb_folders(root)
    cfg = MetaCRESTConfig(patch_size=64, update_interval=2, update_steps=1)
    d = MetaCRESTDef(cfg)
    learner, source = build_learner(d, None)
    tracker = d.make_tracker(learner.eval(), {"backbone": source}, seed=0)
    before = {k: v.clone() for k, v in learner.initial_params().items()}
    results = run_tracker(tracker, sequences, tmp_path / "out", dataset="Synthetic", progress=False)
    assert all(torch.equal(before[k], v) for k, v in learner.initial_params().items())  # theta untouched
    assert len(tracker._recent) == 5
    _report_is_valid(tmp_path / "out", results, sequences)


@pytest.mark.gpu
def test_cuda_tracker_agrees_with_cpu(tmp_path):
    import copy

    root = write_synthetic(tmp_path / "syn", SyntheticConfig(n_sequences=1, n_frames=10))
    sequences = load_otb_folders(root)
    seq = next(iter(sequences.values()))
    cfg = MetaCRESTConfig(patch_size=128, update_interval=4)
    d = MetaCRESTDef(cfg)
    cpu_learner, source = build_learner(d, None)
    cuda_learner = copy.deepcopy(cpu_learner).to(torch.device("cuda"))
    trackers = [d.make_tracker(learner.eval(), {"backbone": source}, seed=0) for learner in (cpu_learner, cuda_learner)]
    frames = [seq.image(i) for i in range(2)]
    for tracker in trackers:
        tracker.init(frames[0], seq.boxes[0])
    for name, p in trackers[0].params.items():
        torch.testing.assert_close(trackers[1].params[name].cpu(), p, rtol=2e-2, atol=1e-3)  # TF32 convolutions
    responses = []
    for tracker in trackers:
        centre, side = d.patch_geometry(seq.boxes[0])
        feats = tracker._features(frames[1], centre, side * np.asarray(cfg.scales))
        with torch.no_grad():
            responses.append(tracker.learner.functional_forward(tracker.params, feats).cpu())
    torch.testing.assert_close(responses[1], responses[0], rtol=5e-2, atol=5e-3)
    assert trackers[1].params["head.filter.weight"].device.type == "cuda"
    results = run_tracker(trackers[1], sequences, tmp_path / "out", dataset="Synthetic", progress=False)
    _report_is_valid(tmp_path / "out", results, sequences)


def test_the_label_gaussian_follows_the_targets_aspect():
    d = MetaCRESTDef(MetaCRESTConfig(patch_size=128, sigma_factor=0.3))
    box = np.array([[40.0, 40.0, 40.0, 10.0]])  # wide and flat
    c, side = d.patch_geometry(box[0])
    label = d.labels_for(box, c[None], np.array([side]))[0, 0]
    mid = label.shape[0] // 2
    assert label[mid, mid + 2] > label[mid + 2, mid]  # wider along x (columns) than along y


def test_online_updates_train_on_the_first_frame_too():
    cfg = MetaCRESTConfig(patch_size=64, update_interval=2, update_steps=1)
    learner, _ = build_learner(MetaCRESTDef(cfg), None)
    tracker = MetaCRESTTracker(learner.eval(), cfg)
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    tracker.init(frame, [20, 15, 20, 20])
    seen = []
    plain = tracker._train
    tracker._train = lambda f, y, s: (seen.append(f), plain(f, y, s))
    for _ in range(2):
        tracker.update(frame)
    assert len(seen[0]) == 3 and torch.equal(seen[0][0], tracker._first[0][0])  # the first frame, then two updates


def test_online_updates_cache_the_winning_scales_patch(monkeypatch):
    from dropgrad_tracking.trackers import metacrest

    cfg = MetaCRESTConfig(patch_size=64, update_interval=5, update_steps=1)
    learner, _ = build_learner(MetaCRESTDef(cfg), None)
    tracker = MetaCRESTTracker(learner.eval(), cfg)
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    tracker.init(frame, [20, 15, 20, 20])
    n, last = cfg.response_size, len(cfg.scales) - 1
    assert last > 0
    # The peak in the last scale's map (not scale 0's): that scale's patch is the one to keep.
    monkeypatch.setattr(metacrest, "windowed_peak", lambda response, window, penalty: last * n * n + n * n // 2)
    seen = []
    plain = tracker._features
    tracker._features = lambda *args: seen.append(plain(*args)) or seen[-1]
    tracker.update(frame)
    assert torch.equal(tracker._recent[-1][0], seen[-1][last:last + 1])


# ------------------------------------------------ tracking step, pinned by hand


def _tracker_on(frame, box, **overrides):
    cfg = MetaCRESTConfig(patch_size=64, **overrides)
    learner, _ = build_learner(MetaCRESTDef(cfg), None)
    tracker = MetaCRESTTracker(learner.eval(), cfg)
    tracker.init(frame, box)
    return tracker, cfg


def _fake_responses(tracker, maps):
    """Make the head answer ``maps`` (k, n, n) whatever the features (the real window, penalty and peak follow)."""
    fixed = torch.as_tensor(maps, dtype=torch.float32)[:, None]
    tracker.learner.functional_forward = lambda params, feats: fixed.clone()


def test_equal_responses_keep_the_unit_scale_and_a_winning_scale_is_damped():
    frame = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    box = np.array([80.0, 40.0, 20.0, 20.0])
    tracker, cfg = _tracker_on(frame, box, update_interval=0)
    n, c = cfg.response_size, cfg.response_size // 2
    assert cfg.scales == (0.95, 1.0, 1.05) and cfg.scale_penalty < 1 and cfg.scale_damping == 0.6
    maps = np.zeros((3, n, n))
    maps[:, c, c] = 1.0  # the same peak at every scale: the penalty of the other scales decides
    _fake_responses(tracker, maps)
    np.testing.assert_allclose(tracker.update(frame), box)
    maps[:2] = 0.0  # only the 1.05 map peaks: the size moves 60% of the way, 20 -> 20 * 1.03
    _fake_responses(tracker, maps)
    np.testing.assert_allclose(tracker.update(frame), [80.0 - 0.3, 40.0 - 0.3, 20.6, 20.6])


def test_a_wide_frame_bounds_the_centre_by_its_width_and_height():
    frame = np.random.default_rng(1).integers(0, 255, (60, 240, 3), dtype=np.uint8)  # H 60, W 240
    box = np.array([180.0, 36.0, 16.0, 16.0])  # centre (188, 44)
    tracker, cfg = _tracker_on(frame, box, update_interval=0, scales=(1.0,))
    n = cfg.response_size
    maps = np.zeros((1, n, n))
    maps[0, n // 2, n // 2] = 1.0
    _fake_responses(tracker, maps)
    np.testing.assert_allclose(tracker.update(frame), box)  # x = 180 lies beyond the height (60), inside the width
    maps[0, n // 2, n // 2] = 0.0
    maps[0, n // 2 + 5, n // 2] = 1.0  # 5 cells down: 5 * 4 * 64 / 64 = 20 px, to y = 64, past the bottom edge
    _fake_responses(tracker, maps)
    out = tracker.update(frame)
    assert out[1] + out[3] / 2 == pytest.approx(60.0) and out[0] + out[2] / 2 == pytest.approx(188.0)


def test_the_cached_label_peaks_where_the_target_was_found(monkeypatch):
    frame = np.random.default_rng(2).integers(0, 255, (160, 200, 3), dtype=np.uint8)
    box = np.array([90.0, 70.0, 20.0, 20.0])  # centre (100, 80); patch side 4 * 20 = 80 px
    tracker, cfg = _tracker_on(frame, box, update_interval=100, update_steps=1)
    n, c = cfg.response_size, cfg.response_size // 2
    r, k = c - 3, c + 5  # 3 cells up, 5 right, in the 1.05 map (side 84 px)
    monkeypatch.setattr(metacrest, "windowed_peak", lambda response, window, penalty: torch.tensor(2 * n * n + r * n + k))
    out = tracker.update(frame)
    # 5 * 4 * 84 / 64 = 26.25 px right, 3 * 4 * 84 / 64 = 15.75 px up; size 20 * 1.03.
    np.testing.assert_allclose(out, [100 + 26.25 - 10.3, 80 - 15.75 - 10.3, 20.6, 20.6])
    label = tracker._recent[-1][1][0, 0]
    assert divmod(int(label.argmax()), n) == (r, k) and label[r, k].item() == pytest.approx(1.0, abs=1e-5)


def test_online_updates_use_the_first_frame_and_the_last_memory_frames():
    frame = np.random.default_rng(3).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    tracker, _ = _tracker_on(frame, [20, 15, 20, 20], update_interval=1, update_steps=1, memory=2)
    seen = []
    plain = tracker._train
    tracker._train = lambda f, y, s: (seen.append(f), plain(f, y, s))
    for _ in range(4):
        tracker.update(frame)
    assert [len(f) for f in seen] == [2, 3, 3, 3]
    assert torch.equal(seen[-1][0], tracker._first[0][0]) and torch.equal(seen[-1][2], tracker._recent[-1][0][0])


def test_online_update_is_one_step_with_the_meta_learned_step_sizes():
    # d/db mean((r + b - y)^2) = 2 mean(r - y): the filter bias's step, by hand, with per-element step sizes.
    frame = np.random.default_rng(4).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    tracker, _ = _tracker_on(frame, [20, 15, 20, 20])
    with torch.no_grad():
        for p in tracker.learner.lrs.values():
            p.uniform_(0.1, 1.0, generator=torch.Generator().manual_seed(0))
    feats, labels = tracker._first
    before = dict(tracker.params)
    with torch.no_grad():
        residual = (tracker.learner.functional_forward(before, feats) - labels).double()
    tracker._train(feats, labels, 1)
    lr = tracker.learner.step_size(0)["head.filter.bias"].double()
    expected = before["head.filter.bias"].double() - lr * 2 * residual.mean()
    torch.testing.assert_close(tracker.params["head.filter.bias"].double(), expected, rtol=1e-5, atol=1e-7)
    assert not tracker.params["head.filter.bias"].requires_grad


def test_features_are_centred_per_channel_and_scaled_by_the_patch_rms():
    net = MetaCRESTNet(PixelUnshuffle(), MetaCRESTConfig(patch_size=64))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * torch.tensor([1.0, 5.0, 20.0]).view(1, 3, 1, 1) + 3.0
    raw = torch.nn.functional.pixel_unshuffle(x, 8).double().numpy()  # the stand-in backbone, in float64
    centred = raw - raw.mean(axis=(2, 3), keepdims=True)
    expected = centred / np.sqrt((centred**2).mean(axis=(1, 2, 3), keepdims=True))
    got = net.extract(x).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Channels keep their relative scale (here 1 : 5 : 20 for the three colours' sub-pixels).
    rms = np.sqrt((got**2).mean(axis=(0, 2, 3)))
    assert rms[128:].mean() / rms[:64].mean() == pytest.approx(20, rel=0.1)


def test_frames_are_imagenet_normalised_rgb():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 1] = (255, 0, 51)  # R, G, B
    x = metacrest._normalise_frame(image, torch.device("cpu"))
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    want = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    torch.testing.assert_close(x[0, :, 0, 1], torch.tensor(want), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x[0, :, 1, 1], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


@pytest.mark.parametrize("patch_size, context, kernel", [(64, 4.0, 5), (80, 4.0, 5), (96, 4.0, 7), (112, 4.0, 7),
                                                         (224, 4.0, 15), (224, 3.0, 19), (224, 5.0, 11)])
def test_filter_size_is_the_targets_size_in_cells_made_odd(patch_size, context, kernel):
    cfg = MetaCRESTConfig(patch_size=patch_size, context=context)
    # target cells: 4, 5, 6, 7, 14, 18.7, 11.2
    assert cfg.kernel_size == kernel and CorrelationHead(8, 4, cfg.kernel_size).filter.kernel_size == (kernel, kernel)


def test_backbone_reads_a_checkpoint_that_wraps_the_state_dict(tv_features, tmp_path):
    # Training checkpoints often store {"state_dict": {...}, "epoch": ...}; the weights inside are used.
    torch.save({"state_dict": {f"features.{k}": v for k, v in tv_features.state_dict().items()}, "epoch": 3},
               tmp_path / "ckpt.pth")
    net, _ = build_vgg16_conv4(tmp_path / "ckpt.pth")
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv_features[:23](x), rtol=1e-5, atol=1e-5)


def test_random_backbone_uses_torchvisions_vgg_initialisation():
    # torchvision's VGG: kaiming_normal_(mode="fan_out", relu), bias 0; the random-init baseline uses it.
    torch.manual_seed(0)
    net, _ = build_vgg16_conv4(None)
    for index in vgg16_module.CONV_INDICES:
        conv = net.features[index]
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert float(conv.weight.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), index
        assert torch.all(conv.bias == 0)
