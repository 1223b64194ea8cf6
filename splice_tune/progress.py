"""The training progress bar of `splice-tune train` and `splice-tune best --retrain-steps`."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from splice_model import EvalEvent, SpliceTrainer
from splice_tune.formatting import number


def train_with_progress(trainer: SpliceTrainer, console: Console, label: str = "train") -> dict[str, float]:
    """Train `trainer` to its last step, showing the step, the loss terms, the latest splice_score and it/s;
    return the scores of the final evaluation (the one `events()` makes after the last step).

    Raises what training raises (NonFiniteLossError for a diverging loss); the caller reports it.
    """
    columns = [
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    ]
    final: dict[str, float] | None = None
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=trainer.config.steps, completed=trainer.step, info="")
        score, started = "", None
        for event in trainer.events():
            if isinstance(event, EvalEvent):
                score = f" splice {number(event.scores['splice_score'])}"
                if event.final:
                    final = event.scores
                continue
            # Timed from the first step: building the ViT and the targets before it is not training speed.
            now = time.perf_counter()
            started = started if started is not None else (now, event.step)
            rate = (event.step - started[1]) / max(now - started[0], 1e-9)
            losses = event.losses
            info = (
                f"loss {number(losses['loss/total'])} (app {number(losses['loss/appearance'])}, "
                f"struct {number(losses['loss/structure'])}, id {number(losses['loss/identity'])}){score}"
                + (f" {number(rate)} it/s" if event.step > started[1] else "")
            )
            progress.update(task, completed=event.step, info=info)
    if final is None:  # nothing left to train (a trainer already at its last step)
        final, _ = trainer.evaluate()
    return final
