"""One Splice training of one image pair (paper Sec. 3.3 and A.3), as an iterator of events.

Per regular step: one no-grad ViT pass for the targets (both augmented crops, batched) and one ViT pass
with gradients for the generator's outputs (batched). Every `full_image_every` steps one more pass with
gradients adds the un-augmented structure image. The full images' targets are computed once per run,
and the ViT's weights never get gradients.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from PIL import Image

from .augment import augment_appearance, augment_structure
from .config import SpliceConfig
from .generator import SpliceGenerator
from .images import as_image_tensor
from .losses import PairScorer, appearance_loss, identity_loss, structure_loss
from .vit import ViTFeatures, build_vit, vit_resize


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite (usually a learning rate that is too high)."""

    def __init__(self, step: int, losses: dict[str, float]):
        self.step, self.losses = step, losses
        super().__init__(f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in losses.items()))


@dataclass
class StepEvent:
    """After each optimisation step (1-based `step`): the loss terms of that step."""

    step: int
    losses: dict[str, float]


@dataclass
class EvalEvent:
    """Every `eval_every` steps and after the last: the scores and the full-resolution output (3, H, W)."""

    step: int
    scores: dict[str, float]
    output: torch.Tensor
    final: bool = False


@dataclass
class TrainResult:
    generator: SpliceGenerator
    config: SpliceConfig
    steps_done: int
    scores: dict[str, float]
    output: torch.Tensor
    baselines: dict[str, float]
    stopped: bool = False
    evaluations: list[dict[str, float]] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA GPUs with bf16 (Ampere and later), CPUs with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        # torch.cpu's feature probes are private; a torch without them simply gets fp32.
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def uses_amp(amp: bool | str, device: torch.device) -> bool:
    """Whether a run with `SpliceConfig.amp` = `amp` trains under bf16 autocast on `device`."""
    return native_bf16(device) if amp == "auto" else bool(amp)


def autocast(amp: bool | str, device: torch.device) -> AbstractContextManager:
    """The bf16 autocast context for `amp` on `device`, or a no-op context for exact fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if uses_amp(amp, device) else nullcontext()


def exact_fp32_kernels(device: torch.device) -> None:
    """On CUDA, make fp32 convolutions and matmuls exact fp32 (cuDNN convolutions default to TF32's 10-bit
    mantissa): `amp: false` promises exact fp32, and the fp32 self-similarity under autocast relies on fp32
    matmuls too. bf16 work under autocast is unaffected. Backward kernels with atomic adds still make CUDA
    runs not bit-reproducible."""
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        # torch >= 2.9's precision API; mixing it with the legacy allow_tf32 flags is an error there.
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


_VIT_CACHE: dict[tuple, ViTFeatures] = {}


def load_features(config: SpliceConfig, device: torch.device | str = "cpu", *, judge: bool = False) -> ViTFeatures:
    """The config's frozen ViT (with `judge`, its judge ViT) on `device`, built once per process and reused
    (trials share a worker). Under bf16 autocast its matmul weights are bf16, cast once here (`build_vit`)."""
    preset, weights = (config.judge_vit, config.judge_vit_weights) if judge else (config.vit, config.vit_weights)
    device = torch.device(device)
    bf16 = uses_amp(config.amp, device)
    key = (preset, weights, str(device), bf16)
    if key not in _VIT_CACHE:
        _VIT_CACHE[key] = build_vit(preset, weights, bf16_weights=bf16).to(device)
    return _VIT_CACHE[key]


JUDGE_PREFIX = "judge_"
"""The judge's scores and baselines are the training ViT's names with this prefix (judge_splice_score, ...)."""


class SpliceTrainer:
    """Holds one run's state (generator, optimiser, RNG, targets); `events()` trains and yields progress."""

    def __init__(
        self,
        structure_image,
        appearance_image,
        config: SpliceConfig | None = None,
        features: ViTFeatures | None = None,
        lagged_readout: bool | None = None,
    ):
        """`lagged_readout` (see `events`): None means on CUDA only, where a per-step host sync can idle the
        GPU; on a CPU the sync costs nothing."""
        self.config = config = config or SpliceConfig()
        problems = config.validate()
        if problems:
            raise ValueError("invalid SpliceConfig: " + "; ".join(problems))
        self.device = resolve_device(config.device)
        exact_fp32_kernels(self.device)
        self.lagged_readout = self.device.type == "cuda" if lagged_readout is None else lagged_readout
        if self.device.type == "cuda":
            # cuDNN's autotuner pays off only when every step has the same shapes: crops that always cover
            # the whole short side (crop_min_cover 1). Random crop sizes would re-tune at every new size.
            torch.backends.cudnn.benchmark = config.crop_min_cover == 1.0
        self.structure = as_image_tensor(structure_image, config.max_side).to(self.device)
        self.appearance = as_image_tensor(appearance_image, config.max_side).to(self.device)
        self.features = features.to(self.device) if features is not None else load_features(config, self.device)
        self.vit = torch.compile(self.features) if config.compile else self.features
        self.autocast = autocast(config.amp, self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            # Channels-last convolutions: measured ~10 % faster per step on the CPU (fp32 and bf16 alike),
            # and the layout cuDNN's tensor-core kernels want.
            self.generator = SpliceGenerator().to(self.device, memory_format=torch.channels_last)
        # Fused Adam: one kernel launch instead of one per tensor on CUDA (on the CPU the step is ~1 % of
        # the time either way).
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=config.lr, betas=(0.0, 0.99), fused=self.device.type == "cuda" or None
        )
        self.rng = torch.Generator().manual_seed(config.seed)
        with self.autocast:
            self.scorer = PairScorer(
                self.features,
                self.structure,
                self.appearance,
                config.vit_size,
                config.vit_max_side,
                config.vit_resample,
            )
            # The held-out judge scores each eval too; the generator never trains against it.
            self.judge = None
            if config.judge_vit is not None:
                self.judge = PairScorer(
                    load_features(config, self.device, judge=True),
                    self.structure,
                    self.appearance,
                    config.vit_size,
                    config.vit_max_side,
                    config.vit_resample,
                )
        self.step = 0

    @property
    def baselines(self) -> dict[str, float]:
        """The do-nothing baselines of the scores: the training ViT's, then the judge's (judge_ prefix)."""
        judged = self.judge.baselines if self.judge is not None else {}
        return {**self.scorer.baselines, **{JUDGE_PREFIX + name: value for name, value in judged.items()}}

    def check_baselines(self, what: str = "the pair") -> None:
        """Raise NearDuplicatePairError when the pair's images are (near-)duplicates to the ViT or the judge."""
        self.scorer.check_baselines(what)
        if self.judge is not None:
            self.judge.check_baselines(f"{what} (to the judge ViT {self.config.judge_vit})")

    def _vit_input(self, images: torch.Tensor) -> torch.Tensor:
        return vit_resize(images, self.config.vit_size, self.config.vit_max_side, self.config.vit_resample)

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns its loss terms. Raises NonFiniteLossError on NaN/inf, before the
        optimiser touches the weights."""
        read = self._backward()
        values = read(self.step + 1)
        self.optimizer.step()
        self.step += 1
        return values

    def _lagged_step(self) -> Callable[[], dict[str, float]]:
        """One optimisation step whose loss read-out (a host sync) is left for later: the returned function
        reads the terms, raising NonFiniteLossError as `train_step` does, but after the optimiser step."""
        read = self._backward()
        self.optimizer.step()
        self.step += 1
        step = self.step
        return lambda: read(step)

    def _backward(self) -> Callable[[int], dict[str, float]]:
        """This step's forward and backward pass; returns the read-out of its loss terms (for a 1-based step)."""
        config = self.config
        structure_crop = augment_structure(self.structure, config, self.rng)[None]
        appearance_crop = augment_appearance(self.appearance, config, self.rng)[None]
        with self.autocast:
            # Both crops are square, so both resize to the same ViT input and share one batched pass.
            with torch.no_grad():
                target = self.vit(torch.cat([self._vit_input(structure_crop), self._vit_input(appearance_crop)]))
            output = self.vit(
                torch.cat(
                    [self._vit_input(self.generator(structure_crop)), self._vit_input(self.generator(appearance_crop))]
                )
            )
            terms = {
                "appearance": appearance_loss(output["cls"][:1], target["cls"][1:]),
                "structure": structure_loss(output["selfsim"][:1], target["selfsim"][:1]),
                "identity": identity_loss(output["keys"][1:], target["keys"][1:]),
            }
            # Eq. (4), scaled by loss_scale like the released code's 10 : 1 : 1 weights
            total = config.loss_scale * (
                terms["appearance"] + config.alpha * terms["structure"] + config.beta * terms["identity"]
            )
            if self.step % config.full_image_every == 0:
                full = self.scorer.vit(self.generator(self.structure[None]))
                terms["full_appearance"] = appearance_loss(full["cls"], target["cls"][1:])
                terms["full_structure"] = structure_loss(full["selfsim"], self.scorer.structure_selfsim)
                total = total + config.loss_scale * (terms["full_appearance"] + config.alpha * terms["full_structure"])
        names = [f"loss/{name}" for name in ("total", *terms)]
        readout = torch.stack([t.detach().float() for t in (total, *terms.values())])
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()

        def read(step: int) -> dict[str, float]:
            # The host sync, after the backward is queued so a GPU never idles waiting for it.
            values = dict(zip(names, readout.tolist()))
            if not math.isfinite(values["loss/total"]):
                raise NonFiniteLossError(step, values)
            return values

        return read

    def evaluate(self) -> tuple[dict[str, float], torch.Tensor]:
        """Scores of G(structure image) at the current weights (and the judge's, judge_ prefixed, when the
        config names one), and that output (3, H, W) on the CPU."""
        with torch.no_grad(), self.autocast:
            output = self.generator(self.structure[None]).float()
            scores = self.scorer.score_features(self.scorer.vit(output))
            if self.judge is not None:
                judged = self.judge.score_features(self.judge.vit(output))
                scores.update({JUDGE_PREFIX + name: value for name, value in judged.items()})
        return scores, output[0].cpu()

    def events(self) -> Iterator[StepEvent | EvalEvent]:
        """Train up to `config.steps`, yielding a StepEvent per step and an EvalEvent per evaluation.

        With `lagged_readout`, step k's StepEvent comes once step k+1 is queued: its loss read-out, the one
        host sync of a step, then no longer stops the host from running ahead of a GPU. Evaluations and the
        end read every pending step first, so an EvalEvent still follows its step's StepEvent; a non-finite
        loss raises one step later than it would otherwise, after the optimiser step (the weights of a
        diverged run are not kept either way).
        """
        config = self.config
        pending = None  # (step, read-out) of the last queued step, with lagged_readout
        while self.step < config.steps:
            if self.lagged_readout:
                read = self._lagged_step()
                if pending is not None:
                    yield StepEvent(pending[0], pending[1]())
                pending = (self.step, read)
            else:
                losses = self.train_step()
                yield StepEvent(self.step, losses)
            final = self.step == config.steps
            if final or self.step % config.eval_every == 0:
                if pending is not None:
                    yield StepEvent(pending[0], pending[1]())
                    pending = None
                scores, output = self.evaluate()
                yield EvalEvent(self.step, scores, output, final=final)

    def state_dict(self) -> dict:
        """Everything needed to continue this run later (generator, optimiser, RNG, step)."""
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.step = int(state["step"])


def train_pair(
    structure_image: "torch.Tensor | Image.Image | str",
    appearance_image: "torch.Tensor | Image.Image | str",
    config: SpliceConfig | None = None,
    *,
    callback: Callable[[StepEvent | EvalEvent], bool | None] | None = None,
    features: ViTFeatures | None = None,
) -> TrainResult:
    """Train a Splice generator on one pair: output keeps `structure_image`'s structure and takes
    `appearance_image`'s appearance.

    Images are paths, PIL images or (3, H, W) tensors in [0, 1]. `callback` receives every StepEvent and
    EvalEvent; returning True stops training (e.g. an early-stopping scheduler). Raises
    NonFiniteLossError when the loss diverges.
    """
    trainer = SpliceTrainer(structure_image, appearance_image, config, features)
    evaluations: list[dict[str, float]] = []
    last_scores, last_output, stopped = None, None, False
    for event in trainer.events():
        if isinstance(event, EvalEvent):
            evaluations.append({"step": event.step, **event.scores})
            last_scores, last_output = event.scores, event.output
        if callback is not None and callback(event):
            stopped = not (isinstance(event, EvalEvent) and event.final)
            break
    if last_scores is None or (stopped and evaluations[-1]["step"] != trainer.step):
        last_scores, last_output = trainer.evaluate()
    return TrainResult(
        trainer.generator,
        trainer.config,
        trainer.step,
        last_scores,
        last_output,
        trainer.baselines,
        stopped,
        evaluations,
    )
