"""What a person watching a search sees: a compact live table per pair, then a summary of the winners."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table


@dataclass
class PairProgress:
    budget: int
    running: set[str] = field(default_factory=set)
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0
    retried: int = 0
    best: float = math.inf

    @property
    def done(self) -> int:
        return self.finished + self.stopped_early + self.failed


class LiveView:
    """Per pair: trials finished / running / stopped early / failed, and the best score so far."""

    def __init__(self, pairs: list[str], budget: int, metric: str, console: Console, quiet: bool = False):
        self.pairs = {pair: PairProgress(budget) for pair in pairs}
        self.metric = metric
        self.console = console
        self.live = None if quiet else Live(self.table(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "LiveView":
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self.table())
            self.live.__exit__(*exc)
            self.console.line()  # the live table leaves the cursor on its last line

    def load(self, runs) -> None:
        """Counts from trial runs already recorded (a resumed search starts from what its first part did)."""
        from splice_tune import results, tracking

        for run in runs:
            progress = self.pairs.get(run.data.tags.get(tracking.TAG_PAIR))
            if progress is None:
                continue
            state = results.trial_state(run)
            if state == results.STOPPED_EARLY:
                progress.stopped_early += 1
            elif state == results.FINISHED:
                progress.finished += 1
            elif state == results.FAILED:
                progress.failed += 1
            score = run.data.metrics.get(self.metric)
            if score is not None and math.isfinite(score):
                progress.best = min(progress.best, score)

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.table())

    def table(self) -> Table:
        table = Table(title="splice-tune search", title_justify="left")
        for column in ("pair", "done", "running", "stopped early", "failed", f"best {self.metric}"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        for pair, progress in self.pairs.items():
            best = f"{progress.best:.4f}" if math.isfinite(progress.best) else "-"
            retried = f" ({progress.retried} retried)" if progress.retried else ""
            table.add_row(pair, f"{progress.done}/{progress.budget}", str(len(progress.running)),
                          str(progress.stopped_early), f"{progress.failed}{retried}", best)
        return table
