"""Geometry of a correlation-filter tracker: search patches, Gaussian labels, peaks -> pixels.

Coordinates are continuous image coordinates: pixel ``j`` covers ``[j, j + 1)``, a box
``(x, y, w, h)`` has its centre at ``(x + w / 2, y + h / 2)``. A square search patch of
``size`` pixels covers the image square of side ``side`` centred at ``(cx, cy)``; patch point
``u`` (continuous, ``0 <= u < size``) shows image point ``cx + (u - size / 2) * side / size``.

Response maps live on a grid of ``n`` cells with ``stride`` patch pixels between cell centres;
cell ``k``'s centre is at patch point ``offset + stride * k`` (MetaCREST: VGG-16 conv4_3
interpolated to stride 4, so ``offset = 4``; see :func:`cell_centre_offset`). The grid's middle
cell ``(n - 1) / 2`` sits at the patch centre, so zero motion is representable exactly.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "crop_patches",
    "gaussian_labels",
    "hann_window",
    "image_to_cells",
    "peak_displacement",
    "windowed_peak",
]


def crop_patches(image: Tensor, centres: Tensor, sides: Tensor, size: int) -> Tensor:
    """Square search patches of ``size`` x ``size`` pixels, bilinear, all in one ``grid_sample``.

    Args:
        image: one frame of shape ``(1, C, H, W)`` (float, on the device the patches are wanted on).
        centres: patch centres ``(cx, cy)`` in image coordinates, of shape ``(n, 2)``.
        sides: the image side each patch covers, in pixels, of shape ``(n,)``.
        size: patch side in pixels.

    Returns:
        Patches of shape ``(n, C, size, size)``; outside the image the value is 0 (with
        ImageNet-normalised input that is the mean colour, the usual padding).

    >>> img = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> crop_patches(img, torch.tensor([[2.0, 2.0]]), torch.tensor([4.0]), 4)[0, 0].equal(img[0, 0])
    True
    """
    n = centres.shape[0]
    _, channels, height, width = image.shape
    dtype, device = image.dtype, image.device
    # Patch pixel centres u + 0.5, relative to the patch centre, in units of the patch side.
    u = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size - 0.5
    sides = sides.to(device=device, dtype=dtype).view(n, 1)
    centres = centres.to(device=device, dtype=dtype)
    xs = centres[:, 0:1] + u.view(1, -1) * sides  # (n, size) image x of each patch column
    ys = centres[:, 1:2] + u.view(1, -1) * sides  # (n, size) image y of each patch row
    # grid_sample (align_corners=False): -1 is the image's left edge (x = 0), +1 its right edge (x = W).
    gx = (2.0 * xs / width - 1.0).view(n, 1, size).expand(n, size, size)
    gy = (2.0 * ys / height - 1.0).view(n, size, 1).expand(n, size, size)
    grid = torch.stack((gx, gy), dim=-1)  # (n, size, size, 2)
    # One sampling call: the n grids are stacked along the output rows of a single image.
    out = F.grid_sample(image, grid.reshape(1, n * size, size, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(channels, n, size, size).transpose(0, 1)


def image_to_cells(points: Tensor, centres: Tensor, sides: Tensor, size: int, stride: float, offset: float) -> Tensor:
    """Image points in the cell coordinates of their patches' response grids.

    Args:
        points: ``(x, y)`` image points, of shape ``(n, 2)``.
        centres, sides, size: the patches (as in :func:`crop_patches`), shapes ``(n, 2)``, ``(n,)``.
        stride, offset: cell ``k``'s centre is at patch point ``offset + stride * k``.

    Returns:
        Continuous ``(kx, ky)`` cell coordinates, of shape ``(n, 2)``.

    >>> image_to_cells(torch.tensor([[50.0, 50.0]]), torch.tensor([[50.0, 50.0]]), torch.tensor([64.0]), 64, 4.0, 4.0)
    tensor([[7., 7.]])
    """
    u = size / 2 + (points - centres) * (size / sides.view(-1, 1))
    return (u - offset) / stride


def gaussian_labels(centres: Tensor, sigmas: Tensor, n: int) -> Tensor:
    """CREST's regression targets: Gaussians of peak 1 on an ``n`` x ``n`` grid.

    Args:
        centres: ``(kx, ky)`` peak positions in cells (may be fractional), of shape ``(b, 2)``.
        sigmas: ``(sx, sy)`` standard deviations in cells, of shape ``(b, 2)``.
        n: grid side.

    Returns:
        Labels of shape ``(b, 1, n, n)``: ``exp(-(x-kx)^2/(2 sx^2) - (y-ky)^2/(2 sy^2))``.

    >>> g = gaussian_labels(torch.tensor([[2.0, 1.0]]), torch.tensor([[1.0, 1.0]]), 5)
    >>> g.shape, g[0, 0, 1, 2].item(), g.argmax().item() == 1 * 5 + 2
    (torch.Size([1, 1, 5, 5]), 1.0, True)
    """
    grid = torch.arange(n, dtype=centres.dtype, device=centres.device)
    gx = torch.exp(-0.5 * ((grid.view(1, -1) - centres[:, 0:1]) / sigmas[:, 0:1]) ** 2)  # (b, n)
    gy = torch.exp(-0.5 * ((grid.view(1, -1) - centres[:, 1:2]) / sigmas[:, 1:2]) ** 2)
    return (gy.unsqueeze(2) * gx.unsqueeze(1)).unsqueeze(1)


def hann_window(n: int, device: torch.device | str | None = None) -> Tensor:
    """2-D cosine (Hann) window of shape ``(n, n)``, 1 at the centre and 0 at the border cells.

    >>> w = hann_window(5)
    >>> w[2, 2].item(), w[0, 2].item()
    (1.0, 0.0)
    """
    w = torch.hann_window(n, periodic=False, dtype=torch.float32, device=device)
    return w.view(-1, 1) * w.view(1, -1)


def windowed_peak(responses: Tensor, window: Tensor, penalties: Tensor) -> Tensor:
    """Flat index of the best cell over a stack of response maps, as a 0-dim tensor (no host sync).

    The maps are shifted to be non-negative (by their common minimum, so scales stay
    comparable), multiplied by the cosine ``window`` and by each map's penalty. Without the
    shift a map that is negative everywhere would peak at the window's zero border.

    Args:
        responses: of shape ``(m, n, n)``.
        window: of shape ``(n, n)``.
        penalties: of shape ``(m,)``.

    >>> r = -torch.ones(1, 5, 5); r[0, 2, 3] = -0.5
    >>> int(windowed_peak(r, hann_window(5), torch.ones(1)))
    13
    """
    scored = (responses - responses.amin()) * window * penalties.view(-1, 1, 1)
    return scored.flatten().argmax()


def peak_displacement(index: int, n: int, stride: float, sides: Seq[float], size: int) -> tuple[int, float, float]:
    """The peak's map and its displacement from the patch centre in image pixels.

    Args:
        index: flat argmax over a stack of response maps of shape ``(m, n, n)``.
        n: grid side; the centre cell ``(n - 1) / 2`` is the patch centre.
        stride: patch pixels per cell.
        sides: the image side of each of the ``m`` patches.
        size: patch side in pixels.

    Returns:
        ``(map index, dx, dy)``.

    >>> peak_displacement(1 * 25 + 2 * 5 + 4, 5, 4.0, [64.0, 32.0], 64)
    (1, 4.0, 0.0)
    """
    m, rest = divmod(int(index), n * n)
    ky, kx = divmod(rest, n)
    centre = (n - 1) / 2
    scale = stride * float(sides[m]) / size
    return m, (kx - centre) * scale, (ky - centre) * scale
