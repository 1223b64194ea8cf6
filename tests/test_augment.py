"""Augmentations (paper A.4): reproducible from the seed, within the configured ranges, and each switch
really switches its step off."""

from __future__ import annotations

import math

import pytest
import torch

from splice_model import SpliceConfig
from splice_model.augment import (
    augment_appearance,
    augment_structure,
    color_jitter,
    gaussian_blur,
    random_flip,
    random_square_crop,
)
from splice_model.images import to_tensor

ALL_ON = SpliceConfig(flip_p=0.5, jitter_p=1.0, blur_p=1.0)
ALL_OFF = SpliceConfig(flip_p=0.0, jitter_p=0.0, blur_p=0.0)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 40, 52, generator=torch.Generator().manual_seed(0))


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def find_crop(crop: torch.Tensor, image: torch.Tensor) -> tuple[int, int] | None:
    """(top, left) where `crop` sits in `image` pixel for pixel, or None."""
    side_h, side_w = crop.shape[-2:]
    for top in range(image.shape[-2] - side_h + 1):
        for left in range(image.shape[-1] - side_w + 1):
            if torch.equal(image[..., top : top + side_h, left : left + side_w], crop):
                return top, left
    return None


def draws(step, image: torch.Tensor, seed: int, count: int = 8) -> list[torch.Tensor]:
    """`count` successive outputs of step(image, generator) from one generator seeded with `seed`."""
    generator = rng(seed)
    return [step(image, generator) for _ in range(count)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("augment", [augment_structure, augment_appearance])
def test_same_seed_same_augmentation_different_seed_differs(image, augment):
    step = lambda x, g: augment(x, ALL_ON, g)  # noqa: E731
    assert same(draws(step, image, 1), draws(step, image, 1))
    assert not same(draws(step, image, 1), draws(step, image, 2))


@pytest.mark.parametrize(
    "step",
    [
        lambda x, g: random_square_crop(x, 0.5, g),
        lambda x, g: random_flip(x, 0.5, g),
        lambda x, g: color_jitter(x, 1.0, g),
        lambda x, g: gaussian_blur(x, 2.0, g),
    ],
    ids=["crop", "flip", "jitter", "blur"],
)
def test_each_step_is_seeded(image, step):
    assert same(draws(step, image, 5), draws(step, image, 5))
    assert not same(draws(step, image, 5), draws(step, image, 6))


@pytest.mark.parametrize("height, width, min_cover", [(40, 52, 0.9), (56, 72, 0.95), (64, 40, 0.95), (50, 50, 1.0)])
def test_crop_side_range(height, width, min_cover):
    """Side in [min_cover * H, H], never wider than the image; over many draws both ends are reached."""
    image = torch.zeros(3, height, width)
    generator = rng(0)
    sides = set()
    for _ in range(300):
        crop = random_square_crop(image, min_cover, generator)
        assert crop.shape[-2] == crop.shape[-1], "crops are square"
        sides.add(crop.shape[-1])
    low, high = math.ceil(min_cover * height - 1e-9), height
    if width >= high:
        assert min(sides) >= min_cover * height and max(sides) <= high
        assert sides == set(range(low, high + 1)), "every allowed side occurs, full height included"
    else:  # narrower than the minimum side: the width is the cap
        assert sides == {width}


def test_flip_probability_extremes(image):
    """flip_p = 1 always mirrors, flip_p = 0 never: with one seed the two results are each other's mirror."""
    never = draws(lambda x, g: augment_appearance(x, ALL_OFF, g), image, 3, count=5)
    always = draws(lambda x, g: augment_appearance(x, ALL_OFF.replace(flip_p=1.0), g), image, 3, count=5)
    for a, b in zip(never, always):
        assert torch.equal(a.flip(-1), b)
        assert find_crop(a, image) is not None


def test_structure_steps_off_leave_only_crop(image):
    """jitter_p = blur_p = flip_p = 0: the structure crop is an exact window of the input."""
    generator = rng(4)
    for _ in range(10):
        assert find_crop(augment_structure(image, ALL_OFF, generator), image) is not None


def test_jitter_and_blur_switched_on_change_pixels(image):
    """The other direction: with p = 1 the output is not a plain window any more (the switches matter)."""
    jitter_only = ALL_OFF.replace(jitter_p=1.0)
    blur_only = ALL_OFF.replace(blur_p=1.0)
    assert find_crop(augment_structure(image, jitter_only, rng(7)), image) is None
    assert find_crop(augment_structure(image, blur_only, rng(7)), image) is None


def test_zero_strength_jitter_is_identity(image):
    torch.testing.assert_close(color_jitter(image, 0.0, rng(0)), image, atol=1e-6, rtol=0)


def test_appearance_keeps_colours(appearance_image):
    """Appearance augmentation may only crop and flip, with every other setting at its most aggressive:
    its output is a mirrored-or-not window of the input, pixel for pixel."""
    image = to_tensor(appearance_image)
    aggressive = SpliceConfig(flip_p=0.5, jitter_p=1.0, jitter_strength=3.0, blur_p=1.0, blur_sigma_max=5.0)
    generator = rng(0)
    flipped = 0
    for _ in range(12):
        out = augment_appearance(image, aggressive, generator)
        if find_crop(out, image) is None:
            assert find_crop(out.flip(-1), image) is not None, "not a window of the input"
            flipped += 1
    assert 0 < flipped < 12, "flip_p = 0.5 should flip some crops and not others"


def test_outputs_stay_in_range(image):
    """Strong jitter must not push pixels outside [0, 1] (up to float rounding of the HSV round trip)."""
    strong = ALL_ON.replace(jitter_strength=2.0, blur_sigma_max=4.0)
    for out in draws(lambda x, g: augment_structure(x, strong, g), image, 9, count=20):
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
