"""MLflow tracking: one experiment per search, a parent run per pair, a child run per trial.

The driver (`SearchTracker`) creates the experiment and the pair runs; every Ray trial process opens its own
`TrialLogger` against the same tracking URI (a SQLite file on one machine, an MLflow server on a cluster).
Many trial processes write at once, so every database call goes through `retry`, which rides out SQLite's
"database is locked" instead of dropping the record, and per-step losses are buffered in memory and written
in one batch per evaluation, which keeps the number of write transactions (what SQLite serialises) small.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import PIL.Image
import sqlalchemy.exc
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Experiment, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from splice_tune.errors import BadInput

_log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("splice-runs")

TAG_KIND = "splice_tune.kind"
TAG_SEARCH = "splice_tune.search"
TAG_PAIR = "splice_tune.pair"
TAG_TRIAL = "splice_tune.trial_id"
TAG_STUDY_TRIAL = "splice_tune.study_trial"  # the trial's number in its pair's Optuna study
TAG_INTERRUPTED = "splice_tune.interrupted"
TAG_SPEC = "splice_tune.spec"  # fingerprint of the pairs and search space a search was started with
TAG_SPEC_SPACE = "splice_tune.spec.space"  # ... of the search space alone
TAG_SPEC_PAIRS = "splice_tune.spec.pairs"  # ... of the pairs alone (names and image paths)
TAG_INPUT_SHA256 = "splice_tune.input_sha256"  # + ".PAIR.ROLE": the SHA-256 of an input image's file
TAG_VIT = "splice_tune.vit"
TAG_STOPPED_EARLY = "splice_tune.stopped_early"
TAG_ERROR = "splice_tune.error"
TAG_STOP_REASON = "splice_tune.stop_reason"
TAG_NODE = "splice_tune.node_id"
TAG_ATTEMPT = "splice_tune.attempt"
TAG_BEST_TRIAL = "best_trial_run_id"
TAG_DESCRIPTION = MLFLOW_RUN_NOTE  # on an experiment, the description the MLflow UI shows

SCHEDULER_STOP = "stopped by the scheduler"  # the stop reason of a trial ASHA stopped

KIND_PAIR = "pair"
KIND_TRIAL = "trial"

MAX_ERROR_CHARS = 5000
IMAGE_KEY = "output"
TERMINAL_STATUSES = ("FINISHED", "KILLED", "FAILED")

# SQLite's own busy handler (MLflow sets busy_timeout = 20 s) already waits for most locks; what reaches us
# are the cases it gives up on (lock upgrades that would deadlock, or a writer holding the lock > 20 s).
RETRY_SECONDS = 60.0
_FIRST_DELAY = 0.05
_MAX_DELAY = 2.0

_T = TypeVar("_T")


def default_tracking_uri(root: Path) -> str:
    """The embedded store: ``sqlite:///<absolute root>/mlflow.db`` (MLflow creates the folder)."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


def resolve_tracking_uri(tracking_uri: str | None, root: Path) -> str:
    """The URI to use: the one the user gave (``http://...``, ``sqlite:///...``), else the embedded store."""
    return tracking_uri if tracking_uri else default_tracking_uri(root)


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call `call`, retrying with jittered exponential backoff while the database reports a lock.

    Gives up (re-raises) after about `RETRY_SECONDS`. Only safe for calls that are atomic or idempotent:
    a write that failed on a lock was rolled back, so repeating it cannot duplicate anything.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    delay = _FIRST_DELAY
    while True:
        try:
            return call(*args, **kwargs)
        except (MlflowException, sqlalchemy.exc.OperationalError) as error:
            if not _is_locked(error) or time.monotonic() + delay > deadline:
                raise
            _log.debug("tracking store locked; retrying %s in %.2f s", getattr(call, "__name__", call), delay)
        # Jitter keeps writers that collided once from colliding again in lockstep.
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _MAX_DELAY)


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _quote(value: str) -> str:
    """A filter-string literal for `value` (MLflow's parser has no escapes, so pick a quote it lacks)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for a value containing both kinds of quote: {value!r}")


def tag_filter(**tags: str) -> str:
    return " and ".join(f"tags.`{key}` = {_quote(value)}" for key, value in tags.items())


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run of the experiment matching `filter_string`, across all result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = retry(client.search_runs, [experiment_id], filter_string=filter_string,
                      run_view_type=ViewType.ACTIVE_ONLY, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _log_batch(client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (),
               params: Sequence[Param] = (), tags: Sequence[RunTag] = ()) -> None:
    """log_batch split to MLflow's per-call limits (1000 entities, 100 params/tags)."""
    for chunk in _chunks(list(params), MAX_PARAMS_TAGS_PER_BATCH):
        retry(client.log_batch, run_id, params=chunk, synchronous=True)
    for chunk in _chunks(list(tags), MAX_PARAMS_TAGS_PER_BATCH):
        retry(client.log_batch, run_id, tags=chunk, synchronous=True)
    for chunk in _chunks(list(metrics), MAX_ENTITIES_PER_BATCH):
        retry(client.log_batch, run_id, metrics=chunk, synchronous=True)


def _new_params(run: Run, params: dict[str, Any]) -> list[Param]:
    """The params not yet on the run. A changed value is kept as first logged (MLflow forbids changing it)."""
    new = []
    for key, value in params.items():
        value = str(value)
        logged = run.data.params.get(key)
        if logged is None:
            new.append(Param(key, value))
        elif logged != value:
            _log.warning("run %s: param %s stays %r (first logged value); ignoring new value %r",
                         run.info.run_id, key, logged, value)
    return new


def _now_ms() -> int:
    return int(time.time() * 1000)


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a file-backed SQLite store, None for anything else (servers, other databases,
    :memory:)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _sqlite_folder(tracking_uri: str) -> Path | None:
    """Folder of a file-backed SQLite store, None for anything else."""
    path = sqlite_file(tracking_uri)
    return path.parent if path is not None else None


_SQLITE_MAGIC = b"SQLite format 3\x00"
_DAMAGED_HINT = ("restore it from a backup, or use another --root (splice-tune never repairs or replaces a "
                 "store)")


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold the store's creation lock (a file beside a local SQLite store; nothing for other stores).

    MLflow creates and migrates a SQLite store's schema on first contact without any locking of its own:
    two processes doing so at once break each other's migration. Whoever may create the store holds this.
    """
    db = sqlite_file(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(db)):
        yield


def store_problem(db: Path) -> str | None:
    """Why the existing file `db` is not a readable MLflow store (None when it is one), as one line naming
    it. Reads only; a store being created by another process right now is waited for, not reported."""
    problem = _damage(db)
    if problem is not None and _lock_path(db).exists():
        with FileLock(_lock_path(db)):  # its creator holds the lock until the schema is complete
            problem = _damage(db)
    if problem is None:
        return None
    return f"{db}: not a readable MLflow store ({problem}); {_DAMAGED_HINT}"


def _damage(db: Path) -> str | None:
    """What is wrong with the SQLite file `db` as an MLflow store, in a few words; None when nothing is."""
    if not db.is_file():
        return "not a regular file"
    with db.open("rb") as file:
        header = file.read(100)
    if not header:
        return "the file is empty (0 bytes)"
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        return "not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid only when its "version valid for" matches the change counter.
    if header[92:96] == header[24:28] and db.stat().st_size < pages * page_size:
        return f"truncated: {db.stat().st_size:,} of {pages * page_size:,} bytes"
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return "an SQLite database without MLflow's tables"
            connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as error:
        return f"SQLite: {error}"
    return None


class SearchTracker:
    """Driver side: one MLflow experiment per search (experiment name = search name), one parent run per pair.

    Opening a tracker for a search that already exists reuses its experiment, so a resumed search adds to
    the same runs instead of starting a second experiment.
    """

    def __init__(self, tracking_uri: str, search_name: str, artifact_root: Path | None = None):
        """Get or create the experiment `search_name`.

        `artifact_root` is where a newly created experiment stores artifacts when the store is a local SQLite
        file (default: ``mlartifacts`` beside the database); with a server, the server decides.
        Raises `BadInput` when an experiment of that name exists but was deleted.
        """
        self.tracking_uri = tracking_uri
        self.search_name = search_name
        with store_lock(tracking_uri):
            db = sqlite_file(tracking_uri)
            # A file that is there must already be a store: MLflow would build its schema into anything.
            if db is not None and db.exists() and (problem := _damage(db)) is not None:
                raise BadInput(f"{db}: not a readable MLflow store ({problem}); {_DAMAGED_HINT}")
            self.client = MlflowClient(tracking_uri=tracking_uri)  # MLflow creates the schema here
            self.experiment_id = self._get_or_create_experiment(artifact_root)
        self._pair_run_ids: dict[str, str] = {}

    def _get_or_create_experiment(self, artifact_root: Path | None) -> str:
        experiment = retry(self.client.get_experiment_by_name, self.search_name)
        if experiment is None:
            location = None
            db_folder = _sqlite_folder(self.tracking_uri)
            if db_folder is not None:
                root = Path(artifact_root) if artifact_root is not None else db_folder / "mlartifacts"
                location = root.resolve().as_uri()
            try:
                return retry(self.client.create_experiment, self.search_name, artifact_location=location,
                              tags={TAG_SEARCH: self.search_name,
                                    # MLflow 3's UI otherwise opens an experiment on its GenAI traces view
                                    "mlflow.experimentKind": "custom_model_development"})
            except MlflowException as error:
                # Another driver created it between our lookup and create: use theirs.
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = retry(self.client.get_experiment_by_name, self.search_name)
        if experiment.lifecycle_stage == "deleted":
            raise BadInput(f"search name {self.search_name!r}: an MLflow experiment of that name was deleted "
                           f"and still blocks the name; choose another --name, or restore or permanently "
                           f"delete it (`mlflow experiments restore` / `mlflow gc`)")
        if TAG_SEARCH not in experiment.tags:
            retry(self.client.set_experiment_tag, experiment.experiment_id, TAG_SEARCH, self.search_name)
        return experiment.experiment_id

    def tag_search(self, key: str, value: str) -> None:
        """Set a tag on the search's experiment."""
        retry(self.client.set_experiment_tag, self.experiment_id, key, value)

    def _find_pair_run(self, pair_name: str) -> Run | None:
        runs = search_all(self.client, self.experiment_id, tag_filter(
            **{TAG_KIND: KIND_PAIR, TAG_PAIR: pair_name}))
        # Oldest first: if a crash ever left two, every later call keeps choosing the same one.
        return min(runs, key=lambda run: run.info.start_time) if runs else None

    def pair_run(self, pair_name: str, structure_path: Path, appearance_path: Path,
                 baselines: dict[str, float] | None = None, notes: Sequence[str] = ()) -> str:
        """Get or create the parent run of a pair, set it RUNNING, and record the pair's inputs.

        Logs params ``structure``/``appearance`` (the paths), the baselines as metrics under their own keys
        (e.g. ``structure_base``, ``appearance_base``), `notes` as the run's description, and both images
        re-encoded as PNG under ``inputs/structure.png`` and ``inputs/appearance.png``. On resume the existing
        run is reused: params keep their first values, baselines are only re-logged if they changed.
        Returns the run id.
        """
        run = self._find_pair_run(pair_name)
        if run is None:
            run = retry(self.client.create_run, self.experiment_id, run_name=pair_name, tags={
                TAG_KIND: KIND_PAIR, TAG_SEARCH: self.search_name, TAG_PAIR: pair_name})
        elif run.info.status != "RUNNING":
            retry(self.client.update_run, run.info.run_id, status="RUNNING")
        run_id = run.info.run_id

        params = _new_params(run, {"structure": str(structure_path), "appearance": str(appearance_path)})
        now = _now_ms()
        metrics = [Metric(key, float(value), now, 0) for key, value in (baselines or {}).items()
                   if run.data.metrics.get(key) != float(value)]
        tags = [RunTag(MLFLOW_RUN_NOTE, "\n".join(notes))] if notes else []
        _log_batch(self.client, run_id, metrics=metrics, params=params, tags=tags)
        self._log_inputs(run_id, Path(structure_path), Path(appearance_path))
        self._pair_run_ids[pair_name] = run_id
        return run_id

    def _log_inputs(self, run_id: str, structure_path: Path, appearance_path: Path) -> None:
        # The project's loader, so the logged inputs are the RGB images the model sees (mode conversions,
        # first frame); imported here because it pulls in torch, which the driver's other paths do not need.
        from splice_model.images import open_image

        with tempfile.TemporaryDirectory() as tmp:
            for name, path in (("structure", structure_path), ("appearance", appearance_path)):
                png = Path(tmp) / f"{name}.png"
                open_image(path).save(png, format="PNG")
                retry(self.client.log_artifact, run_id, str(png), "inputs")

    def parent_run_id(self, pair_name: str) -> str:
        """The run id of the pair's parent run (LookupError when the search has none)."""
        if pair_name not in self._pair_run_ids:
            run = self._find_pair_run(pair_name)
            if run is None:
                raise LookupError(f"search {self.search_name!r} has no run for pair {pair_name!r}")
            self._pair_run_ids[pair_name] = run.info.run_id
        return self._pair_run_ids[pair_name]

    def finish_pair(self, pair_name: str, status: str = "FINISHED", summary: dict | None = None) -> None:
        """Record the pair's winner on its parent run and end it with `status`.

        `summary` maps names to values: ``best_trial_run_id`` becomes that tag, numbers become metrics
        ``best_<name>`` (``splice_score`` -> ``best_splice_score``; names already starting with ``best_``
        are kept), anything else (categorical params) becomes tag ``splice_tune.best.<name>``. Without a
        summary, the best FINISHED trial by ``splice_score`` is looked up and its params and scores used.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        run_id = self.parent_run_id(pair_name)
        if summary is None:
            summary = self._default_summary(pair_name)
        metrics, tags = [], []
        now = _now_ms()
        for key, value in summary.items():
            if key == TAG_BEST_TRIAL:
                tags.append(RunTag(TAG_BEST_TRIAL, str(value)))
                continue
            name = key if key.startswith("best_") else f"best_{key}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(Metric(name, float(value), now, 0))
            else:
                tags.append(RunTag(f"splice_tune.best.{key.removeprefix('best_')}", str(value)))
        _log_batch(self.client, run_id, metrics=metrics, tags=tags)
        retry(self.client.set_terminated, run_id, status)

    def _default_summary(self, pair_name: str) -> dict:
        try:
            best = best_trial(pair_trials(self.client, self.experiment_id, pair_name))
        except LookupError:
            return {}
        summary: dict[str, Any] = {TAG_BEST_TRIAL: best.info.run_id}
        for key, value in best.data.params.items():
            try:
                summary[key] = float(value)
            except ValueError:
                summary[key] = value
        # Scores only: the winner's loss curves say nothing about the pair.
        summary.update({key: value for key, value in best.data.metrics.items() if key.endswith("_score")})
        return summary

    def mark_trial(self, trial_id: str, status: str, *, stopped_early: bool = False, error: str | None = None,
                   keep_error: bool = False) -> None:
        """End a trial's run from the driver, for what the trial cannot record itself: the scheduler stopped
        it, or its process died. A run that already holds an error tag keeps it when `keep_error` is set
        (the trial's own traceback says more than Ray's summary)."""
        runs = search_all(self.client, self.experiment_id, tag_filter(
            **{TAG_KIND: KIND_TRIAL, TAG_SEARCH: self.search_name, TAG_TRIAL: trial_id}))
        if not runs:
            return  # the trial died before it could open its run: nothing recorded, nothing to mark
        run = min(runs, key=lambda found: found.info.start_time)
        tags = []
        if stopped_early:
            tags += [RunTag(TAG_STOPPED_EARLY, "true"), RunTag(TAG_STOP_REASON, SCHEDULER_STOP)]
        if error and not (keep_error and TAG_ERROR in run.data.tags):
            tags.append(RunTag(TAG_ERROR, error[-MAX_ERROR_CHARS:]))
        _log_batch(self.client, run.info.run_id, tags=tags)
        retry(self.client.set_terminated, run.info.run_id, status)

    def mark_interrupted(self) -> int:
        """End every still-RUNNING trial run of this search as KILLED with tag interrupted=true (the driver
        stopped, or died, while they ran); returns how many. A resumed trial reopens its run."""
        runs = [run for run in self.trial_runs() if run.info.status == "RUNNING"]
        for run in runs:
            _log_batch(self.client, run.info.run_id, tags=[RunTag(TAG_INTERRUPTED, "true")])
            retry(self.client.set_terminated, run.info.run_id, "KILLED")
        return len(runs)

    def trial_runs(self, pair_name: str | None = None) -> list[Run]:
        """All active trial runs of this search (every status), optionally only those of one pair."""
        tags = {TAG_KIND: KIND_TRIAL, TAG_SEARCH: self.search_name}
        if pair_name is not None:
            tags[TAG_PAIR] = pair_name
        return search_all(self.client, self.experiment_id, tag_filter(**tags))


class TrialLogger:
    """Worker side: lives inside a Ray trial process and talks to the tracking URI directly.

    Losses given to `log_step` stay in memory until the next `log_eval`, `log_final` or `finish`, which write
    them (with the scores) in one batch: a trial costs one write transaction per evaluation, not per step.
    Buffered steps are lost if the process dies before the next flush.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str,
                 pair_name: str, search_name: str, params: dict, tags: dict | None = None,
                 study_trial: int | None = None):
        """Get or create the child run of a trial under `parent_run_id` and set it RUNNING.

        The trial is identified by `study_trial` (its number in the pair's Optuna study) when given, and its
        run named ``PAIR-t<study_trial>``; else by Ray's `trial_id`, which also names the run. The study
        number is what survives a driver killed mid-search: Ray may hand the resumed trial a new id, but the
        restored study asks the same trial number again. A restarted trial
        finds its existing run, so each trial has exactly one run: its attempt counter (tag
        ``splice_tune.attempt``) goes up, stale error / stopped-early / interrupted tags from the previous
        attempt are removed, and params already logged are left alone. `tags` (e.g. the Ray node id) and
        the current Ray trial id are set on every attempt. A restarted attempt may resume from a checkpoint
        older than the run's last logged eval (the trial died after logging it, before Ray kept its
        checkpoint): steps up to that eval are replayed with the same values and not logged again.
        """
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._pending: list[Metric] = []
        self._last_step = 0
        self._logged_through = 0  # the last eval step an earlier attempt logged
        extra_tags = {key: str(value) for key, value in (tags or {}).items()}

        identity = {TAG_STUDY_TRIAL: str(study_trial)} if study_trial is not None else {TAG_TRIAL: trial_id}
        extra_tags.update(identity)
        runs = search_all(self.client, experiment_id, tag_filter(
            **{**identity, MLFLOW_PARENT_RUN_ID: parent_run_id}))
        if runs:
            run = min(runs, key=lambda found: found.info.start_time)
            attempt = int(run.data.tags.get(TAG_ATTEMPT, "1")) + 1
            extra_tags[TAG_TRIAL] = trial_id
            for stale in (TAG_ERROR, TAG_STOPPED_EARLY, TAG_STOP_REASON, TAG_INTERRUPTED):
                if stale in run.data.tags:
                    retry(self.client.delete_tag, run.info.run_id, stale)
            if run.info.status != "RUNNING":
                retry(self.client.update_run, run.info.run_id, status="RUNNING")
            _log_batch(self.client, run.info.run_id,
                       tags=[RunTag(key, value) for key, value in {TAG_ATTEMPT: str(attempt),
                                                                   **extra_tags}.items()])
            self._logged_through = self._last_eval_step(run)
        else:
            run_tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_KIND: KIND_TRIAL, TAG_SEARCH: search_name,
                        TAG_PAIR: pair_name, TAG_TRIAL: trial_id, TAG_ATTEMPT: "1", **extra_tags}
            if "vit" in params:
                run_tags[TAG_VIT] = str(params["vit"])
            # PAIR-t<study trial>: what the UI lists, and the same name after a resume gives Ray new trial ids.
            name = f"{pair_name}-t{study_trial}" if study_trial is not None else trial_id
            run = retry(self.client.create_run, experiment_id, run_name=name, tags=run_tags)
        self.run_id: str = run.info.run_id
        _log_batch(self.client, self.run_id, params=_new_params(run, params))

    def _last_eval_step(self, run: Run) -> int:
        # Scores (``*_score``) are logged at evals only, so their short history holds every eval step.
        scores = sorted(key for key in run.data.metrics if key.endswith("_score") and not key.startswith("final_"))
        if not scores:
            return 0
        return max(metric.step for metric in retry(self.client.get_metric_history, run.info.run_id, scores[0]))

    def log_step(self, step: int, losses: dict[str, float]) -> None:
        """Buffer one training step's losses (written at the next flush, with their own step and time)."""
        if step <= self._logged_through:
            return
        now = _now_ms()
        self._pending.extend(Metric(key, float(value), now, step) for key, value in losses.items())
        self._last_step = max(self._last_step, step)

    def log_eval(self, step: int, scores: dict[str, float], image: PIL.Image.Image) -> None:
        """Write the buffered losses and these scores in one batch, then the output image at `step`."""
        if step <= self._logged_through:
            self._last_step = max(self._last_step, step)
            return
        now = _now_ms()
        self._pending.extend(Metric(key, float(value), now, step) for key, value in scores.items())
        self._last_step = max(self._last_step, step)
        self._flush()
        self._log_image(image, step)

    def _flush(self) -> None:
        # Drop each chunk only once it is stored, so a flush that finally raises can be repeated by the
        # next flush (finish() after a failure) without losing or duplicating rows.
        while self._pending:
            chunk = self._pending[:MAX_ENTITIES_PER_BATCH]
            retry(self.client.log_batch, self.run_id, metrics=chunk, synchronous=True)
            del self._pending[:len(chunk)]

    def _log_image(self, image: PIL.Image.Image, step: int) -> None:
        # log_image writes the files first and a run tag last; only that tag touches the database, but a
        # cold artifact-repository cache also reads the run. A lock error therefore means either "files are
        # there, tag missing" or "nothing written": the timestamp, which lands in the file name, tells which,
        # so a retry never leaves a duplicate image at this step.
        timestamp = _now_ms()
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                self.client.log_image(self.run_id, image, key=IMAGE_KEY, step=step, timestamp=timestamp,
                                      synchronous=True)
                return
            except (MlflowException, sqlalchemy.exc.OperationalError) as error:
                if not _is_locked(error) or time.monotonic() > deadline:
                    raise
            marker = f"{IMAGE_KEY}+step+{step}+timestamp+{timestamp}+"
            if any(marker in info.path for info in retry(self.client.list_artifacts, self.run_id, "images")):
                retry(self.client.set_tag, self.run_id, MLFLOW_LOGGED_IMAGES, True, synchronous=True)
                return
            time.sleep(random.uniform(0.05, 0.5))

    def log_checkpoint(self, checkpoint_path: Path) -> None:
        """Store the generator as artifact ``checkpoint/generator.pt``, replacing the previous eval's, so
        every trial (also one stopped early) keeps its latest generator."""
        checkpoint_path = Path(checkpoint_path)
        with tempfile.TemporaryDirectory() as tmp:
            if checkpoint_path.name != "generator.pt":
                checkpoint_path = Path(shutil.copy(checkpoint_path, Path(tmp) / "generator.pt"))
            retry(self.client.log_artifact, self.run_id, str(checkpoint_path), "checkpoint")

    def log_final(self, image: PIL.Image.Image, checkpoint_path: Path, scores: dict[str, float]) -> None:
        """Write buffered losses and ``final_<score>`` metrics, then artifacts ``output.png`` and
        ``checkpoint/generator.pt`` (copied under that name if `checkpoint_path` is named otherwise)."""
        now = _now_ms()
        self._pending.extend(Metric(f"final_{key}", float(value), now, self._last_step)
                             for key, value in scores.items())
        self._flush()
        checkpoint_path = Path(checkpoint_path)
        with tempfile.TemporaryDirectory() as tmp:
            output = Path(tmp) / "output.png"
            image.save(output, format="PNG")
            retry(self.client.log_artifact, self.run_id, str(output))
        self.log_checkpoint(checkpoint_path)

    def finish(self, status: str) -> None:
        """Write anything buffered, then end the run with `status` ("FINISHED", "KILLED" or "FAILED")."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        self._flush()
        retry(self.client.set_terminated, self.run_id, status)

    def fail(self, error: str) -> None:
        """Tag the error text and end the run FAILED.

        Text over 5000 characters keeps its end, where a traceback names the actual exception.
        """
        if len(error) > MAX_ERROR_CHARS:
            marker = "[...truncated]\n"
            error = marker + error[-(MAX_ERROR_CHARS - len(marker)):]
        retry(self.client.set_tag, self.run_id, TAG_ERROR, error, synchronous=True)
        self.finish("FAILED")

    def mark_stopped_early(self, reason: str = SCHEDULER_STOP) -> None:
        """Tag the run as stopped early (with why) and end it KILLED."""
        _log_batch(self.client, self.run_id, tags=[RunTag(TAG_STOPPED_EARLY, "true"),
                                                   RunTag(TAG_STOP_REASON, reason[:MAX_ERROR_CHARS])])
        self.finish("KILLED")


def recorded_search(tracking_uri: str, search_name: str) -> Experiment | None:
    """The experiment of search `search_name` if the store has one (deleted ones included), without ever
    creating a store: a local SQLite file that does not exist yet means no search. Raises `BadInput` for a
    local file that is not a readable MLflow store."""
    db = sqlite_file(tracking_uri)
    if db is not None:
        if not db.exists():
            return None
        problem = store_problem(db)
        if problem is not None:
            raise BadInput(problem)
    return retry(MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name, search_name)


def find_experiment(client: MlflowClient, search_name: str | None) -> Experiment:
    """The experiment of search `search_name`, or of the most recently created search when None.

    Only experiments tagged ``splice_tune.search`` count. Raises `LookupError` with a message listing the
    known searches when there is no match.
    """
    experiments: list[Experiment] = []
    page_token = None
    while True:
        page = retry(client.search_experiments, view_type=ViewType.ACTIVE_ONLY, page_token=page_token)
        experiments.extend(experiment for experiment in page if TAG_SEARCH in experiment.tags)
        page_token = page.token
        if not page_token:
            break
    experiments.sort(key=lambda experiment: experiment.creation_time or 0, reverse=True)
    if search_name is None:
        if experiments:
            return experiments[0]
        raise LookupError("no splice-tune search in this tracking store yet; run `splice-tune search` first "
                          "(or pass the --tracking-uri the search used)")
    for experiment in experiments:
        if experiment.name == search_name:
            return experiment
    known = ", ".join(experiment.name for experiment in experiments) or "none"
    raise LookupError(f"no search named {search_name!r} in this tracking store; known searches (newest first): "
                      f"{known}")


def pair_trials(client: MlflowClient, experiment_id: str, pair_name: str,
                statuses: Sequence[str] | None = ("FINISHED",)) -> list[Run]:
    """The trial runs of one pair whose status is in `statuses` (None: every status)."""
    runs = search_all(client, experiment_id, tag_filter(**{TAG_KIND: KIND_TRIAL, TAG_PAIR: pair_name}))
    return [run for run in runs if statuses is None or run.info.status in statuses]


def best_trial(runs: Iterable[Run], by: str = "splice_score") -> Run:
    """The run with the lowest latest value of metric `by`; runs without it (or with NaN) are skipped.

    Raises `LookupError` when no run has the metric.
    """
    scored = [run for run in runs if by in run.data.metrics and not math.isnan(run.data.metrics[by])]
    if not scored:
        raise LookupError(f"no trial has a {by!r} metric yet")
    return min(scored, key=lambda run: run.data.metrics[by])
