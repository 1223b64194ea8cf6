"""What a person watching a search sees: a compact live table per pair, then a summary of the winners.

Without a terminal (CI logs, nohup, a job scheduler) a live table cannot redraw itself, so the search prints
one short progress line every `PROGRESS_EVERY_S` seconds instead; the summary follows the run either way.
"""

from __future__ import annotations

import datetime as dt
import math
import re
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
    whole search the totals, the time elapsed and an estimate of the time left.

    What it prints stays the same size whatever the number of pairs: the live table fits the terminal's
    height (totals first, then the pairs worth seeing: running, failing, just changed), and a progress line
    names only a few pairs (`MAX_NAMED` per kind) and stays under `LINE_CHARS` characters.
    """

    MAX_NAMED = 3
    LINE_CHARS = 300

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
        # Pairs with news since the last progress line, and since the table last showed them (newest last).
        self._changed: dict[str, None] = {}
        self._recent: dict[str, None] = {}
        self._lock = threading.Lock()
        interactive = console.is_interactive
        # A log cannot redraw a table: without a terminal, progress lines only (the summary follows the run).
        self.live = (
            Live(get_renderable=self.table, console=console, refresh_per_second=2, transient=False)
            if not quiet and interactive
            else None
        )
        self._printer = None
        if not quiet and not interactive:
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

    def touch(self, pair: str) -> None:
        """Note that `pair` changed (a trial started, reported or ended): the next line and table name it.
        Cheap, as the search's loop calls it on every event; the live table redraws itself twice a second."""
        with self._lock:  # the progress line's and the live table's threads read these
            for recent in (self._changed, self._recent):
                recent.pop(pair, None)
                recent[pair] = None

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

    def totals(self) -> str:
        """ "5/8 trials done, 2 running, 1 stopped early, 0 failed; 2/4 pairs complete" """
        progress = list(self.pairs.values())
        done, budget = sum(p.done for p in progress), sum(p.budget for p in progress)
        running = sum(len(p.running) for p in progress)
        stopped, failed = sum(p.stopped_early for p in progress), sum(p.failed for p in progress)
        complete = sum(p.done >= p.budget for p in progress)
        return (
            f"{done}/{budget} trials done, {running} running, {stopped} stopped early, {failed} failed; "
            f"{complete}/{len(progress)} pairs complete"
        )

    def _shown(self, pair: str) -> str:
        progress = self.pairs[pair]
        best = f" best {number(progress.best)}" if math.isfinite(progress.best) else ""
        failed = f", {progress.failed} failed" if progress.failed else ""
        return f"{pair} {progress.done}/{progress.budget}{failed}{best}"

    def _worth_naming(self) -> list[tuple[str, list[str]]]:
        """The kinds of pairs a reader wants named, each with its pairs (most telling first)."""
        failing = sorted(
            (p for p, progress in self.pairs.items() if progress.failed), key=lambda p: -self.pairs[p].failed
        )
        with self._lock:
            changed, self._changed = list(reversed(self._changed)), {}
        kinds = [("failing", failing), ("just changed", changed)]
        open_pairs = [pair for pair, progress in self.pairs.items() if progress.done < progress.budget]
        total = sum(progress.budget for progress in self.pairs.values())
        if open_pairs and self._work() >= total / 2:  # once half is done, what holds the search up
            lagging = sorted(open_pairs, key=lambda p: self.pairs[p].work(self.evals_per_trial) / self.pairs[p].budget)
            kinds.append(("lagging", lagging))
        return kinds

    def progress_line(self) -> str:
        """One line for logs: the time, the totals, then a few pairs worth naming (failing, changed since the
        last line, lagging), never more than `LINE_CHARS` characters. A search of a few pairs names each."""
        head = f"[{dt.datetime.now():%H:%M:%S}] search progress: {self.totals()}, {self.timing()}"
        if len(self.pairs) <= self.MAX_NAMED:
            kinds = [("", list(self.pairs))]
        else:
            kinds = self._worth_naming()
        line = head
        for named in range(self.MAX_NAMED, 0, -1):  # fewer names per kind until the line fits
            parts = [head]
            for kind, pairs in kinds:
                if pairs:
                    names = ", ".join(self._shown(pair) for pair in pairs[:named])
                    more = f" +{len(pairs) - named} more" if len(pairs) > named else ""
                    parts.append(f"{kind + ': ' if kind else ''}{names}{more}")
            line = " | ".join(parts)
            if len(line) <= self.LINE_CHARS:
                return line
        return line[: self.LINE_CHARS - 2].rsplit(" ", 1)[0] + " …"

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

    def _table_pairs(self, rows: int) -> tuple[list[str], int]:
        """At most `rows` pairs for the table: running, failing, just changed, then the rest in the CSV's
        order; and how many are left out."""
        if len(self.pairs) <= rows:
            return list(self.pairs), 0
        running = [pair for pair, progress in self.pairs.items() if progress.running]
        failing = [pair for pair, progress in self.pairs.items() if progress.failed]
        chosen: dict[str, None] = {}
        with self._lock:
            recent = list(reversed(self._recent))
        for pair in [*running, *failing, *recent, *self.pairs]:
            if len(chosen) >= rows:
                break
            chosen[pair] = None
        order = {pair: index for index, pair in enumerate(self.pairs)}
        return sorted(chosen, key=order.__getitem__), len(self.pairs) - len(chosen)

    def table(self) -> Table:
        """The live table, no taller than the terminal: title and totals, then the pairs worth seeing."""
        # Title, totals caption, borders and header take 7 lines; one more says what is left out.
        rows = max(self.console.height - 8, 3)
        shown, hidden = self._table_pairs(rows)
        caption = self.totals() + (f"; {hidden} more pairs not shown (all of them: splice-tune ls)" if hidden else "")
        table = Table(
            title=f"splice-tune search: {self.timing()}",
            title_justify="left",
            caption=caption,
            caption_justify="left",
        )
        for column in ("pair", "done", "running", "stopped early", "failed", f"best {self.metric}"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        for pair in shown:
            progress = self.pairs[pair]
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


# What varies between notes of one kind: quoted names and paths, numbers, and which image of the pair.
_NOTE_DETAILS = re.compile(r"'[^']*'|\"[^\"]*\"|\S*/\S*|\d+(?:\.\d+)?|\b(?:structure|appearance)\b")


def grouped_notes(notes: list[str], examples: int = 2) -> list[str]:
    """The notes to print: each kind once or twice as it is, and a kind with more notes than `examples` as
    its first `examples` and one line counting the rest ("... and 510 more like these"). A kind is a note
    with its details (names, paths, numbers, which image) left out; the order is the first note's."""
    kinds: dict[str, list[str]] = {}
    for note in notes:
        kinds.setdefault(_NOTE_DETAILS.sub("_", note), []).append(note)
    lines = []
    for group in kinds.values():
        lines += group[:examples]
        if len(group) > examples:
            lines.append(f"... and {len(group) - examples} more notes like these")
    return lines
