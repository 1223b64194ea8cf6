"""The ViT presets: a small table of name -> architecture, patch size and official weights (DINO, DINOv2).

Kept apart from `vit.py` so that naming and checking presets (the CLI's help, search-space validation)
never imports torch or timm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VitPreset:
    """Architecture and weights source of one named ViT."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    url: str | None = None  # official DINO/DINOv2 checkpoint; None = seeded random weights
    random_seed: int = 0
    description: str = ""
    # DINOv2's additions: the pretraining grid (518 px = 37 x 37 patches of 14), LayerScale in every block,
    # and register tokens (the _reg variants), which are not image patches and stay out of the structure terms.
    img_size: int = 224
    layer_scale: bool = False
    register_tokens: int = 0


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
VIT_PRESETS: dict[str, VitPreset] = {
    "dino_vits16": VitPreset(
        384,
        12,
        6,
        16,
        f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        description="DINO ViT-S/16 (21M params)",
    ),
    "dino_vits8": VitPreset(
        384,
        12,
        6,
        8,
        f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
        description="DINO ViT-S/8 (21M params)",
    ),
    "dino_vitb16": VitPreset(
        768,
        12,
        12,
        16,
        f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        description="DINO ViT-B/16 (85M params)",
    ),
    "dino_vitb8": VitPreset(
        768,
        12,
        12,
        8,
        f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
        description="DINO ViT-B/8 (85M params), the paper's choice",
    ),
    **{
        f"dinov2_vit{size}14{'_reg' if registers else ''}": VitPreset(
            embed_dim,
            depth,
            num_heads,
            14,
            f"{_DINOV2}/dinov2_vit{size}14/dinov2_vit{size}14{'_reg4' if registers else ''}_pretrain.pth",
            description=f"DINOv2 ViT-{size.upper()}/14{' with 4 registers' if registers else ''} ({params})",
            img_size=518,
            layer_scale=True,
            register_tokens=4 if registers else 0,
        )
        for size, embed_dim, depth, num_heads, params in (
            ("s", 384, 12, 6, "22M params"),
            ("b", 768, 12, 12, "86M params"),
            ("l", 1024, 24, 16, "304M params"),
        )
        for registers in (False, True)
    },
    # Not DINO: random weights, for tests and offline demos. Results from it show the machinery, not Splice.
    "random_tiny8": VitPreset(
        96,
        4,
        3,
        8,
        None,
        random_seed=0,
        description="NOT DINO: 4-block ViT with seeded random weights, for tests/demos",
    ),
    # A second random network with other patches and other weights: the held-out judge of tests and demos.
    "random_tiny16": VitPreset(
        96,
        4,
        3,
        16,
        None,
        random_seed=1,
        description="NOT DINO: random_tiny8's shape with 16-px patches and other seeded weights (a test judge)",
    ),
}
DEFAULT_VIT = "dino_vitb8"


def not_dino_note(preset_name: str) -> str | None:
    """One line to show with results of a random-weight preset (not DINO); None for DINO presets."""
    preset = VIT_PRESETS.get(preset_name)
    if preset is None or preset.url is not None:
        return None
    return f"NOT DINO (random-weight ViT {preset_name}): these results show the machinery working, not Splice's quality"
