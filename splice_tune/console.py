"""What a person watching a search sees: a compact live table per pair, then a summary of the winners.

Without a terminal (CI logs, nohup) a live table cannot redraw itself, so the search prints one progress
line every `PROGRESS_EVERY_S` seconds instead, and the table once at the end.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from splice_tune.formatting import number

PROGRESS_EVERY_S = 30.0


@dataclass
class PairProgress:
    budget: int
    running: set[str] = field(default_factory=set)
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0
    retried: int = 0
    best: float = math.inf
    reported: dict[str, int] = field(default_factory=dict)  # trial id -> evals it has reported so far

    @property
    def done(self) -> int:
        return self.finished + self.stopped_early + self.failed

    def work(self, evals_per_trial: int) -> float:
        """Trials done, counting each running trial by the share of its evals it has reported."""
        # A copy: the search's thread changes `running` while the live table's and the log line's threads read.
        running = tuple(self.running)
        return self.done + sum(min(self.reported.get(trial, 0) / evals_per_trial, 1.0) for trial in running)


class LiveView:
    """Per pair: trials finished / running / stopped early / failed, and the best score so far; for the
    whole search the time elapsed and an estimate of the time left."""

    def __init__(
        self,
        pairs: list[str],
        budget: int,
        metric: str,
        console: Console,
        quiet: bool = False,
        evals_per_trial: int = 1,
        progress_every: float = PROGRESS_EVERY_S,
    ):
        self.pairs = {pair: PairProgress(budget) for pair in pairs}
        self.metric = metric
        self.console = console
        self.evals_per_trial = max(evals_per_trial, 1)
        self.progress_every = progress_every
        self.started = time.monotonic()
        self._work_at_start = 0.0
        self._stopped = threading.Event()
        self.live = (
            None if quiet else Live(get_renderable=self.table, console=console, refresh_per_second=2, transient=False)
        )
        self._printer = None
        if not quiet and not console.is_interactive:
            self._printer = threading.Thread(target=self._print_progress, name="splice-tune-progress", daemon=True)

    def __enter__(self) -> "LiveView":
        self.started = time.monotonic()
        self._work_at_start = self._work()  # a resumed search's earlier trials say nothing about this one's pace
        if self.live:
            self.live.__enter__()
        if self._printer:
            self._printer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        if self._printer:
            self._printer.join()
        if self.live:
            self.live.refresh()
            self.live.__exit__(*exc)
            self.console.line()  # the live table leaves the cursor on its last line

    def _print_progress(self) -> None:
        while not self._stopped.wait(self.progress_every):
            self.console.print(self.progress_line(), highlight=False, soft_wrap=True)

    def _work(self) -> float:
        return sum(progress.work(self.evals_per_trial) for progress in self.pairs.values())

    def timing(self) -> str:
        """ "elapsed 0:01:30, ETA 0:03:00": the time since the search started and the estimated time left, from
        the pace of this run so far ("ETA -" until some work is done)."""
        elapsed = time.monotonic() - self.started
        total = sum(progress.budget for progress in self.pairs.values())
        work = self._work()
        pace = (work - self._work_at_start) / elapsed if elapsed > 0 else 0.0
        eta = _clock((total - work) / pace) if pace > 0 else "-"
        return f"elapsed {_clock(elapsed)}, ETA {eta}"

    def progress_line(self) -> str:
        """One line for logs: the timing, then per pair trials done / running / stopped / failed and its best."""
        pairs = [
            f"{pair} {progress.done}/{progress.budget} done, {len(progress.running)} running, "
            f"{progress.stopped_early} stopped, {progress.failed} failed, best {self.metric} "
            f"{number(progress.best) if math.isfinite(progress.best) else '-'}"
            for pair, progress in self.pairs.items()
        ]
        return f"[{dt.datetime.now():%H:%M:%S}] search progress: {self.timing()} | " + " | ".join(pairs)

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
            self.live.refresh()

    def table(self) -> Table:
        table = Table(title=f"splice-tune search: {self.timing()}", title_justify="left")
        for column in ("pair", "done", "running", "stopped early", "failed", f"best {self.metric}"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        for pair, progress in self.pairs.items():
            best = number(progress.best) if math.isfinite(progress.best) else "-"
            retried = f" ({progress.retried} retried)" if progress.retried else ""
            table.add_row(
                pair,
                f"{progress.done}/{progress.budget}",
                str(len(progress.running)),
                str(progress.stopped_early),
                f"{progress.failed}{retried}",
                best,
            )
        return table


def _clock(seconds: float) -> str:
    """H:MM:SS."""
    return str(dt.timedelta(seconds=round(seconds)))
