import copy
import doctest

import pytest
import torch
from torch import nn

import dropgrad.dropout
from dropgrad.dropout import ConsistentDropout, has_consistent_dropout, resample_dropout_masks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_mask_for_support_and_query_until_resample():
    drop = ConsistentDropout(p=0.5, generator=_gen())
    support = drop(torch.ones(25, 64))
    query = drop(torch.ones(80, 64))
    again = drop(torch.ones(25, 64))
    # Every row of every batch equals the one mask.
    assert (support == support[0]).all() and (query == query[0]).all()
    assert torch.equal(support[0], query[0]) and torch.equal(support, again)
    assert torch.equal(drop.mask, support[0])
    drop.resample()
    assert drop.mask is None
    new = drop(torch.ones(80, 64))
    assert not torch.equal(new[0], query[0])


def test_mask_values_and_unit_mean():
    p = 0.3
    drop = ConsistentDropout(p=p, generator=_gen(1))
    out = drop(torch.ones(2, 200_000))
    values = out.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - p))
    mask = drop.mask
    assert mask.mean().item() == pytest.approx(1.0, abs=0.01)
    assert (mask == 0).float().mean().item() == pytest.approx(p, abs=0.01)


def test_spatial_drops_whole_channels():
    drop = ConsistentDropout(p=0.5, spatial=True, generator=_gen(2))
    x = torch.rand(4, 32, 5, 5) + 0.5  # strictly positive, so zeros come only from the mask
    y = drop(x)
    assert drop.mask.shape == (32, 1, 1)
    dropped = (y == 0).flatten(2).all(-1)  # (B, C): channel fully zero
    kept = (y != 0).flatten(2).all(-1)
    assert (dropped | kept).all(), "a channel is partly dropped"
    assert (dropped == dropped[0]).all(), "samples of the batch got different masks"
    assert 0 < dropped[0].sum() < 32
    torch.testing.assert_close(y[:, kept[0]], x[:, kept[0]] * 2.0)
    # A query batch of another size and spatial extent per channel works with the same mask.
    q = drop(torch.ones(9, 32, 5, 5))
    assert torch.equal((q[0, :, 0, 0] == 0), dropped[0])


@pytest.mark.parametrize("spatial", [False, True])
def test_identity_in_eval_and_for_p_zero(spatial):
    x = torch.randn(6, 3, 4, 4)
    drop = ConsistentDropout(p=0.5, spatial=spatial).eval()
    assert drop(x) is x and drop.mask is None
    zero = ConsistentDropout(p=0.0, spatial=spatial)
    assert zero.training and zero(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.3", True])
def test_bad_p(p):
    with pytest.raises(ValueError, match="p must be"):
        ConsistentDropout(p=p)


def test_shape_change_within_task_is_an_error():
    drop = ConsistentDropout(p=0.2)
    drop(torch.ones(3, 10))
    with pytest.raises(ValueError, match=r"resample\(\)"):
        drop(torch.ones(3, 12))
    spatial = ConsistentDropout(p=0.2, spatial=True)
    spatial(torch.ones(2, 8, 4, 4))
    with pytest.raises(ValueError, match="current mask has shape"):
        spatial(torch.ones(2, 16, 4, 4))
    with pytest.raises(ValueError, match="batch dimension"):
        ConsistentDropout(p=0.2)(torch.ones(5))
    drop.resample()
    assert drop(torch.ones(3, 12)).shape == (3, 12)


def test_gradient_flows_through_kept_units_only():
    p = 0.4
    drop = ConsistentDropout(p=p, generator=_gen(3))
    x = torch.randn(7, 50, requires_grad=True)
    drop(x).sum().backward()
    mask = drop.mask
    assert not mask.requires_grad
    torch.testing.assert_close(x.grad, mask.expand(7, 50))
    assert (x.grad[:, mask == 0] == 0).all()
    kept = x.grad[:, mask != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_global_rng_and_generator_reproducibility():
    torch.manual_seed(0)
    a = ConsistentDropout(0.5)(torch.ones(1, 100))
    torch.manual_seed(0)
    b = ConsistentDropout(0.5)(torch.ones(1, 100))
    assert torch.equal(a, b)
    c = ConsistentDropout(0.5, generator=_gen(5))(torch.ones(1, 100))
    d = ConsistentDropout(0.5, generator=_gen(5))(torch.ones(1, 100))
    assert torch.equal(c, d)


def test_mask_not_in_state_dict_and_dtype_follows_input():
    net = nn.Sequential(nn.Linear(4, 4), ConsistentDropout(0.5, generator=_gen()))
    net(torch.ones(2, 4))
    assert set(net.state_dict()) == {"0.weight", "0.bias"}
    out = net[1](torch.ones(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64
    # A float32 mask on half-precision activations keeps them half (a .bfloat16() model's next
    # layer would refuse float32 inputs).
    out = net[1](torch.ones(2, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), net[1].mask.expand(2, 4))
    copy.deepcopy(net)  # generator and mask survive copying (used to clone models)


def test_mask_shared_across_functional_calls_with_adapted_params():
    # The inner loop runs the same module with theta (support) and theta' (query).
    net = nn.Sequential(nn.Linear(3, 16), ConsistentDropout(0.5, generator=_gen(4)))
    params = dict(net.named_parameters())
    fast = {k: v - 0.1 for k, v in params.items()}
    s = torch.func.functional_call(net, params, (torch.ones(25, 3),))
    q = torch.func.functional_call(net, fast, (torch.ones(80, 3),))
    assert torch.equal(s[0] == 0, q[0] == 0)


def test_resample_helpers():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), ConsistentDropout(0.2, spatial=True), nn.Flatten(),
        nn.Sequential(nn.LazyLinear(2), ConsistentDropout(0.1)),
    )
    net(torch.ones(2, 3, 5, 5))
    assert all(m.mask is not None for m in net.modules() if isinstance(m, ConsistentDropout))
    assert resample_dropout_masks(net) == 2
    assert all(m.mask is None for m in net.modules() if isinstance(m, ConsistentDropout))
    assert has_consistent_dropout(net) and has_consistent_dropout(net[1])
    assert not has_consistent_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout()))
    assert resample_dropout_masks(nn.Linear(2, 2)) == 0
    assert "p=0.2, spatial=True" in repr(net)


def test_docstring_examples():
    result = doctest.testmod(dropgrad.dropout, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
