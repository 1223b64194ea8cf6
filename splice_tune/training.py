"""`splice-tune train`: train Splice on one image pair and render the result at full resolution.

Every flag, the device, the output paths and both images are checked first (`BadInput`, nothing written);
then the ViT weights and that the pair is not a near-duplicate. Training shows a progress bar. The image
is written before the generator checkpoint, so a checkpoint that fails to write does not cost the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

import splice_model
from splice_model import (
    ImageError,
    NearDuplicatePairError,
    NonFiniteLossError,
    SpliceConfig,
    SpliceTrainer,
    WeightsError,
    load_image,
)
from splice_model.presets import not_dino_note
from splice_tune.errors import BadInput, Failure
from splice_tune.formatting import number
from splice_tune.outputs import MIN_SIDE, at_least, checkpoint_problems, image_problems
from splice_tune.progress import train_with_progress


@dataclass
class TrainRequest:
    """What `splice-tune train` was asked to do (flags, not yet validated)."""

    structure: Path
    appearance: Path
    out: Path = Path("out.png")
    checkpoint: Path | None = None  # None: `out` with suffix .pt
    settings: dict[str, Any] = field(default_factory=dict)  # SpliceConfig fields given as flags; None: not given
    render_max_side: int | None = None  # None: the structure image's full size


def run_train(request: TrainRequest, console: Console) -> dict[str, float]:
    """Check everything, train, write the image and the checkpoint; return the final scores.

    Raises BadInput (nothing written) for bad flags, paths, images, weights or a near-duplicate pair, and
    Failure when training diverges (nothing written) or a file cannot be written.
    """
    config = train_config(request.settings)
    structure = _check(request, config)
    try:
        trainer = SpliceTrainer(request.structure, request.appearance, config)
        trainer.check_baselines(f"{request.structure} + {request.appearance}")
    except (WeightsError, NearDuplicatePairError) as error:
        raise BadInput([str(error)]) from None
    try:
        scores = train_with_progress(trainer, console)
    except NonFiniteLossError as error:
        raise Failure(
            f"training diverged at step {error.step} (non-finite loss); lower --lr (it was "
            f"{config.lr:g}). Nothing written."
        ) from None
    checkpoint = request.checkpoint or request.out.with_suffix(".pt")
    _write(trainer, structure, request, checkpoint, scores)
    line = f"wrote {request.out} and {checkpoint}; " + ", ".join(f"{k} {number(v)}" for k, v in scores.items())
    note = not_dino_note(config.vit)
    console.print(line + (f"; {note}" if note else ""), highlight=False, soft_wrap=True)
    return scores


def train_config(settings: dict[str, Any]) -> SpliceConfig:
    """The defaults with the settings given as flags (None: not given); not yet validated."""
    config = SpliceConfig().replace(**{name: value for name, value in settings.items() if value is not None})
    if settings.get("vit_size") is not None:
        # train has no --vit-max-side: the long-side cap follows a larger --vit-size instead of refusing it.
        config = config.replace(vit_max_side=max(config.vit_max_side, config.vit_size))
    return config


def _check(request: TrainRequest, config: SpliceConfig):
    """Raise BadInput listing every problem with the request; return the full-size structure image."""
    problems = [_as_flag(problem) for problem in config.validate()]
    if not any(problem.startswith("--device") for problem in problems):
        problems += _device_problems(config.device)
    problems += image_problems(request.out) + checkpoint_problems(request.checkpoint, request.out)
    problems += at_least("--render-max-side", request.render_max_side, MIN_SIDE)
    for name in ("vit_weights", "judge_vit_weights"):
        weights = getattr(config, name)
        if weights is not None and not Path(weights).is_file():
            flag = "--" + name.replace("_", "-")
            problems.append(f"{flag} {weights}: no such ViT weights file; pass the path of a DINO .pth checkpoint")
    images = {}
    for path in (request.structure, request.appearance):
        try:
            images[path] = load_image(path, min_side=MIN_SIDE)
        except ImageError as error:
            problems.append(str(error))
    if problems:
        raise BadInput(problems)
    return images[request.structure]


def _device_problems(device: str) -> list[str]:
    """Why `--device` (already a valid device string) cannot run training on this machine; [] when it can."""
    import torch

    if device == "auto":
        return []
    parsed = torch.device(device)
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return [f"--device {device}: this machine has no CUDA GPU PyTorch can use; use --device cpu or auto"]
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return [f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"]
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            return [f"--device {device}: Apple's MPS is not available on this machine; use --device cpu or auto"]
    elif parsed.type != "cpu":
        return [f"--device {device}: training runs on cpu, cuda or mps; use one of them (or auto)"]
    return []


def _as_flag(problem: str) -> str:
    """ "max_side: must be ..." -> "--max-side: must be ..." (the user typed a flag, not a field)."""
    name, rest = problem.split(":", 1)
    return f"--{name.replace('_', '-')}:{rest}"


def _write(
    trainer: SpliceTrainer, structure, request: TrainRequest, checkpoint: Path, scores: dict[str, float]
) -> None:
    """The checkpoint, then the rendered image: the training is kept before anything can fail at rendering
    (a full-resolution render is the largest thing a run computes). Failure, saying what was written, when
    either fails."""
    out = request.out
    # Through the package at call time, so a replaced `splice_model.save_checkpoint` (a simulated full disk in
    # the tests) is the one used.
    try:
        splice_model.save_checkpoint(checkpoint, trainer.generator, trainer.config, trainer.step, scores)
    except OSError as error:
        raise Failure(
            f"cannot write {error.filename or checkpoint}: {error.strerror or error}; nothing written"
        ) from None
    try:
        image = splice_model.render(trainer.generator, structure, max_side=request.render_max_side)
        splice_model.to_pil(image).save(out)
    except (OSError, RuntimeError) as error:  # a full disk, or a render the device cannot hold
        reason = f"{error.strerror or error}" if isinstance(error, OSError) else str(error).splitlines()[0]
        raise Failure(
            f"cannot write {getattr(error, 'filename', None) or out}: {reason}; the trained generator is saved in "
            f"{checkpoint} (render it with `splice_model.render(splice_model.load_checkpoint(PATH)[0], IMAGE)`, "
            f"with --render-max-side N on a re-run for a smaller image)"
        ) from None
