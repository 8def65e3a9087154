"""The MatConvNet VGG-M reader on generated files with imagenet-vgg-m.mat's field layout."""

import doctest

import numpy as np
import pytest
import scipy.io
import torch
from dropgrad_tracking.models import matconvnet, vggm
from dropgrad_tracking.models.matconvnet import (
    MatConvNetError,
    load_vggm_mat,
    read_matconvnet_convs,
)
from dropgrad_tracking.models.vggm import VGGM, MatConvNetLRN, build_vggm
from dropgrad_tracking.trackers.metasdnet import METASDNET, METASDNET_TINY

SHAPES = {"conv1": (7, 7, 3, 96), "conv2": (5, 5, 96, 256), "conv3": (3, 3, 256, 512)}
STRIDES = {"conv1": 2, "conv2": 2, "conv3": 1}


def _cell(items):
    out = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        out[0, i] = item
    return out


def _weights(rng, name, shapes=SHAPES):
    return (rng.normal(size=shapes[name]).astype(np.float32), rng.normal(size=(1, shapes[name][3])).astype(np.float32))


def _write(path, rng, old=False, drop=None, shapes=SHAPES, stride_of=STRIDES, names=True, wrap=False):
    """A simplenn-layout file: conv/relu/lrn/pool layers of VGG-M up to conv3, then a fake fc."""
    layers, truth = [], {}
    for name in ("conv1", "conv2", "conv3"):
        if name == drop:
            continue
        f, b = _weights(rng, name, shapes)
        truth[name] = (f, b)
        conv = {"type": "conv", "stride": np.array([stride_of[name], stride_of[name]], float),
                "pad": np.array([0, 0, 0, 0], float)}
        if names:
            conv["name"] = name
        if old:
            conv.update(filters=f, biases=b)
        else:
            conv["weights"] = _cell([f, b])
        layers.append(conv)
        layers.append({"name": f"relu{name[-1]}", "type": "relu"} if names else {"type": "relu"})
        if name != "conv3":
            layers.append({"name": f"norm{name[-1]}", "type": "lrn", "param": np.array([5, 2, 1e-4, 0.75])})
            layers.append({"name": f"pool{name[-1]}", "type": "pool", "method": "max",
                           "pool": np.array([3, 3], float), "stride": np.array([2, 2], float)})
    layers.append({"name": "fc6", "type": "conv", "weights": _cell([np.zeros((6, 6, 512, 4), np.float32),
                                                                     np.zeros((1, 4), np.float32)])})
    content = {"layers": _cell(layers), "classes": {"name": np.array(["a", "b"], dtype=object)}}
    scipy.io.savemat(path, {"net": content} if wrap else content)
    return truth


@pytest.mark.parametrize("module", [matconvnet, vggm])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("old,names,wrap", [(False, True, False), (True, True, False), (False, False, False),
                                            (False, True, True)])
def test_reads_vgg_m_layout_into_conv_layers(tmp_path, old, names, wrap):
    rng = np.random.default_rng(0)
    path = tmp_path / "imagenet-vgg-m.mat"
    truth = _write(path, rng, old=old, names=names, wrap=wrap)
    model = load_vggm_mat(VGGM(), path)
    for name, (f, b) in truth.items():
        conv = getattr(model.conv, name)
        # torch weight[o, i, y, x] == MatConvNet filters[y, x, i, o]
        o, i, y, x = 5, 2, 1, 2
        assert conv.weight[o, i, y, x].item() == f[y, x, i, o]
        np.testing.assert_array_equal(conv.weight.detach().numpy(), f.transpose(3, 2, 0, 1))
        np.testing.assert_array_equal(conv.bias.detach().numpy(), b.ravel())
    # the first conv computes MatConvNet's correlation: check one output against a numpy sum
    img = rng.normal(size=(1, 3, 107, 107)).astype(np.float32)
    with torch.no_grad():
        out = model.conv.conv1(torch.from_numpy(img))[0, 7, 4, 9].item()
    f, b = truth["conv1"]
    patch = img[0, :, 8:15, 18:25]  # output (4, 9) at stride 2 reads rows 8..14, cols 18..24
    ref = float((patch.transpose(1, 2, 0) * f[:, :, :, 7]).sum() + b[0, 7])
    assert abs(out - ref) < 1e-3


def test_definition_loads_weights_and_names_source(tmp_path):
    path = tmp_path / "imagenet-vgg-m.mat"
    truth = _write(path, np.random.default_rng(1))
    model, source = METASDNET.build_model(path)
    assert source == "imagenet-vgg-m.mat"
    np.testing.assert_array_equal(model.conv.conv2.bias.detach().numpy(), truth["conv2"][1].ravel())
    with pytest.raises(ValueError, match="cannot load VGG-M weights"):
        METASDNET_TINY.build_model(path)


def test_missing_layer_is_named(tmp_path):
    path = tmp_path / "vggm.mat"
    _write(path, np.random.default_rng(0), drop="conv2")
    with pytest.raises(MatConvNetError, match=r"vggm\.mat: no layer named 'conv2'"):
        read_matconvnet_convs(path)


def test_misshaped_layer_is_named(tmp_path):
    path = tmp_path / "vggm.mat"
    shapes = dict(SHAPES, conv3=(3, 3, 256, 384))
    _write(path, np.random.default_rng(0), shapes=shapes)
    with pytest.raises(MatConvNetError, match=r"vggm\.mat: layer 'conv3' filters have shape \(3, 3, 256, 384\); "
                                              r"expected \(3, 3, 256, 512\)"):
        load_vggm_mat(VGGM(), path)


def test_wrong_stride_missing_weights_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.mat"
    _write(path, rng, stride_of=dict(STRIDES, conv1=4))
    with pytest.raises(MatConvNetError, match="'conv1' has stride"):
        read_matconvnet_convs(path)
    nw = tmp_path / "nw.mat"
    scipy.io.savemat(nw, {"layers": _cell([{"name": n, "type": "conv"} for n in ("conv1", "conv2", "conv3")])})
    with pytest.raises(MatConvNetError, match="layer 'conv1' has no weights"):
        read_matconvnet_convs(nw)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(MatConvNetError, match="junk.mat"):
        read_matconvnet_convs(junk)
    for size in (0, 3):  # what a failed download leaves: scipy raises MatReadError, not ValueError
        short = tmp_path / f"short{size}.mat"
        short.write_bytes(b"abc"[:size])
        with pytest.raises(MatConvNetError, match=f"short{size}.mat: not a readable MATLAB .mat file"):
            read_matconvnet_convs(short)
    with pytest.raises(MatConvNetError, match="no such file"):
        read_matconvnet_convs(tmp_path / "absent.mat")


def test_lrn_matches_matconvnet_formula():
    x = torch.randn(3, 9, 5, 5, dtype=torch.float64) * 30
    sq = (x ** 2).numpy()
    ref = np.empty_like(sq)
    for c in range(9):
        window = sq[:, max(0, c - 2):c + 3].sum(1)
        ref[:, c] = x[:, c].numpy() / (2 + 1e-4 * window) ** 0.75
    np.testing.assert_allclose(MatConvNetLRN()(x).numpy(), ref, rtol=1e-12)


def test_vggm_shapes_and_feature_path():
    torch.manual_seed(0)
    net = build_vggm().eval()
    x = torch.randn(2, 3, 107, 107) * 50
    with torch.no_grad():
        f = net.features(x)
        assert f.shape == (2, 4608)
        torch.testing.assert_close(net(x), net(f))
        assert net.conv[:4](x).shape == (2, 96, 25, 25) and net.conv[:8](x).shape == (2, 256, 5, 5)
    with pytest.raises(ValueError, match="expected crops of shape"):
        net.features(torch.zeros(1, 3, 64, 64))


def _lrn_loop(x):
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        window = (x[:, max(0, c - 2):c + 3] ** 2).sum(1)
        out[:, c] = x[:, c] / (2 + 1e-4 * window) ** 0.75
    return out


def test_vggm_matches_mdnets_layers_spelled_out_in_float64():
    # MDNet's VGG-M, written out with plain functional ops: conv1 7x7/2, ReLU, LRN, max-pool 3/2,
    # conv2 5x5/2, ReLU, LRN, max-pool 3/2, conv3 3x3/1, ReLU, no padding; fc4, ReLU, fc5, ReLU, fc6.
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = build_vggm(tiny=True).double().eval()
    p = {n: v.detach() for n, v in net.named_parameters()}
    x = torch.randn(2, 3, 107, 107, dtype=torch.float64) * 60
    y = F.max_pool2d(_lrn_loop(F.relu(F.conv2d(x, p["conv.conv1.weight"], p["conv.conv1.bias"], stride=2))), 3, 2)
    y = F.max_pool2d(_lrn_loop(F.relu(F.conv2d(y, p["conv.conv2.weight"], p["conv.conv2.bias"], stride=2))), 3, 2)
    y = F.relu(F.conv2d(y, p["conv.conv3.weight"], p["conv.conv3.bias"])).flatten(1)
    z = F.relu(F.linear(y, p["fc.fc4.weight"], p["fc.fc4.bias"]))
    z = F.relu(F.linear(z, p["fc.fc5.weight"], p["fc.fc5.bias"]))
    z = F.linear(z, p["fc.fc6.weight"], p["fc.fc6.bias"])
    with torch.no_grad():
        torch.testing.assert_close(net.features(x), y, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(net(x), z, rtol=1e-10, atol=1e-10)
        # the dropout-free head is the eval-mode head, whatever the module's mode
        net.train()
        torch.testing.assert_close(net.head_without_dropout(y), z, rtol=1e-10, atol=1e-10)


def test_vggm_initialisation_and_dropout_rate():
    torch.manual_seed(0)
    for tiny in (True, False):
        net = build_vggm(tiny=tiny, dropout=0.3)
        assert net.fc.drop5.p == net.fc.drop6.p == 0.3
        fc = dict(net.fc.named_children())
        # MDNet: fc4/fc5 N(0, 0.01) with bias 0.1; fc6 N(0, 0.001) with bias 0 (scores start near 0)
        assert 0.008 < float(fc["fc4"].weight.detach().std()) < 0.012 and 0.008 < float(fc["fc5"].weight.detach().std()) < 0.012
        assert 0.0007 < float(fc["fc6"].weight.detach().std()) < 0.0013 and torch.all(fc["fc6"].bias == 0)
        assert torch.all(fc["fc4"].bias == 0.1) and torch.all(net.conv.conv1.bias == 0.1)
