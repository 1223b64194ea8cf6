"""Splice (semantic appearance transfer, CVPR 2022) as a small PyTorch library.

Read in this order: `config` (settings), `vit` (DINO features), `generator` (U-Net), `augment`,
`losses` (objective and scores), `train` (the loop), `render` (checkpoints and full-resolution output).
"""

from .config import CONFIG_FIELDS, SpliceConfig
from .generator import SpliceGenerator
from .images import ImageError, load_image, to_pil
from .losses import NearDuplicatePairError, PairScorer
from .render import CheckpointError, load_checkpoint, render, save_checkpoint
from .train import (EvalEvent, NonFiniteLossError, SpliceTrainer, StepEvent, TrainResult, load_features,
                    resolve_device, train_pair)
from .vit import VIT_PRESETS, ViTFeatures, WeightsError, build_vit

__all__ = [
    "CONFIG_FIELDS", "SpliceConfig", "SpliceGenerator", "ImageError", "load_image", "to_pil",
    "NearDuplicatePairError", "PairScorer", "CheckpointError", "load_checkpoint", "render", "save_checkpoint",
    "EvalEvent", "NonFiniteLossError", "SpliceTrainer", "StepEvent", "TrainResult", "load_features",
    "resolve_device", "train_pair", "VIT_PRESETS", "ViTFeatures", "WeightsError", "build_vit",
]
