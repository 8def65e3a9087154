"""MetaSGD*'s first stage: pre-train the feature extractor with plain cross-entropy.

The paper's MetaSGD* trains the ResNet-18 trunk as an ordinary classifier over all base classes
(64 for mini-ImageNet) and then starts MetaSGD from those trunk weights. Here a copy of the model
gets a temporary ``n_classes``-way head, is trained with Adam, and every trunk tensor (all but
``fc.*``) is copied back into the model; the model's own few-shot head is left as it was.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from dropgrad import ConsistentDropout, autocast, resample_dropout_masks
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .net import FewShotNet

__all__ = ["pretrain_feature_extractor"]


class LabelledImages(Protocol):
    """What pre-training needs of a ``dropgrad_fewshot.data.FewShotDataset``."""

    labels: np.ndarray
    channels: int
    image_size: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Tensor, int]: ...


def _positive(name: str, value: Any, kind: type) -> None:
    bad = isinstance(value, bool) or not isinstance(
        value, (int, float) if kind is float else int
    )
    if bad or not value > 0 or (kind is float and not math.isfinite(value)):
        what = "a number > 0" if kind is float else "an integer >= 1"
        raise ValueError(f"pretraining: {name} must be {what}, got {name}={value!r}")


def pretrain_feature_extractor(
    model: FewShotNet,
    dataset: LabelledImages,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device | str,
    seed: int,
    progress: bool = True,
    weight_decay: float = 0.0,
    amp: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train ``model``'s trunk as a classifier over all classes of ``dataset``; keep its own head.

    A copy of ``model`` with a fresh ``n_classes``-way head (``n_classes = labels.max() + 1``)
    is trained with Adam on cross-entropy over shuffled mini-batches; then every parameter and
    buffer except ``fc.*`` is copied into ``model`` (on its device). The run is a pure function
    of ``seed`` (shuffling, head initialisation, dropout masks, augmentation epoch seeds) and
    leaves torch's global RNG as it found it. ConsistentDropout layers draw one mask per
    mini-batch here (ordinary dropout training).

    Args:
        model: the few-shot network whose trunk is pre-trained (modified in place).
        dataset: a ``FewShotDataset`` of the base classes: ``labels`` of shape (N,),
            ``channels``, ``image_size`` and items (image of shape (channels, S, S), label).
        epochs: passes over the dataset (>= 1).
        batch_size: images per step (>= 1); the last partial batch is kept.
        lr: Adam learning rate (> 0); ``weight_decay`` Adam's L2 term.
        device: where to train (``dropgrad.select_device(...)``).
        seed: seed of everything random in the run.
        progress: show a tqdm bar per epoch with the running loss and accuracy.
        amp: bf16 autocast (``dropgrad.autocast``).
        num_workers: DataLoader worker processes.

    Returns:
        ``{"epochs", "steps", "n_classes", "n_images", "final_train_loss",
        "final_train_accuracy", "history": [{"epoch", "train_loss", "train_accuracy"}, ...]}``
        (accuracy in [0, 1]; "final" is the last epoch's mean over its batches).

    Raises:
        ValueError: bad options, an empty dataset, or a dataset whose channels / image size
            the model was not built for (Conv4's head depends on the size).

    >>> from dropgrad_fewshot.models import build_model
    >>> class Tiny(torch.utils.data.Dataset):
    ...     channels, image_size = 1, 16
    ...     labels = np.array([0, 1] * 4)
    ...     def __len__(self): return 8
    ...     def __getitem__(self, i): return torch.full((1, 16, 16), float(self.labels[i])), int(self.labels[i])
    >>> net = build_model("conv4", 5, in_channels=1, image_size=16)
    >>> out = pretrain_feature_extractor(net, Tiny(), epochs=2, batch_size=4, lr=1e-3,
    ...                                  device="cpu", seed=0, progress=False)
    >>> out["n_classes"], out["steps"], net.fc.out_features
    (2, 4, 5)
    """
    _positive("epochs", epochs, int)
    _positive("batch_size", batch_size, int)
    _positive("lr", lr, float)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"pretraining: seed must be an integer, got seed={seed!r}")  # noqa: TRY004 (one user-error type for the CLI)
    n_images = len(dataset)
    if n_images == 0:
        raise ValueError("pretraining: the dataset is empty")
    labels = np.asarray(dataset.labels)
    if labels.shape != (n_images,) or labels.min() < 0:
        raise ValueError(
            f"pretraining: dataset.labels must have shape ({n_images},) with class indices >= 0, "
            f"got shape {labels.shape}"
        )
    if dataset.channels != model.in_channels:
        raise ValueError(
            f"pretraining: the dataset has {dataset.channels} channel(s) but the model was built "
            f"for in_channels={model.in_channels}"
        )
    if model.fixed_input_size and dataset.image_size != model.image_size:
        raise ValueError(
            f"pretraining: the dataset's images are {dataset.image_size} px but the {model.backbone} "
            f"model was built for image_size={model.image_size}"
        )
    n_classes = int(labels.max()) + 1
    device = torch.device(device)

    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        net = copy.deepcopy(model).to(device)
        net.reset_classifier(n_classes)
        for m in net.modules():
            if isinstance(m, ConsistentDropout):
                # Masks from the seeded global RNG, not the copied generator's unknown state.
                m.generator = None
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        loader = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        history: list[dict[str, float]] = []
        steps = 0
        for epoch in range(epochs):
            if hasattr(dataset, "set_epoch_seed"):
                # Augmentation draws follow (seed, epoch), so a re-run repeats them.
                dataset.set_epoch_seed(seed * 100_003 + epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            # total=, not the loader itself: tqdm.auto's __init__ calls iter() on an iterable,
            # which would start (and throw away) a second DataLoader iterator every epoch.
            bar = tqdm(
                total=len(loader),
                desc=f"pretrain {epoch + 1}/{epochs}",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True).long()
                resample_dropout_masks(net)
                with autocast(device, amp):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                n = y.numel()
                loss_sum += loss.item() * n
                correct += int((logits.argmax(-1) == y).sum())
                seen += n
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}"
                )
            bar.close()
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / seen,
                    "train_accuracy": correct / seen,
                }
            )
        resample_dropout_masks(net)

    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("fc.") for k in missing), (
        missing,
        unexpected,
    )
    return {
        "epochs": epochs,
        "steps": steps,
        "n_classes": n_classes,
        "n_images": n_images,
        "final_train_loss": history[-1]["train_loss"],
        "final_train_accuracy": history[-1]["train_accuracy"],
        "history": history,
    }
