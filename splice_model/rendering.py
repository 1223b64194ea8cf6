"""Generator checkpoints and full-resolution rendering.

A checkpoint is a plain dict (format tag, generator weights, the run's config, step, scores) readable with
`torch.load(weights_only=True)`, so loading one never runs code.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from .config import SpliceConfig
from .generator import SpliceGenerator, widest_activation
from .images import as_image_tensor

CHECKPOINT_FORMAT = "splice-tune-generator/1"


class CheckpointError(ValueError):
    """A generator checkpoint that cannot be read; the message names the file."""


def save_checkpoint(
    path: str | os.PathLike,
    generator: SpliceGenerator,
    config: SpliceConfig,
    step: int,
    scores: dict[str, float] | None = None,
) -> Path:
    """Write the generator's weights with the config and scores that produced them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "generator": state,
            "config": config.to_dict(),
            "step": int(step),
            "scores": dict(scores or {}),
        },
        path,
    )
    return path


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[SpliceGenerator, SpliceConfig, dict]:
    """Read a checkpoint written by `save_checkpoint`: (generator in eval mode, its config, metadata)."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as error:  # corrupt files surface as several exception types
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a splice-tune generator checkpoint")
    generator = SpliceGenerator()
    generator.load_state_dict(checkpoint["generator"])
    generator.to(device).eval()
    meta = {"step": checkpoint["step"], "scores": checkpoint["scores"]}
    return generator, SpliceConfig.from_dict(checkpoint["config"]), meta


# CUDA's pad and conv kernels index with 32 bits: a tensor of 2**31 elements or more fails there (a ~60 MP
# output), while the CPU renders it.
CUDA_MAX_ELEMENTS = 2**31 - 1


def render_device(device: torch.device, height: int, width: int) -> torch.device:
    """Where an H x W render can run: `device`, or the CPU when the generator's widest tensor would exceed
    what CUDA's kernels can index."""
    if device.type == "cuda" and widest_activation(height, width) > CUDA_MAX_ELEMENTS:
        return torch.device("cpu")
    return device


def render(generator: SpliceGenerator, image, max_side: int | None = None) -> torch.Tensor:
    """Run the generator on a whole image (path, PIL image or (3, H, W) tensor) at full resolution.

    `max_side` caps the long side (the image is downscaled first); the result is (3, H, W) in [0, 1] on
    the CPU, the same size as the (capped) input. An image too large for CUDA's kernels (`render_device`)
    renders on the CPU with a copy of the generator.
    """
    device = next(generator.parameters()).device
    tensor = as_image_tensor(image, max_side)
    target = render_device(device, *tensor.shape[-2:])
    if target != device:
        generator = copy.deepcopy(generator).to(target)
    with torch.no_grad():
        return generator(tensor.to(target)[None])[0].float().cpu()
