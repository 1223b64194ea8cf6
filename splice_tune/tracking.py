"""MLflow writes, driver side: the layout's names, and `SearchTracker` (the experiment and the pair runs).

One experiment per search, a parent run per pair, a child run per trial (docs/design.md, MLflow layout). The
driver writes the experiment and pair runs here; every Ray trial process writes its own run with a
`trial_logger.TrialLogger` against the same tracking URI (a SQLite file on one machine, an MLflow server on a
cluster). Every call goes through `store.retry`, which rides out SQLite's "database is locked" instead of
dropping the record. Reading a search back is `results`' job.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from splice_tune import store
from splice_tune.errors import BadInput
from splice_tune.store import retry, search_all, tag_filter

_log = logging.getLogger(__name__)


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
TAG_RESUMED_FROM = "splice_tune.resumed_from_step"  # the checkpoint's step a retried/resumed attempt began at
TAG_BEST_TRIAL = "best_trial_run_id"
TAG_DESCRIPTION = MLFLOW_RUN_NOTE  # on an experiment, the description the MLflow UI shows

SCHEDULER_STOP = "stopped by the scheduler"  # the stop reason of a trial ASHA stopped

KIND_PAIR = "pair"
KIND_TRIAL = "trial"

MAX_ERROR_CHARS = 5000
IMAGE_KEY = "output"
TERMINAL_STATUSES = ("FINISHED", "KILLED", "FAILED")

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: Sequence[Metric] = (),
    params: Sequence[Param] = (),
    tags: Sequence[RunTag] = (),
) -> None:
    """log_batch split to MLflow's per-call limits (1000 entities, 100 params/tags)."""
    for chunk in _chunks(list(params), MAX_PARAMS_TAGS_PER_BATCH):
        retry(client.log_batch, run_id, params=chunk, synchronous=True)
    for chunk in _chunks(list(tags), MAX_PARAMS_TAGS_PER_BATCH):
        retry(client.log_batch, run_id, tags=chunk, synchronous=True)
    for chunk in _chunks(list(metrics), MAX_ENTITIES_PER_BATCH):
        retry(client.log_batch, run_id, metrics=chunk, synchronous=True)


def new_params(run: Run, params: dict[str, Any]) -> list[Param]:
    """The params not yet on the run. A changed value is kept as first logged (MLflow forbids changing it)."""
    new = []
    for key, value in params.items():
        value = str(value)
        logged = run.data.params.get(key)
        if logged is None:
            new.append(Param(key, value))
        elif logged != value:
            _log.warning(
                "run %s: param %s stays %r (first logged value); ignoring new value %r",
                run.info.run_id,
                key,
                logged,
                value,
            )
    return new


def now_ms() -> int:
    """The time now in MLflow's unit (milliseconds since the epoch)."""
    return int(time.time() * 1000)


def deleted_search(search_name: str) -> str:
    """The one line refusing `search_name` because a deleted MLflow experiment still holds that name."""
    return (
        f"--name {search_name!r}: an MLflow experiment of that name was deleted and still blocks the name; "
        f"choose another --name, or restore or permanently delete it (`mlflow experiments restore` / "
        f"`mlflow gc`)"
    )


class SearchTracker:
    """Driver side: one MLflow experiment per search (experiment name = search name), one parent run per pair.

    Opening a tracker for a search that already exists reuses its experiment, so a resumed search adds to
    the same runs instead of starting a second experiment.
    """

    def __init__(self, tracking_uri: str, search_name: str, artifact_root: Path | None = None):
        """Get or create the experiment `search_name`.

        `artifact_root` is where a newly created experiment stores artifacts when the store is a local SQLite
        file (default: ``mlartifacts`` beside the database); with a server, the server decides.
        Raises `BadInput` when an experiment of that name exists but was deleted, or when the local SQLite
        file is there but is not an MLflow store.
        """
        self.tracking_uri = tracking_uri
        self.search_name = search_name
        with store.store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)  # MLflow creates the schema here
            self.experiment_id = self._get_or_create_experiment(artifact_root)
        self._pair_run_ids: dict[str, str] = {}
        self._pair_runs: dict[str, Run] | None = None  # pair name -> its run, read once (`_find_pair_run`)

    def _get_or_create_experiment(self, artifact_root: Path | None) -> str:
        experiment = retry(self.client.get_experiment_by_name, self.search_name)
        if experiment is None:
            location = None
            db = store.sqlite_file(self.tracking_uri)
            if db is not None:
                root = Path(artifact_root) if artifact_root is not None else store.artifact_root(db.parent)
                location = root.resolve().as_uri()
            try:
                return retry(
                    self.client.create_experiment,
                    self.search_name,
                    artifact_location=location,
                    tags={
                        TAG_SEARCH: self.search_name,
                        # MLflow 3's UI otherwise opens an experiment on its GenAI traces view
                        "mlflow.experimentKind": "custom_model_development",
                    },
                )
            except MlflowException as error:
                # Another driver created it between our lookup and create: use theirs.
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = retry(self.client.get_experiment_by_name, self.search_name)
        if experiment.lifecycle_stage == "deleted":
            raise BadInput(deleted_search(self.search_name))
        if TAG_SEARCH not in experiment.tags:
            retry(self.client.set_experiment_tag, experiment.experiment_id, TAG_SEARCH, self.search_name)
        return experiment.experiment_id

    def tag_search(self, key: str, value: str) -> None:
        """Set a tag on the search's experiment."""
        retry(self.client.set_experiment_tag, self.experiment_id, key, value)

    def _find_pair_run(self, pair_name: str) -> Run | None:
        if self._pair_runs is None:
            # Every pair's run in one read, not one query per pair: a search of thousands of pairs starts in
            # time proportional to its pairs. This tracker's driver is the only writer of pair runs (one
            # driver per search: its lock), so what it creates later is added here.
            runs = search_all(self.client, self.experiment_id, tag_filter(**{TAG_KIND: KIND_PAIR}))
            # Oldest last, so it wins: if a crash ever left two, every later call keeps choosing the same one.
            self._pair_runs = {
                run.data.tags.get(TAG_PAIR): run
                for run in sorted(runs, key=lambda run: run.info.start_time, reverse=True)
            }
        return self._pair_runs.get(pair_name)

    def pair_run(
        self,
        pair_name: str,
        structure_path: Path,
        appearance_path: Path,
        baselines: dict[str, float] | None = None,
        notes: Sequence[str] = (),
    ) -> str:
        """Get or create the parent run of a pair, set it RUNNING, and record the pair's inputs.

        Logs params ``structure``/``appearance`` (the paths), the baselines as metrics under their own keys
        (e.g. ``structure_base``, ``appearance_base``), `notes` as the run's description, and both images
        re-encoded as PNG under ``inputs/structure.png`` and ``inputs/appearance.png``. On resume the existing
        run is reused: params keep their first values, baselines are only re-logged if they changed.
        Returns the run id.
        """
        run = self._find_pair_run(pair_name)
        if run is None:
            run = retry(
                self.client.create_run,
                self.experiment_id,
                run_name=pair_name,
                tags={TAG_KIND: KIND_PAIR, TAG_SEARCH: self.search_name, TAG_PAIR: pair_name},
            )
            self._pair_runs[pair_name] = run
        elif run.info.status != "RUNNING":
            retry(self.client.update_run, run.info.run_id, status="RUNNING")
        run_id = run.info.run_id

        params = new_params(run, {"structure": str(structure_path), "appearance": str(appearance_path)})
        now = now_ms()
        metrics = [
            Metric(key, float(value), now, 0)
            for key, value in (baselines or {}).items()
            if run.data.metrics.get(key) != float(value)
        ]
        tags = [RunTag(MLFLOW_RUN_NOTE, "\n".join(notes))] if notes else []
        log_batch(self.client, run_id, metrics=metrics, params=params, tags=tags)
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

    def finish_pair(self, pair_name: str, status: str = "FINISHED", *, summary: dict[str, Any]) -> None:
        """Record the pair's winner on its parent run and end it with `status`.

        `summary` maps names to values: ``best_trial_run_id`` becomes that tag, numbers become metrics
        ``best_<name>`` (``splice_score`` -> ``best_splice_score``; names already starting with ``best_``
        are kept), anything else (categorical params) becomes tag ``splice_tune.best.<name>``. An empty
        summary records no winner.
        """
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        run_id = self.parent_run_id(pair_name)
        metrics, tags = [], []
        now = now_ms()
        for key, value in summary.items():
            if key == TAG_BEST_TRIAL:
                tags.append(RunTag(TAG_BEST_TRIAL, str(value)))
                continue
            name = key if key.startswith("best_") else f"best_{key}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(Metric(name, float(value), now, 0))
            else:
                tags.append(RunTag(f"splice_tune.best.{key.removeprefix('best_')}", str(value)))
        log_batch(self.client, run_id, metrics=metrics, tags=tags)
        retry(self.client.set_terminated, run_id, status)

    def mark_trial(
        self,
        trial_id: str,
        status: str,
        *,
        stopped_early: bool = False,
        error: str | None = None,
        keep_error: bool = False,
        interrupted: bool = False,
    ) -> None:
        """End a trial's run from the driver, for what the trial cannot record itself: the scheduler stopped
        it, or its process died. A run that already holds an error tag keeps it when `keep_error` is set
        (the trial's own traceback says more than Ray's summary)."""
        runs = search_all(
            self.client,
            self.experiment_id,
            tag_filter(**{TAG_KIND: KIND_TRIAL, TAG_SEARCH: self.search_name, TAG_TRIAL: trial_id}),
        )
        if not runs:
            return  # the trial died before it could open its run: nothing recorded, nothing to mark
        run = min(runs, key=lambda found: found.info.start_time)
        tags = []
        if stopped_early:
            tags += [RunTag(TAG_STOPPED_EARLY, "true"), RunTag(TAG_STOP_REASON, SCHEDULER_STOP)]
        if error and not (keep_error and TAG_ERROR in run.data.tags):
            tags.append(RunTag(TAG_ERROR, error[-MAX_ERROR_CHARS:]))
        if interrupted:  # stopped with the search (a full disk); --resume runs it again
            tags.append(RunTag(TAG_INTERRUPTED, "true"))
        log_batch(self.client, run.info.run_id, tags=tags)
        retry(self.client.set_terminated, run.info.run_id, status)

    def mark_interrupted(self) -> int:
        """End every still-RUNNING trial run of this search as KILLED with tag interrupted=true (the driver
        stopped, or died, while they ran); returns how many. A resumed trial reopens its run."""
        runs = [run for run in self.trial_runs() if run.info.status == "RUNNING"]
        for run in runs:
            log_batch(self.client, run.info.run_id, tags=[RunTag(TAG_INTERRUPTED, "true")])
            retry(self.client.set_terminated, run.info.run_id, "KILLED")
        return len(runs)

    def trial_runs(self, pair_name: str | None = None) -> list[Run]:
        """All active trial runs of this search (every status), optionally only those of one pair."""
        tags = {TAG_KIND: KIND_TRIAL, TAG_SEARCH: self.search_name}
        if pair_name is not None:
            tags[TAG_PAIR] = pair_name
        return search_all(self.client, self.experiment_id, tag_filter(**tags))
