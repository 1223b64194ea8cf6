"""DINO / DINOv2 ViT feature extractor: last-block [CLS] token, attention keys and their self-similarity.

Presets are a small table (name -> architecture, patch size, official weights URL). The model is timm's
`VisionTransformer`, which loads DINO's and DINOv2's checkpoints by key name; only the positional-embedding
interpolation is replaced by DINO's own (`dino_pos_embed`, which DINOv2 shares) so non-square inputs match
exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import urllib.error
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .presets import DEFAULT_VIT, VIT_PRESETS, VitPreset, not_dino_note  # noqa: F401 (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """ViT weights that cannot be found or read; the message says how to provide them."""


class ViTFeatures(nn.Module):
    """Frozen ViT that maps images to the last block's `cls`, `keys` and `selfsim` (docs/design.md, "ViT features").

    Input: RGB in [0, 1], (B, 3, H, W), already at ViT input size (see `vit_resize`); ImageNet
    normalisation happens here. Output dict: `cls` (B, d), `keys` (B, N+1, d), `selfsim` (B, N+1, N+1).
    """

    def __init__(self, model: VisionTransformer, preset_name: str):
        super().__init__()
        self.model = model
        self.preset_name = preset_name
        self.patch_size = model.patch_embed.patch_size[0]
        self.registers = model.register_tokens.shape[1] if hasattr(model, "register_tokens") else 0
        self.bf16_weights = model.patch_embed.proj.weight.dtype == torch.bfloat16
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        model.patch_embed.strict_img_size = False
        model.requires_grad_(False)
        model.eval()
        self._keys: torch.Tensor | None = None
        # The last block's keys come from its qkv projection: grab them there instead of recomputing.
        model.blocks[-1].attn.qkv.register_forward_hook(self._keep_keys)

    def _keep_keys(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        dim = output.shape[-1] // 3
        self._keys = output[..., dim : 2 * dim]  # qkv is laid out (3, heads, head_dim): keys, heads concatenated

    def train(self, mode: bool = True) -> "ViTFeatures":
        # Frozen means frozen: dropout/eval behaviour never follows the generator's train() calls.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # A ViT with bf16 matmul weights (build_vit's bf16_weights) computes under bf16 autocast wherever
        # it is called, so it is never fed fp32 inputs it cannot take.
        with torch.autocast(images.device.type, dtype=torch.bfloat16) if self.bf16_weights else nullcontext():
            return self._forward(images)

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        model = self.model
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        height, width = x.shape[-2:]
        # DINO's strided conv ignores the last H % p rows / W % p columns; timm's PatchEmbed would assert
        # instead, so drop them here (vit_resize's long side is rarely a multiple of the patch size).
        patch = self.patch_size
        tokens = model.patch_embed(x[..., : height // patch * patch, : width // patch * patch])
        tokens = torch.cat([model.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + dino_pos_embed(model.pos_embed, height, width, self.patch_size).to(tokens.dtype)
        if self.registers:
            # DINOv2 inserts its registers after CLS, after the position embeddings (they have none).
            registers = model.register_tokens.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        tokens = model.blocks(tokens)
        keys, self._keys = self._keys, None
        if self.registers:
            # Registers are not image patches: the structure terms compare CLS and the patches only.
            keys = torch.cat([keys[:, :1], keys[:, 1 + self.registers :]], dim=1)
        keys = keys.float()
        # Autocast puts matmuls on its bf16 list whatever their inputs' dtype: the self-similarity (Eq. 2)
        # that the structure loss and scores compare must stay fp32 (a few GFLOP), so autocast is off here.
        with torch.autocast(keys.device.type, enabled=False):
            normalized = F.normalize(keys, dim=-1)
            selfsim = normalized @ normalized.transpose(1, 2)
        return {"cls": tokens[:, 0].float(), "keys": keys, "selfsim": selfsim}


def dino_pos_embed(pos_embed: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Positional embedding for an H x W input, interpolated exactly as DINO's `interpolate_pos_encoding`.

    DINO adds 0.1 to the patch grid and passes a scale factor (not a size) to bicubic interpolation; the
    scale factor, not just the output size, changes the sampled positions, so this must match it.
    """
    num_patches = pos_embed.shape[1] - 1
    grid_h, grid_w = height // patch_size, width // patch_size
    # DINO's test compares the input's pixel sides (not the patch grid): 224x230 is still interpolated.
    if grid_h * grid_w == num_patches and height == width:
        return pos_embed
    side = math.sqrt(num_patches)
    dim = pos_embed.shape[-1]
    h0, w0 = grid_h + 0.1, grid_w + 0.1
    patch_pos = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), scale_factor=(h0 / side, w0 / side), mode="bicubic")
    patch_pos = patch_pos.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


def vit_resize(
    images: torch.Tensor, short_side: int = 224, max_side: int = 480, resample: str = "bilinear"
) -> torch.Tensor:
    """Resize (B, 3, H, W) so the short side is `short_side` and the long side at most `max_side`.

    Aspect kept, antialiased. `resample="bilinear"` is exactly torchvision's `Resize(short_side,
    max_size=max_side)` on tensors, which the released Splice code uses; "bicubic" is what the paper's text
    says. Computed in fp32 (under bf16 autocast too: the antialiased CPU kernels have no bf16 version, and
    the ViT's input is worth full precision); differentiable, so generator outputs can pass through it.
    """
    height, width = images.shape[-2:]
    size = vit_input_size(height, width, short_side, max_side)
    if size == (height, width):
        # fp32 like a resized input: a bf16 generator output of exactly this size would otherwise reach the
        # ViT in another dtype (and recompile a compiled ViT at a random step).
        return images.float()
    return F.interpolate(images.float(), size=size, mode=resample, align_corners=False, antialias=True)


def vit_input_size(height: int, width: int, short_side: int = 224, max_side: int = 480) -> tuple[int, int]:
    """(height, width) after `vit_resize`: torchvision's `Resize(short_side, max_size=max_side)` arithmetic,
    which the released Splice code uses (`_compute_resized_output_size`): the long side is truncated, not
    rounded, and when it exceeds `max_side` the short side becomes `int(max_side * short_side / long)`.
    Unlike torchvision, `max_side == short_side` is allowed (the long side is then capped at it), and a side
    never shrinks to 0."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_side, int(short_side * long / short)
    if new_long > max_side:
        new_short, new_long = int(max_side * new_short / new_long), max_side
    new_short = max(1, new_short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def build_vit(
    preset_name: str = DEFAULT_VIT, weights: str | os.PathLike | None = None, *, bf16_weights: bool = False
) -> ViTFeatures:
    """Build a preset's ViT on the CPU with its weights, frozen and in eval mode.

    Weights come from `weights` (a local DINO-format checkpoint) when given; otherwise DINO presets use
    the official checkpoint through torch hub's cache (downloaded once), and random presets are seeded.

    `bf16_weights`: the Linear and patch-embedding weights in bf16 (LayerNorms and embeddings stay fp32),
    for use under bf16 autocast only. Autocast caches its casts only for weights that require grad, so a
    frozen fp32 ViT is re-cast on every Linear call (about 100 extra kernels and 2 bytes per parameter of
    traffic per pass); cast once here, the features are bit-identical. Such a ViT always computes under bf16
    autocast, also where its caller has none: keep the default for exact fp32 features.
    """
    if preset_name not in VIT_PRESETS:
        known = ", ".join(VIT_PRESETS)
        raise ValueError(f"unknown ViT preset {preset_name!r}; known presets: {known}")
    preset = VIT_PRESETS[preset_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.random_seed)
        model = vit_architecture(preset)
    if weights is not None:
        state = read_dino_checkpoint(weights)
    elif preset.url is not None:
        state = read_dino_checkpoint(official_checkpoint(preset_name))
    else:
        state = None
    if state is not None:
        _load_state(model, state, source=str(weights or preset.url))
    if bf16_weights:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.to(torch.bfloat16)
    return ViTFeatures(model, preset_name)


def vit_architecture(preset: VitPreset) -> VisionTransformer:
    """The preset's network with fresh weights, as DINO's / DINOv2's own code builds it.

    DINOv2 adds LayerScale (`blocks.N.ls1.gamma`, `ls2.gamma`), the 518-px grid's 37 x 37 position
    embeddings, and, in the _reg variants, `register_tokens` (1, R, d): kept under DINOv2's own key name
    (and not as timm's `reg_token`, whose position embeddings DINOv2 does not have) so that checkpoints
    load by key name.
    """
    model = VisionTransformer(
        img_size=preset.img_size,
        patch_size=preset.patch_size,
        embed_dim=preset.embed_dim,
        depth=preset.depth,
        num_heads=preset.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        init_values=1e-5 if preset.layer_scale else None,
        num_classes=0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    if preset.register_tokens:
        model.register_tokens = nn.Parameter(torch.randn(1, preset.register_tokens, preset.embed_dim) * 0.02)
    return model


def read_dino_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a DINO-format checkpoint: a plain state dict, or a training checkpoint holding one under
    `teacher`/`student`/`model`/`state_dict` with `module.`/`backbone.` prefixes (as DINO saves them).

    Loaded with `weights_only=True`: a checkpoint cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such ViT weights file; pass the path of a DINO .pth checkpoint")
    try:
        # DINO's training checkpoints (checkpoint.pth) also store its argparse.Namespace under "args":
        # a plain attribute bag, safe to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad files; all mean the same to a user
        raise WeightsError(
            f"{path}: cannot read it as a PyTorch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); pass a DINO .pth file"
        ) from None
    for key in ("teacher", "student", "model", "state_dict"):
        if isinstance(checkpoint, dict) and key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: not a state dict; pass a DINO .pth checkpoint")
    state = {}
    for name, tensor in checkpoint.items():
        for prefix in ("module.", "backbone."):
            name = name.removeprefix(prefix)
        state[name] = tensor
    return state


def hub_cache_path(preset_name: str) -> Path | None:
    """Where torch hub's cache keeps the preset's official checkpoint (whether or not it is there yet);
    None for the random presets."""
    url = VIT_PRESETS[preset_name].url
    return None if url is None else Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def official_checkpoint(preset_name: str) -> Path:
    """The preset's official checkpoint in torch hub's cache, downloaded there first when missing (30 s
    network timeout); WeightsError saying how to provide the file when it cannot be had."""
    url = VIT_PRESETS[preset_name].url
    cached = hub_cache_path(preset_name)
    if not cached.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)  # a fresh hub dir has no checkpoints/ folder yet
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise WeightsError(
                f"ViT weights for {preset_name} are not in torch hub's cache ({cached}) and could not be "
                f"downloaded ({error}). Download {url} on a machine with internet and pass the file with "
                f"--vit-weights PATH (or `vit_weights: PATH` in the search space), or copy it to {cached}."
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    return cached


def _load_state(model: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    # DINO checkpoints carry no classifier head, and DINOv2's `mask_token` serves only its masked
    # pretraining, never features; anything else missing or extra means a wrong file.
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith("head.") and k != "mask_token")
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise WeightsError(
            f"{source}: does not match this ViT preset ({detail}); pick the preset the "
            f"checkpoint was trained as (e.g. dino_vits8 for dino_deitsmall8_pretrain.pth, dinov2_vits14_reg for "
            f"dinov2_vits14_reg4_pretrain.pth)"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
