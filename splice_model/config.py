"""The one place where a Splice training's settings and their defaults live.

Defaults reproduce the paper (Sec. 3.3, A.3, A.4) and the authors' released code; docs/design.md lists them.
Every field is a plain value so a config round-trips through JSON, MLflow params and checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .presets import VIT_PRESETS


@dataclass
class SpliceConfig:
    """Settings of one Splice training run.

    The loss weights, learning rate and augmentation strengths are what splice-tune searches; the rest
    fixes the run (ViT, resolution, length, seed).
    """

    # Loss, Eq. (4): L = loss_scale * [L_app + alpha * L_structure + beta * L_id]
    alpha: float = 0.1
    beta: float = 0.1
    loss_scale: float = 10.0
    # Optimiser (A.3): Adam, constant lr, betas (0.0, 0.99) as in the released code
    lr: float = 2e-3
    steps: int = 2000
    # The un-augmented full structure image joins the batch every this many steps (A.3)
    full_image_every: int = 75
    # Scores on the full images every this many steps, and always after the last step
    eval_every: int = 100
    # Augmentations (A.4)
    crop_min_cover: float = 0.95
    flip_p: float = 0.5
    jitter_p: float = 0.5
    jitter_strength: float = 1.0  # scales (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1)
    blur_p: float = 0.5  # the paper's value; the released code uses 0.2
    blur_sigma_max: float = 2.0  # sigma ~ U(0.1, blur_sigma_max)
    # Images: both are downscaled so their long side is at most this (None keeps them as given)
    max_side: int | None = 512
    # ViT: preset name, optional local weights file, input size (short side, long side cap)
    vit: str = "dino_vitb8"
    vit_weights: str | None = None
    vit_size: int = 224
    vit_max_side: int = 480
    # The ViT input's resize filter: "bilinear" (antialiased, what the released code's torchvision Resize
    # does, and what produced the published results) or "bicubic" (what the paper's text says)
    vit_resample: str = "bilinear"
    # A held-out judge: a second ViT preset (and optional local weights) that also scores every eval
    # (judge_structure_score, judge_appearance_score, judge_splice_score). The generator never trains
    # against it, so its scores are the search's held-out measure. None: no judge.
    judge_vit: str | None = None
    judge_vit_weights: str | None = None
    seed: int = 0
    # Hardware: "auto" picks CUDA when present. amp: bf16 autocast; "auto" uses it where the device computes
    # bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), True forces it, False gives exact fp32.
    # compile: torch.compile of the ViT (meant for CUDA).
    device: str = "auto"
    amp: bool | str = "auto"
    compile: bool = False

    def replace(self, **changes: Any) -> "SpliceConfig":
        """A copy with some fields changed (unknown names raise TypeError)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SpliceConfig":
        """Build from a dict, ignoring keys this version does not know (older/newer checkpoints)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> list[str]:
        """Problems with the values, one readable line each ("field: what is wrong"); empty when fine."""
        problems = []
        positive = ["loss_scale", "lr", "steps", "full_image_every", "eval_every", "vit_size", "vit_max_side"]
        for name in positive:
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)!r}")
        for name in ["alpha", "beta", "jitter_strength"]:
            if not getattr(self, name) >= 0:
                problems.append(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        for name in ["flip_p", "jitter_p", "blur_p"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: is a probability, must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 < self.crop_min_cover <= 1.0:
            problems.append(f"crop_min_cover: must be in (0, 1], got {self.crop_min_cover!r}")
        if not self.blur_sigma_max >= 0.1:
            problems.append(f"blur_sigma_max: must be >= 0.1 (sigma ~ U(0.1, max)), got {self.blur_sigma_max!r}")
        if self.max_side is not None and self.max_side < 16:
            problems.append(f"max_side: must be >= 16 or null, got {self.max_side!r}")
        if self.vit_resample not in VIT_RESAMPLE:
            problems.append(f"vit_resample: must be one of {', '.join(VIT_RESAMPLE)}, got {self.vit_resample!r}")
        if not (isinstance(self.amp, bool) or self.amp == "auto"):
            problems.append(f"amp: must be auto, true (bf16 autocast) or false (exact fp32), got {self.amp!r}")
        if self.vit_max_side < self.vit_size:
            problems.append(f"vit_max_side: must be >= vit_size ({self.vit_size}), got {self.vit_max_side!r}")
        if self.vit not in VIT_PRESETS:
            problems.append(f"vit: unknown ViT preset {self.vit!r}; choose one of {', '.join(VIT_PRESETS)}")
        problems += self._judge_problems()
        device_problem = _device_problem(self.device)
        if device_problem:
            problems.append(f"device: {device_problem}")
        return problems

    def _judge_problems(self) -> list[str]:
        if self.judge_vit is None:
            if self.judge_vit_weights is not None:
                return ["judge_vit_weights: is set but judge_vit is not; name the judge's preset in judge_vit"]
            return []
        if self.judge_vit not in VIT_PRESETS:
            return [f"judge_vit: unknown ViT preset {self.judge_vit!r}; choose one of {', '.join(VIT_PRESETS)}"]
        if self.judge_vit == self.vit and self.judge_vit_weights == self.vit_weights:
            return [
                f"judge_vit: is the training ViT ({self.vit}), so it would judge what the generator was trained "
                f"to match; choose another preset (e.g. dino_vits16 to judge a dino_vitb8 training)"
            ]
        return []


def _device_problem(device: object) -> str | None:
    """Why `device` is not "auto" or a device string torch parses (cpu, cuda, cuda:1, mps); None if it is.

    Only the spelling is checked: whether this machine has that device is the caller's business (a search
    driver may lack the GPUs its cluster's nodes have).
    """
    if device == "auto":
        return None
    if isinstance(device, str) and device:
        import torch

        try:
            torch.device(device)
            return None
        except (RuntimeError, ValueError):
            pass
    return f"{device!r} is not a device; use auto, cpu, cuda, cuda:N (a GPU index) or mps"


VIT_RESAMPLE = ("bilinear", "bicubic")

CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SpliceConfig))
