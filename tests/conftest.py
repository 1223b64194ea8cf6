"""Shared fixtures: tiny images made on the fly and a Splice config small enough for CPU tests.

Nothing here downloads anything: the ViT is the `random_tiny8` preset (seeded random weights, NOT DINO),
so tests check the machinery (shapes, gradients, determinism, scores), not Splice's visual quality.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from splice_model import SpliceConfig

STRUCTURE_SIZE = (72, 56)  # PIL (width, height): non-square, so ViT inputs need positional interpolation
APPEARANCE_SIZE = (64, 64)


def make_structure_image(size: tuple[int, int] = STRUCTURE_SIZE, seed: int = 0) -> Image.Image:
    """A few flat coloured shapes on a light noisy background: clear layout, little texture."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = 200 + rng.integers(0, 30, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(background, mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 6, width // 2, height // 2 + 8), fill=(210, 40, 40))
    draw.rectangle((width // 2, height // 3, width - 6, height - 4), fill=(30, 60, 200))
    draw.polygon([(6, height - 3), (width // 3, height // 2), (width // 2, height - 3)], fill=(40, 170, 60))
    return image


def make_appearance_image(size: tuple[int, int] = APPEARANCE_SIZE, seed: int = 1) -> Image.Image:
    """Diagonal colour stripes with noise: texture everywhere, no layout, different colours from above."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    phase = (x + y) / 6.0
    stripes = np.stack([np.sin(phase), np.sin(phase + 2.0), np.cos(phase / 2)], axis=-1)
    pixels = 127.5 + 90 * stripes + rng.normal(0, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


@pytest.fixture(scope="session")
def structure_image() -> Image.Image:
    return make_structure_image()


@pytest.fixture(scope="session")
def appearance_image() -> Image.Image:
    return make_appearance_image()


@pytest.fixture(scope="session")
def appearance_image_structure_size() -> Image.Image:
    """The appearance texture at the structure image's size (for checks that need equal sizes)."""
    return make_appearance_image(size=STRUCTURE_SIZE)


@pytest.fixture
def image_paths(tmp_path, structure_image, appearance_image) -> tuple:
    """The two images written as PNG files: (structure_path, appearance_path)."""
    structure_path, appearance_path = tmp_path / "structure.png", tmp_path / "appearance.png"
    structure_image.save(structure_path)
    appearance_image.save(appearance_path)
    return structure_path, appearance_path


@pytest.fixture
def tiny_config() -> SpliceConfig:
    """random_tiny8 ViT at a 48-px short side, images capped at 64 px: a step takes milliseconds on a CPU."""
    return SpliceConfig(
        vit="random_tiny8",
        max_side=64,
        vit_size=48,
        vit_max_side=96,
        steps=12,
        eval_every=5,
        full_image_every=4,
        device="cpu",
        seed=0,
    )


# ------------------------------------------------------------------------------------- real ViT weights
# A real DINOv2 ViT-S/14 lies beside the repository (../shared/weights) where CI and this project's
# workplaces run; a user's clone lacks it. Tests that random weights cannot pass (marked real_vit) use it and
# skip without it. The project itself never ships, downloads or defaults to this file.

REAL_VIT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "dinov2_vits14_imgfocus.pth"
REAL_VIT_PRESET = "dinov2_vits14"
REAL_PAIRS = Path(__file__).resolve().parent.parent / "examples" / "real"


@pytest.fixture(scope="session")
def real_vit_weights() -> Path:
    """The real DINOv2 ViT-S/14 weights file; skips the test when it is not beside the repository."""
    if not REAL_VIT_WEIGHTS.is_file():
        pytest.skip(f"real ViT weights not found: {REAL_VIT_WEIGHTS} (a DINOv2 ViT-S/14 state dict)")
    return REAL_VIT_WEIGHTS


@pytest.fixture(scope="session")
def real_vit(real_vit_weights):
    """The real DINOv2 ViT-S/14 features, built once per session."""
    from splice_model.vit import build_vit

    return build_vit(REAL_VIT_PRESET, real_vit_weights)


# ------------------------------------------------------------------------------------------ one real search
# A real search (local Ray, SQLite MLflow store, the shipped example images) is the expensive fixture: it is
# run once per test session and shared by every test that inspects a finished search.

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEST_SPACE = """\
description: test space (random tiny ViT, 64 px, 30 steps)
fixed: {vit: random_tiny8, judge_vit: random_tiny16, max_side: 64, vit_size: 48, vit_max_side: 96, steps: 30,
        eval_every: 10, full_image_every: 10}
params:
  lr: {type: categorical, choices: [1.0e-6, 4.0e-3]}  # 1e-6 barely learns: a trial for ASHA to stop
  alpha: {type: float, low: 0.05, high: 0.3, log: true}
budget: {trials_per_pair: 3, max_concurrent: 1}         # one at a time: ASHA's decisions are reproducible
scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
sampler: {type: random, seed: 3}
"""


@dataclass
class FinishedSearch:
    folder: Path  # holds pairs.csv, space.yaml and splice-runs/
    request: "SearchRequest"  # noqa: F821
    summary: "SearchSummary"  # noqa: F821
    tracking_uri: str


def write_search_inputs(folder: Path, pairs: tuple[str, ...] = ("cows", "fruits")) -> tuple[Path, Path]:
    """pairs.csv pointing at copies of the example images, and the small test search space."""
    rows = ["pair,structure,appearance"]
    for pair in pairs:
        for role in ("structure", "appearance"):
            shutil.copy(EXAMPLES / "pairs" / f"{pair}_{role}.png", folder / f"{pair}_{role}.png")
        rows.append(f"{pair},{pair}_structure.png,{pair}_appearance.png")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    (folder / "space.yaml").write_text(TEST_SPACE)
    return folder / "pairs.csv", folder / "space.yaml"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting one takes seconds); shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory, ray_session) -> FinishedSearch:
    """A finished quick search over 2 example pairs x 3 trials."""
    from splice_tune.driver import SearchRequest, run_search

    folder = tmp_path_factory.mktemp("search")
    pairs_csv, space = write_search_inputs(folder)
    request = SearchRequest(
        pairs_csv=pairs_csv, space=str(space), name="test-search", root=folder / "splice-runs", quiet=True
    )
    summary = run_search(request)
    return FinishedSearch(folder, request, summary, summary.tracking_uri)
