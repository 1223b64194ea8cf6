"""Splice (semantic appearance transfer, CVPR 2022) as a small PyTorch library.

Read in this order: `config` (settings), `presets` and `vit` (DINO features), `generator` (U-Net),
`augment`, `losses` (objective and scores), `train` (the loop), `rendering` (checkpoints and full-resolution
output). The design, with the paper's equations, is in docs/design.md.

Names are imported on first use, so `import splice_model.config` (the CLI's help, search-space checks)
does not pay for torch and timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("CONFIG_FIELDS", "SpliceConfig"),
    "presets": ("VIT_PRESETS",),
    "generator": ("SpliceGenerator",),
    "images": ("ImageError", "load_image", "to_pil"),
    "losses": ("NearDuplicatePairError", "PairScorer"),
    "rendering": ("CheckpointError", "load_checkpoint", "render", "save_checkpoint"),
    "train": (
        "EvalEvent",
        "NonFiniteLossError",
        "SpliceTrainer",
        "StepEvent",
        "TrainResult",
        "load_features",
        "resolve_device",
        "train_pair",
    ),
    "vit": ("ViTFeatures", "WeightsError", "build_vit"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'splice_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
