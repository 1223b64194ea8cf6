"""Checks on what `train` and `best` will write (the image, the checkpoint) and at what size.

They run with the other input checks, before any training or download, so a bad path costs nothing.
Each returns one line per problem, for `BadInput`.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MIN_SIDE = 16  # the smallest image side training accepts (`load_image(min_side=16)`), so also the smallest render


def image_problems(out: Path) -> list[str]:
    """Why the image `--out` could not be written once the work is done; [] when it can."""
    if out.is_dir():
        return [f"--out {out}: is a directory; name an image file such as {out / 'out.png'}"]
    problems = []
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        problems.append(f"--out {out}: use an image file name ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
    if not out.parent.is_dir():
        problems.append(f"--out {out}: folder {out.parent} does not exist; create it first")
    return problems


def checkpoint_problems(checkpoint: Path | None, out: Path) -> list[str]:
    """Why the generator checkpoint could not be written beside the image `out`; [] when it can.

    `checkpoint` is the `--checkpoint` flag; None means its default, `out` with suffix .pt, whose folder
    `image_problems` has already checked.
    """
    if checkpoint is None:
        default = out.with_suffix(".pt")
        if default.is_dir():
            return [f"--out {out}: the checkpoint's default path {default} is a directory; pass --checkpoint FILE"]
        return []
    if checkpoint.is_dir():
        return [f"--checkpoint {checkpoint}: is a directory; name a file such as {checkpoint / 'generator.pt'}"]
    if not checkpoint.parent.is_dir():
        return [f"--checkpoint {checkpoint}: folder {checkpoint.parent} does not exist; create it first"]
    if checkpoint.resolve() == out.resolve():
        return [f"--checkpoint {checkpoint}: is the same file as --out; name another file"]
    return []


def at_least(flag: str, value: int | None, minimum: int) -> list[str]:
    """The problem with a numeric flag below `minimum` ("--max-side: must be >= 16, got 0"); [] when it is
    not given (None) or fine."""
    if value is not None and value < minimum:
        return [f"{flag}: must be >= {minimum}, got {value}"]
    return []
