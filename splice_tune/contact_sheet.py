"""The report's contact sheet: a pair's two inputs, then every trial's output with its scores under it."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from splice_tune import results
from splice_tune.formatting import number

# Contact sheet layout (pixels)
THUMB = (200, 150)
PAD = 10
LINE = 16
LABEL_LINES = 4
MAX_COLUMNS = 6
WINNER_COLOUR = (230, 170, 0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def draw(
    inputs: list[tuple[Image.Image, str]], rows: list, winner, title: str, path: Path, metric: str = "splice_score"
) -> Path:
    """Write the sheet to `path`: the `inputs` (image, role), then each trial row (the report's `TrialRow`,
    ordered as given, by `metric`) that has an image, with its state and scores (the judge's splice_score
    too, when it has one); the `winner` row framed in gold."""
    tiles = [(image, [f"{role} (input)", f"{image.width}x{image.height}"], False) for image, role in inputs]
    for row in rows:
        if row.image is None:
            continue  # failed before its first eval: nothing to show
        at_step = f" @ step {row.step}" if row.step is not None and row.state != results.FINISHED else ""
        scores = row.scores
        lines = [
            f"trial {row.name}",
            f"{row.state}{at_step}",
            _splice_line(scores),
            f"struct {number(scores.get('structure_score'))}  app {number(scores.get('appearance_score'))}",
        ]
        tiles.append((row.image, lines, row is winner))
    columns = min(len(tiles), MAX_COLUMNS)
    cell = (THUMB[0] + PAD, THUMB[1] + LABEL_LINES * LINE + 2 * PAD)
    header = 2 * LINE + 2 * PAD
    grid_rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * cell[0] + PAD, header + grid_rows * cell[1]), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill="black", font=_font(15))
    draw.text(
        (PAD, PAD + LINE + 2),
        f"inputs, then trials by {metric} (lower is better; gold frame: winner)",
        fill=(90, 90, 90),
        font=_font(12),
    )
    font = _font(13)
    for index, (image, lines, is_winner) in enumerate(tiles):
        left = PAD + (index % columns) * cell[0]
        top = header + (index // columns) * cell[1]
        thumbnail = ImageOps.contain(image, THUMB)
        offset = (left + (THUMB[0] - thumbnail.width) // 2, top + (THUMB[1] - thumbnail.height) // 2)
        sheet.paste(thumbnail, offset)
        if is_winner:
            draw.rectangle(
                (offset[0] - 4, offset[1] - 4, offset[0] + thumbnail.width + 3, offset[1] + thumbnail.height + 3),
                outline=WINNER_COLOUR,
                width=4,
            )
        for line_number, line in enumerate(lines):
            draw.text((left, top + THUMB[1] + 6 + line_number * LINE), line, fill="black", font=font)
    sheet.save(path)
    return path


def _splice_line(scores: dict[str, float]) -> str:
    if "splice_score" not in scores:
        return "no score"
    line = f"splice {number(scores['splice_score'])}"
    if "judge_splice_score" in scores:
        line += f"  judge {number(scores['judge_splice_score'])}"
    return line
