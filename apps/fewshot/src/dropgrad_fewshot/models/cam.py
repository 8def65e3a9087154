"""Class activation maps (Zhou et al. 2016) from the last conv layer, after adaptation (Fig. 4).

For a head on globally average-pooled features (the ResNets), the class score is
``s_c = sum_k w_ck * mean_xy A_k(x, y) + b_c``, and the map ``CAM_c(x, y) = sum_k w_ck A_k(x, y)``
shows where the evidence for class c lies (its spatial mean is ``s_c - b_c``). Conv4's head reads
the flattened map, ``s_c = sum_{k,x,y} W_c[k, x, y] A_k(x, y) + b_c``; the same idea gives
``CAM_c(x, y) = sum_k W_c[k, x, y] A_k(x, y)`` (its spatial sum is ``s_c - b_c``). Maps are then
upsampled bilinearly to the input size and min-max normalised per image to [0, 1]; a map that
is constant up to float32 rounding (any map from a 1x1 feature map, such as Conv4's at 28 px)
becomes all zeros.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from dropgrad import atomic_write
from torch import Tensor
from torch.func import functional_call

from .net import FewShotNet

__all__ = ["cams_from_features", "class_activation_maps", "save_cam_grid"]

# A map whose max - min is at most this times max|map| counts as constant (float32 rounding).
_CONSTANT_RTOL = 1e-5


def cams_from_features(
    feature_map: Tensor,
    fc_weight: Tensor,
    classes: Tensor,
    size: tuple[int, int] | None = None,
    normalize: bool = True,
) -> Tensor:
    """CAMs from a last conv map and the head's weight.

    Args:
        feature_map: A, of shape (B, K, h, w).
        fc_weight: of shape (n_way, K) (average-pooled head) or (n_way, K*h*w) (flattened head).
        classes: the class whose map to compute for each image, of shape (B,) (e.g. the prediction).
        size: (H, W) to upsample to (bilinear, half-pixel centres); None keeps (h, w).
        normalize: min-max normalise each map to [0, 1]. A constant map becomes all zeros, and so
            does one whose spread (before upsampling) is within float32 rounding of its
            magnitude (at most ``1e-5 * max|map|``), e.g. any map from a 1x1 feature map.

    Returns:
        Maps of shape (B, H, W), float32, detached.

    >>> A = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
    >>> cams_from_features(A, torch.tensor([[1.0, 3.0]]), torch.tensor([0]), normalize=False)
    tensor([[[1., 0.],
             [0., 6.]]])
    """
    if feature_map.dim() != 4:
        raise ValueError(
            f"CAM: feature_map must have shape (B, K, h, w), got {tuple(feature_map.shape)}"
        )
    b, k, h, w = feature_map.shape
    classes = torch.as_tensor(classes, device=feature_map.device).long().reshape(-1)
    if classes.numel() != b:
        raise ValueError(f"CAM: need one class per image ({b}), got {classes.numel()}")
    n_way = fc_weight.shape[0]
    if fc_weight.shape[1] == k:
        weight = fc_weight.reshape(n_way, k, 1, 1)
    elif fc_weight.shape[1] == k * h * w:
        weight = fc_weight.reshape(n_way, k, h, w)
    else:
        raise ValueError(
            f"CAM: head weight of shape {tuple(fc_weight.shape)} fits neither K={k} pooled features "
            f"nor K*h*w={k * h * w} flattened ones"
        )
    if classes.min() < 0 or classes.max() >= n_way:
        raise ValueError(
            f"CAM: classes must lie in 0..{n_way - 1}, got {classes.tolist()}"
        )
    with torch.no_grad():
        maps = (weight[classes].float() * feature_map.float()).sum(dim=1)  # (B, h, w)
        # Constancy is decided on the map before upsampling, relative to its magnitude:
        # bilinear upsampling of a constant (e.g. Conv4's 1x1 map at 28 px) is constant only up
        # to float32 rounding (~1e-7 relative), which min-max normalisation would stretch to
        # [0, 1] and draw as a pattern.
        mag = maps.abs().amax(dim=(1, 2), keepdim=True)
        varies = (
            maps.amax(dim=(1, 2), keepdim=True) - maps.amin(dim=(1, 2), keepdim=True)
        ) > _CONSTANT_RTOL * mag
        if size is not None and tuple(size) != (h, w):
            maps = F.interpolate(
                maps[:, None], size=tuple(size), mode="bilinear", align_corners=False
            )[:, 0]
        if normalize:
            lo = maps.amin(dim=(1, 2), keepdim=True)
            span = maps.amax(dim=(1, 2), keepdim=True) - lo
            maps = torch.where(
                varies & (span > 0),
                (maps - lo) / span.clamp_min(torch.finfo(maps.dtype).tiny),
                0.0,
            )
    return maps.detach()


def class_activation_maps(
    model: FewShotNet,
    params: Mapping[str, Tensor] | None,
    x: Tensor,
    classes: Tensor | None = None,
    *,
    forward: Callable[[Tensor], Tensor] | None = None,
    normalize: bool = True,
) -> Tensor:
    """CAMs of ``model`` run with (adapted) ``params`` on images ``x``.

    Args:
        model: a :class:`FewShotNet` (its mode matters: use eval so dropout is off).
        params: name -> tensor used in place of the model's own parameters (and buffers), e.g.
            the adapted weights of the inner loop's last step; ``None`` uses the model's own.
            Names it does not give fall back to the model's tensors. The head weight is
            ``params["fc.weight"]`` when given.
        x: images of shape (B, C, H, W). Batch-statistics BatchNorm normalises with the batch:
            pass the whole query batch (and pick images afterwards) to see exactly the maps of
            the test forward.
        classes: class per image, of shape (B,); None uses the predicted class.
        forward: the logits function to run instead of ``functional_call(model, params, x)``,
            e.g. ``lambda x: learner(x, params)`` for MAML++, whose per-step BatchNorm tensors
            live in the learner; the last conv map is captured by a forward hook on
            ``model.last_block`` during that call.

    Returns:
        Maps of shape (B, H, W) in [0, 1] (``normalize``), float32, detached.

    >>> from dropgrad_fewshot.models import build_model
    >>> net = build_model("resnet10", 5, image_size=32).eval()
    >>> class_activation_maps(net, None, torch.randn(4, 3, 32, 32)).shape
    torch.Size([4, 32, 32])
    """
    tensors = dict(params) if params is not None else {}
    if forward is None:

        def forward(images: Tensor) -> Tensor:
            return functional_call(model, tensors, (images,))

    captured: list[Tensor] = []
    hook = model.last_block.register_forward_hook(
        lambda mod, inp, out: captured.append(out)
    )
    try:
        with torch.no_grad():
            logits = forward(x)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"CAM: the forward ran the last block {len(captured)} times, expected once"
        )
    weight = tensors.get("fc.weight", model.fc.weight)
    if classes is None:
        classes = logits.argmax(dim=-1)
    return cams_from_features(
        captured[0], weight, classes, size=tuple(x.shape[-2:]), normalize=normalize
    )


def _display(
    image: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Tensor:
    """(C, H, W) -> (H, W, C) in [0, 1] for imshow."""
    img = image.detach().float().cpu()
    if mean is not None and std is not None:
        c = img.shape[0]
        img = img * torch.tensor(std[:c]).view(-1, 1, 1) + torch.tensor(mean[:c]).view(
            -1, 1, 1
        )
        img = img.clamp(0, 1)
    else:
        # Unknown normalisation: stretch each image to [0, 1] for display.
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    return img.permute(1, 2, 0)


def save_cam_grid(
    path: str | os.PathLike[str],
    images: Tensor,
    cams: Tensor,
    labels: Tensor | Sequence[int],
    preds: Tensor | Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncols: int = 8,
    alpha: float = 0.5,
    title: str | None = None,
) -> Path:
    """Write a PNG grid: for each image, the image above its CAM overlay titled true/predicted label.

    Args:
        path: the PNG to write (atomically; parent folders are created).
        images: of shape (B, C, H, W) with C in {1, 3}, as fed to the network.
        cams: of shape (B, H, W), values in [0, 1] (from :func:`class_activation_maps`).
        labels: true labels, B ints; preds: predicted labels, B ints (titles are green when
            equal, red otherwise).
        class_names: names to print instead of label indices.
        mean, std: the per-channel normalisation of ``images`` to undo for display (e.g.
            ImageNet's); without them each image is min-max stretched.
        ncols: images per row; alpha: opacity of the heat map over the image.

    Returns:
        ``Path(path)``.

    >>> import tempfile
    >>> p = save_cam_grid(Path(tempfile.mkdtemp()) / "cam.png", torch.rand(2, 3, 8, 8),
    ...                   torch.rand(2, 8, 8), [0, 1], [0, 0])
    >>> p.read_bytes()[:4]
    b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"save_cam_grid: images must have shape (B, 1 or 3, H, W), got {tuple(images.shape)}"
        )
    b, _, h, w = images.shape
    if tuple(cams.shape) != (b, h, w):
        raise ValueError(
            f"save_cam_grid: cams must have shape {(b, h, w)}, got {tuple(cams.shape)}"
        )
    labels_l = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    preds_l = [int(v) for v in torch.as_tensor(preds).reshape(-1).tolist()]
    if len(labels_l) != b or len(preds_l) != b:
        raise ValueError(
            f"save_cam_grid: need {b} labels and predictions, got {len(labels_l)} and {len(preds_l)}"
        )
    if b == 0 or ncols < 1:
        raise ValueError(
            f"save_cam_grid: need at least one image and ncols >= 1, got B={b}, ncols={ncols}"
        )

    def name(i: int) -> str:
        return (
            class_names[i]
            if class_names is not None and 0 <= i < len(class_names)
            else str(i)
        )

    cols = min(b, ncols)
    rows = math.ceil(b / cols)
    fig = Figure(figsize=(1.8 * cols, 3.8 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(b):
        r, c = divmod(i, cols)
        img = _display(images[i], mean, std)
        gray = img.shape[-1] == 1
        shown = img[..., 0] if gray else img
        top = fig.add_subplot(2 * rows, cols, 2 * r * cols + c + 1)
        top.imshow(shown.numpy(), cmap="gray" if gray else None, vmin=0, vmax=1)
        bottom = fig.add_subplot(2 * rows, cols, (2 * r + 1) * cols + c + 1)
        bottom.imshow(shown.numpy(), cmap="gray" if gray else None, vmin=0, vmax=1)
        bottom.imshow(
            cams[i].detach().float().cpu().numpy(),
            cmap="jet",
            alpha=alpha,
            vmin=0,
            vmax=1,
        )
        ok = labels_l[i] == preds_l[i]
        bottom.set_title(
            f"true {name(labels_l[i])}\npred {name(preds_l[i])}",
            fontsize=8,
            color="green" if ok else "red",
        )
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
