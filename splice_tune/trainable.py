"""The Ray Tune trainable: one Splice training of one pair, logged to MLflow and reported to Tune.

Runs inside a Ray worker process, possibly on another machine: everything it needs (the pair's images,
the search space, the tracking URI and parent run ids) travels in `TrialSetup` through Ray's object store,
so trials need no shared filesystem. Every eval is written to MLflow *before* it is reported, because the
scheduler may stop the trial as soon as it sees the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import ray
import torch
from PIL import Image
from ray import tune

from splice_model import EvalEvent, NonFiniteLossError, SpliceConfig, SpliceTrainer, StepEvent, save_checkpoint, to_pil
from splice_tune.spaces import SearchSpace
from splice_tune.store import TrackingUnreachable
from splice_tune.tracking import TAG_NODE, TAG_RESUMED_FROM
from splice_tune.trial_logger import TrialLogger
from splice_tune.warm_start import SOURCE

_log = logging.getLogger(__name__)

TRAINER_STATE = "trainer.pt"
GENERATOR_FILE = "generator.pt"


def pack_image(image: torch.Tensor) -> bytes:
    """A (3, H, W) image in [0, 1] as the 8-bit PNG the driver puts in Ray's object store for its trials.

    Lossless on the 8 bits: `unpack_image` gives back exactly the image rounded to uint8. PNG, not the raw
    uint8 tensor, because the driver holds every pair's object (raw, 1024 small pairs were ~140 MB of its
    memory, mapped from the object store; PNG at compression level 1 is about a third, ~1.5 ms per image).
    """
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    packed = io.BytesIO()
    Image.fromarray(array).save(packed, format="PNG", compress_level=1)
    return packed.getvalue()


def unpack_image(packed: bytes) -> torch.Tensor:
    """`pack_image`'s PNG as a float (3, H, W) image in [0, 1]."""
    with Image.open(io.BytesIO(packed)) as image:
        array = np.asarray(image.convert("RGB")).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares; built once by the driver and put in Ray's object store."""

    search_name: str
    tracking_uri: str
    experiment_id: str
    parent_runs: dict[str, str]  # pair -> parent run id
    images: dict[str, ray.ObjectRef]  # pair -> ref to (structure, appearance), each `pack_image`'s PNG bytes
    space: SearchSpace
    cpus_per_trial: float


def trial_config(setup: TrialSetup, sampled: dict) -> SpliceConfig:
    """The SpliceConfig of one trial, with the device Ray gave this worker."""
    config = setup.space.config_for(sampled)
    device = config.device
    if device == "auto":
        import ray

        # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned, so the first visible one is ours.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return config.replace(device=device)


def run_trial(trial: dict, setup: TrialSetup, on_event: Callable[[StepEvent | EvalEvent], None] | None = None) -> None:
    """Ray Tune function trainable. `trial` is what the searcher proposed: pair, sampled params, study trial.

    `on_event`, if given, sees every training event first (fault-injection tests use it to fail a trial
    mid-training, after its run exists).
    """
    pair = trial["pair"]
    torch.set_num_threads(max(1, int(setup.cpus_per_trial)))
    config = trial_config(setup, trial["params"])
    logger = _trial_logger(trial, setup, config)
    structure, appearance = (unpack_image(packed) for packed in ray.get(setup.images[pair]))
    try:
        trainer = SpliceTrainer(structure, appearance, config)
        events = _restored_events(trainer, trial.get("resume_from"))
        if trainer.step:
            # Restored from a checkpoint: the record says where this attempt (a retry after a lost node or a
            # crash, or a resume) continued, so how much it redid, and that it did not start over.
            logger.set_tag(TAG_RESUMED_FROM, str(trainer.step))
        for event in events:
            if on_event is not None:
                on_event(event)
            if isinstance(event, EvalEvent):
                _record_eval(event, trainer, logger, pair, setup.space.objective.metric)
            else:
                logger.log_step(event.step, event.losses)
    except NonFiniteLossError as error:
        # A diverged trial is a result (these params are bad), not a crash to retry.
        logger.mark_stopped_early(reason=str(error))
        tune.report(
            {
                setup.space.objective.metric: math.inf,
                "step": error.step,
                "final": True,
                "pair": pair,
                "mlflow_run_id": logger.run_id,
                "diverged": True,
            }
        )
    except TrackingUnreachable:
        # Nowhere to record it: the error, with the server's URL and the limit, goes to Ray's record of the
        # trial instead, where the driver finds it (docs/design.md, Lost nodes and tracking outages).
        raise
    except Exception:  # not BaseException: Ray stops a trial by raising SystemExit in it
        logger.fail(traceback.format_exc())
        raise


def _trial_logger(trial: dict, setup: TrialSetup, config: SpliceConfig) -> TrialLogger:
    """The trial's MLflow run (a new one, or the one a retried/resumed study trial already has)."""
    params = {
        **config.to_dict(),
        "pair": trial["pair"],
        "optuna_trial": trial["optuna_trial"],
        "sampled": ",".join(sorted(trial["params"])) or "-",
    }
    return TrialLogger(
        setup.tracking_uri,
        setup.experiment_id,
        setup.parent_runs[trial["pair"]],
        tune.get_context().get_trial_id(),
        trial["pair"],
        setup.search_name,
        params,
        # Where the trial's values came from: the paper's point, an earlier winner, or the sampler (older
        # searches' resumed trials have no such entry).
        tags={
            TAG_NODE: ray.get_runtime_context().get_node_id(),
            **({SOURCE: trial["source"]} if "source" in trial else {}),
        },
        study_trial=trial["optuna_trial"],
    )


def _restored_events(trainer: SpliceTrainer, resume_from: str | None = None) -> Iterable[StepEvent | EvalEvent]:
    """The trainer's events, continuing from the trial's last checkpoint: Ray's, when Ray retries the trial
    in this Tune run, else `resume_from` (the checkpoint folder an earlier run of the search left for this
    study trial, which the driver found on --resume: `ray_state.latest_checkpoints`)."""
    checkpoint = tune.get_checkpoint()
    where = checkpoint.path if checkpoint is not None else resume_from
    if where is not None:
        try:
            with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(where) as folder:
                state = _load_state(Path(folder))
        except Exception as error:  # any unreadable checkpoint: train again from the start
            # Cut short (a full disk during Ray's copy into the storage), deleted, or not reachable from this
            # node: the trial trains again from step 0, with the same seed, and logs only the steps past what
            # its run already holds (TrialLogger), so its record is the same as if nothing had happened.
            _log.warning("trial checkpoint %s unreadable (%s); training again from step 0", where, error)
        else:
            trainer.load_state_dict(state)
    if trainer.step >= trainer.config.steps:
        # Restored from its final checkpoint (killed right after reporting it): only the record is left.
        scores, output = trainer.evaluate()
        return [EvalEvent(trainer.step, scores, output, final=True)]
    return trainer.events()


def _load_state(folder: Path) -> dict:
    # On the CPU: the augmentation RNG's state must stay there; load_state_dict moves the rest.
    return torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)


def _record_eval(event: EvalEvent, trainer: SpliceTrainer, logger: TrialLogger, pair: str, metric: str) -> None:
    """Log an eval to MLflow, then report it to Ray with a checkpoint (a stop can come right after the report)."""
    image = to_pil(event.output)
    logger.log_eval(event.step, event.scores, image)
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as artifacts:
        torch.save(trainer.state_dict(), Path(folder) / TRAINER_STATE)
        generator_path = save_checkpoint(
            Path(artifacts) / GENERATOR_FILE, trainer.generator, trainer.config, event.step, event.scores
        )
        if event.final:
            logger.log_final(image, generator_path, event.scores)
            logger.finish("FINISHED")
        else:
            logger.log_checkpoint(generator_path)
        # Ray keeps every reported value of every trial in the search's saved state, which it rewrites whole:
        # only what the driver uses goes there (every score is in MLflow).
        tune.report(
            {
                metric: event.scores[metric],
                "step": event.step,
                "final": event.final,
                "pair": pair,
                "mlflow_run_id": logger.run_id,
            },
            checkpoint=tune.Checkpoint.from_directory(folder),
        )
