"""The pairs file: which image pairs a search tunes Splice for.

Format (CSV, UTF-8):

    pair,structure,appearance
    # lines starting with '#' and blank lines are ignored
    cows,cows/structure.jpg,cows/appearance.jpg

`pair` is a name a user types (`--pair cows`) and a folder name for the pair's outputs, so it must be unique
and safe on every file system. Image paths are relative to the CSV's folder (absolute paths work too).

`read_pairs` checks the whole file (including opening every image) before anything starts, and raises one
`BadInput` listing every problem, each line naming the file and line number.
"""

from __future__ import annotations

import csv
import difflib
import filecmp
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from splice_tune.errors import BadInput

COLUMNS = ("pair", "structure", "appearance")
IMAGE_COLUMNS = ("structure", "appearance")
MAX_NAME_LENGTH = 64
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HEADER_HINT = "the first line must be the header pair,structure,appearance"


@dataclass
class Pair:
    """One row of the pairs file: a name and two existing, readable images (absolute paths).

    `notes` are harmless remarks for the user (mode conversions, downscaling), each naming file and line.
    """

    name: str
    structure: Path
    appearance: Path
    notes: list[str] = field(default_factory=list)
    where: str = ""  # "pairs.csv:3", for messages about the pair found after reading the file


@dataclass
class _ImageCheck:
    """What opening one image file found; cached so an image shared by several rows is decoded once."""

    error: str | None  # the problem, without the leading path
    notes: list[str]  # remarks, without the leading path
    size: tuple[int, int] | None


def read_pairs(csv_path: str | os.PathLike, *, min_side: int, max_side: int | None) -> list[Pair]:
    """Read and fully validate a pairs file.

    `min_side` is the smallest short side an image may have (two ViT patches); images whose long side
    exceeds `max_side` are accepted with a note that they will be downscaled. Raises `BadInput` listing
    every problem found in the file at once.
    """
    where = str(csv_path)
    rows = _content_lines(_read_text(Path(csv_path), where))
    if not rows:
        raise BadInput(f"{where}: has no header and no pairs; {_HEADER_HINT}, then one line per pair")
    header_line, header_text = rows[0]
    columns = _parse_header(where, header_line, header_text)
    if not rows[1:]:
        raise BadInput(
            f"{where}:{header_line}: has a header but no pairs; add one line per pair: "
            f"name,structure_image,appearance_image"
        )

    folder = Path(csv_path).expanduser().resolve().parent
    problems: list[str] = []
    pairs: list[Pair] = []
    first_line_of: dict[str, tuple[str, int]] = {}  # casefolded name -> (name, line)
    checks: dict[Path, _ImageCheck] = {}
    for number, line in rows[1:]:
        at = f"{where}:{number}"
        values = next(csv.reader([line]))
        if len(values) != len(COLUMNS):
            problems.append(
                f"{at}: has {len(values)} fields, expected {len(COLUMNS)} "
                f"({','.join(columns)}); quote fields that contain commas"
            )
            continue
        row = {column: value.strip() for column, value in zip(columns, values)}
        row_problems = [f"{at}: field '{column}' is empty; fill it in" for column in COLUMNS if not row[column]]
        if row["pair"]:
            row_problems += _name_checks(row["pair"], at, number, first_line_of)
        images, notes, image_problems = _row_images(row, at, folder, checks, min_side, max_side)
        row_problems += image_problems
        problems += row_problems
        if not row_problems:
            pairs.append(Pair(row["pair"], images["structure"], images["appearance"], notes, at))
    if problems:
        raise BadInput(problems)
    return pairs


def _content_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that is neither blank nor a comment."""
    # Only \n, \r\n and \r end a line (as for the csv module and editors); str.splitlines() would also
    # split at \v, \f, \x1c-\x1e and \x85, silently cutting a row in two and shifting every line number.
    return [
        (number, line)
        for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _name_checks(name: str, at: str, number: int, first_line_of: dict[str, tuple[str, int]]) -> list[str]:
    """Problems with a row's pair name: its spelling, and clashes with earlier rows (recorded as it goes)."""
    problems = [f"{at}: {problem}" for problem in _name_problems(name)]
    earlier = first_line_of.get(name.casefold())
    if earlier is None:
        first_line_of[name.casefold()] = (name, number)
    elif earlier[0] == name:
        problems.append(f"{at}: pair '{name}' appears twice (first on line {earlier[1]}); pair names must be unique")
    else:
        problems.append(
            f"{at}: pair '{name}' differs from '{earlier[0]}' (line {earlier[1]}) only "
            f"in case, which clashes as a folder name on macOS/Windows; rename one"
        )
    return problems


def _row_images(
    row: dict[str, str],
    at: str,
    folder: Path,
    checks: dict[Path, _ImageCheck],
    min_side: int,
    max_side: int | None,
) -> tuple[dict[str, Path], list[str], list[str]]:
    """A row's images as resolved paths, its notes and its problems; each file is checked once per CSV."""
    notes: list[str] = []
    problems: list[str] = []
    images: dict[str, Path] = {}
    for column in IMAGE_COLUMNS:
        if not row[column]:
            continue
        path = (folder / Path(row[column]).expanduser()).resolve()
        check = checks.get(path)
        if check is None:
            check = checks[path] = _check_image(path, min_side)
        label = f"{at}: {column} '{row[column]}'"
        if check.error is not None:
            shown = f" ({path})" if not path.exists() and str(path) != row[column] else ""
            hint = " (relative paths start at the CSV's folder)" if not path.exists() else ""
            problems.append(f"{label}{shown}: {check.error}{hint}")
            continue
        notes += [f"{label}: {note}" for note in check.notes]
        if max_side is not None and max(check.size) > max_side:
            notes.append(f"{label}: {check.size[0]}x{check.size[1]} will be downscaled to max side {max_side}")
        images[column] = path
    if len(images) == 2 and _same_image(images["structure"], images["appearance"]):
        problems.append(
            f"{at}: structure and appearance are the same image; the scores compare the "
            f"output with two different images, so give two different files"
        )
    return images, notes, problems


def _read_text(path: Path, where: str) -> str:
    """The file's text, or `BadInput` when it is missing, a folder, empty or not UTF-8."""
    if not path.exists():
        raise BadInput(f"{where}: no such file; check the path to the pairs CSV")
    if path.is_dir():
        raise BadInput(f"{where}: is a directory; give the pairs CSV file inside it")
    if not path.is_file():
        # Reading a FIFO would block until something writes to it.
        raise BadInput(f"{where}: is not a regular file (a FIFO, socket or device); give the pairs CSV file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInput(f"{where}: cannot be read ({error.strerror}); check its permissions") from None
    if not data.strip():
        raise BadInput(f"{where}: is empty; {_HEADER_HINT}, then one line per pair")
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark, which is harmless.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise BadInput(
            f"{where}:{line}: is not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8 CSV"
        ) from None


def _parse_header(where: str, number: int, line: str) -> list[str]:
    """The header's column names in file order, or `BadInput` listing everything wrong with it."""
    columns = [value.strip() for value in next(csv.reader([line]))]
    at = f"{where}:{number}"
    if not any(difflib.get_close_matches(column, COLUMNS, n=1) for column in columns):
        # Nothing even resembles a column name: most likely the header line was left out.
        raise BadInput(f"{at}: is not a header ({line.strip()!r}); {_HEADER_HINT}")
    problems = []
    missing = [c for c in COLUMNS if c not in columns]
    suggested = set()  # missing columns already named by a "did you mean", not reported twice
    for index, column in enumerate(columns):
        if column in columns[:index]:
            problems.append(f"{at}: column '{column}' appears twice; each column must appear once")
        elif column not in COLUMNS:
            close = difflib.get_close_matches(column, missing or COLUMNS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the columns are {','.join(COLUMNS)}"
            suggested.update(close)
            problems.append(f"{at}: column '{column}' is not known; {hint}")
    for column in missing:
        if column not in suggested:
            problems.append(f"{at}: column '{column}' is missing; {_HEADER_HINT} (in any order)")
    if problems:
        raise BadInput(problems)
    return columns


def _name_problems(name: str) -> list[str]:
    """Why `name` is not safe as a folder name on every file system (empty when it is)."""
    what = "pair names become folder names"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return [f"pair name {name!r} contains a control character; {what}, use letters, digits, '.', '_', '-'"]
    if "/" in name or "\\" in name:
        return [f"pair name '{name}' contains a path separator; {what}, use letters, digits, '.', '_', '-'"]
    if name in (".", ".."):
        return [f"pair name '{name}' means a folder itself; pick a real name"]
    problems = []
    if name.startswith("."):
        problems.append(f"pair name '{name}' starts with '.' (a hidden folder); start it with a letter or digit")
    if not _SAFE_NAME.fullmatch(name):
        bad = "".join(sorted({c for c in name if not _SAFE_NAME.fullmatch(c)}))
        problems.append(f"pair name '{name}' contains {bad!r}; {what}, use only letters, digits, '.', '_', '-'")
    if len(name) > MAX_NAME_LENGTH:
        problems.append(f"pair name '{name[:20]}...' is {len(name)} characters long; use at most {MAX_NAME_LENGTH}")
    return problems


def _check_image(path: Path, min_side: int) -> _ImageCheck:
    """Open and decode one image with `open_image`, keeping only what the checks need (not the pixels)."""
    from splice_model.images import ImageError, open_image

    notes: list[str] = []
    prefix = f"{path}: "
    try:
        image = open_image(path, min_side=min_side, notes=notes)
    except ImageError as error:
        # open_image's messages start with the path; the caller names the image as the user wrote it.
        return _ImageCheck(str(error).removeprefix(prefix), [], None)
    return _ImageCheck(None, [note.removeprefix(prefix) for note in notes], image.size)


def _same_image(first: Path, second: Path) -> bool:
    """True when both paths are one file (links included) or two files with identical bytes."""
    return first == second or os.path.samefile(first, second) or filecmp.cmp(first, second, shallow=False)
