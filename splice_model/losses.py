"""Splice's objective (paper Eq. 4-7) and the scores that compare trials (docs/design.md, "Scores").

Like the released code, every loss term is a mean squared error. Features are the dicts returned by
`ViTFeatures`: `cls` (B, d), `keys` (B, N+1, d), `selfsim` (B, N+1, N+1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .vit import ViTFeatures, vit_resize

# Below this a baseline means the two images are (near-)duplicates and the score ratios are meaningless.
# Measured: a JPEG q95 re-save of the same picture scores 5e-6..4e-5, different pictures 0.05..1.5; a copy
# 10 levels brighter scores ~7e-3 and is still accepted.
MIN_BASELINE = 1e-3


class NearDuplicatePairError(ValueError):
    """The structure and appearance images are too alike for the scores to mean anything."""


def appearance_loss(output_cls: torch.Tensor, target_cls: torch.Tensor) -> torch.Tensor:
    """L_app, Eq. (5): the output's [CLS] token against the appearance image's."""
    return F.mse_loss(output_cls, target_cls)


def structure_loss(output_selfsim: torch.Tensor, target_selfsim: torch.Tensor) -> torch.Tensor:
    """L_structure, Eq. (6): self-similarity of the output's keys against the structure image's."""
    return F.mse_loss(output_selfsim, target_selfsim)


def identity_loss(output_keys: torch.Tensor, target_keys: torch.Tensor) -> torch.Tensor:
    """L_id, Eq. (7): keys of G(appearance) against the appearance image's keys."""
    return F.mse_loss(output_keys, target_keys)


def structure_score(output_selfsim: torch.Tensor, structure_selfsim: torch.Tensor) -> float:
    """MSE of self-similarities; 0 when the output has exactly the structure image's structure."""
    return F.mse_loss(output_selfsim.float(), structure_selfsim.float()).item()


def appearance_score(output_cls: torch.Tensor, appearance_cls: torch.Tensor) -> float:
    """1 - cosine similarity of [CLS] tokens; 0 when the appearance matches exactly."""
    return 1.0 - F.cosine_similarity(output_cls.float().flatten(), appearance_cls.float().flatten(), dim=0).item()


class PairScorer:
    """Scores outputs for one pair: holds the full images' ViT targets and the do-nothing baselines.

    Computed once per run with two no-grad ViT passes (the structure image batched with the appearance
    image resized to its size, then the appearance image at its own size).
    """

    def __init__(
        self,
        features: ViTFeatures,
        structure: torch.Tensor,
        appearance: torch.Tensor,
        vit_size: int = 224,
        vit_max_side: int = 480,
        vit_resample: str = "bilinear",
    ):
        self.features = features
        self.vit_size, self.vit_max_side, self.vit_resample = vit_size, vit_max_side, vit_resample
        appearance_as_structure = appearance[None]
        if appearance.shape[-2:] != structure.shape[-2:]:
            appearance_as_structure = F.interpolate(
                appearance_as_structure, size=structure.shape[-2:], mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        with torch.no_grad():
            full = self.vit(torch.cat([structure[None], appearance_as_structure]))
            self.structure_selfsim = full["selfsim"][:1]
            self.structure_cls = full["cls"][:1]
            self.appearance_cls = self.vit(appearance[None])["cls"]
        self.baselines = {
            "structure_base": structure_score(full["selfsim"][1:], self.structure_selfsim),
            "appearance_base": appearance_score(self.structure_cls, self.appearance_cls),
        }

    def vit(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """ViT features of full-range RGB images at any size (resized to the ViT's input size first)."""
        return self.features(vit_resize(images, self.vit_size, self.vit_max_side, self.vit_resample))

    def check_baselines(self, what: str = "the pair") -> None:
        """Raise NearDuplicatePairError when a baseline is ~0 (same image twice, or near-duplicates)."""
        tiny = [f"{name} = {max(value, 0.0):.1e}" for name, value in self.baselines.items() if value < MIN_BASELINE]
        if tiny:
            raise NearDuplicatePairError(
                f"{what}: the structure and appearance images are (near-)duplicates ({', '.join(tiny)}), so "
                f"no result can score better than copying an input; use two different images"
            )

    def score(self, output: torch.Tensor) -> dict[str, float]:
        """`structure_score`, `appearance_score` and `splice_score` of an output (3, H, W) or (1, 3, H, W)."""
        if output.dim() == 3:
            output = output[None]
        with torch.no_grad():
            features = self.vit(output)
        return self.score_features(features)

    def score_features(self, features: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scores from already computed output features (batch of one)."""
        structure = structure_score(features["selfsim"], self.structure_selfsim)
        appearance = appearance_score(features["cls"], self.appearance_cls)
        return {
            "structure_score": structure,
            "appearance_score": appearance,
            "splice_score": splice_score(structure, appearance, self.baselines),
        }


def splice_score(structure: float, appearance: float, baselines: dict[str, float]) -> float:
    """structure/structure_base + appearance/appearance_base: 1.0 for copying either input, lower is better."""
    return structure / max(baselines["structure_base"], MIN_BASELINE) + appearance / max(
        baselines["appearance_base"], MIN_BASELINE
    )
