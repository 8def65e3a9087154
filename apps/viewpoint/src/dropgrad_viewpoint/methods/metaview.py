"""MetaView (Tseng et al., BMVC 2019) with DropGrad: a meta-Siamese per-keypoint viewpoint module.

The trunk is shared by all categories and meta-learned, not adapted. The viewpoint module has
ONE keypoint-agnostic initialisation theta; for a category with K keypoints it is replicated K
times (parameters stacked to ``(K, *shape)``), copy k is trained on keypoint k only, and the
copies run together under ``torch.func.vmap``. Per task (one category)::

    theta_k^0 = theta                                   (k = 1..K)
    g_k       = grad L_k(theta_k, support)              (L_k: keypoint k's loss)
    g_k'      = DropGrad(g_k)                           (identity in eval mode)
    theta_k  <- theta_k - alpha * g_k'                  (core's sgd_step)
    meta-loss = mean_k L_k(theta_k, query)  -> grad w.r.t. theta and the trunk

Core's :class:`dropgrad.MAML` starts every task from the model's own parameters, of fixed
shape; the replication to a per-task number of copies is why this module composes core's
``sgd_step`` and ``DropGrad`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from dropgrad import DropGrad, sgd_step
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["MetaView", "Prediction"]

Params = dict[str, Tensor]


@dataclass
class Prediction:
    """Per-object, per-keypoint predictions (N objects, K keypoints).

    Attributes:
        kp2d: of shape ``(N, K, 2)``, normalised crop coordinates.
        confidence: of shape ``(N, K)``: the heatmap's peak probability.
        depth: of shape ``(N, K)``.
        canon: of shape ``(N, K, 3)``.
    """

    kp2d: Tensor
    confidence: Tensor
    depth: Tensor
    canon: Tensor


def _sample_at(maps: Tensor, kp2d: Tensor) -> Tensor:
    """Bilinear read of ``maps`` ``(K, N, C, H, W)`` at ``kp2d`` ``(N, K, 2)`` -> ``(K, N, C)``.

    The numbers of ``F.grid_sample(..., align_corners=False)`` with zero padding, written with
    ``gather``: CUDA has no derivative of ``grid_sampler_2d_backward``, and the second-order
    meta-gradient differentiates this read twice (seen on an H200 with torch 2.11).
    """
    k, n, c, h, w = maps.shape
    flat = maps.reshape(k * n, c, h * w)
    xy = kp2d.permute(1, 0, 2).reshape(k * n, 2)
    # Crop coordinates [-0.5, 0.5] span the outer pixel edges: pixel centres at (i + 0.5) / size - 0.5.
    x = (xy[:, 0] + 0.5) * w - 0.5
    y = (xy[:, 1] + 0.5) * h - 0.5
    x0, y0 = x.floor().detach(), y.floor().detach()
    out = flat.new_zeros(k * n, c)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs()) * inside
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            values = flat.gather(2, index.view(-1, 1, 1).expand(-1, c, 1)).squeeze(2)
            out = out + values * weight.unsqueeze(1)
    return out.reshape(k, n, c)


class MetaView(nn.Module):
    """Trunk + meta-Siamese viewpoint module, adapted per category with DropGrad.

    Args:
        trunk: feature extractor ``(N, 3, S, S) -> (N, C, H, W)``.
        head: the keypoint-agnostic viewpoint module ``(N, C, H, W) -> (N, 5, H, W)``.
        inner_lr: inner-loop step size alpha.
        inner_lr_3d: alpha of the module's ``geo.*`` parameters (depth and canonical outputs),
            whose gradients are far larger than the heatmap's (default: ``inner_lr``).
        steps: inner steps while meta-training (``adapt`` takes another number at test time).
        first_order: treat the inner gradients as constants in the meta-gradient.
        dropgrad: the noise between inner gradient and update (``None``: none). A submodule: it
            follows ``train()``/``eval()``, so adaptation at evaluation is noise-free.
        weight_3d: weight of the depth and canonical-coordinate losses against the heatmap's.
        sigma: heatmap target's Gaussian width in feature-map cells.
        learn_inner_lr: meta-learn one step size per parameter tensor of the module (as MAML++
            does), initialised at ``inner_lr``; otherwise alpha is the fixed ``inner_lr``.
        weight_hidden: weight of a flat-heatmap loss (KL from the uniform distribution) for
            keypoints that are not visible in an image (0: hidden keypoints are unsupervised).

    >>> from dropgrad_viewpoint.models import KeypointHead, build_trunk
    >>> _ = torch.manual_seed(0)
    >>> mv = MetaView(build_trunk("small"), KeypointHead(64, 8), steps=1, dropgrad=DropGrad(0.1))
    >>> n, k = 3, 4
    >>> batch = {"images": torch.randn(n, 3, 32, 32), "kp2d": torch.rand(n, k, 2) - 0.5,
    ...          "visible": torch.ones(n, k, dtype=torch.bool), "depth": torch.zeros(n, k),
    ...          "canon": torch.zeros(n, k, 3), "canon_valid": torch.ones(n, k, dtype=torch.bool)}
    >>> loss = mv.task_loss(batch, batch)
    >>> loss.backward()
    >>> mv.head.heat[4].weight.grad.shape
    torch.Size([1, 8, 1, 1])
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module,
        *,
        inner_lr: float = 0.1,
        inner_lr_3d: float | None = None,
        steps: int = 3,
        first_order: bool = False,
        dropgrad: DropGrad | None = None,
        weight_3d: float = 10.0,
        sigma: float = 1.0,
        learn_inner_lr: bool = False,
        weight_hidden: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"MetaView: steps must be an integer >= 1, got {steps!r}")
        self.trunk = trunk
        self.head = head
        self.inner_lr = float(inner_lr)
        self.inner_lr_3d = self.inner_lr if inner_lr_3d is None else float(inner_lr_3d)
        self.steps = steps
        self.first_order = bool(first_order)
        self.dropgrad = dropgrad if dropgrad is not None else DropGrad(kind="none")
        self.weight_3d = float(weight_3d)
        self.sigma = float(sigma)
        self.learn_inner_lr = bool(learn_inner_lr)
        self.weight_hidden = float(weight_hidden)
        init = {n: self.inner_lr_3d if n.startswith("geo.") else self.inner_lr for n, _ in head.named_parameters()}
        self.inner_lrs = nn.ParameterDict({
            n.replace(".", "__"): nn.Parameter(torch.tensor(v), requires_grad=self.learn_inner_lr) for n, v in init.items()
        })

    def step_size(self) -> dict[str, Tensor]:
        """alpha per module parameter: name -> 0-d step size (meta-learned if ``learn_inner_lr``)."""
        return {n: self.inner_lrs[n.replace(".", "__")] for n, _ in self.head.named_parameters()}

    # ------------------------------------------------------------------ params
    def initial_params(self, n_keypoints: int) -> Params:
        """theta replicated once per keypoint: name -> tensor of shape ``(K, *param.shape)``."""
        return {n: p.unsqueeze(0).expand(n_keypoints, *p.shape) for n, p in self.head.named_parameters()}

    def head_forward(self, params: Params, feats: Tensor) -> Tensor:
        """Run the K copies: ``feats`` ``(N, C, H, W)`` -> maps ``(K, N, 5, H, W)``."""
        return torch.func.vmap(lambda p: functional_call(self.head, p, (feats,)))(params)

    # -------------------------------------------------------------------- loss
    def keypoint_losses(self, maps: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Per-keypoint loss ``(K,)``: heatmap cross-entropy + weight_3d * (depth + canonical MSE),
        plus weight_hidden * KL(uniform || heatmap) where the keypoint is not visible.

        Copy k's heatmap, depth and coordinates are scored on keypoint k's visible annotations;
        a keypoint without any in the batch contributes 0 to those terms.
        """
        k, n, _, h, w = maps.shape
        vis = batch["visible"].T.float()  # (K, N)
        logits = maps[:, :, 0].reshape(k, n, h * w)
        # Soft Gaussian target around the annotated position, in feature-map cells.
        ys = (torch.arange(h, device=maps.device, dtype=maps.dtype) + 0.5) / h - 0.5
        xs = (torch.arange(w, device=maps.device, dtype=maps.dtype) + 0.5) / w - 0.5
        kp = batch["kp2d"].permute(1, 0, 2)  # (K, N, 2)
        d2 = ((xs.view(1, 1, 1, w) - kp[..., 0, None, None]) * w) ** 2 + ((ys.view(1, 1, h, 1) - kp[..., 1, None, None]) * h) ** 2
        target = torch.softmax(-d2.reshape(k, n, h * w) / (2 * self.sigma**2), dim=-1)
        ce = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)  # (K, N)
        at = _sample_at(maps[:, :, 1:], batch["kp2d"])  # (K, N, 4)
        depth_err = (at[..., 0] - batch["depth"].T) ** 2
        canon_valid = batch["canon_valid"].T.float() * vis
        canon_err = ((at[..., 1:] - batch["canon"].permute(1, 0, 2)) ** 2).sum(-1)
        # Depth is scored where it is known (a batch without "depth_valid": everywhere).
        depth_w = vis * batch["depth_valid"].T.float() if "depth_valid" in batch else vis
        loss = (ce * vis).sum(1) / vis.sum(1).clamp(min=1.0)
        loss = loss + self.weight_3d * (depth_err * depth_w).sum(1) / depth_w.sum(1).clamp(min=1.0)
        if self.weight_hidden > 0:
            # A keypoint not seen in an image gets a flat target, so the heatmap's peak
            # probability (the Procrustes weight) is low where the keypoint is hidden; without
            # it, hidden keypoints' confident guesses dragged the pose (see the README).
            hidden = 1.0 - vis
            flat = -torch.log_softmax(logits, dim=-1).mean(-1) - math.log(h * w)  # KL(uniform || heatmap) >= 0
            loss = loss + self.weight_hidden * (flat * hidden).sum(1) / hidden.sum(1).clamp(min=1.0)
        return loss + self.weight_3d * (canon_err * canon_valid).sum(1) / canon_valid.sum(1).clamp(min=1.0)

    # -------------------------------------------------------------- inner loop
    def adapt(self, feats: Tensor, support: dict[str, Tensor], steps: int | None = None) -> Params:
        """Adapt the K copies on the support set's features ``(N, C, H, W)``; returns the params.

        While meta-training (train mode, grad enabled) the result is differentiable w.r.t. theta
        and the trunk; otherwise every step starts from detached tensors.
        """
        n_kp = support["visible"].shape[1]
        track = self.training and torch.is_grad_enabled()
        create_graph = track and not self.first_order
        params = self.initial_params(n_kp)
        if not track:
            feats = feats.detach()
        with torch.enable_grad():
            for _ in range(self.steps if steps is None else steps):
                if not track:
                    params = {n: p.detach().requires_grad_() for n, p in params.items()}
                # Sum over keypoints: copy k's gradient is exactly that of its own loss L_k.
                loss = self.keypoint_losses(self.head_forward(params, feats), support).sum()
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, materialize_grads=True)
                params = sgd_step(params, self.dropgrad(dict(zip(params, grads))), self.step_size())
        if not track:
            params = {n: p.detach() for n, p in params.items()}
        return params

    def task_loss(self, support: dict[str, Tensor], query: dict[str, Tensor]) -> Tensor:
        """Meta-training loss of one task: adapt on ``support``, mean keypoint loss on ``query``.

        ``support``/``query``: dicts with ``images`` ``(N, 3, S, S)``, ``kp2d`` ``(N, K, 2)``,
        ``visible`` ``(N, K)``, ``depth`` ``(N, K)``, ``canon`` ``(N, K, 3)``, ``canon_valid`` ``(N, K)``,
        and optionally ``depth_valid`` ``(N, K)``.
        """
        params = self.adapt(self.trunk(support["images"]), support)
        maps = self.head_forward(params, self.trunk(query["images"]))
        return self.keypoint_losses(maps, query).mean()

    # -------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(self, images: Tensor, params: Params) -> Prediction:
        """Predictions of the K copies ``params`` on ``images`` ``(N, 3, S, S)``."""
        maps = self.head_forward(params, self.trunk(images))
        k, n, _, h, w = maps.shape
        prob = torch.softmax(maps[:, :, 0].reshape(k, n, h * w), dim=-1)
        conf, idx = prob.max(-1)
        kp = torch.stack([(idx % w + 0.5) / w - 0.5, (idx // w + 0.5) / h - 0.5], dim=-1).permute(1, 0, 2)
        at = _sample_at(maps[:, :, 1:], kp)  # (K, N, 4)
        return Prediction(kp.contiguous(), conf.T.contiguous(), at[..., 0].T.contiguous(), at[..., 1:].permute(1, 0, 2).contiguous())
