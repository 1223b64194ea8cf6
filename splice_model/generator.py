"""The Splice generator G_theta (paper A.1): a 5-level U-Net with 1x1-conv skip branches.

Encoder channels 3 -> 16 -> 32 -> 64 -> 128 -> 128, each level a strided 3x3 conv and a 3x3 conv, each
followed by BatchNorm + LeakyReLU; every level's input also goes through a 1x1 conv whose output is
concatenated into the matching decoder level; the decoder mirrors the encoder; a final 1x1 conv + sigmoid
gives RGB. Fully convolutional: any H x W renders (padded to a multiple of 32, at least 64, then cropped back).

It starts as the released code's does (docs/design.md, "Generator"): zero-padded convs, conv weights from
xavier_normal_(gain=0.02) with zero bias, BatchNorm weights from N(1, 0.02) with zero bias, so its first
output is a flat grey (sigmoid of ~0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_CHANNELS = (16, 32, 64, 128, 128)
SKIP_CHANNELS = 4  # the released code's 1x1 skip width
DOWNSAMPLING = 2 ** len(ENCODER_CHANNELS)
INIT_GAIN = 0.02  # the released config's init_type: xavier, init_gain: 0.02


def _norm(channels: int) -> nn.BatchNorm2d:
    # Batch statistics always, never running averages: training sees one image per forward (batch 1),
    # and rendering then behaves exactly as in training, at any resolution, with no stored state.
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _conv_block(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        # Zero padding, as the released code: it also keeps channels-last on CUDA (a pad kernel would not).
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2),
        _norm(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class SpliceGenerator(nn.Module):
    """U-Net mapping an RGB image in [0, 1], (B, 3, H, W), to an RGB image of the same size."""

    def __init__(self, channels: tuple[int, ...] = ENCODER_CHANNELS, skip_channels: int = SKIP_CHANNELS):
        super().__init__()
        inputs = (3, *channels[:-1])
        self.down = nn.ModuleList(
            nn.Sequential(_conv_block(c_in, c_out, 3, stride=2), _conv_block(c_out, c_out, 3))
            for c_in, c_out in zip(inputs, channels)
        )
        self.skip = nn.ModuleList(_conv_block(c_in, skip_channels, 1) for c_in in inputs)
        # Decoder level i takes level i's skip plus the upsampled output of level i+1 (or the bottleneck).
        self.up = nn.ModuleList(
            nn.Sequential(
                _norm(skip_channels + c_deeper),
                _conv_block(skip_channels + c_deeper, c_out, 3),
                _conv_block(c_out, c_out, 1),
            )
            for c_deeper, c_out in zip((*channels[1:], channels[-1]), channels)
        )
        self.to_rgb = nn.Conv2d(channels[0], 3, 1)
        self.apply(_released_init)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        x = _pad_to_multiple(image, DOWNSAMPLING, min_side=2 * DOWNSAMPLING)
        skips = []
        for down, skip in zip(self.down, self.skip):
            skips.append(skip(x))
            x = down(x)
        for up, skip in zip(reversed(self.up), reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([skip, x], dim=1))
        return torch.sigmoid(self.to_rgb(x))[..., :height, :width]


def widest_activation(height: int, width: int, channels: tuple[int, ...] = ENCODER_CHANNELS) -> int:
    """Elements of the largest tensor the generator makes for one H x W image: the first decoder level's
    input at the padded full resolution (its skip concatenated with the upsampled level below)."""
    padded_h = max(height + -height % DOWNSAMPLING, 2 * DOWNSAMPLING)
    padded_w = max(width + -width % DOWNSAMPLING, 2 * DOWNSAMPLING)
    return (SKIP_CHANNELS + channels[1]) * padded_h * padded_w


def _released_init(module: nn.Module) -> None:
    # The released code's init: small conv weights make every conv's output start near 0 and set the scale
    # Adam's constant lr moves them on (BatchNorm follows every conv, so that scale shapes the training).
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight, gain=INIT_GAIN)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, INIT_GAIN)
        nn.init.zeros_(module.bias)


def _pad_to_multiple(image: torch.Tensor, multiple: int, min_side: int = 0) -> torch.Tensor:
    # min_side: an input padded to 32 x 32 would reach the bottleneck as 1 x 1, where BatchNorm's batch
    # statistics (batch of one) are undefined and torch raises; 64 leaves at least 2 x 2 there.
    height, width = image.shape[-2:]
    pad_h = max(-height % multiple, min_side - height)
    pad_w = max(-width % multiple, min_side - width)
    if pad_h == 0 and pad_w == 0:
        return image
    # Reflection keeps the border statistics natural; it needs the pad smaller than the image side.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
