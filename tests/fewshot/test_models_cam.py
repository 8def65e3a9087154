"""Class activation maps against a hand computation, and the PNG grid."""

import cv2
import dropgrad
import numpy as np
import pytest
import torch
from dropgrad_fewshot.models import (
    build_model,
    cams_from_features,
    class_activation_maps,
    save_cam_grid,
)


def _reference_cams(
    fmap: np.ndarray, weight: np.ndarray, classes: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """CAM_c = sum_k w_ck A_k with explicit loops (weights per location for a flattened head),
    upsampled with OpenCV's bilinear resize, min-max normalised."""
    b, k, h, w = fmap.shape
    out = []
    for i in range(b):
        c = classes[i]
        wc = weight[c].reshape(k, -1)
        cam = np.zeros((h, w), dtype=np.float64)
        for kk in range(k):
            wk = wc[kk, 0] if wc.shape[1] == 1 else wc[kk].reshape(h, w)
            cam += wk * fmap[i, kk]
        cam = cv2.resize(
            cam.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR
        )
        cam = (cam - cam.min()) / (cam.max() - cam.min())
        out.append(cam)
    return np.stack(out)


@pytest.mark.parametrize("backbone,size", [("resnet10", 84), ("conv4", 84)])
def test_cam_matches_a_hand_computation(backbone, size):
    torch.manual_seed(0)
    net = build_model(backbone, 5, image_size=size).eval()
    x = torch.randn(4, 3, size, size)
    classes = torch.tensor([0, 3, 4, 1])
    cams = class_activation_maps(net, None, x, classes)
    with torch.no_grad():
        fmap = net.features(x).double().numpy()
    ref = _reference_cams(
        fmap, net.fc.weight.detach().double().numpy(), classes.numpy(), (size, size)
    )
    assert cams.shape == (4, size, size)
    np.testing.assert_allclose(cams.numpy(), ref, atol=2e-4)
    assert cams.amin(dim=(1, 2)).eq(0).all() and cams.amax(dim=(1, 2)).eq(1).all()


@pytest.mark.parametrize("backbone", ["resnet18", "conv4"])
def test_raw_cam_adds_up_to_the_class_score(backbone):
    """GAP head: the map's spatial mean is logit_c - b_c; flattened head: its spatial sum."""
    torch.manual_seed(0)
    net = build_model(backbone, 5, image_size=84).eval()
    x = torch.randn(3, 3, 84, 84)
    with torch.no_grad():
        logits, fmap = net(x, return_features=True)
    raw = cams_from_features(fmap, net.fc.weight, torch.arange(3), normalize=False)
    reduce = raw.mean if backbone == "resnet18" else raw.sum
    score = logits[torch.arange(3), torch.arange(3)] - net.fc.bias[:3]
    torch.testing.assert_close(reduce(dim=(1, 2)), score.detach(), rtol=1e-4, atol=1e-4)


def test_cam_uses_the_adapted_parameters():
    # 56 px: a 2x2 last map (at 28 px it is 1x1, and every CAM is zeros).
    torch.manual_seed(0)
    net = build_model("resnet10", 5, in_channels=1, image_size=56)
    learner = dropgrad.MAML(net, inner_lr=0.5, steps=2).eval()
    xs, ys = torch.randn(5, 1, 56, 56), torch.arange(5)
    adapted = learner.adapt(xs, ys)[-1]
    xq = torch.randn(10, 1, 56, 56)
    cams = class_activation_maps(net, adapted, xq, torch.zeros(10, dtype=torch.long))
    # Reference: a copy of the network holding the adapted weights.
    copy = build_model("resnet10", 5, in_channels=1, image_size=56).eval()
    copy.load_state_dict({k: v.detach() for k, v in adapted.items()})
    torch.testing.assert_close(
        cams, class_activation_maps(copy, None, xq, torch.zeros(10, dtype=torch.long))
    )
    assert not torch.allclose(
        cams, class_activation_maps(net, None, xq, torch.zeros(10, dtype=torch.long))
    )
    # Default classes: the prediction.
    with torch.no_grad():
        pred = copy(xq).argmax(-1)
    torch.testing.assert_close(
        class_activation_maps(net, adapted, xq),
        class_activation_maps(copy, None, xq, pred),
    )


def test_cam_input_checks():
    fmap = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="fits neither"):
        cams_from_features(fmap, torch.randn(5, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one class per image"):
        cams_from_features(fmap, torch.randn(5, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="0..4"):
        cams_from_features(fmap, torch.randn(5, 4), torch.tensor([0, 5]))
    flat = cams_from_features(
        torch.ones(1, 2, 2, 2), torch.ones(1, 2), torch.tensor([0])
    )
    assert flat.eq(0).all()  # a constant map normalises to zeros, not NaN


def test_a_map_constant_up_to_rounding_normalises_to_zeros():
    """A 1x1 map upsampled bilinearly is constant only up to float32 rounding (~1e-7 relative);
    min-max normalisation must not stretch that spread into a [0, 1] pattern."""
    torch.manual_seed(0)
    cams = cams_from_features(
        torch.randn(4, 64, 1, 1), torch.randn(5, 64), torch.arange(4), size=(28, 28)
    )
    assert cams.shape == (4, 28, 28) and cams.eq(0).all()
    # A large constant offset with rounding-sized wiggles is constant too.
    fmap = torch.full((2, 3, 4, 4), 1e4) + 1e-2 * torch.randn(2, 3, 4, 4)  # a few ulps
    assert cams_from_features(fmap, torch.ones(5, 3), torch.tensor([0, 1]), size=(16, 16)).eq(0).all()
    # A real (non-constant) map is still normalised to exactly [0, 1].
    real = cams_from_features(
        torch.randn(4, 64, 3, 3), torch.randn(5, 64), torch.arange(4), size=(28, 28)
    )
    assert real.amin(dim=(1, 2)).eq(0).all() and real.amax(dim=(1, 2)).eq(1).all()
    assert all(len(real[i].unique()) > 100 for i in range(4))


@pytest.mark.parametrize("channels", [1, 3])
def test_save_cam_grid_writes_a_png(tmp_path, channels):
    images = torch.rand(10, channels, 28, 28)
    cams = torch.rand(10, 28, 28)
    path = save_cam_grid(
        tmp_path / "sub" / "cam.png",
        images,
        cams,
        list(range(10)),
        [0] * 10,
        ncols=4,
        class_names=[f"class{i}" for i in range(10)],
        title="5-way 1-shot",
    )
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 5  # not a blank canvas
    with pytest.raises(ValueError, match="cams must have shape"):
        save_cam_grid(tmp_path / "bad.png", images, cams[:3], list(range(10)), [0] * 10)
    with pytest.raises(ValueError, match="need 10 labels"):
        save_cam_grid(tmp_path / "bad.png", images, cams, [0], [0] * 10)
    assert not (tmp_path / "bad.png").exists()


def test_cam_through_a_learners_forward_mamlpp():
    """MAML++ keeps per-step BatchNorm tensors in the learner: with ``forward=`` the map comes from
    the learner's own forward, so the raw map's mean is exactly that forward's logit minus bias."""
    torch.manual_seed(0)
    net = build_model("conv4", 5, in_channels=1, image_size=28, bn_running_stats=True)
    learner = dropgrad.MAMLPlusPlus(net, inner_lr=0.1, steps=2, first_order=True)
    tasks = dropgrad.Task(
        torch.randn(1, 5, 1, 28, 28),
        torch.arange(5)[None],
        torch.randn(1, 10, 1, 28, 28),
        torch.arange(5).repeat(2)[None],
    )
    learner.meta_backward(tasks)  # fills the per-step running statistics
    with torch.no_grad():
        for p in learner.bn_weight.values():
            p.mul_(torch.rand_like(p) + 0.5)
    learner.eval()
    params = {
        k: v.detach()
        for k, v in learner.adapt(tasks.support_x[0], tasks.support_y[0])[-1].items()
    }
    xq = tasks.query_x[0]
    classes = torch.arange(10) % 5
    raw = class_activation_maps(
        net, params, xq, classes, forward=lambda x: learner(x, params), normalize=False
    )
    with torch.no_grad():
        logits = learner(xq, params)
    score = logits[torch.arange(10), classes] - params["fc.bias"][classes]
    # Conv4's map is 1x1 at 28 px: upsampling keeps the value, which is the class evidence.
    torch.testing.assert_close(raw.mean(dim=(1, 2)), score, rtol=1e-4, atol=1e-4)
    plain = class_activation_maps(net, params, xq, classes, normalize=False)
    assert not torch.allclose(raw, plain)  # the model's own BN tensors give other maps


def test_cam_grid_shows_the_images_with_the_normalisation_undone():
    from dropgrad_fewshot.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from dropgrad_fewshot.models.cam import _display

    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(_display((x - mean) / std, IMAGENET_MEAN, IMAGENET_STD), x.permute(1, 2, 0), rtol=0, atol=1e-6)
