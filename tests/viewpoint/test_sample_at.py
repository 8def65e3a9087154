"""The keypoint read of MetaView: grid_sample's numbers, and twice differentiable on every device."""

import torch
import torch.nn.functional as F
from dropgrad_viewpoint.methods.metaview import _sample_at


def _reference(maps, kp2d):
    k, n, c, h, w = maps.shape
    grid = (2.0 * kp2d).permute(1, 0, 2).reshape(k * n, 1, 1, 2)
    return F.grid_sample(maps.reshape(k * n, c, h, w), grid, align_corners=False).reshape(k, n, c)


def test_equals_grid_sample_inside_on_the_border_and_outside():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 4, 7, 9, generator=g, dtype=torch.float64)
    kp2d = torch.rand(5, 3, 2, generator=g, dtype=torch.float64) * 1.4 - 0.7  # some beyond the crop
    kp2d[0, 0] = torch.tensor([-0.5, -0.5])  # the crop's corner
    kp2d[1, 1] = torch.tensor([0.5 / 9 - 0.5, 0.5 / 7 - 0.5])  # exactly the first pixel centre
    kp2d[2, 2] = torch.tensor([0.9, 0.0])  # wholly outside: zeros
    torch.testing.assert_close(_sample_at(maps, kp2d), _reference(maps, kp2d), rtol=0, atol=1e-12)
    assert _sample_at(maps, kp2d)[2, 2].abs().max() == 0


def test_gradients_match_grid_sample_and_second_order_exists():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    kp2d = (torch.rand(3, 2, 2, generator=g, dtype=torch.float64) * 0.8 - 0.4).requires_grad_()
    weights = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((_sample_at(maps, kp2d) * weights).sum(), (maps, kp2d))
    ref = torch.autograd.grad((_reference(maps, kp2d) * weights).sum(), (maps, kp2d))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # What the second-order meta-gradient needs (grid_sample has no double backward on CUDA).
    assert torch.autograd.gradgradcheck(lambda m, p: _sample_at(m, p), (maps, kp2d))
