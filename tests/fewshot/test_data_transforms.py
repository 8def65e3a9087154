"""CloserLook transforms against torchvision / PIL references; keyed augmentation randomness."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from dropgrad_fewshot.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GrayscaleTransform,
    RGBTransform,
    random_resized_crop_params,
)
from PIL import Image, ImageEnhance


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(75, 110, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [84, 224])
def test_eval_transform_matches_closerlook_pipeline(photo, size):
    """Resize both sides to int(1.15 * size), centre crop, ImageNet normalisation."""
    side = int(1.15 * size)
    reference = T.Compose([
        T.Resize([side, side]),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    assert torch.allclose(RGBTransform(size)(photo, None), reference(photo), atol=1e-6)


def test_augmented_transform_is_keyed_and_matches_pil_reference(photo):
    t = RGBTransform(32, augment=True)
    a = t(photo, np.random.default_rng(5))
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, t(photo, np.random.default_rng(5)))
    assert not torch.equal(a, t(photo, np.random.default_rng(6)))
    # Reference with PIL ImageEnhance, replaying the same draws in the same order.
    rng = np.random.default_rng(5)
    top, left, h, w = random_resized_crop_params(photo.width, photo.height, rng)
    im = photo.crop((left, top, left + w, top + h)).resize((32, 32), Image.Resampling.BILINEAR)
    b, c, s = rng.uniform(0.6, 1.4, size=3)
    im = ImageEnhance.Brightness(im).enhance(b)
    im = ImageEnhance.Contrast(im).enhance(c)
    im = ImageEnhance.Color(im).enhance(s)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(im))
    assert torch.allclose(a, ref, atol=1e-6)


def test_random_resized_crop_params_cover_the_scale_range():
    rng = np.random.default_rng(1)
    fractions = []
    for _ in range(2000):
        top, left, h, w = random_resized_crop_params(100, 80, rng)
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 100 and h > 0 and w > 0
        fractions.append(h * w / 8000)
    assert min(fractions) < 0.12 and max(fractions) > 0.9
    # the fallback: an extreme aspect ratio gets the central crop clamped to 4/3
    top, left, h, w = random_resized_crop_params(1000, 10, np.random.default_rng(0), scale=(1.0, 1.0))
    assert (h, w) == (10, 13) and left == (1000 - 13) // 2


def test_grayscale_transform_shift():
    im = Image.new("L", (28, 28), 255)
    im.putpixel((10, 12), 0)
    x = GrayscaleTransform(28, invert=True)(im, None)
    assert x.shape == (1, 28, 28) and x[0, 12, 10] == 1.0 and x.sum() == 1.0
    shifted = GrayscaleTransform(28, invert=True, augment=True)(im, np.random.default_rng(3))
    assert shifted.sum() == 1.0 and abs(shifted[0].nonzero()[0] - torch.tensor([12, 10])).max() <= 2
    with pytest.raises(ValueError, match="needs an rng"):
        GrayscaleTransform(28, invert=True, augment=True)(im, None)


def test_normalisation_constants_are_imagenets():
    # Written out here: the other tests import the constants, so they would agree with a typo.
    assert list(IMAGENET_STD) == [0.229, 0.224, 0.225] and list(IMAGENET_MEAN) == [0.485, 0.456, 0.406]


def test_random_resized_crop_reaches_every_offset_and_keeps_the_aspect_range():
    # A fixed 20 x 20 crop of a 40 x 40 image: top and left uniform over 0..20, both ends included.
    rng = np.random.default_rng(2)
    tops, lefts = set(), set()
    for _ in range(3000):
        top, left, h, w = random_resized_crop_params(40, 40, rng, scale=(0.25, 0.25), ratio=(1.0, 1.0))
        assert (h, w) == (20, 20)
        tops.add(top)
        lefts.add(left)
    assert tops == lefts == set(range(21))
    # Accepted crops have w / h in [3/4, 4/3] (log-uniform), up to rounding to whole pixels.
    ratios = np.array([w / h for _, _, h, w in (random_resized_crop_params(200, 200, rng) for _ in range(3000))])
    assert ratios.min() > 0.7 and ratios.max() < 1.43
    assert np.mean(ratios < 0.9) > 0.2 and np.mean(ratios > 1.1) > 0.2


@pytest.mark.parametrize("width, height", [(10, 1000), (1000, 10)])
def test_random_resized_crop_fallback_equals_torchvisions(width, height):
    # At scale 1 no random crop of either extreme shape fits: the central crop, ratio clamped.
    # torchvision's fallback draws nothing random, so its answer is the reference.
    ours = random_resized_crop_params(width, height, np.random.default_rng(0), scale=(1.0, 1.0))
    theirs = T.RandomResizedCrop.get_params(torch.zeros(1, height, width), scale=[1.0, 1.0], ratio=[3 / 4, 4 / 3])
    assert ours == tuple(theirs)


def test_grayscale_shift_reaches_all_25_offsets_and_resizes_any_shape():
    im = Image.new("L", (28, 28), 255)
    im.putpixel((14, 14), 0)
    t, rng = GrayscaleTransform(28, invert=True, augment=True), np.random.default_rng(7)
    offsets = set()
    for _ in range(400):
        (y, x), = t(im, rng)[0].nonzero().tolist()
        offsets.add((y - 14, x - 14))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert GrayscaleTransform(28, invert=False)(Image.new("L", (28, 40)), None).shape == (1, 28, 28)


def test_a_16_bit_grayscale_png_keeps_its_gray_levels(tmp_path):
    """PIL's convert() clips a 16-bit image ("I;16" / "I") to 255: a whole image turned white."""
    import numpy as np
    from PIL import Image
    from dropgrad_fewshot.data.base import open_image

    gray8 = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    for mode in ("RGB", "L"):
        got = np.asarray(open_image(tmp_path / "g16.png", mode)).astype(int)
        want = gray8[..., None].repeat(3, -1) if mode == "RGB" else gray8
        assert np.abs(got - want).max() <= 1, mode
    # Pillow opens a 16-bit PNG as "I;16" (older Pillow: "I", as it opens a 32-bit TIFF).
    Image.fromarray(gray8.astype(np.int32) * 257).save(tmp_path / "g32.tif")
    assert Image.open(tmp_path / "g32.tif").mode == "I"
    assert np.abs(np.asarray(open_image(tmp_path / "g32.tif", "L")).astype(int) - gray8).max() <= 1
