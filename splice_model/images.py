"""Reading and writing images: every image enters as RGB float in [0, 1], shape (3, H, W).

Loading checks everything a user can get wrong (missing file, not an image, truncated file, odd modes,
tiny or gigantic images) and raises `ImageError` with one readable line instead of a PIL traceback.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard: refuse to decode images above this many pixels (about 16k x 16k).
MAX_PIXELS = 256_000_000

_CONVERTIBLE_MODES = {
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "1",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "I;16N",
    "F",
}


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what to do."""


def load_image(
    path: str | os.PathLike, max_side: int | None = None, min_side: int = 1, notes: list[str] | None = None
) -> torch.Tensor:
    """Read an image file as RGB float (3, H, W) in [0, 1].

    Non-RGB modes are converted (a line is appended to `notes` saying so); images whose long side exceeds
    `max_side` are downscaled with Lanczos (also noted). Raises `ImageError` for anything unusable.
    """
    image = open_image(path, min_side=min_side, notes=notes)
    image = downscale(image, max_side, notes=notes, name=str(path))
    return to_tensor(image)


def open_image(path: str | os.PathLike, min_side: int = 1, notes: list[str] | None = None) -> Image.Image:
    """Open, fully decode and convert an image file to an RGB PIL image (see `load_image`)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file; name a .png/.jpg file")
    if not path.is_file():
        # Opening a FIFO would block until something writes to it; a device or socket is no image either.
        raise ImageError(f"{path}: is not a regular file (a FIFO, socket or device); name a .png/.jpg file")
    # Our cap is the one that applies: PIL's own guard (a warning above MAX_IMAGE_PIXELS, an error above
    # twice that, 89.5 MP by default) is moved up to our cap for this call, and its warning is ignored
    # because the check below refuses the same images with their size in the message. Only above twice the
    # cap does PIL refuse first (DecompressionBombError, inside Image.open).
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(_too_many_pixels(path, f"{width}x{height}"))
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read; use PNG, JPEG, WebP, TIFF or BMP") from None
    except Image.DecompressionBombError as error:
        # PIL's message holds the pixel count ("Image size (N pixels) exceeds limit of ..."), not W x H.
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise ImageError(_too_many_pixels(path, f"{int(found.group(1)):,} pixels" if found else "it")) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: corrupt or truncated image ({error}); re-export or re-download it") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if getattr(image, "n_frames", 1) > 1 and notes is not None:
        notes.append(f"{path}: has {image.n_frames} frames; using the first")
    image = _to_rgb(image, path, notes)
    if min(image.size) < min_side:
        raise ImageError(
            f"{path}: {image.size[0]}x{image.size[1]} is too small; the short side must be at "
            f"least {min_side} pixels for the ViT"
        )
    return image


def _too_many_pixels(path: Path, size: str) -> str:
    return (
        f"{path}: {size} is over the {MAX_PIXELS:,}-pixel limit (decompression-bomb guard); downscale the "
        f"image before using it"
    )


def _to_rgb(image: Image.Image, path: Path, notes: list[str] | None) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode not in _CONVERTIBLE_MODES:
        raise ImageError(f"{path}: image mode {mode!r} is not supported; save it as 8-bit RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit grayscale: stretch the stored range to 8 bits instead of letting PIL clip it.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        if mode == "F":
            top = 1.0 if values.max() <= 1.0 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        converted = Image.fromarray(gray, mode="L").convert("RGB")
    elif mode in {"RGBA", "RGBa", "LA", "La", "PA"} or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not whatever colour they happen to store.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        converted = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        converted = image.convert("RGB")
    if notes is not None:
        notes.append(f"{path}: converted from mode {mode} to RGB")
    return converted


def downscale(
    image: Image.Image, max_side: int | None, notes: list[str] | None = None, name: str = "image"
) -> Image.Image:
    """Shrink so the long side is at most `max_side` (aspect kept, Lanczos); smaller images are untouched."""
    if max_side is None or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    if notes is not None:
        notes.append(
            f"{name}: downscaled from {image.size[0]}x{image.size[1]} to {size[0]}x{size[1]} (max side {max_side})"
        )
    return image.resize(size, Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) or (1, 3, H, W) in [0, 1] -> 8-bit RGB PIL image (rounded, clipped)."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = tensor.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(array.numpy(), mode="RGB")


def as_image_tensor(
    image: "torch.Tensor | Image.Image | str | os.PathLike", max_side: int | None = None
) -> torch.Tensor:
    """Accept a path, a PIL image or a (3, H, W) tensor and return the (3, H, W) float tensor."""
    if isinstance(image, torch.Tensor):
        tensor = image.float()
        if tensor.dim() == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise ImageError(f"image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        if max_side is not None and max(tensor.shape[1:]) > max_side:
            return to_tensor(downscale(to_pil(tensor), max_side))
        return tensor
    if isinstance(image, Image.Image):
        return to_tensor(downscale(_to_rgb(image, Path("<image>"), None), max_side))
    return load_image(image, max_side=max_side)
