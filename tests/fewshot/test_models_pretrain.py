"""MetaSGD* pre-training of the feature extractor on a tiny in-test dataset that satisfies the
FewShotDataset contract (labels, channels, image_size, items)."""

import numpy as np
import pytest
import torch
from dropgrad_fewshot.models import build_model, pretrain_feature_extractor


class Quadrants(torch.utils.data.Dataset):
    """4 classes, 16 px grey images: class c brightens quadrant c; noise on top (linearly separable)."""

    channels = 1
    image_size = 16

    def __init__(
        self,
        per_class: int = 12,
        seed: int = 0,
        signal: float = 1.0,
        noise: float = 0.3,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = np.repeat(np.arange(4), per_class).astype(np.int64)
        self.images = noise * torch.randn(len(self.labels), 1, 16, 16, generator=g)
        for i, c in enumerate(self.labels):
            r, q = divmod(int(c), 2)
            self.images[i, 0, 8 * r : 8 * r + 8, 8 * q : 8 * q + 8] += signal
        self.class_names = [f"q{c}" for c in range(4)]
        self.epoch_seeds: list[int] = []

    def set_epoch_seed(self, seed: int) -> None:
        self.epoch_seeds.append(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


@pytest.mark.parametrize("backbone,epochs", [("conv4", 6), ("resnet10", 1)])
def test_pretraining_lowers_the_loss_and_keeps_the_head(backbone, epochs):
    torch.manual_seed(0)
    data = Quadrants()
    net = build_model(backbone, 5, in_channels=1, image_size=16)
    head = {k: v.clone() for k, v in net.fc.state_dict().items()}
    trunk_before = (
        net.block1.conv.weight.clone()
        if backbone == "conv4"
        else net.conv1.weight.clone()
    )
    rng_before = torch.get_rng_state()
    summary = pretrain_feature_extractor(
        net,
        data,
        epochs=epochs,
        batch_size=16,
        lr=3e-3,
        device="cpu",
        seed=0,
        progress=False,
    )
    assert torch.equal(
        torch.get_rng_state(), rng_before
    )  # the caller's RNG stream is untouched
    assert (
        summary["n_classes"] == 4
        and summary["n_images"] == 48
        and summary["epochs"] == epochs
    )
    assert summary["steps"] == epochs * 3
    assert (
        data.epoch_seeds == sorted(set(data.epoch_seeds))
        and len(data.epoch_seeds) == epochs
    )
    if epochs > 1:
        hist = summary["history"]
        assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
        assert summary["final_train_accuracy"] >= 0.9
    # The few-shot head is untouched; the trunk moved.
    assert all(torch.equal(v, net.fc.state_dict()[k]) for k, v in head.items())
    trunk_after = net.block1.conv.weight if backbone == "conv4" else net.conv1.weight
    assert not torch.equal(trunk_before, trunk_after)


def test_pretrained_trunk_separates_the_classes(init_seed=0):
    """On noisy images, a nearest-class-mean classifier on the pooled features of the
    pre-trained trunk clearly beats the one on the random trunk (MetaSGD* starts from the former)."""
    torch.manual_seed(init_seed)
    data = Quadrants(per_class=24, seed=1, signal=0.4, noise=1.0)
    held_out = Quadrants(per_class=12, seed=2, signal=0.4, noise=1.0)
    net = build_model("conv4", 4, in_channels=1, image_size=16)

    def ncm_accuracy():
        with torch.no_grad():
            f_train = net.pool(net.features(data.images))
            f_test = net.pool(net.features(held_out.images))
        means = torch.stack(
            [f_train[torch.as_tensor(data.labels) == c].mean(0) for c in range(4)]
        )
        pred = torch.cdist(f_test, means).argmin(-1)
        return (pred == torch.as_tensor(held_out.labels)).float().mean().item()

    random_trunk = ncm_accuracy()
    pretrain_feature_extractor(
        net,
        data,
        epochs=8,
        batch_size=16,
        lr=3e-3,
        device="cpu",
        seed=0,
        progress=False,
    )
    assert ncm_accuracy() >= random_trunk + 0.15


def test_pretraining_is_a_function_of_the_seed():
    data = Quadrants()
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(0)
        net = build_model(
            "conv4",
            5,
            in_channels=1,
            image_size=16,
            regularizer="dropout",
            generator=torch.Generator().manual_seed(seed * 7),
        )
        pretrain_feature_extractor(
            net,
            data,
            epochs=2,
            batch_size=16,
            lr=1e-3,
            device="cpu",
            seed=seed,
            progress=False,
        )
        runs.append(net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize(
    "change,match",
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a number > 0"),
        ({"in_channels": 3}, "1 channel"),
        ({"image_size": 28}, "built for image_size=28"),
    ],
)
def test_bad_options_fail_before_training(change, match):
    build = {k: change.pop(k) for k in ("in_channels", "image_size") if k in change}
    net = build_model("conv4", 5, **({"in_channels": 1, "image_size": 16} | build))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    args = {
        "epochs": 1,
        "batch_size": 8,
        "lr": 1e-3,
        "device": "cpu",
        "seed": 0,
        "progress": False,
    } | change
    with pytest.raises(ValueError, match=match):
        pretrain_feature_extractor(net, Quadrants(), **args)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


class Blank(torch.utils.data.Dataset):
    """8 blank 16 px images, classes 0 and 1 alternating."""

    channels, image_size = 1, 16
    labels = np.array([0, 1] * 4)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(1, 16, 16), int(self.labels[i])


def test_pretraining_history_is_the_per_image_mean_loss():
    # A trunk of all-zero convolutions gives all-zero features (BatchNorm of a zero map is its zero
    # shift; ReLU's zero gradient at 0 keeps the trunk at zero), so the fresh head's logits are its
    # zero bias: each image's loss is log 2. An lr of 1e-9 keeps that at every step; batches of 3
    # (3 + 3 + 2 images) make a sum of batch means differ from the per-image mean.
    net = build_model("conv4", 5, in_channels=1, image_size=16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
    out = pretrain_feature_extractor(net, Blank(), epochs=2, batch_size=3, lr=1e-9, device="cpu", seed=0, progress=False)
    for h in out["history"]:
        assert h["train_loss"] == pytest.approx(np.log(2), abs=1e-6)


def test_pretraining_dropout_masks_follow_the_seed_not_the_models_generator():
    data = Quadrants()
    runs = []
    for gen_seed in (1, 2):
        torch.manual_seed(0)
        net = build_model("conv4", 5, in_channels=1, image_size=16, regularizer="dropout",
                          generator=torch.Generator().manual_seed(gen_seed))
        pretrain_feature_extractor(net, data, epochs=1, batch_size=16, lr=1e-3, device="cpu", seed=3, progress=False)
        runs.append(net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


class Recording(Quadrants):
    """Quadrants that records the order its items are read in."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[int] = []

    def __getitem__(self, i: int):
        self.order.append(int(i))
        return super().__getitem__(i)


def test_pretraining_shuffles_by_the_seed():
    orders = []
    for seed in (3, 3, 4):
        data = Recording()
        net = build_model("conv4", 5, in_channels=1, image_size=16)
        pretrain_feature_extractor(net, data, epochs=1, batch_size=16, lr=1e-3, device="cpu", seed=seed, progress=False)
        assert sorted(data.order) == list(range(len(data)))
        orders.append(data.order)
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_pretraining_applies_the_weight_decay():
    trunks = []
    for weight_decay in (0.0, 0.0, 10.0):
        torch.manual_seed(0)
        net = build_model("conv4", 5, in_channels=1, image_size=16)
        pretrain_feature_extractor(net, Quadrants(), epochs=1, batch_size=16, lr=1e-3, device="cpu", seed=0,
                                   progress=False, weight_decay=weight_decay)
        trunks.append(net.block1.conv.weight.detach().clone())
    assert torch.equal(trunks[0], trunks[1]) and not torch.allclose(trunks[0], trunks[2])


def test_pretraining_history_is_each_epochs_own_mean(monkeypatch):
    # The reference: every batch's loss and correct count, recorded as cross-entropy is called,
    # averaged per image over the batches of each epoch (48 images in batches of 20: 3 per epoch).
    import torch.nn.functional as F

    batches = []
    cross_entropy = F.cross_entropy

    def recording(logits, y, *args, **kwargs):
        loss = cross_entropy(logits, y, *args, **kwargs)
        batches.append((loss.item(), int((logits.argmax(-1) == y).sum()), y.numel()))
        return loss

    monkeypatch.setattr(F, "cross_entropy", recording)
    torch.manual_seed(0)
    net = build_model("conv4", 5, in_channels=1, image_size=16)
    out = pretrain_feature_extractor(net, Quadrants(), epochs=3, batch_size=20, lr=3e-3, device="cpu", seed=0,
                                     progress=False)
    assert len(batches) == 9 and out["steps"] == 9
    for e, h in enumerate(out["history"]):
        epoch = batches[3 * e : 3 * e + 3]
        n = sum(b[2] for b in epoch)
        assert n == 48
        assert h["train_loss"] == pytest.approx(sum(b[0] * b[2] for b in epoch) / n, rel=1e-9)
        assert h["train_accuracy"] == pytest.approx(sum(b[1] for b in epoch) / n)
    losses = [h["train_loss"] for h in out["history"]]
    assert losses[0] != pytest.approx(losses[2], rel=1e-3)  # the epochs differ, so a running mean would show
    assert out["final_train_loss"] == losses[-1]


def test_pretraining_head_covers_the_largest_label():
    class Gapped(Blank):
        labels = np.array([0, 2] * 4)  # class 1 has no images: the head still needs index 2

        def __getitem__(self, i: int):
            return torch.rand(1, 16, 16), int(self.labels[i])

    net = build_model("conv4", 5, in_channels=1, image_size=16)
    out = pretrain_feature_extractor(net, Gapped(), epochs=1, batch_size=4, lr=1e-3, device="cpu", seed=0, progress=False)
    assert out["n_classes"] == 3


def test_pretraining_does_not_depend_on_the_global_rng():
    # The temporary head and the dropout masks come from ``seed``, not from whatever state torch's
    # global RNG is in when pre-training starts.
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(0)
        net = build_model("conv4", 5, in_channels=1, image_size=16, regularizer="dropout")
        torch.manual_seed(global_seed)
        pretrain_feature_extractor(net, Quadrants(), epochs=1, batch_size=16, lr=1e-3, device="cpu", seed=3, progress=False)
        runs.append(net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# ------------------------------------------------------------------ mutation round 5 (m5k)


def test_pretraining_is_plain_adam_on_each_batchs_own_gradient():
    # Reference loop by hand: the same seeded head, shuffling and Adam, a fresh gradient per batch.
    import copy

    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    data = Quadrants()
    torch.manual_seed(0)
    net = build_model("conv4", 5, in_channels=1, image_size=16)
    ref = copy.deepcopy(net)
    pretrain_feature_extractor(net, data, epochs=2, batch_size=16, lr=3e-3, device="cpu", seed=3, progress=False)

    torch.manual_seed(3)
    ref.reset_classifier(4)
    ref.train()
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3)
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(ref(x), y).backward()
            opt.step()
    trunk = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert trunk
    for k, v in trunk.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_pretraining_a_resnet_takes_images_of_any_size():
    # Global pooling: a ResNet built for 32 px pre-trains on 16 px images (only Conv4's head fixes the size).
    torch.manual_seed(0)
    net = build_model("resnet10", 5, in_channels=1, image_size=32)
    before = net.conv1.weight.detach().clone()
    out = pretrain_feature_extractor(net, Quadrants(per_class=2), epochs=1, batch_size=8, lr=1e-3, device="cpu",
                                     seed=0, progress=False)
    assert out["steps"] == 1 and not torch.equal(before, net.conv1.weight)


def test_pretraining_starts_one_dataloader_iterator_per_epoch(monkeypatch):
    # tqdm.auto's __init__ calls iter() on what it wraps: a bar around the DataLoader started a second,
    # discarded iterator every epoch (worker processes and prefetched batches included).
    from torch.utils.data import DataLoader

    started = []
    original = DataLoader.__iter__

    def counting(self):
        started.append(self.batch_size)
        return original(self)

    monkeypatch.setattr(DataLoader, "__iter__", counting)
    net = build_model("conv4", 5, in_channels=1, image_size=16)
    out = pretrain_feature_extractor(net, Quadrants(), epochs=3, batch_size=16, lr=1e-3, device="cpu", seed=0,
                                     progress=True)
    assert out["steps"] == 9 and started == [16, 16, 16]


def test_pretraining_epoch_seeds_of_different_seeds_never_meet():
    # Augmentation streams of runs with other seeds must not coincide a few epochs apart (seed + epoch would).
    seen = []
    for seed in (0, 1, 2):
        data = Quadrants(per_class=2)
        net = build_model("conv4", 5, in_channels=1, image_size=16)
        pretrain_feature_extractor(net, data, epochs=3, batch_size=8, lr=1e-3, device="cpu", seed=seed, progress=False)
        seen.append(data.epoch_seeds)
    flat = [s for run in seen for s in run]
    assert len(flat) == 9 and len(set(flat)) == 9


def test_pretraining_refuses_an_empty_dataset():
    class Empty(Blank):
        labels = np.zeros(0, dtype=np.int64)

        def __len__(self) -> int:
            return 0

    net = build_model("conv4", 5, in_channels=1, image_size=16)
    with pytest.raises(ValueError, match="the dataset is empty"):
        pretrain_feature_extractor(net, Empty(), epochs=1, batch_size=4, lr=1e-3, device="cpu", seed=0, progress=False)
