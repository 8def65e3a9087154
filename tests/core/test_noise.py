"""DropGrad noise: distribution, identity cases, validation, selection, schedule, state."""

import math

import pytest
import torch
from torch import nn

from dropgrad.inner import MAML, sgd_step
from dropgrad.noise import DropGrad, RESNET_GROUPS, check_schedule

N = 1_000_000


def _noise(dg: DropGrad, n: int = N) -> torch.Tensor:
    return dg([torch.ones(n, dtype=torch.float64)])[0]


@pytest.mark.parametrize("kind", ["binary", "gaussian"])
@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.5, 0.8])
def test_mean_one_and_variance_p_over_1_minus_p(kind, p):
    n = _noise(DropGrad(p, kind, generator=torch.Generator().manual_seed(int(p * 100))))
    var = p / (1 - p)
    # Standard error of the mean is sqrt(var / N); allow 5 of them.
    assert abs(n.mean().item() - 1.0) < 5 * math.sqrt(var / N)
    # The variance estimate's relative standard error is about sqrt(2 / N) for Gaussian noise and
    # larger for the two-point binary law (kurtosis); 2% is > 10 standard errors for both here.
    assert n.var().item() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_binary_support_and_drop_rate(p):
    n = _noise(DropGrad(p, "binary", generator=torch.Generator().manual_seed(1)))
    values = torch.unique(n)
    assert values.tolist() == pytest.approx([0.0, 1.0 / (1.0 - p)])
    dropped = (n == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_gaussian_is_normal_shaped():
    p = 0.2
    n = _noise(DropGrad(p, "gaussian", generator=torch.Generator().manual_seed(2)))
    z = (n - 1.0) / math.sqrt(p / (1 - p))
    # Third and fourth standardised moments of a normal law: 0 and 3.
    assert abs((z**3).mean().item()) < 0.02
    assert (z**4).mean().item() == pytest.approx(3.0, abs=0.05)


def test_fresh_draw_per_call_and_per_element():
    dg = DropGrad(0.5, "gaussian", generator=torch.Generator().manual_seed(0))
    a = _noise(dg, 1000)
    b = _noise(dg, 1000)
    assert not torch.equal(a, b)
    assert torch.unique(a).numel() == 1000


@pytest.mark.parametrize("kind", ["binary", "gaussian"])
def test_identity_cases(kind):
    g = [torch.randn(5, 3), torch.randn(7)]
    assert DropGrad(0.0, kind)(g)[0] is g[0]
    assert DropGrad(0.5, "none")(g)[0] is g[0]
    dg = DropGrad(0.5, kind).eval()
    out = dg(g)
    assert all(o is x for o, x in zip(out, g))
    dg.train()
    assert not torch.equal(dg(g)[0], g[0])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_p_out_of_range_is_a_value_error_naming_p(bad):
    with pytest.raises(ValueError, match=r"\bp\b"):
        DropGrad(bad)


# Stand-in for a kind that is not (yet) implemented: not a name such as "uniform", which a user
# following packages/core/README.md "Variants" may well add, and these tests then fail for no fault.
_NO_KIND = "no-such-kind"


def test_bad_kind_and_schedule():
    with pytest.raises(ValueError, match="kind"):
        DropGrad(0.1, _NO_KIND)
    with pytest.raises(ValueError, match="schedule"):
        DropGrad(0.1, schedule="cosine")


def test_structure_is_preserved():
    g = {"a.weight": torch.ones(2), "b.bias": torch.ones(3)}
    out = DropGrad(0.3)(g)
    assert isinstance(out, dict) and list(out) == list(g)
    assert isinstance(DropGrad(0.3)((torch.ones(2), torch.ones(2))), tuple)
    assert isinstance(DropGrad(0.3)([torch.ones(2)]), list)


def test_noise_keeps_shape_device_dtype_and_leading_task_dim():
    g = [torch.ones(4, 3, 2, dtype=torch.float64), torch.ones(4, 5, dtype=torch.bfloat16)]
    out = DropGrad(0.3, generator=torch.Generator().manual_seed(0))(g)
    assert [o.shape for o in out] == [x.shape for x in g]
    assert [o.dtype for o in out] == [x.dtype for x in g]
    # Every task (leading dimension) gets its own noise.
    assert not torch.equal(out[0][0], out[0][1])


def test_noise_takes_the_layout_of_dense_tensors_and_stays_one_draw():
    w = torch.randn(64, 3, 5, 5).to(memory_format=torch.channels_last)
    plain, expanded = torch.randn(7), torch.randn(5).expand(4, 5)
    dg = DropGrad(0.3, generator=torch.Generator().manual_seed(0))
    noise = dg.draw([w, plain, expanded])
    assert noise[0].stride() == w.stride() and noise[0].shape == w.shape
    assert noise[2].is_contiguous() and noise[2].shape == expanded.shape  # not dense: plain layout
    # The three are consecutive slices of one flat draw, each element used once.
    flat = DropGrad(0.3, generator=torch.Generator().manual_seed(0)).draw([torch.ones(w.numel() + 7 + 20)])[0]
    parts = sorted(torch.cat([n.flatten() for n in noise]).tolist())
    assert parts == sorted(flat.tolist())
    # The fused noisy update is the same with channels_last tensors.
    g = torch.randn_like(w)
    fused = sgd_step({"w": w}, {"w": g}, 0.1, noise=[noise[0]])["w"]
    torch.testing.assert_close(fused, w - 0.1 * g * noise[0])


def test_selection_hits_exactly_the_chosen_tensors():
    names = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"]
    grads = {n: torch.ones(1000) for n in names}
    out = DropGrad(0.5, "binary", params="block4,fc")(grads)
    changed = {n for n in names if not torch.equal(out[n], grads[n])}
    assert changed == {"layer4.1.conv2.weight", "fc.weight", "fc.bias"}
    # Group names are case-insensitive: the paper writes them Block4 and FC.
    out = DropGrad(0.5, "binary", params="Block4,FC")(grads)
    assert {n for n in names if not torch.equal(out[n], grads[n])} == changed
    out = DropGrad(0.5, "binary", params=["conv", "layer1.*"])(grads)
    changed = {n for n in names if not torch.equal(out[n], grads[n])}
    assert changed == {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight"}
    for n in set(names) - changed:
        assert out[n] is grads[n]


def test_one_operator_selects_by_the_names_of_each_call():
    # The selection is cached per tuple of names: a second set of names gets its own flags.
    dg = DropGrad(0.5, "binary", params="fc")
    first = dg({"fc.weight": torch.ones(100), "conv.weight": torch.ones(100)})
    assert not torch.equal(first["fc.weight"], torch.ones(100)) and torch.equal(first["conv.weight"], torch.ones(100))
    second = dg({"conv.weight": torch.ones(100), "fc.weight": torch.ones(100)})
    assert torch.equal(second["conv.weight"], torch.ones(100)) and not torch.equal(second["fc.weight"], torch.ones(100))
    with pytest.raises(ValueError, match="got 1 tensors but 2 names"):
        dg([torch.ones(2)], names=["fc.weight", "fc.bias"])


def test_selection_with_custom_groups_and_sequence_names():
    dg = DropGrad(0.5, "binary", params="head", groups={"head": ["classifier.*"]})
    out = dg([torch.ones(100), torch.ones(100)], names=["trunk.w", "classifier.w"])
    assert torch.equal(out[0], torch.ones(100)) and not torch.equal(out[1], torch.ones(100))


def test_selection_errors_are_clear():
    with pytest.raises(ValueError, match="'layer9.\\*' matches no parameter"):
        DropGrad(0.2, params="layer9.*")({"fc.weight": torch.ones(2)})
    with pytest.raises(ValueError, match="by name"):
        DropGrad(0.2, params="fc")([torch.ones(2)])
    with pytest.raises(ValueError, match="params"):
        DropGrad(0.2, params=[""])
    assert set(RESNET_GROUPS) == {"conv", "block1", "block2", "block3", "block4", "fc"}


@pytest.mark.parametrize("inactive", ["p0", "eval", "linear at progress 0"])
def test_a_selection_matching_nothing_fails_while_inactive_too(inactive):
    # Else a typo would pass unnoticed for a whole first epoch of a linear schedule, or forever at p = 0.
    dg = DropGrad(0.0 if inactive == "p0" else 0.2, params="layer9", schedule="linear" if "linear" in inactive else "constant")
    if inactive == "eval":
        dg.eval()
    assert not dg.active
    grads = {"fc.weight": torch.ones(2)}
    for call in (dg, dg.draw):
        with pytest.raises(ValueError, match="'layer9' matches no parameter"):
            call(grads)
    with pytest.raises(ValueError, match="'layer9' matches no parameter"):
        MAML(nn.Linear(2, 2), dropgrad=dg)  # at once, before any step
    assert DropGrad(0.0, params="fc")(grads) is grads


def test_a_group_given_as_one_string_is_one_pattern():
    # Not the characters f, c, . and *: the last would select every parameter.
    dg = DropGrad(0.5, "binary", params="head", groups={"head": "fc.*"})
    out = dg({"conv1.weight": torch.ones(100), "fc.weight": torch.ones(100)})
    assert torch.equal(out["conv1.weight"], torch.ones(100)) and not torch.equal(out["fc.weight"], torch.ones(100))
    for bad in ({"head": []}, {"head": [""]}, {"head": [3]}):
        with pytest.raises(ValueError, match="groups must map a name to parameter-name patterns"):
            DropGrad(params="head", groups=bad)


def test_a_linear_schedule_over_one_epoch_is_refused():
    check_schedule("linear", 2)
    check_schedule("constant", 1)
    with pytest.raises(ValueError, match="--dropgrad-schedule linear needs --epochs >= 2.*got --epochs=1"):
        check_schedule("linear", 1, "--dropgrad-schedule", "--epochs")


def test_linear_schedule_values():
    g = DropGrad(0.2, "gaussian", schedule="linear")
    assert g.progress == 0.0 and g.std == 0.0 and not g.active
    x = [torch.ones(10)]
    assert g(x)[0] is x[0]
    full = math.sqrt(0.2 / 0.8)
    for f in (0.25, 0.5, 1.0):
        g.set_progress(f)
        assert g.std == pytest.approx(full * f)
        assert g.effective_p == 0.2
    b = DropGrad(0.4, "binary", schedule="linear")
    b.set_progress(0.5)
    assert b.effective_p == pytest.approx(0.2)
    n = _noise(b)
    assert torch.unique(n).tolist() == pytest.approx([0.0, 1 / 0.8])
    assert (n == 0).double().mean().item() == pytest.approx(0.2, abs=0.003)
    c = DropGrad(0.2, schedule="constant")
    assert c.std == pytest.approx(full)
    with pytest.raises(ValueError, match="fraction"):
        g.set_progress(1.5)


def test_gaussian_linear_std_ramp_is_measured():
    g = DropGrad(0.5, "gaussian", schedule="linear", generator=torch.Generator().manual_seed(3))
    g.set_progress(0.5)
    assert _noise(g).std().item() == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("kind", ["binary", "gaussian"])
def test_linear_schedule_draws_follow_progress_set_after_the_first_draw(kind):
    # The strength lives in a tensor made at the first draw (what a CUDA graph reads at each
    # replay); later progress must reach it, through set_progress and through load_state_dict.
    dg = DropGrad(0.4, kind, schedule="linear", generator=torch.Generator().manual_seed(1))
    dg.set_progress(0.25)
    for fraction in (0.25, 1.0, 0.5):
        dg.set_progress(fraction)
        n = _noise(dg)
        q = 0.4 * fraction if kind == "binary" else 0.4
        var = q / (1 - q) if kind == "binary" else (fraction * math.sqrt(0.4 / 0.6)) ** 2
        assert n.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(var / N))
        assert n.var().item() == pytest.approx(var, rel=0.02)
        if kind == "binary":
            assert torch.unique(n).tolist() == pytest.approx([0.0, 1 / (1 - q)])
    state = DropGrad(0.4, kind, schedule="linear")
    state.set_progress(0.1)
    dg.load_state_dict(state.state_dict())
    n = _noise(dg)
    q = 0.04 if kind == "binary" else 0.4
    expected = q / (1 - q) if kind == "binary" else (0.1 * math.sqrt(0.4 / 0.6)) ** 2
    assert n.var().item() == pytest.approx(expected, rel=0.03)
    dg.set_progress(1.0)
    dg.p = 0.2  # a new rate reaches the tensor too
    assert _noise(dg).var().item() == pytest.approx(0.2 / 0.8, rel=0.02)
    with pytest.raises(ValueError, match="0 <= p < 1"):
        dg.p = 1.0


def test_graph_key_holds_the_strength_only_where_a_draw_reads_it_in_python():
    ramp = DropGrad(0.2, "gaussian", schedule="linear")
    assert ramp.graph_key() == (False,), "progress 0: inactive"
    ramp.set_progress(0.3)
    first = ramp.graph_key()
    ramp.set_progress(0.9)
    assert ramp.graph_key() == first and first != (False,)
    binary = DropGrad(0.2, "binary", schedule="linear")
    binary.set_progress(0.5)
    assert binary.graph_key() != first, "kind is in the key"
    constant = DropGrad(0.2)
    before = constant.graph_key()
    constant.p = 0.3
    assert constant.graph_key() != before, "a constant strength is read in Python: it is in the key"
    assert constant.eval().graph_key() == (False,)


def test_noise_is_differentiable_for_second_order():
    w = torch.randn(10, requires_grad=True)
    g = torch.autograd.grad((w**2).sum(), w, create_graph=True)[0]
    dg = DropGrad(0.3, generator=torch.Generator().manual_seed(0))
    noisy = dg([g])[0]
    (second,) = torch.autograd.grad(noisy.sum(), w)
    n = noisy.detach() / g.detach()
    assert torch.allclose(second, 2 * n)


def test_generator_reproducibility_and_state_dict():
    a = DropGrad(0.3, generator=torch.Generator().manual_seed(7), schedule="linear")
    a.set_progress(0.6)
    _noise(a, 10)
    state = a.state_dict()
    expected = _noise(a, 10)
    b = DropGrad(0.3, generator=torch.Generator().manual_seed(999), schedule="linear")
    b.load_state_dict(state)
    assert b.progress == pytest.approx(0.6)
    assert torch.equal(_noise(b, 10), expected)


def test_global_rng_is_used_without_generator():
    dg = DropGrad(0.3)
    torch.manual_seed(5)
    a = _noise(dg, 100)
    torch.manual_seed(5)
    assert torch.equal(a, _noise(dg, 100))


def test_a_group_matching_nothing_names_its_patterns():
    # "block1" against a parameter named "block1.conv.weight" must say that the group stands for layer1.*.
    with pytest.raises(ValueError, match=r"group 'block1' \(patterns layer1\.\*\) matches no parameter"):
        DropGrad(0.2, params="block1")({"block1.conv.weight": torch.ones(2)})


def test_a_kind_without_a_draw_is_refused_not_drawn_as_gaussian(monkeypatch):
    from dropgrad import noise

    monkeypatch.setattr(noise, "KINDS", (*noise.KINDS, _NO_KIND))
    for schedule in ("constant", "linear"):
        dg = DropGrad(0.2, _NO_KIND, schedule=schedule)
        dg.set_progress(1.0)
        with pytest.raises(NotImplementedError, match=f"'{_NO_KIND}' has no noise draw"):
            dg([torch.ones(3)])


def test_generator_state_mapped_to_a_gpu_by_a_checkpoint_load_is_restored():
    # A checkpoint loaded with map_location="cuda" (load_best_model's map_location=device on a GPU)
    # puts the generator's ByteTensor state on the GPU; Generator.set_state takes only a CPU one.
    from types import SimpleNamespace

    src = DropGrad(0.3, generator=torch.Generator().manual_seed(5))
    src([torch.ones(4)])
    cpu_state = src.state_dict()["_extra_state"]["generator_state"]
    on_gpu = SimpleNamespace(cpu=lambda: cpu_state)  # stands for the state on a GPU: .cpu() brings it back
    dst = DropGrad(0.3, generator=torch.Generator().manual_seed(0))
    dst.set_extra_state({"progress": 1.0, "generator_state": on_gpu})
    assert torch.equal(dst.generator.get_state(), cpu_state)
    assert torch.equal(dst([torch.ones(6)])[0], src([torch.ones(6)])[0])
