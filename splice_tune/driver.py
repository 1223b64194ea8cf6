"""`splice-tune search`: validate everything, then run every pair's trials on Ray Tune, logged to MLflow.

Nothing starts (no Ray, no MLflow run, no file) until the pairs file, the search space and the flags have
all been checked; problems surface as one `BadInput` listing them all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from ray.tune import Callback
from rich.console import Console

from splice_model import NearDuplicatePairError, PairScorer, WeightsError, build_vit
from splice_model.images import load_image
from splice_tune.console import PROGRESS_EVERY_S, LiveView
from splice_tune.errors import BadInput
from splice_tune.pairs import Pair, read_pairs
from splice_tune.search import PairScheduler, PairSearcher, evals_per_trial, lowest_values
from splice_tune.spaces import SearchSpace, load_space
from splice_tune.trainable import TrialSetup, run_trial
from splice_tune import results, store, tracking

SEARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class SearchRequest:
    """Everything `splice-tune search` was asked to do (flags and files, not yet validated)."""

    pairs_csv: Path
    space: str = "quick"
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    resume: bool = False
    root: Path = store.DEFAULT_ROOT
    storage: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    max_failures: int = 2
    quiet: bool = False
    progress_every: float = PROGRESS_EVERY_S  # seconds between progress lines when there is no terminal
    verbose: bool = False  # Ray's own error reports (with tracebacks) as trials fail


@dataclass
class PairResult:
    pair: str
    run_id: str | None
    score: float | None  # the objective's value
    params: dict[str, str]  # the sampled ones, as MLflow keeps them
    counts: dict[str, int]
    scores: dict[str, float] = field(default_factory=dict)  # every score the winner logged
    parent_run_id: str = ""
    failure: str | None = None  # why no trial finished, when every one failed or diverged


@dataclass
class SearchSummary:
    name: str
    experiment_id: str
    tracking_uri: str
    metric: str
    pairs: list[PairResult]
    vit: str  # the ViT preset the trials used (the first choice, when it is sampled)


@dataclass
class _Plan:
    request: SearchRequest
    name: str
    pairs: list[Pair]
    space: SearchSpace
    storage: str
    tracking_uri: str
    max_concurrent: int | None
    baselines: dict[str, dict[str, float]]  # pair -> structure_base, appearance_base
    fingerprints: dict[str, str]  # experiment tags recording the inputs (see search_fingerprints)


def plan_search(request: SearchRequest) -> _Plan:
    """Check every input; raise BadInput listing all problems. Writes nothing, starts nothing."""
    problems: list[str] = []
    space = None
    try:
        space = load_space(request.space, request.overrides)
    except BadInput as error:
        problems += error.problems
    max_side = _largest(space, "max_side") if space else None
    min_side = space.min_image_side() if space else 16
    pairs: list[Pair] = []
    try:
        pairs = read_pairs(request.pairs_csv, min_side=min_side, max_side=max_side)
    except BadInput as error:
        problems += error.problems
    if request.cpus_per_trial <= 0:
        problems.append(f"--cpus-per-trial: must be > 0, got {request.cpus_per_trial}")
    if request.gpus_per_trial < 0:
        problems.append(f"--gpus-per-trial: must be >= 0, got {request.gpus_per_trial}")
    if request.gpus_per_trial > 1 and request.gpus_per_trial != int(request.gpus_per_trial):
        problems.append(f"--gpus-per-trial: above 1 it must be a whole number of GPUs, got {request.gpus_per_trial}")
    if request.max_concurrent is not None and request.max_concurrent < 1:
        problems.append(f"--max-concurrent: must be >= 1, got {request.max_concurrent}")
    if request.max_failures < 0:
        problems.append(f"--max-failures: must be >= 0, got {request.max_failures}")
    if request.address is None and request.cpus_per_trial > (os.cpu_count() or 1):
        problems.append(f"--cpus-per-trial {request.cpus_per_trial}: this machine has {os.cpu_count()} CPUs, so no "
                        f"trial could ever start; use at most {os.cpu_count()} or join a cluster with --address")
    if request.gpus_per_trial > 0 and request.address is None and torch.cuda.device_count() == 0:
        problems.append(f"--gpus-per-trial {request.gpus_per_trial}: this machine has no GPU; leave it at 0 "
                        f"or join a GPU cluster with --address")
    storage = request.storage or str(request.root / "ray")
    if _is_local(storage):
        # Ray wants an absolute path; a file:// URI names the same folder.
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    # What trials on other machines must reach has to answer now, before anything is written.
    from splice_tune import cluster
    problems += cluster.address_problems(request.address)
    problems += cluster.tracking_problems(request.tracking_uri, request.address)
    name = request.name or (_latest_search(storage) if request.resume else _default_name(request))
    if name is None:
        problems.append(f"--resume: no search to resume under {storage}; pass --name of the search")
    elif not SEARCH_NAME.match(name):
        problems.append(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100, not starting "
                        f"with '.' or '-')")
    else:
        from ray import tune

        experiment = f"{storage.rstrip('/')}/{name}"
        try:
            # Shared or cloud storage (s3://, gs://) is read through Ray's own filesystem layer (pyarrow).
            exists = Path(experiment).exists() if _is_local(storage) else tune.Tuner.can_restore(experiment)
        except (OSError, ValueError) as error:  # what pyarrow raises for an unknown scheme or unreachable store
            problems.append(f"--storage {storage}: cannot read it ({' '.join(str(error).split())}); check the "
                            f"URI and this machine's credentials for it")
        else:
            if request.resume and not exists:
                problems.append(f"--resume: no search named {name!r} under {storage}; check --name and --storage")
            if not request.resume and exists:
                problems.append(f"--name {name!r}: a search of that name exists under {storage}; add --resume "
                                f"to continue it, or choose another --name")
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
    fingerprints = search_fingerprints(space, pairs) if not problems else {}
    if not problems:
        problems += _recorded_search_problems(request, name, space, pairs, fingerprints)
    if problems:
        raise BadInput(problems)
    baselines = _check_vit_and_pairs(space, pairs)
    max_concurrent = request.max_concurrent or space.budget.max_concurrent
    return _Plan(request, name, pairs, space, storage, tracking_uri, max_concurrent, baselines, fingerprints)


def search_fingerprints(space: SearchSpace, pairs: list[Pair]) -> dict[str, str]:
    """What a search runs, as the experiment tags that record it: the space after --set, the pairs (names
    and image paths, in order), both together (`TAG_SPEC`), and each image's content. A resume must run the
    same, or its trials would silently differ from the first part's; separate tags say which input differs.
    """
    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    space_part = space.to_dict()
    pairs_part = [[pair.name, str(pair.structure), str(pair.appearance)] for pair in pairs]
    tags = {tracking.TAG_SPEC: digest({"space": space_part, "pairs": pairs_part}),
            tracking.TAG_SPEC_SPACE: digest(space_part), tracking.TAG_SPEC_PAIRS: digest(pairs_part)}
    for pair in pairs:
        for role in ("structure", "appearance"):
            tags[_image_tag(pair, role)] = hashlib.sha256(getattr(pair, role).read_bytes()).hexdigest()
    return tags


def _image_tag(pair: Pair, role: str) -> str:
    return f"{tracking.TAG_INPUT_SHA256}.{pair.name}.{role}"


def _recorded_search_problems(request: SearchRequest, name: str, space: SearchSpace, pairs: list[Pair],
                              fingerprints: dict[str, str]) -> list[str]:
    """What the MLflow store says against starting (or resuming) search `name`: its records must never be
    mixed with another search's, and a resume must run on the inputs the search started with."""
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
    try:
        experiment = results.recorded_search(tracking_uri, name)
    except BadInput as error:
        return error.problems
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        return [tracking.deleted_search(name)]
    if not request.resume:
        if experiment is not None:
            return [f"--name {name!r}: the MLflow store {tracking_uri} already holds a search of that name; "
                    f"add --resume to continue it, or choose another --name"]
        return []
    if experiment is None:
        return [f"--resume: the MLflow store {tracking_uri} has no search named {name!r}; pass the --root or "
                f"--tracking-uri the search used"]
    if request.tracking_uri is None and not store.lies_under(experiment.artifact_location, request.root):
        # MLflow puts a new run's artifacts where the experiment says, which is no longer this root.
        return [f"--resume: search {name!r} keeps its artifacts in {experiment.artifact_location}, outside --root "
                f"{request.root.resolve()} (the store was moved or copied since the search started); resume it "
                f"where it started, or start a new search with another --name"]
    return _changed_inputs(experiment.tags, request, name, space, pairs, fingerprints)


def _changed_inputs(recorded: dict[str, str], request: SearchRequest, name: str, space: SearchSpace,
                    pairs: list[Pair], fingerprints: dict[str, str]) -> list[str]:
    """One line per input that differs from what search `name` recorded when it started. Inputs it did not
    record (searches started before images were fingerprinted) cannot be compared and pass."""
    def differs(key: str) -> bool:
        return key in recorded and recorded[key] != fingerprints[key]

    fix = f"resume with the inputs search {name!r} started with, or start a new search with another --name"
    problems = []
    if differs(tracking.TAG_SPEC_SPACE):
        problems.append(f"--resume: the search space {_shown(space)} (with its --set values) differs from what "
                        f"search {name!r} started with; {fix}")
    if differs(tracking.TAG_SPEC_PAIRS):
        problems.append(f"--resume: the pairs file {request.pairs_csv} lists other pairs or image paths than "
                        f"search {name!r} started with; {fix}")
    if differs(tracking.TAG_SPEC) and not problems:  # a search that recorded only the combined fingerprint
        problems.append(f"--resume: the pairs file or the search space (with its --set values) differs from "
                        f"what search {name!r} started with; {fix}")
    for pair in pairs if not problems else []:
        for role in ("structure", "appearance"):
            if differs(_image_tag(pair, role)):
                problems.append(f"--resume: {pair.where}: {role} image {getattr(pair, role)} has changed since "
                                f"search {name!r} started (its content differs); put the original back, or "
                                f"start a new search with another --name")
    return problems


def _check_vit_and_pairs(space: SearchSpace, pairs: list[Pair]) -> dict[str, dict[str, float]]:
    """Load the ViT once (weights missing offline fail here, not in every trial) and reject pairs whose
    images are (near-)duplicates, where the scores would divide by ~0. Returns each pair's baselines."""
    config = space.config_for(lowest_values(space))
    try:
        features = build_vit(config.vit, config.vit_weights)
    except WeightsError as error:
        raise BadInput([f"{_shown(space)}: vit {config.vit}: {error}"]) from None
    problems, baselines = [], {}
    for pair in pairs:
        structure = load_image(pair.structure, max_side=config.max_side)
        appearance = load_image(pair.appearance, max_side=config.max_side)
        scorer = PairScorer(features, structure, appearance, config.vit_size, config.vit_max_side,
                            config.vit_resample)
        try:
            scorer.check_baselines(f"{pair.where}: pair {pair.name!r}")
        except NearDuplicatePairError as error:
            problems.append(str(error))
        baselines[pair.name] = scorer.baselines
    if problems:
        raise BadInput(problems)
    return baselines


class SearchInterrupted(Exception):
    """The search stopped before its budget was used (Ctrl-C); its state is saved and it can be resumed."""

    def __init__(self, name: str, interrupted_runs: int):
        self.name, self.interrupted_runs = name, interrupted_runs
        super().__init__(f"search {name!r} interrupted")


def run_search(request: SearchRequest, console: Console | None = None,
               trainable: Callable[..., None] = run_trial) -> SearchSummary:
    """Validate, then run the whole search; returns each pair's winner (also printed unless quiet).

    Raises SearchInterrupted after Ctrl-C (trials then running are marked interrupted in MLflow; the same
    command with --resume continues). `trainable` replaces the trial function (fault-injection tests).
    """
    import ray
    from ray import tune

    console = console or Console(stderr=True, quiet=request.quiet)
    plan = plan_search(request)
    _start_ray(request)  # before any MLflow write: a cluster that cannot be joined or is too small is bad input
    space = plan.space
    for note in [*space.notes, *(note for pair in plan.pairs for note in pair.notes)]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)

    tracker = tracking.SearchTracker(plan.tracking_uri, plan.name, artifact_root=store.artifact_root(request.root))
    for key, value in plan.fingerprints.items():
        tracker.tag_search(key, value)
    if space.description:
        tracker.tag_search(tracking.TAG_DESCRIPTION, space.description)
    parent_runs = {
        pair.name: tracker.pair_run(pair.name, pair.structure, pair.appearance, plan.baselines[pair.name],
                                    pair.notes)
        for pair in plan.pairs
    }
    # One object per pair in Ray's object store: a trial fetches its own pair's images, not every pair's.
    images = {pair.name: ray.put((_uint8(pair.structure, _largest(space, "max_side")),
                                  _uint8(pair.appearance, _largest(space, "max_side")))) for pair in plan.pairs}
    setup = TrialSetup(plan.name, plan.tracking_uri, tracker.experiment_id, parent_runs, images, space,
                       request.cpus_per_trial)

    trainable = tune.with_resources(tune.with_parameters(trainable, setup=setup),
                                    {"cpu": request.cpus_per_trial, "gpu": request.gpus_per_trial})
    pair_names = [pair.name for pair in plan.pairs]
    view = LiveView(pair_names, space.budget.trials_per_pair, space.objective.metric, console, request.quiet,
                    evals_per_trial(space), request.progress_every)
    _SESSIONS[plan.name] = (tracker, view, space.objective.metric)
    callback = _TrackingCallback(plan.name)
    run_config = tune.RunConfig(
        name=plan.name, storage_path=plan.storage, verbose=0, callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=request.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )
    experiment_path = f"{plan.storage.rstrip('/')}/{plan.name}"
    if request.resume:
        # Runs left RUNNING by a driver that died are marked interrupted; those Ray resumes reopen them.
        tracker.mark_interrupted()
        view.load(tracker.trial_runs())
        # Failed trials used their retries already: resuming continues unfinished trials only.
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
    else:
        tuner = tune.Tuner(trainable, run_config=run_config, tune_config=tune.TuneConfig(
            search_alg=PairSearcher(pair_names, space), scheduler=PairScheduler(space, evals_per_trial(space)),
            num_samples=len(pair_names) * space.budget.trials_per_pair,
            max_concurrent_trials=plan.max_concurrent,
            # A worker process serves trial after trial: no new interpreter, imports or ViT load per trial.
            reuse_actors=True))
    console.print(f"search [bold]{plan.name}[/]: {len(pair_names)} pairs x {space.budget.trials_per_pair} trials, "
                  f"space {space.path}, MLflow {plan.tracking_uri}")
    with view, _ray_noise_filtered(request.verbose):
        grid = tuner.fit()
    return _conclude(plan, tracker, grid)


def _conclude(plan: _Plan, tracker: tracking.SearchTracker, grid) -> SearchSummary:
    """End the pair runs after Ray returned: KILLED and `SearchInterrupted` when trials are left (Ctrl-C),
    else FINISHED with each pair's winner, or FAILED for a pair whose every trial failed or diverged."""
    if _ended_trials(tracker, grid) < len(plan.pairs) * plan.space.budget.trials_per_pair:
        interrupted = tracker.mark_interrupted()
        for pair in plan.pairs:
            tracker.finish_pair(pair.name, status="KILLED", summary={})
        raise SearchInterrupted(plan.name, interrupted)
    summary = summarize(plan, tracker)
    for result in summary.pairs:
        tracker.finish_pair(result.pair, status="FAILED" if result.failure else "FINISHED",
                            summary=_winner_record(result, summary.metric))
    return summary


def _ended_trials(tracker: tracking.SearchTracker, grid) -> int:
    """How many trials of the search ended (finished, stopped early, diverged or failed).

    Counted from their MLflow runs, not from Ray: on Ctrl-C Ray marks the trials it stops TERMINATED, as if
    they had finished. Only a trial that failed before it opened its run is known to Ray alone.
    """
    counts = results.count_states(tracker.trial_runs())
    ended = counts[results.FINISHED] + counts[results.STOPPED_EARLY] + counts[results.FAILED]
    return ended + max(0, grid.num_errors - counts[results.FAILED])


def summarize(plan: _Plan, tracker: tracking.SearchTracker) -> SearchSummary:
    """Each pair's winner (lowest objective among its finished trials) and its trial counts, from MLflow."""
    metric = plan.space.objective.metric
    sampled = set(plan.space.params)
    pairs = []
    for pair in plan.pairs:
        runs = tracker.trial_runs(pair.name)
        best = results.winner(runs, metric)
        pairs.append(PairResult(
            pair.name, best.info.run_id if best else None, best.data.metrics.get(metric) if best else None,
            {k: v for k, v in best.data.params.items() if k in sampled} if best else {},
            results.count_states(runs),
            scores={k: v for k, v in best.data.metrics.items() if k in results.SCORES} if best else {},
            parent_run_id=tracker.parent_run_id(pair.name), failure=None if best else results.pair_failure(runs)))
    vit = plan.space.config_for(lowest_values(plan.space)).vit
    return SearchSummary(plan.name, tracker.experiment_id, plan.tracking_uri, metric, pairs, vit)


def _winner_record(result: PairResult, metric: str) -> dict:
    """What the pair's parent run keeps of its winner: its run id, scores and sampled params (numbers become
    metrics best_<name>, categorical values tags splice_tune.best.<name>; see SearchTracker.finish_pair)."""
    if result.run_id is None:
        return {}
    params: dict[str, float | str] = {}
    for name, value in result.params.items():
        try:
            params[name] = float(value)
        except ValueError:
            params[name] = value
    return {tracking.TAG_BEST_TRIAL: result.run_id, **params, **result.scores, metric: result.score}


# Ray pickles the run config (callbacks included) into the experiment and, on --resume, brings back that
# pickled callback; so it holds only the search name and finds this session's live objects here.
_SESSIONS: dict[str, tuple[tracking.SearchTracker, LiveView, str]] = {}


class _TrackingCallback(Callback):
    """Driver-side bookkeeping from Ray's events: the live counts, and the run statuses a trial cannot set
    itself (stopped by the scheduler, or its process died)."""

    def __init__(self, search_name: str):
        self.search_name = search_name

    @property
    def tracker(self) -> tracking.SearchTracker:
        return _SESSIONS[self.search_name][0]

    @property
    def view(self) -> LiveView:
        return _SESSIONS[self.search_name][1]

    @property
    def metric(self) -> str:
        return _SESSIONS[self.search_name][2]

    def _progress(self, trial):
        return self.view.pairs[trial.config["pair"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._progress(trial).running.add(trial.trial_id)
        self.view.refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        progress = self._progress(trial)
        progress.reported[trial.trial_id] = result.get("training_iteration", 0)
        value = result.get(self.metric)
        if value is not None and math.isfinite(value):
            progress.best = min(progress.best, value)  # every score is lower-is-better
        self.view.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
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
        self.view.refresh()

    def on_trial_recover(self, iteration, trials, trial, **info):
        progress = self._progress(trial)
        progress.running.discard(trial.trial_id)
        progress.retried += 1
        self.view.refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        progress = self._progress(trial)
        progress.running.discard(trial.trial_id)
        progress.failed += 1
        self.tracker.mark_trial(trial.trial_id, "FAILED", error=_error_text(_ray_error(trial)), keep_error=True)
        self.view.refresh()


def _ray_error(trial) -> str:
    """Ray's text of the trial's latest failure. Read from the driver's copy of the trial's error file:
    `Trial.get_error()` reads the copy in the experiment's storage, which is synced only later."""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    else:
        text = str(trial.get_error() or "")
    # The file gathers every attempt's failure, each under a "Failure # N (occurred at ...)" line.
    return re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", text, flags=re.MULTILINE)[-1].strip()


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
_RAY_REPLACED = {"ray.tune.tune": ("Stop signal received", "Experiment has been interrupted",
                                   "Trials did not complete")}
# Each failed trial's traceback, kept in MLflow (tag splice_tune.error); printed only with --verbose.
_RAY_TRACEBACKS = {"ray.tune.execution.tune_controller": ("Trial task failed",)}


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextlib.contextmanager
def _ray_noise_filtered(verbose: bool):
    """While Ray runs the search, drop its log lines that splice-tune replaces or keeps in MLflow."""
    dropped = _RAY_REPLACED if verbose else {**_RAY_REPLACED, **_RAY_TRACEBACKS}
    filters = {name: _DropLines(prefixes) for name, prefixes in dropped.items()}
    for name, dropper in filters.items():
        logging.getLogger(name).addFilter(dropper)
    try:
        yield
    finally:
        for name, dropper in filters.items():
            logging.getLogger(name).removeFilter(dropper)


def _start_ray(request: SearchRequest) -> None:
    """Start a local Ray, or join the cluster at --address (shipping this project's code to its workers),
    unless this process is already connected; then check that some node can hold one trial.

    Runs before the search writes anything, so a cluster that cannot be joined or is too small is a
    BadInput like any other (the connection this call made is closed again first).
    """
    import ray

    from splice_tune import cluster

    # Snapshotting the experiment after every checkpoint is what makes --resume lose nothing; Ray warns
    # about its cost, which is negligible at one eval every few seconds or more.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Our live table replaces Ray's own progress output (its config box, tables and TensorBoard hints).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for chatty in ("ray._private.authentication.authentication_token_setup", "mlflow.store.db.utils"):
        logging.getLogger(chatty).setLevel(logging.WARNING if "mlflow" in chatty else logging.ERROR)
    connected_here = not ray.is_initialized()
    if connected_here and request.address:
        cluster.join(request.address)
    elif connected_here:
        # "local": a Ray of our own even when RAY_ADDRESS or a `ray start` on this machine names a cluster;
        # joining one takes --address, which is also what makes the SQLite default refused.
        ray.init(address="local", logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    where = f"the Ray cluster at {request.address}" if request.address else "this machine's Ray"
    problem = cluster.resource_problem(request.cpus_per_trial, request.gpus_per_trial, where)
    if problem:
        if connected_here:
            ray.shutdown()
        raise BadInput([problem])


def _largest(space: SearchSpace, name: str):
    """The largest value a setting can take in this space (None counts as largest: no cap)."""
    spec = space.params.get(name)
    if spec is None:
        return getattr(space.config_for(lowest_values(space)), name)
    values = list(spec.choices) if spec.type == "categorical" else [spec.low, spec.high]
    return None if None in values else max(values)


def _uint8(path: Path, max_side: int | None) -> torch.Tensor:
    return (load_image(path, max_side=max_side) * 255).round().to(torch.uint8)


def _shown(space: SearchSpace) -> str:
    return str(space.path) if space.path else "search space"


def _is_local(storage: str) -> bool:
    """True for a folder this machine reads directly (a path, also a shared mount, or file://); False for a
    URI that only Ray's filesystem layer reads (s3://, gs://, ...)."""
    return "://" not in storage or storage.startswith("file://")


def _default_name(request: SearchRequest) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(request.pairs_csv).stem) or "pairs"
    space = re.sub(r"[^A-Za-z0-9._-]", "-", Path(request.space).stem)
    return f"{stem}-{space}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _latest_search(storage: str) -> str | None:
    if not _is_local(storage) or not Path(storage).is_dir():
        return None
    searches = [path for path in Path(storage).iterdir() if path.is_dir() and SEARCH_NAME.match(path.name)]
    return max(searches, key=lambda path: path.stat().st_mtime).name if searches else None
