"""The driver's side of a running search: Ray Tune's callback, its session, and the log lines Ray prints meanwhile.

The callback keeps the live table current and records in MLflow what a trial cannot record itself: that the
scheduler stopped it, or that its process died (docs/design.md, Ray layout: Driver callback).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback

from splice_tune import disk_space, stopping, tracking
from splice_tune.console import LiveView

_log = logging.getLogger(__name__)


@dataclass
class SearchSession:
    """This driver's live objects for one running search, which its callback updates."""

    tracker: tracking.SearchTracker
    view: LiveView


# Ray pickles the run config (callbacks included) into the experiment and, on --resume, brings back that
# pickled callback; so it holds only the search name and finds this process's session here.
_SESSIONS: dict[str, SearchSession] = {}


@contextlib.contextmanager
def session(name: str, tracker: tracking.SearchTracker, view: LiveView) -> Iterator[Callback]:
    """While the block runs, search `name` has a session and the yielded callback reaches it. The session is
    removed on the way out, also on an error or Ctrl-C."""
    _SESSIONS[name] = SearchSession(tracker, view)
    try:
        yield TrackingCallback(name)
    finally:
        del _SESSIONS[name]


class TrackingCallback(Callback):
    """Driver-side bookkeeping from Ray's events: the live counts, and the run statuses a trial cannot set
    itself (stopped by the scheduler, or its process died)."""

    def __init__(self, search_name: str):
        self.search_name = search_name

    @property
    def tracker(self) -> tracking.SearchTracker:
        return _SESSIONS[self.search_name].tracker

    @property
    def view(self) -> LiveView:
        return _SESSIONS[self.search_name].view

    def setup(self, **info):
        # Called inside Tuner.fit, after Ray installed its SIGINT handler: every stop signal goes through it.
        stopping.adopt_ray_handler()

    def _progress(self, trial):
        # The table redraws itself; an event only notes its pair (nothing here grows with the pairs).
        self.view.touch(trial.config["pair"])
        return self.view.pairs[trial.config["pair"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._progress(trial).running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        progress = self._progress(trial)
        progress.reported[trial.trial_id] = result.get("training_iteration", 0)
        value = result.get(self.view.metric)
        if value is not None and math.isfinite(value):
            progress.best = min(progress.best, value)  # every score is lower-is-better

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Nothing continues from an ended trial: its checkpoints only took space (its record is in MLflow).
        if trial.checkpoint is not None:
            prune_checkpoints(trial.checkpoint, keep_latest=False)
        progress = self._progress(trial)
        progress.running.discard(trial.trial_id)
        last = trial.last_result or {}
        # A trial ends without its final eval only when the scheduler stopped it.
        if last.get("diverged") or not last.get("final"):
            progress.stopped_early += 1
            if not last.get("diverged"):  # a diverged trial tagged itself, with the reason
                self.tracker.mark_trial(trial.trial_id, "KILLED", stopped_early=True)
        else:
            progress.finished += 1

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        """Delete the trial's earlier checkpoints (Ray keeps them all: see the driver's CheckpointConfig)."""
        prune_checkpoints(checkpoint)

    def on_step_end(self, iteration, trials, **info):
        stopping.poll()  # a full disk that Ray's syncing thread reported

    def _stops_the_search(self, trial) -> bool:
        """A trial that failed on a full disk, or on a tracking server gone past the outage limit: stop the
        whole search (every trial would fail the same way, using up its retries); the trial stays
        unfinished, so --resume runs it again once there is space or a server."""
        text = _ray_error(trial)
        if disk_space.is_full(text):
            with contextlib.suppress(Exception):  # the full disk may be the store's
                self.tracker.mark_trial(trial.trial_id, "KILLED", interrupted=True)
            stopping.request_stop(disk_space.full_line(text), stopping.FULL_DISK)
            return True
        gone = _TRACKING_GONE.search(text)
        if gone:  # nothing to mark: the server is not there (the next --resume marks the run)
            stopping.request_stop(gone.group(0), stopping.TRACKING_GONE)
            return True
        return False

    def on_trial_recover(self, iteration, trials, trial, **info):
        progress = self._progress(trial)
        progress.running.discard(trial.trial_id)
        if not self._stops_the_search(trial):
            progress.retried += 1

    def on_trial_error(self, iteration, trials, trial, **info):
        progress = self._progress(trial)
        progress.running.discard(trial.trial_id)
        progress.failed += 1
        if self._stops_the_search(trial):  # with --max-failures 0: no retry left to keep it unfinished
            return
        self.tracker.mark_trial(trial.trial_id, "FAILED", error=_error_text(_ray_error(trial)), keep_error=True)


def prune_checkpoints(latest, keep_latest: bool = True) -> None:
    """Delete every checkpoint folder beside `latest` (a `ray.tune.Checkpoint`, on local or cloud storage),
    and `latest` too unless `keep_latest`."""
    import pyarrow.fs

    folder, name = latest.path.rstrip("/").rsplit("/", 1)
    name = name if keep_latest else None
    try:
        found = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(folder))
        for entry in found:
            base = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if entry.type == pyarrow.fs.FileType.Directory and base.startswith("checkpoint_") and base != name:
                latest.filesystem.delete_dir(entry.path)
    except OSError as error:  # storage that cannot delete (a full or read-only disk) keeps them: only space
        _log.debug("could not prune checkpoints beside %s: %s", latest.path, error)


def _ray_error(trial) -> str:
    """Ray's text of the trial's latest failure. Read from the driver's copy of the trial's error file:
    `Trial.get_error()` reads the copy in the experiment's storage, which is synced only later."""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    else:
        text = str(trial.get_error() or "")
    # The file gathers every attempt's failure, each under a "Failure # N (occurred at ...)" line.
    return re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", text, flags=re.MULTILINE)[-1].strip()


# The message of `store.TrackingUnreachable`, as a trial's traceback relays it.
_TRACKING_GONE = re.compile(r"the MLflow tracking server at \S+ was unreachable for [^\n]*")


def _error_text(text: str) -> str:
    """The error tag for a trial Ray reports failed. Its first line says what happened: a worker process
    that died (killed by a signal, out of memory, crashed) is named so, not left as a generic failure."""
    if "ActorDiedError" in text or "worker process has died" in text:
        found = re.search(r"Worker exit type: (\S+) Worker exit detail: (.+?)(?:\. |\n|$)", text)
        how = f" ({found.group(1)}: {found.group(2)})" if found else ""
        return f"worker process died{how}\nRay's report:\n{text}"
    return text or "trial failed (Ray recorded no error text; see the trial's Ray log)"


# Ray Tune's log lines that splice-tune replaces with its own: its resume hint names Tuner.restore, where a
# user runs `splice-tune search ... --resume`, and the summary says which trials did not complete.
_RAY_REPLACED = {
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")
}
# Where Ray logs a failed save of the experiment's state or a trial's checkpoint (with its traceback).
# MLflow logs each failed SQLite write (with the exception being handled) before it raises it.
_RAY_STATE_SAVERS = (
    "ray.tune.execution.experiment_state",
    "ray.tune.tune",
    "ray.tune.execution.tune_controller",
    "ray.air.execution._internal.event_manager",
    "mlflow.store.db.utils",
)
# Each failed trial's traceback, kept in MLflow (tag splice_tune.error); printed only with --verbose.
_RAY_TRACEBACKS = {"ray.tune.execution.tune_controller": ("Trial task failed",)}


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


class _FullDisk(logging.Filter):
    """Ray's tracebacks of a state save that failed on a full disk: dropped, and the search stopped with
    one line instead (the driver names the full place)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not (disk_space.is_full(error) or disk_space.is_full(record.getMessage())):
            return True
        stopping.request_stop(
            disk_space.full_line(f"{type(error).__name__}: {error}" if error else record.getMessage())
        )
        return False


@contextlib.contextmanager
def ray_noise_filtered(verbose: bool):
    """While Ray runs the search, drop its log lines that splice-tune replaces or keeps in MLflow."""
    dropped = _RAY_REPLACED if verbose else {**_RAY_REPLACED, **_RAY_TRACEBACKS}
    filters = [(name, _DropLines(prefixes)) for name, prefixes in dropped.items()]
    filters += [(name, _FullDisk()) for name in _RAY_STATE_SAVERS]
    for name, dropper in filters:
        logging.getLogger(name).addFilter(dropper)
    try:
        yield
    finally:
        for name, dropper in filters:
            logging.getLogger(name).removeFilter(dropper)
