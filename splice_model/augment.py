"""Per-step augmentations of the training pair (paper A.4), with every strength a parameter.

All randomness comes from the `torch.Generator` passed in, so the same seed gives the same crops, flips,
jitters and blurs on any machine.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from .config import SpliceConfig

# ColorJitter strengths of the paper/code at jitter_strength = 1: brightness, contrast, saturation, hue.
JITTER_BASE = (0.4, 0.4, 0.2, 0.1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_square_crop(image: torch.Tensor, min_cover: float, generator: torch.Generator) -> torch.Tensor:
    """Square crop of side U(min_cover * H, H), capped at the width, at a uniform position.

    The side is drawn uniformly among the integers in [ceil(min_cover * H), H]: flooring a continuous draw
    would go up to a pixel below min_cover * H and (almost) never keep the full height.
    """
    height, width = image.shape[-2:]
    low = min(max(math.ceil(round(min_cover * height, 6)), 1), height)
    side = int(torch.randint(low, height + 1, (), generator=generator))
    side = max(min(side, width), 1)
    top = int(torch.randint(0, height - side + 1, (), generator=generator))
    left = int(torch.randint(0, width - side + 1, (), generator=generator))
    return image[..., top : top + side, left : left + side]


def random_flip(image: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    return image.flip(-1) if torch.rand((), generator=generator).item() < p else image


def color_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(0.4, 0.4, 0.2, 0.1) scaled by `strength`: factors drawn, order shuffled."""
    brightness, contrast, saturation, hue = (s * strength for s in JITTER_BASE)
    hue = min(hue, 0.5)
    adjustments = [
        (TF.adjust_brightness, _uniform(generator, max(0.0, 1 - brightness), 1 + brightness)),
        (TF.adjust_contrast, _uniform(generator, max(0.0, 1 - contrast), 1 + contrast)),
        (TF.adjust_saturation, _uniform(generator, max(0.0, 1 - saturation), 1 + saturation)),
        (TF.adjust_hue, _uniform(generator, -hue, hue)),
    ]
    for index in torch.randperm(len(adjustments), generator=generator).tolist():
        adjust, factor = adjustments[index]
        image = adjust(image, factor)
    return image


def gaussian_blur(image: torch.Tensor, sigma_max: float, generator: torch.Generator) -> torch.Tensor:
    """3x3 Gaussian blur with sigma ~ U(0.1, sigma_max)."""
    sigma = _uniform(generator, 0.1, sigma_max)
    return TF.gaussian_blur(image, kernel_size=[3, 3], sigma=[sigma, sigma])


def augment_structure(image: torch.Tensor, config: SpliceConfig, generator: torch.Generator) -> torch.Tensor:
    """Structure image: crop, flip, colour jitter and blur, each with the config's probability/strength."""
    image = random_square_crop(image, config.crop_min_cover, generator)
    image = random_flip(image, config.flip_p, generator)
    if torch.rand((), generator=generator).item() < config.jitter_p:
        image = color_jitter(image, config.jitter_strength, generator)
    if torch.rand((), generator=generator).item() < config.blur_p:
        image = gaussian_blur(image, config.blur_sigma_max, generator)
    return image


def augment_appearance(image: torch.Tensor, config: SpliceConfig, generator: torch.Generator) -> torch.Tensor:
    """Appearance image: the same crop rule and flip only (jitter would change the appearance to match)."""
    image = random_square_crop(image, config.crop_min_cover, generator)
    return random_flip(image, config.flip_p, generator)
