"""Bad input, end to end through the real CLI: the reliability requirement, one table row per mistake.

    Validation before anything starts (no Ray start, no MLflow run, no files written), each problem as one
    clear line naming file, line/field and the fix, all problems of a file listed at once, exit code 2,
    never a traceback.

Every row of `CASES` builds a fresh working folder (valid tiny inputs, then the one mistake), runs
`splice_tune.cli.main` in-process with that folder as the working directory, and checks: exit code 2; each
expected problem is one `error: ...` line on stderr holding every fragment listed for it; the number of
error lines; nothing else on stderr or stdout; no traceback; the folder's recursive listing (names, sizes,
mtimes) unchanged (so no `splice-runs/`, `mlflow.db`, Ray folder); no Ray started and no MLflow run active.
A few cases repeat as real subprocesses of the `splice-tune` console script.

Convertible image modes and images above `max_side` are not mistakes: `plan_search` must accept them with a
note (and still start nothing). Everything uses the random_tiny8 ViT (NOT DINO); the DINO cases are the
missing-weights ones, which must fail fast offline.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import make_appearance_image, make_structure_image
from PIL import Image

import splice_model.images

# ------------------------------------------------------------------------------------------ inputs

SPACE = """\
description: tiny test space (random tiny ViT, NOT DINO)
fixed:
  vit: random_tiny8
  max_side: 64
  vit_size: 48
  vit_max_side: 96
  steps: 10
  eval_every: 5
params:
  alpha: {type: float, low: 0.05, high: 0.3, log: true}
budget:
  trials_per_pair: 2
"""
# Line numbers in SPACE that the YAML cases point at.
LINE_VIT, LINE_STEPS, LINE_ALPHA, LINE_BUDGET, LINE_TRIALS = 3, 7, 10, 11, 12

HEADER = "pair,structure,appearance\n"
GOOD_CSV = HEADER + "cows,s.png,a.png\n"
SEARCH = ["search", "pairs.csv", "--space", "space.yaml"]
TRAIN = ["train", "s.png", "a.png", "--vit", "random_tiny8"]


def structure_picture(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """Flat coloured shapes on a light noisy background (a clear layout)."""
    return make_structure_image(size, seed)


def appearance_picture(size: tuple[int, int] = (40, 40), seed: int = 1) -> Image.Image:
    """Noisy diagonal colour stripes (texture everywhere, no layout)."""
    return make_appearance_image(size, seed)


def write_valid_inputs(work: Path) -> None:
    """What every case starts from: two good images, a good pairs.csv and a good tiny search space."""
    structure_picture().save(work / "s.png")
    appearance_picture().save(work / "a.png")
    (work / "pairs.csv").write_text(GOOD_CSV, encoding="utf-8")
    (work / "space.yaml").write_text(SPACE, encoding="utf-8")


# Small builders the cases combine: each takes the working folder.


def text(name: str, content: str | bytes) -> Callable[[Path], None]:
    def build(work: Path) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return build


def folder(name: str) -> Callable[[Path], None]:
    return lambda work: (work / name).mkdir()


def picture(name: str, size: tuple[int, int] = (48, 40), seed: int = 5, **save) -> Callable[[Path], None]:
    return lambda work: appearance_picture(size, seed).save(work / name, **save)


def truncated(name: str, source: str = "a.png") -> Callable[[Path], None]:
    def build(work: Path) -> None:
        whole = (work / source).read_bytes()
        (work / name).write_bytes(whole[: len(whole) // 2])

    return build


def copied(name: str, source: str = "s.png") -> Callable[[Path], None]:
    return lambda work: shutil.copy(work / source, work / name)


def resaved(name: str, source: str = "s.png", **save) -> Callable[[Path], None]:
    """The same picture written again: other bytes (format, compression), the same scene."""
    return lambda work: Image.open(work / source).convert("RGB").save(work / name, **save)


def png_claiming(name: str, width: int, height: int) -> Callable[[Path], None]:
    """A PNG whose header claims width x height (a decompression bomb) but holds a few bytes of data."""

    def build(work: Path) -> None:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        (work / name).write_bytes(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b"")
        )

    return build


def fifo(name: str) -> Callable[[Path], None]:
    """A named pipe with no writer: opening it to read would block forever."""
    return lambda work: os.mkfifo(work / name)


def space_with(old: str, new: str) -> Callable[[Path], None]:
    assert old in SPACE, old
    return text("space.yaml", SPACE.replace(old, new, 1))


# ------------------------------------------------------------------------------------------ the table

Line = tuple[str, ...]  # fragments that must all appear in one `error:` line


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[Line]  # one entry per error line: exactly these lines, in any order
    setup: list[Callable[[Path], None]] = field(default_factory=list)
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    max_seconds: float | None = None  # for the cases that must not hang (weights, downloads)
    absent: tuple[str, ...] = ()  # fragments no error line may hold (advice that does not apply)
    marks: tuple = ()


def csv_case(id: str, content: str | bytes, *expect: Line, setup=(), **options) -> Case:
    return Case(id, SEARCH, list(expect), [*setup, text("pairs.csv", content)], **options)


def space_case(id: str, old: str, new: str, *expect: Line, **options) -> Case:
    return Case(id, SEARCH, list(expect), [space_with(old, new)], **options)


def flag_case(id: str, flags: list[str], *expect: Line, **options) -> Case:
    return Case(id, SEARCH + flags, list(expect), **options)


def train_case(id: str, args: list[str], *expect: Line, setup=(), **options) -> Case:
    return Case(id, ["train", *args], list(expect), list(setup), **options)


def _low_pixel_cap(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    # A real 256-megapixel image would be slow to make; a low cap exercises the same check.
    monkeypatch.setattr(splice_model.images, "MAX_PIXELS", 2500)


def _offline(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """A DINO preset with no cached weights on a machine without internet: the download fails at once.

    torch hub's folder is put outside the working folder (the cache is not an output of the command)."""
    import urllib.error

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(work.parent / f"{work.name}-torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
NAME100 = "n" * 100

CASES = [
    # ---------------------------------------------------------------- pairs.csv: the file
    Case(
        "csv-missing",
        ["search", "nosuch.csv", "--space", "space.yaml"],
        [("nosuch.csv: no such file", "check the path to the pairs CSV")],
    ),
    Case(
        "csv-is-directory",
        ["search", "adir", "--space", "space.yaml"],
        [("adir: is a directory", "give the pairs CSV file inside it")],
        [folder("adir")],
    ),
    csv_case("csv-empty", "", ("pairs.csv: is empty", "pair,structure,appearance")),
    csv_case("csv-header-only", HEADER, ("pairs.csv:1: has a header but no pairs", "add one line per pair")),
    csv_case(
        "csv-missing-column",
        "pair,structure\ncows,s.png\n",
        ("pairs.csv:1: column 'appearance' is missing", "pair,structure,appearance"),
    ),
    csv_case(
        "csv-extra-column",
        "pair,structure,appearance,notes\ncows,s.png,a.png,x\n",
        ("pairs.csv:1: column 'notes' is not known", "pair,structure,appearance"),
    ),
    csv_case(
        "csv-misspelled-column",
        "pair,structure,apperance\ncows,s.png,a.png\n",
        ("pairs.csv:1: column 'apperance' is not known", "did you mean 'appearance'?"),
    ),
    csv_case(
        "csv-not-utf8",
        HEADER.encode() + b"caf\xe9,s.png,a.png\n",
        ("pairs.csv:2: is not UTF-8", "save the file as UTF-8"),
    ),
    # ---------------------------------------------------------------- pairs.csv: rows
    csv_case("row-blank-field", HEADER + "cows,,a.png\n", ("pairs.csv:2: field 'structure' is empty", "fill it in")),
    csv_case("row-too-few-fields", HEADER + "cows,s.png\n", ("pairs.csv:2: has 2 fields, expected 3",)),
    csv_case(
        "row-duplicate-name",
        HEADER + "cows,s.png,a.png\ncows,a.png,s.png\n",
        ("pairs.csv:3: pair 'cows' appears twice (first on line 2)", "must be unique"),
    ),
    csv_case(
        "name-dotdot-evil",
        HEADER + "../evil,s.png,a.png\n",
        ("pairs.csv:2: pair name '../evil'", "path separator", "use letters, digits"),
    ),
    csv_case("name-slash", HEADER + "a/b,s.png,a.png\n", ("pairs.csv:2: pair name 'a/b'", "path separator")),
    csv_case(
        "name-hidden",
        HEADER + ".hidden,s.png,a.png\n",
        ("pairs.csv:2: pair name '.hidden' starts with '.'", "start it with a letter or digit"),
    ),
    csv_case(
        "name-control-char",
        HEADER + "co\x07ws,s.png,a.png\n",
        ("pairs.csv:2: pair name 'co\\x07ws' contains a control character", "use letters, digits"),
    ),
    # \v, \f, \x1c-\x1e, \x85 are line breaks to str.splitlines() but not to a CSV file or an editor.
    csv_case(
        "name-vertical-tab",
        HEADER + "co\x0bws,s.png,a.png\n",
        ("pairs.csv:2: pair name 'co\\x0bws' contains a control character",),
    ),
    csv_case(
        "name-100-chars",
        HEADER + f"{NAME100},s.png,a.png\n",
        ("pairs.csv:2: pair name", "is 100 characters long; use at most 64"),
    ),
    # ---------------------------------------------------------------- pairs.csv: images
    csv_case(
        "image-missing",
        HEADER + "cows,nosuch.png,a.png\n",
        ("pairs.csv:2: structure 'nosuch.png'", "no such file", "check the path"),
    ),
    csv_case(
        "image-is-directory",
        HEADER + "cows,s.png,pics\n",
        ("pairs.csv:2: appearance 'pics'", "is a directory", "name a .png/.jpg file"),
        setup=[folder("pics")],
    ),
    csv_case(
        "image-truncated-png",
        HEADER + "cows,s.png,cut.png\n",
        ("pairs.csv:2: appearance 'cut.png'", "corrupt or truncated image", "re-export"),
        setup=[truncated("cut.png")],
    ),
    csv_case(
        "image-text-as-png",
        HEADER + "cows,notes.png,a.png\n",
        ("pairs.csv:2: structure 'notes.png'", "not an image Pillow can read", "use PNG, JPEG"),
        setup=[text("notes.png", "this is not an image\n")],
    ),
    csv_case(
        "image-4x4",
        HEADER + "cows,s.png,tiny.png\n",
        ("pairs.csv:2: appearance 'tiny.png'", "4x4 is too small", "at least 16 pixels"),
        setup=[picture("tiny.png", (4, 4))],
    ),
    csv_case(
        "image-over-pixel-cap",
        HEADER + "cows,s.png,big.png\n",
        ("pairs.csv:2: appearance 'big.png'", "60x60 is over the 2,500-pixel limit", "downscale"),
        setup=[picture("big.png", (60, 60))],
        patch=_low_pixel_cap,
    ),
    csv_case(
        "image-decompression-bomb",
        HEADER + "cows,s.png,bomb.png\n",
        ("pairs.csv:2: appearance 'bomb.png'", "900,000,000 pixels is over the 256,000,000-pixel limit", "downscale"),
        setup=[png_claiming("bomb.png", 30000, 30000)],
    ),
    # 400 MP: above our 256 MP cap but below twice it, so our check (not PIL's) refuses it, with its size.
    csv_case(
        "image-over-cap-20000x20000",
        HEADER + "cows,s.png,bomb.png\n",
        ("pairs.csv:2: appearance 'bomb.png'", "20000x20000 is over the 256,000,000-pixel limit", "downscale"),
        setup=[png_claiming("bomb.png", 20000, 20000)],
    ),
    # Over twice a (patched) cap: PIL's own guard, moved to our cap, refuses it first; the count is still given.
    csv_case(
        "image-over-twice-the-cap",
        HEADER + "cows,s.png,big.png\n",
        ("pairs.csv:2: appearance 'big.png'", "10,000 pixels is over the 2,500-pixel limit", "downscale"),
        setup=[picture("big.png", (100, 100))],
        patch=_low_pixel_cap,
    ),
    csv_case(
        "same-file-twice",
        HEADER + "cows,s.png,s.png\n",
        ("pairs.csv:2: structure and appearance are the same image", "give two different files"),
    ),
    csv_case(
        "identical-bytes-two-names",
        HEADER + "cows,s.png,twin.png\n",
        ("pairs.csv:2: structure and appearance are the same image",),
        setup=[copied("twin.png")],
    ),
    # Same pixels, other bytes: only the baseline check (ViT features) can tell.
    csv_case(
        "same-pixels-other-bytes",
        HEADER + "cows,s.png,twin.png\n",
        ("pairs.csv:2", "cows", "(near-)duplicates", "use two different images"),
        setup=[resaved("twin.png", compress_level=0)],
    ),
    # A photo-sized picture (downscaled to max_side like any real photo) and its JPEG q95 copy.
    csv_case(
        "near-duplicate-jpeg-q95",
        HEADER + "cows,big.png,twin.jpg\n",
        ("pairs.csv:2", "cows", "(near-)duplicates", "use two different images"),
        setup=[
            lambda work: structure_picture((192, 160)).save(work / "big.png"),
            resaved("twin.jpg", source="big.png", quality=95),
        ],
    ),
    # ---------------------------------------------------------------- pairs.csv: all problems at once
    csv_case(
        "many-problems-at-once",
        HEADER + "cows,,a.png\ncows,s.png,a.png\na/b,s.png,a.png\nok,nosuch.png,a.png\nsmall,tiny.png,a.png\n"
        "broken,s.png,cut.png\n",
        ("pairs.csv:2: field 'structure' is empty",),
        ("pairs.csv:3: pair 'cows' appears twice",),
        ("pairs.csv:4: pair name 'a/b'",),
        ("pairs.csv:5: structure 'nosuch.png'", "no such file"),
        ("pairs.csv:6: structure 'tiny.png'", "too small"),
        ("pairs.csv:7: appearance 'cut.png'", "corrupt or truncated"),
        setup=[picture("tiny.png", (4, 4)), truncated("cut.png")],
    ),
    Case(
        "csv-and-space-problems-together",
        SEARCH + ["--max-concurrent", "0"],
        [
            ("pairs.csv:2: structure 'nosuch.png'",),
            (f"space.yaml:{LINE_TRIALS}: budget.trials_per_pair",),
            ("--max-concurrent",),
        ],
        [text("pairs.csv", HEADER + "cows,nosuch.png,a.png\n"), space_with("trials_per_pair: 2", "trials_per_pair: 0")],
    ),
    # ---------------------------------------------------------------- search space
    space_case("yaml-not-yaml", "fixed:\n", "fixed: [unclosed\n", ("space.yaml:", "not valid YAML", "fix the syntax")),
    space_case(
        "yaml-unknown-section",
        "budget:",
        "budgte:",
        (f"space.yaml:{LINE_BUDGET}: budgte: is not a known section", "did you mean 'budget'?"),
    ),
    space_case(
        "yaml-unknown-fixed-key",
        "  steps: 10",
        "  stpes: 10",
        (f"space.yaml:{LINE_STEPS}: fixed.stpes: is not a Splice setting", "did you mean 'steps'?"),
    ),
    space_case(
        "yaml-unknown-param",
        "  alpha: {",
        "  alpah: {",
        (f"space.yaml:{LINE_ALPHA}: params.alpah: is not a Splice setting", "did you mean 'alpha'?"),
    ),
    space_case(
        "yaml-low-above-high",
        "low: 0.05, high: 0.3",
        "low: 0.5, high: 0.3",
        (f"space.yaml:{LINE_ALPHA}: params.alpha.low: low (0.5) must be below high (0.3)",),
    ),
    space_case(
        "yaml-log-low-zero",
        "low: 0.05, high: 0.3",
        "low: 0.0, high: 0.3",
        (f"space.yaml:{LINE_ALPHA}: params.alpha.low: must be > 0 when log: true", "raise low or drop log"),
    ),
    space_case(
        "yaml-empty-categorical",
        "  alpha: {type: float, low: 0.05, high: 0.3, log: true}",
        "  lr: {type: categorical, choices: []}",
        (f"space.yaml:{LINE_ALPHA}: params.lr.choices: has 0 choice(s)", "give at least two"),
    ),
    space_case(
        "yaml-wrong-type",
        "  steps: 10",
        "  steps: ten",
        (f"space.yaml:{LINE_STEPS}: fixed.steps: must be a whole number", "'ten'"),
    ),
    space_case(
        "yaml-trials-per-pair-0",
        "trials_per_pair: 2",
        "trials_per_pair: 0",
        (f"space.yaml:{LINE_TRIALS}: budget.trials_per_pair: must be a whole number >= 1",),
    ),
    space_case(
        "yaml-unknown-vit",
        "vit: random_tiny8",
        "vit: random_tiny9",
        (f"space.yaml:{LINE_VIT}: fixed.vit: unknown ViT preset 'random_tiny9'", "did you mean 'random_tiny8'?"),
    ),
    space_case(
        "yaml-bad-device",
        "  steps: 10\n",
        "  steps: 10\n  device: gpu\n",
        (f"space.yaml:{LINE_STEPS + 1}: fixed.device: 'gpu' is not a device", "cuda:N"),
    ),
    space_case(
        "yaml-vit-weights-missing",
        "  vit: random_tiny8\n",
        "  vit: dino_vits16\n  vit_weights: missing.pth\n",
        (f"space.yaml:{LINE_VIT + 1}: fixed.vit_weights: weights file 'missing.pth' not found",),
        max_seconds=10,
    ),
    space_case(
        "yaml-dino-not-cached-offline",
        "  vit: random_tiny8\n",
        "  vit: dino_vits16\n",
        ("space.yaml", "dino_vits16", "could not be downloaded", "vit_weights"),
        patch=_offline,
        max_seconds=10,
    ),
    # ---------------------------------------------------------------- the held-out judge
    space_case(
        "yaml-judge-is-the-training-vit",
        "  vit: random_tiny8\n",
        "  vit: random_tiny8\n  judge_vit: random_tiny8\n",
        (f"space.yaml:{LINE_VIT + 1}: fixed.judge_vit: is the training ViT (random_tiny8)", "choose another preset"),
    ),
    space_case(
        "yaml-judge-unknown-preset",
        "  vit: random_tiny8\n",
        "  vit: random_tiny8\n  judge_vit: random_tiny61\n",
        (f"space.yaml:{LINE_VIT + 1}: fixed.judge_vit: unknown ViT preset 'random_tiny61'", "did you mean"),
    ),
    space_case(
        "yaml-judge-weights-missing",
        "  vit: random_tiny8\n",
        "  vit: random_tiny8\n  judge_vit: dino_vits16\n  judge_vit_weights: missing.pth\n",
        (f"space.yaml:{LINE_VIT + 2}: fixed.judge_vit_weights: weights file 'missing.pth' not found",),
        max_seconds=10,
    ),
    space_case(
        "yaml-judge-dino-not-cached-offline",
        "  vit: random_tiny8\n",
        "  vit: random_tiny8\n  judge_vit: dino_vits16\n",
        ("space.yaml", "judge_vit dino_vits16", "could not be downloaded"),
        patch=_offline,
        max_seconds=10,
    ),
    space_case(
        "yaml-judge-objective-without-judge",
        "budget:\n",
        "objective: {metric: judge_splice_score}\nbudget:\n",
        ("space.yaml:11: objective.metric: judge_splice_score needs a judge", "set judge_vit"),
    ),
    train_case(
        "train-judge-is-the-training-vit",
        ["s.png", "a.png", "--vit", "random_tiny8", "--judge-vit", "random_tiny8"],
        ("--judge-vit: is the training ViT (random_tiny8)",),
    ),
    train_case(
        "train-judge-weights-missing",
        ["s.png", "a.png", "--vit", "random_tiny8", "--judge-vit", "dino_vits16", "--judge-vit-weights", "no.pth"],
        ("--judge-vit-weights no.pth: no such ViT weights file",),
    ),
    # ---------------------------------------------------------------- warm starts
    flag_case(
        "warm-start-and-no-warm-start",
        ["--warm-start", "auto", "--no-warm-start"],
        ("--warm-start and --no-warm-start: give one of them",),
    ),
    flag_case(
        "warm-start-unknown-search",
        ["--warm-start", "nosuch"],
        ("--warm-start nosuch: no search of that name in the MLflow store", "known searches (newest first): none"),
    ),
    flag_case(
        "warm-start-from-itself",
        ["--name", "again", "--warm-start", "again"],
        ("--warm-start again: is the search being started",),
    ),
    # Aliases share their anchor's node: a self-reference or nested aliases must not recurse or explode.
    space_case(
        "yaml-self-referencing-alias",
        "fixed:\n",
        "fixed: &fixed\n  itself: *fixed\n",
        ("space.yaml:3: fixed.itself: is not a Splice setting",),
    ),
    Case(
        "yaml-billion-laughs",
        SEARCH,
        [(f"space.yaml:{LINE_TRIALS + 1}: laughs: is not a known section", "sections are")],
        [
            text(
                "space.yaml",
                SPACE
                + "laughs:\n  - &a [x, x, x, x, x, x, x, x, x]\n"
                + "".join(
                    f"  - &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefg", "bcdefgh")
                ),
            )
        ],
        max_seconds=10,
    ),
    Case(
        "space-not-shipped",
        ["search", "pairs.csv", "--space", "nosuchname"],
        [("search space 'nosuchname' is not shipped", "quick", "pass the path of a .yaml file")],
    ),
    Case(
        "space-file-missing",
        ["search", "pairs.csv", "--space", "nosuch.yaml"],
        [("nosuch.yaml: no such file", "shipped space")],
    ),
    # ---------------------------------------------------------------- search flags
    flag_case("cpus-per-trial-0", ["--cpus-per-trial", "0"], ("--cpus-per-trial", "must be > 0")),
    flag_case("cpus-per-trial-negative", ["--cpus-per-trial", "-1"], ("--cpus-per-trial", "must be > 0", "-1")),
    flag_case("gpus-per-trial-negative", ["--gpus-per-trial", "-1"], ("--gpus-per-trial", "must be >= 0")),
    flag_case(
        "gpus-per-trial-without-gpu",
        ["--gpus-per-trial", "1"],
        ("--gpus-per-trial", "this machine has no GPU", "leave it at 0"),
        marks=(NO_GPU,),
    ),
    flag_case("max-concurrent-0", ["--max-concurrent", "0"], ("--max-concurrent", "must be >= 1")),
    flag_case("max-failures-negative", ["--max-failures", "-1"], ("--max-failures", "must be >= 0")),
    flag_case("name-unsafe", ["--name", "bad name/x"], ("--name 'bad name/x'", "use letters, digits")),
    flag_case("resume-nothing-to-resume", ["--resume"], ("--resume: no search to resume", "--name")),
    flag_case(
        "resume-no-such-name", ["--resume", "--name", "nosuch"], ("--resume: no search named 'nosuch'", "check --name")
    ),
    # More than this machine has: known without starting a local Ray (os.cpu_count(), torch.cuda).
    flag_case("cpus-per-trial-more-than-machine", ["--cpus-per-trial", "4096"], ("--cpus-per-trial 4096",)),
    flag_case(
        "tracking-uri-unknown-scheme",
        ["--tracking-uri", "nosuchscheme://x"],
        ("--tracking-uri nosuchscheme://x", "http"),
    ),
    # MLflow's own variable stands in for --tracking-uri (every command that takes the flag reads it).
    flag_case(
        "tracking-uri-from-environment",
        [],
        ("--tracking-uri nosuchscheme://x", "http"),
        patch=lambda monkeypatch, work: monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x"),
    ),
    flag_case(
        "set-unknown-field", ["--set", "nosuchfield=1"], ("--set nosuchfield=1", "'nosuchfield' is not a setting")
    ),
    flag_case("set-misspelled-field", ["--set", "stpes=5"], ("--set stpes=5", "did you mean 'steps'?")),
    flag_case("set-not-a-number", ["--set", "steps=abc"], ("--set steps=abc", "steps", "must be a whole number")),
    flag_case("set-no-equals", ["--set", "steps"], ("--set steps", "expected key=value")),
    # ---------------------------------------------------------------- splice-tune train
    train_case(
        "train-missing-structure",
        ["nosuch.png", "a.png", "--vit", "random_tiny8"],
        ("nosuch.png", "no such file", "check the path"),
        absent=("CSV",),
    ),
    train_case(
        "train-corrupt-appearance",
        ["s.png", "cut.png", "--vit", "random_tiny8"],
        ("cut.png", "corrupt or truncated image"),
        setup=[truncated("cut.png")],
    ),
    train_case(
        "train-both-images-bad",
        ["nosuch.png", "cut.png", "--vit", "random_tiny8"],
        ("nosuch.png", "no such file"),
        ("cut.png", "corrupt or truncated image"),
        setup=[truncated("cut.png")],
    ),
    train_case(
        "train-out-not-an-image",
        TRAIN[1:] + ["--out", "result.txt"],
        ("--out result.txt", "use an image file name ending in", ".png"),
    ),
    train_case(
        "train-out-folder-missing",
        TRAIN[1:] + ["--out", "nosuchdir/out.png"],
        ("--out nosuchdir/out.png", "folder nosuchdir does not exist", "create it first"),
    ),
    train_case("train-alpha-negative", TRAIN[1:] + ["--alpha", "-1"], ("--alpha", "must be >= 0", "-1")),
    train_case(
        "train-unknown-vit",
        ["s.png", "a.png", "--vit", "nosuch"],
        ("--vit: unknown ViT preset 'nosuch'", "random_tiny8"),
    ),
    train_case(
        "train-device-unknown", TRAIN[1:] + ["--device", "foo"], ("--device: 'foo' is not a device", "cpu, cuda")
    ),
    train_case(
        "train-device-cuda-without-gpu",
        TRAIN[1:] + ["--device", "cuda"],
        ("--device cuda: this machine has no CUDA GPU", "--device cpu"),
        marks=(NO_GPU,),
    ),
    train_case(
        "train-device-not-for-training",
        TRAIN[1:] + ["--device", "meta"],
        ("--device meta: training runs on cpu, cuda or mps",),
    ),
    train_case(
        "train-out-is-a-directory",
        TRAIN[1:] + ["--out", "adir"],
        ("--out adir: is a directory", "name an image file"),
        setup=[folder("adir")],
    ),
    train_case(
        "train-checkpoint-is-a-directory",
        TRAIN[1:] + ["--checkpoint", "adir"],
        ("--checkpoint adir: is a directory", "name a file"),
        setup=[folder("adir")],
    ),
    train_case(
        "train-default-checkpoint-is-a-directory",
        TRAIN[1:] + ["--out", "res.png"],
        ("--out res.png: the checkpoint's default path res.pt is a directory", "--checkpoint FILE"),
        setup=[folder("res.pt")],
    ),
    train_case(
        "train-checkpoint-folder-missing",
        TRAIN[1:] + ["--checkpoint", "nosuchdir/g.pt"],
        ("--checkpoint nosuchdir/g.pt: folder nosuchdir does not exist", "create it first"),
    ),
    train_case(
        "train-render-max-side-0", TRAIN[1:] + ["--render-max-side", "0"], ("--render-max-side: must be >= 16, got 0",)
    ),
    train_case(
        "train-render-max-side-negative",
        TRAIN[1:] + ["--render-max-side", "-5"],
        ("--render-max-side: must be >= 16, got -5",),
    ),
    train_case(
        "train-vit-weights-missing",
        ["s.png", "a.png", "--vit-weights", "missing.pth"],
        ("missing.pth", "no such ViT weights file"),
        max_seconds=10,
    ),
    train_case(
        "train-dino-not-cached-offline",
        ["s.png", "a.png", "--vit", "dino_vits16"],
        ("dino_vits16", "could not be downloaded", "--vit-weights"),
        patch=_offline,
        max_seconds=10,
    ),
    train_case(
        "train-same-image-twice",
        ["s.png", "twin.png", "--vit", "random_tiny8"],
        ("s.png", "twin.png", "(near-)duplicates"),
        setup=[copied("twin.png")],
    ),
]


# ------------------------------------------------------------------------------------------ checking

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root: (is folder, size, mtime in ns)."""
    result = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        result[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns)
    return result


def error_lines(stderr: str) -> list[str]:
    return [line for line in _ANSI.sub("", stderr).splitlines() if line.strip()]


def check_report(stderr: str, stdout: str, case: Case) -> None:
    assert "Traceback" not in stderr + stdout, stderr + stdout
    assert stdout.strip() == "", f"nothing belongs on stdout for bad input, got:\n{stdout}"
    lines = error_lines(stderr)
    report = "\n".join(lines)
    assert all(line.startswith("error: ") for line in lines), f"every stderr line must be one problem:\n{report}"
    for fragments in case.expect:
        assert any(all(f in line for f in fragments) for line in lines), (
            f"no error line holds all of {fragments}; got:\n{report}"
        )
    assert len(lines) == len(case.expect), f"expected {len(case.expect)} error line(s), got:\n{report}"
    for fragment in case.absent:
        assert fragment not in report, f"{fragment!r} does not apply here; got:\n{report}"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder holding valid inputs; the test runs with it as the working directory."""
    folder_ = tmp_path / "work"
    folder_.mkdir()
    write_valid_inputs(folder_)
    monkeypatch.chdir(folder_)
    return folder_


class ValidationPassed(Exception):
    """Raised by the guards below when a bad input got through validation."""


def guard_against_real_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """If validation wrongly accepts a case, stop right there instead of running a whole search or training
    (which would start Ray, write an MLflow store and spoil the Ray checks of every later case)."""
    import splice_model.train
    import splice_tune.driver

    real_plan = splice_tune.driver.plan_search

    def plan_then_stop(request):
        real_plan(request)
        raise ValidationPassed("plan_search accepted the input; run_search would now start Ray")

    def stop_training(*args, **kwargs):
        raise ValidationPassed("train accepted the input and would now train")

    monkeypatch.setattr(splice_tune.driver, "plan_search", plan_then_stop)
    monkeypatch.setattr(splice_model.train.SpliceTrainer, "events", stop_training)


def run_main(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> int:
    from splice_tune.cli import main

    guard_against_real_work(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["splice-tune", *args])
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except ValidationPassed as passed:
        pytest.fail(f"splice-tune {' '.join(args)}: bad input not rejected: {passed}")
    except BaseException as error:  # noqa: BLE001 - a traceback is exactly what the requirement forbids
        pytest.fail(f"splice-tune {' '.join(args)} raised {type(error).__name__}: {error} (a traceback)")
    return 0


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=case.marks) for case in CASES])
def test_bad_input_is_reported_and_nothing_starts(
    case: Case, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import mlflow
    import ray

    for build in case.setup:
        build(work)
    if case.patch:
        case.patch(monkeypatch, work)
    ray_was_running = ray.is_initialized()
    before = snapshot(work)
    capsys.readouterr()

    started = time.perf_counter()
    code = run_main(monkeypatch, case.args)
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()

    assert code == 2, f"exit code {code}, expected 2; stderr:\n{err}\nstdout:\n{out}"
    check_report(err, out, case)
    assert snapshot(work) == before, "bad input must write nothing"
    assert not (work / "splice-runs").exists()
    if ray_was_running:
        # Another module's session fixture owns a Ray: at least no experiment folder may have appeared.
        assert not (work / "splice-runs" / "ray").exists()
    else:
        assert not ray.is_initialized(), "bad input must not start Ray"
    assert mlflow.active_run() is None
    if case.max_seconds is not None:
        assert seconds < case.max_seconds, f"took {seconds:.1f} s: a missing-weights case must fail fast offline"


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------------------ not mistakes


def _plan(work: Path, csv_text: str):
    """`plan_search` on pairs.csv/space.yaml in `work`, checking it starts and writes nothing."""
    import ray

    from splice_tune.driver import SearchRequest, plan_search

    (work / "pairs.csv").write_text(csv_text, encoding="utf-8")
    ray_was_running = ray.is_initialized()
    before = snapshot(work)
    plan = plan_search(SearchRequest(Path("pairs.csv"), "space.yaml"))
    assert snapshot(work) == before
    if not ray_was_running:
        assert not ray.is_initialized()
    return plan


def test_convertible_modes_are_notes_not_errors(work: Path) -> None:
    base = appearance_picture((48, 40), seed=7)
    base.convert("RGBA").save(work / "rgba.png")
    base.convert("L").save(work / "gray.png")
    base.quantize(colors=64).save(work / "palette.png")
    base.convert("CMYK").save(work / "cmyk.jpg", quality=95)
    gray16 = np.asarray(base.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(work / "gray16.png")
    modes = {"rgba.png": "RGBA", "gray.png": "L", "palette.png": "P", "cmyk.jpg": "CMYK", "gray16.png": "I;16"}
    for name, mode in modes.items():
        assert Image.open(work / name).mode == mode  # the file really holds that mode
    rows = [f"p{index},s.png,{name}" for index, name in enumerate(modes)]

    plan = _plan(work, HEADER + "\n".join(rows) + "\n")

    assert [pair.name for pair in plan.pairs] == [f"p{index}" for index in range(len(modes))]
    for line, (pair, (name, mode)) in enumerate(zip(plan.pairs, modes.items()), start=2):
        assert pair.notes == [f"pairs.csv:{line}: appearance '{name}': converted from mode {mode} to RGB"]


def test_image_above_max_side_is_a_note_not_an_error(work: Path) -> None:
    structure_picture((300, 200)).save(work / "huge.png")  # the space's max_side is 64

    plan = _plan(work, HEADER + "cows,huge.png,a.png\n")

    [pair] = plan.pairs
    assert pair.notes == ["pairs.csv:2: structure 'huge.png': 300x200 will be downscaled to max side 64"]


# ------------------------------------------------------------------------------------------ real processes

SCRIPT = Path(sys.executable).with_name("splice-tune")


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed in this environment")
@pytest.mark.parametrize(
    "args, setup, expect",
    [
        pytest.param(
            ["search", "bad.csv", "--space", "space.yaml"],
            [text("bad.csv", HEADER + "cows,nosuch.png,a.png\na/b,s.png,cut.png\n"), truncated("cut.png")],
            [
                ("bad.csv:2: structure 'nosuch.png'", "no such file"),
                ("bad.csv:3: pair name 'a/b'",),
                ("bad.csv:3: appearance 'cut.png'", "corrupt or truncated"),
            ],
            id="search-bad-csv",
        ),
        pytest.param(
            ["search", "pairs.csv", "--space", "space.yaml", "--cpus-per-trial", "0"],
            [space_with("steps: 10", "steps: ten")],
            [(f"space.yaml:{LINE_STEPS}: fixed.steps", "whole number"), ("--cpus-per-trial", "> 0")],
            id="search-bad-space-and-flag",
        ),
        # Real processes, so that opening a pipe (which blocks forever) fails the test by its timeout.
        pytest.param(
            ["search", "pipe.csv", "--space", "space.yaml"],
            [fifo("pipe.csv")],
            [("pipe.csv: is not a regular file", "give the pairs CSV file")],
            id="search-csv-is-fifo",
        ),
        pytest.param(
            ["search", "pairs.csv", "--space", "space.yaml"],
            [fifo("pipe.png"), text("pairs.csv", HEADER + "cows,s.png,pipe.png\n")],
            [("pairs.csv:2: appearance 'pipe.png'", "is not a regular file")],
            id="search-image-is-fifo",
        ),
        pytest.param(
            ["train", "s.png", "cut.png", "--vit", "random_tiny8"],
            [truncated("cut.png")],
            [("cut.png", "corrupt or truncated image")],
            id="train-corrupt-image",
        ),
    ],
)
def test_console_script_exits_2_without_traceback(args: list[str], setup, expect: list[Line], work: Path) -> None:
    for build in setup:
        build(work)
    before = snapshot(work)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300"}
    done = subprocess.run([str(SCRIPT), *args], cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = error_lines(done.stderr)
    assert lines and all(line.startswith("error: ") for line in lines), done.stderr
    for fragments in expect:
        assert any(all(f in line for f in fragments) for line in lines), f"{fragments} not in:\n{done.stderr}"
    assert len(lines) == len(expect)
    assert snapshot(work) == before


def test_our_pixel_cap_applies_not_pils(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's own bomb guard (89.5 MP by default, here lowered to 1,000 pixels) does not refuse an image under
    our cap; PIL's limit is back as it was afterwards, also after a refusal."""
    from PIL import Image as PILImage

    from splice_model.images import ImageError, open_image

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    assert open_image(work / "s.png").size == (48, 40)  # 1,920 pixels: over PIL's limit, under ours
    assert PILImage.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(splice_model.images, "MAX_PIXELS", 1500)
    with pytest.raises(ImageError, match="48x40 is over the 1,500-pixel limit"):
        open_image(work / "s.png")
    assert PILImage.MAX_IMAGE_PIXELS == 1000
