"""The pairs file: every mistake a user can make is one readable line naming file and line; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import splice_model.images
from splice_tune.errors import BadInput
from splice_tune.pairs import Pair, read_pairs

HEADER = "pair,structure,appearance\n"
MIN_SIDE = 16


def make_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 32), colour: int = 0) -> Path:
    """A small image in `mode`; `colour` varies the pixels so two images never have identical bytes."""
    if mode == "RGB":
        image = Image.new("RGB", size, (colour, 100, 200))
    else:
        image = Image.new(mode, size)
    image.save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with good images, and one of each kind of bad image file."""
    make_image(tmp_path / "a.png", colour=1)
    make_image(tmp_path / "b.png", colour=2)
    make_image(tmp_path / "c.png", colour=3)
    make_image(tmp_path / "tiny.png", size=(4, 4))
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "dir.png").mkdir()
    whole = (tmp_path / "a.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "copy_of_a.png").write_bytes(whole)
    return tmp_path


def listing(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in root.rglob("*"))


def write_csv(folder: Path, text: str | bytes, name: str = "pairs.csv") -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems_of(csv_path: Path, max_side: int | None = 512) -> list[str]:
    """The problem lines `read_pairs` raises, checking that it wrote nothing."""
    before = listing(csv_path.parent)
    with pytest.raises(BadInput) as raised:
        read_pairs(csv_path, min_side=MIN_SIDE, max_side=max_side)
    assert listing(csv_path.parent) == before
    problems = raised.value.problems
    assert problems and all("\n" not in line for line in problems)
    return problems


BAD_ROWS = [
    # (id, csv text, line the problem is on, words the message must contain)
    ("blank-structure", HEADER + "cows,,b.png\n", 2, "field 'structure' is empty"),
    ("blank-name", HEADER + ",a.png,b.png\n", 2, "field 'pair' is empty"),
    ("too-few-fields", HEADER + "cows,a.png\n", 2, "has 2 fields, expected 3"),
    ("too-many-fields", HEADER + "cows,a.png,b.png,c.png\n", 2, "has 4 fields, expected 3"),
    (
        "duplicate-name",
        HEADER + "cows,a.png,b.png\ncows,b.png,c.png\n",
        3,
        "pair 'cows' appears twice (first on line 2); pair names must be unique",
    ),
    ("duplicate-name-case", HEADER + "cows,a.png,b.png\nCows,b.png,c.png\n", 3, "only in case"),
    ("name-slash", HEADER + "a/b,a.png,b.png\n", 2, "path separator"),
    ("name-backslash", HEADER + "a\\b,a.png,b.png\n", 2, "path separator"),
    ("name-dotdot", HEADER + "..,a.png,b.png\n", 2, "means a folder itself"),
    ("name-dot", HEADER + ".,a.png,b.png\n", 2, "means a folder itself"),
    ("name-hidden", HEADER + ".cows,a.png,b.png\n", 2, "starts with '.'"),
    ("name-control", HEADER + "co\x07ws,a.png,b.png\n", 2, "control character"),
    ("name-space", HEADER + "my cows,a.png,b.png\n", 2, "use only letters, digits"),
    ("name-unicode", HEADER + "caf\u00e9,a.png,b.png\n", 2, "use only letters, digits"),
    ("name-too-long", HEADER + "x" * 65 + ",a.png,b.png\n", 2, "is 65 characters long; use at most 64"),
    ("missing-image", HEADER + "cows,missing.png,b.png\n", 2, "structure 'missing.png'"),
    ("directory-image", HEADER + "cows,a.png,dir.png\n", 2, "is a directory"),
    ("truncated-image", HEADER + "cows,trunc.png,b.png\n", 2, "corrupt or truncated"),
    ("text-as-image", HEADER + "cows,a.png,text.png\n", 2, "not an image"),
    ("too-small", HEADER + "cows,tiny.png,b.png\n", 2, "4x4 is too small"),
    ("same-file", HEADER + "cows,a.png,a.png\n", 2, "the same image"),
    ("same-file-other-spelling", HEADER + "cows,a.png,./sub/../a.png\n", 2, "the same image"),
    ("identical-bytes", HEADER + "cows,a.png,copy_of_a.png\n", 2, "the same image"),
    ("after-comments", HEADER + "# a comment\n\ncows,a.png,b.png\ncows,b.png,c.png\n", 5, "appears twice"),
]


@pytest.mark.parametrize("text, line, words", [case[1:] for case in BAD_ROWS], ids=[case[0] for case in BAD_ROWS])
def test_bad_rows_are_reported_with_file_and_line(folder: Path, text: str, line: int, words: str) -> None:
    (folder / "sub").mkdir()
    csv_path = write_csv(folder, text)
    problems = problems_of(csv_path)
    assert any(p.startswith(f"{csv_path}:{line}: ") and words in p for p in problems), problems


BAD_FILES = [
    # (id, csv text or bytes, where the message points, words it must contain)
    ("empty", "", "", "is empty"),
    ("only-whitespace", "\n  \n", "", "is empty"),
    ("only-comments", "# nothing here\n\n", "", "has no header"),
    ("header-only", HEADER, ":1", "has a header but no pairs"),
    ("header-and-comments", HEADER + "# cows,a.png,b.png\n", ":1", "has a header but no pairs"),
    ("not-utf8", HEADER.encode() + b"cows,a.png,b.png\ncaf\xe9,a.png,b.png\n", ":3", "is not UTF-8"),
    (
        "misspelled-column",
        "pair,structur,appearance\ncows,a.png,b.png\n",
        ":1",
        "column 'structur' is not known; did you mean 'structure'?",
    ),
    ("extra-column", "pair,structure,appearance,notes\ncows,a.png,b.png,x\n", ":1", "column 'notes' is not known"),
    ("missing-column", "pair,structure\ncows,a.png\n", ":1", "column 'appearance' is missing"),
    (
        "duplicate-column",
        "pair,structure,structure,appearance\ncows,a.png,a.png,b.png\n",
        ":1",
        "column 'structure' appears twice",
    ),
    ("no-header", "cows,a.png,b.png\n", ":1", "is not a header"),
    (
        "capitalised-header",
        "Pair,Structure,Appearance\ncows,a.png,b.png\n",
        ":1",
        "column 'Structure' is not known; did you mean 'structure'?",
    ),
]


@pytest.mark.parametrize("text, where, words", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_files_are_reported_with_file(folder: Path, text: str | bytes, where: str, words: str) -> None:
    csv_path = write_csv(folder, text)
    problems = problems_of(csv_path)
    assert any(p.startswith(f"{csv_path}{where}: ") and words in p for p in problems), problems


def test_misspelt_column_is_not_also_reported_missing(folder: Path) -> None:
    problems = problems_of(write_csv(folder, "pair,structur,appearance\ncows,a.png,b.png\n"))
    assert len(problems) == 1


def test_missing_csv(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.csv")
    assert problems == [f"{tmp_path / 'nope.csv'}: no such file; check the path to the pairs CSV"]


def test_directory_as_csv(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").mkdir()
    assert "is a directory" in problems_of(tmp_path / "pairs.csv")[0]


def test_every_problem_is_reported_at_once(folder: Path) -> None:
    csv_path = write_csv(
        folder, HEADER + "cows,missing.png,b.png\nbad/name,a.png,b.png\nok,a.png,b.png\nok,text.png,tiny.png\n"
    )
    problems = problems_of(csv_path)
    assert [p.split(": ")[0] for p in problems] == [f"{csv_path}:{n}" for n in (2, 3, 5, 5, 5)]


def test_over_the_pixel_cap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real 256-megapixel image would be slow to make; lowering the cap exercises the same path.
    monkeypatch.setattr(splice_model.images, "MAX_PIXELS", 1000)
    csv_path = write_csv(folder, HEADER + "cows,a.png,b.png\n")
    problems = problems_of(csv_path)
    assert len(problems) == 2 and all("pixel limit" in p for p in problems)


def test_unsupported_mode(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow writes no mode that open_image refuses, so pretend L is one.
    monkeypatch.setattr(splice_model.images, "_CONVERTIBLE_MODES", splice_model.images._CONVERTIBLE_MODES - {"L"})
    make_image(folder / "gray.png", "L")
    problems = problems_of(write_csv(folder, HEADER + "cows,gray.png,b.png\n"))
    assert problems[0].endswith("gray.png': image mode 'L' is not supported; save it as 8-bit RGB")


@pytest.mark.parametrize(
    "mode, suffix",
    [
        ("RGBA", "png"),
        ("L", "png"),
        ("P", "png"),
        ("LA", "png"),
        ("1", "png"),
        ("CMYK", "jpg"),
        ("I;16", "png"),
        ("F", "tiff"),
    ],
)
def test_convertible_modes_become_notes(folder: Path, mode: str, suffix: str) -> None:
    make_image(folder / f"odd.{suffix}", mode)
    csv_path = write_csv(folder, HEADER + f"cows,odd.{suffix},b.png\n")
    before = listing(folder)
    [pair] = read_pairs(csv_path, min_side=MIN_SIDE, max_side=512)
    assert listing(folder) == before
    assert pair.notes == [f"{csv_path}:2: structure 'odd.{suffix}': converted from mode {mode} to RGB"]


def test_good_file(folder: Path) -> None:
    (folder / "images").mkdir()
    make_image(folder / "images" / "big.png", size=(700, 300), colour=9)
    absolute = folder / "c.png"
    text = (
        "\ufeff# pairs for the test\n\n"
        "appearance , pair,structure\n"  # any column order, spaces around names
        "b.png,cows,a.png\n"
        "  # indented comment\n"
        f'"{absolute}",horses, images/big.png \n'
        "c.png,cows-2.v1_x,b.png\n"
    )
    csv_path = write_csv(folder, text)
    before = listing(folder)
    pairs = read_pairs(csv_path, min_side=MIN_SIDE, max_side=512)
    assert listing(folder) == before
    assert pairs == [
        Pair("cows", folder / "a.png", folder / "b.png", [], f"{csv_path}:4"),
        Pair(
            "horses",
            folder / "images" / "big.png",
            absolute,
            [f"{csv_path}:6: structure 'images/big.png': 700x300 will be downscaled to max side 512"],
            f"{csv_path}:6",
        ),
        Pair("cows-2.v1_x", folder / "b.png", folder / "c.png", [], f"{csv_path}:7"),
    ]
    assert all(p.structure.is_absolute() and p.appearance.is_absolute() for p in pairs)


def test_paths_are_relative_to_the_csv_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    [pair] = read_pairs(write_csv(folder, HEADER + "cows,a.png,b.png\n"), min_side=MIN_SIDE, max_side=None)
    assert pair.structure == folder / "a.png"


def test_each_image_is_opened_once(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real = splice_model.images.open_image

    def counting(path, **kwargs):
        opened.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(splice_model.images, "open_image", counting)
    csv_path = write_csv(folder, HEADER + "one,a.png,b.png\ntwo,a.png,c.png\nthree,./b.png,a.png\n")
    assert len(read_pairs(csv_path, min_side=MIN_SIDE, max_side=512)) == 3
    assert sorted(opened) == [folder / "a.png", folder / "b.png", folder / "c.png"]


def test_a_pairs_images_travel_to_its_trials_as_lossless_8_bit_png_smaller_than_raw():
    """What the driver puts in Ray's object store for a pair: the image its trials train on is exactly the
    loaded image rounded to 8 bits (as when a raw uint8 tensor travelled), in about a third of the bytes."""
    from splice_model.images import load_image
    from splice_tune.trainable import pack_image, unpack_image

    image = load_image(Path(__file__).resolve().parents[1] / "examples" / "pairs" / "cows_structure.png")
    packed = pack_image(image)
    unpacked = unpack_image(packed)
    assert unpacked.dtype == image.dtype and unpacked.shape == image.shape
    assert torch.equal(unpacked, (image * 255).round() / 255.0)
    assert len(packed) < 0.5 * image.numel()  # raw uint8 would be numel() bytes
