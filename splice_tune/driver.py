"""`splice-tune search`: validate everything, then run every pair's trials on Ray Tune, logged to MLflow.

Nothing starts (no Ray, no MLflow run, no file) until the pairs file, the search space and the flags have
all been checked; problems surface as one `BadInput` listing them all. This module puts the stages in order:
the checks are in `search_plan`, the driver's side of the running search in `tune_callback`, and how the
search ended in `search_summary`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from rich.console import Console

from splice_model.images import load_image
from splice_tune import disk_space, ray_state, search, search_plan, stopping, store, studies, tracking, tune_callback
from splice_tune.console import LiveView, grouped_notes
from splice_tune.errors import BadInput
from splice_tune.pairs import Pair, read_pairs
from splice_tune.search import PairScheduler, PairSearcher, evals_per_trial
from splice_tune.search_plan import SearchPlan, SearchRequest
from splice_tune.search_summary import SearchSummary, ended_trials, summarize, winner_record
from splice_tune.spaces import SearchSpace, load_space
from splice_tune.trainable import TrialSetup, pack_image, run_trial

# Searches started before the driver was split saved their Ray callback under this name; `--resume` of such a
# search unpickles it from here.
_TrackingCallback = tune_callback.TrackingCallback
LOCKS_FOLDER = "locks"  # under --root: one lock file per search, held while it runs

__all__ = ["SearchInterrupted", "SearchPlan", "SearchRequest", "SearchSummary", "plan_search", "run_search"]


class SearchInterrupted(Exception):
    """The search stopped before its budget was used (Ctrl-C, SIGTERM, SIGHUP); its state is saved and it can
    be resumed (`started` False: it stopped before Ray saved anything, and the same command starts it anew).
    `exit_code` is 128 + the signal's number."""

    def __init__(
        self, name: str, interrupted_runs: int, exit_code: int = 130, started: bool = True, reason: str | None = None
    ):
        self.name, self.interrupted_runs, self.exit_code, self.started = name, interrupted_runs, exit_code, started
        self.reason = reason  # why the search stopped itself (a full disk); None for a signal
        super().__init__(f"search {name!r} interrupted")


def plan_search(request: SearchRequest) -> SearchPlan:
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
    problems += search_plan.flag_problems(request)
    storage = search_plan.storage_path(request)
    # What trials on other machines must reach has to answer now, before anything is written.
    from splice_tune import cluster

    problems += cluster.address_problems(request.address)
    problems += cluster.tracking_problems(request.tracking_uri, request.address)
    name = search_plan.chosen_name(request, storage)
    problems += search_plan.name_problems(request, name, storage)
    tracking_uri = store.resolve_tracking_uri(request.tracking_uri, request.root.resolve())
    fingerprints = search_plan.search_fingerprints(space, pairs) if not problems else {}
    if not problems:
        problems += search_plan.recorded_search_problems(request, name, space, pairs, fingerprints)
    optuna_url = studies.resolve_url(request.optuna_storage, request.root)
    if not problems:
        problems += search_plan.study_problems(request, name, pairs, optuna_url)
    warm = None
    if not problems:
        try:
            warm = search_plan.warm_start_plan(request, name, space, pairs)
        except BadInput as error:
            problems += error.problems
    if problems:
        raise BadInput(problems)
    baselines = search_plan.check_vit_and_pairs(space, pairs)
    max_concurrent = request.max_concurrent or space.budget.max_concurrent
    return SearchPlan(
        request, name, pairs, space, storage, tracking_uri, optuna_url, max_concurrent, baselines, fingerprints, warm
    )


def run_search(
    request: SearchRequest, console: Console | None = None, trainable: Callable[..., None] = run_trial
) -> SearchSummary:
    """Validate, then run the whole search; returns each pair's winner (also printed unless quiet).

    Raises SearchInterrupted after Ctrl-C, SIGTERM or SIGHUP (trials then running are marked interrupted in
    MLflow; the same command with --resume continues). `trainable` replaces the trial function (fault-injection tests).
    """
    console = console or Console(stderr=True, quiet=request.quiet)
    plan = plan_search(request)
    with _running_alone(request.root, plan.name):
        return _start_and_run(plan, console, trainable)


def _start_and_run(plan: SearchPlan, console: Console, trainable) -> SearchSummary:
    request = plan.request
    _start_ray(request)  # before any MLflow write: a cluster that cannot be joined or is too small is bad input
    # After Ray's start: its core worker installs a SIGTERM handler that dumps a crash report and aborts.
    with stopping.stop_signals() as stop:
        try:
            return _run(plan, console, trainable, stop)
        except KeyboardInterrupt:
            # A signal outside Ray's run: before it (recording the pairs) or after (recording the winners).
            interrupted = _mark_interrupted(plan)
            raise SearchInterrupted(plan.name, interrupted, stop.exit_code, started=stop.fit_started) from None
        except Exception as error:
            gone = _tracking_gone(error)
            if gone is not None:  # the driver's own write gave up on the server (Ray wraps what its loop raised)
                raise _stopped_itself(plan, stopping.TRACKING_GONE, str(gone)) from None
            # A full disk shows itself in many ways, some not naming it (a truncated file Ray reads back
            # raises EOFError): an error while one of the search's places is full is taken for that.
            if not (disk_space.is_full(error) or disk_space.full_places(_places(plan), only_full=True)):
                raise
            raise _stopped_itself(
                plan, stopping.FULL_DISK, stop.reason or disk_space.full_line(f"{type(error).__name__}: {error}")
            ) from None


def _tracking_gone(error: BaseException) -> store.TrackingUnreachable | None:
    """The `TrackingUnreachable` that `error` is or was raised while handling, if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, store.TrackingUnreachable):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _stopped_itself(plan: SearchPlan, kind: str, seen: str) -> SearchInterrupted:
    """The search ends on a full disk (runs left running are marked interrupted when the store can still be
    written, else by the next --resume; the line names the full place) or on a tracking server gone past
    the outage limit (nothing can be marked; the line is the server's)."""
    if kind == stopping.TRACKING_GONE:
        line = f"{seen}; nothing recorded so far is lost. Bring the server back (or wait for it)"
        return SearchInterrupted(plan.name, 0, exit_code=1, reason=line)
    interrupted = _mark_interrupted(plan)
    line = (
        f"no space left on device for {disk_space.full_places(_places(plan))}; first seen as: {seen}. Free "
        f"space there (nothing recorded so far is lost)"
    )
    return SearchInterrupted(plan.name, interrupted, exit_code=1, reason=line)


def _mark_interrupted(plan: SearchPlan) -> int:
    """Mark the search's RUNNING trial runs interrupted, as far as the store can still be written (a full
    disk, a tracking server gone: the next --resume marks what is left); how many were marked."""
    mlflow_log = logging.getLogger("mlflow.store.db.utils")  # it logs each failed write before raising it
    mlflow_log.disabled = True
    try:
        return tracking.SearchTracker(plan.tracking_uri, plan.name).mark_interrupted()
    except Exception:  # whatever the store raises, the stop goes on and says how to resume
        return 0
    finally:
        mlflow_log.disabled = False


def _places(plan: SearchPlan) -> dict[str, Path | None]:
    """Where the search writes on this machine, by what a user calls it (None: not local)."""
    local_store = store.local_path(plan.tracking_uri)
    return {
        "the MLflow store": local_store,
        "its artifacts": store.artifact_root(plan.request.root) if local_store else None,
        "Ray's storage": Path(plan.storage) if search_plan.is_local(plan.storage) else None,
        "the Optuna storage": studies.sqlite_file(plan.optuna_url),
    }


def _run(plan: SearchPlan, console: Console, trainable, stop: stopping.StopState) -> SearchSummary:
    """The search after its checks and Ray's start: MLflow records, Ray Tune's run, how it ended."""
    import ray
    from ray import tune

    request, space = plan.request, plan.space
    # Notes of one kind (every image downscaled) are a few examples and a count; each pair's run keeps its own.
    notes = [*space.notes, *(note for pair in plan.pairs for note in pair.notes), *plan.warm.notes]
    for note in grouped_notes(notes):
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)

    tracker, parent_runs = _record_start(plan)
    # One object per pair in Ray's object store: a trial fetches its own pair's images, not every pair's.
    max_side = _largest(space, "max_side")
    images = {
        pair.name: ray.put(
            (
                pack_image(load_image(pair.structure, max_side=max_side)),
                pack_image(load_image(pair.appearance, max_side=max_side)),
            )
        )
        for pair in plan.pairs
    }
    setup = TrialSetup(
        plan.name, plan.tracking_uri, tracker.experiment_id, parent_runs, images, space, request.cpus_per_trial
    )

    trainable = tune.with_resources(
        tune.with_parameters(trainable, setup=setup), {"cpu": request.cpus_per_trial, "gpu": request.gpus_per_trial}
    )
    view = LiveView(
        [pair.name for pair in plan.pairs],
        space.budget.trials_per_pair,
        space.objective.metric,
        console,
        request.quiet,
        evals_per_trial(space),
        request.progress_every,
    )
    with tune_callback.session(plan.name, tracker, view) as callback:
        tuner = _tuner(plan, trainable, callback, tracker, view, parent_runs, console)
        console.print(
            f"search [bold]{plan.name}[/]: {len(plan.pairs)} pairs x {space.budget.trials_per_pair} "
            f"trials, space {space.path}, MLflow {plan.tracking_uri}, Optuna {studies.shown(plan.optuna_url)}",
            soft_wrap=True,
        )
        with view, tune_callback.ray_noise_filtered(request.verbose):
            stop.fit_started = True
            try:
                grid = tuner.fit()
            finally:
                stopping.leave_fit()
    return _conclude(plan, tracker, grid, stop)


@contextlib.contextmanager
def _running_alone(root: Path, name: str) -> Iterator[None]:
    """Hold search `name`'s lock (ROOT/locks/NAME.lock) while it runs; `BadInput` naming the process that
    holds it, when the same search already runs (a second --resume from another terminal). The lock is the
    kernel's (flock): a driver that dies, however, releases it."""
    folder = Path(root) / LOCKS_FOLDER
    made = [path for path in (Path(root), folder) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    made += [] if path.exists() else [path]
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise BadInput(
                [f"search {name!r} is already running ({holder}); wait for it to end, or stop it first"]
            ) from None
        file.seek(0)
        file.truncate()
        started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}")
        file.flush()
        try:
            yield
        except BadInput:
            # Refused before anything ran (a cluster too small): leave no trace, as every refusal does.
            for made_path in reversed(made):
                with contextlib.suppress(OSError):
                    made_path.unlink() if made_path.is_file() else made_path.rmdir()
            raise


def _record_start(plan: SearchPlan) -> tuple[tracking.SearchTracker, dict[str, str]]:
    """Open the search's MLflow records: its experiment, tagged with the inputs' fingerprints and the space's
    description, and each pair's run. Returns the tracker and each pair's run id."""
    tracker = tracking.SearchTracker(plan.tracking_uri, plan.name, artifact_root=store.artifact_root(plan.request.root))
    for key, value in plan.fingerprints.items():
        tracker.tag_search(key, value)
    if plan.space.description:
        tracker.tag_search(tracking.TAG_DESCRIPTION, plan.space.description)
    tracker.tag_search(studies.TAG_STORAGE, studies.shown(plan.optuna_url))
    parent_runs = {
        pair.name: tracker.pair_run(pair.name, pair.structure, pair.appearance, plan.baselines[pair.name], pair.notes)
        for pair in plan.pairs
    }
    return tracker, parent_runs


def _tuner(
    plan: SearchPlan,
    trainable,
    callback,
    tracker: tracking.SearchTracker,
    view: LiveView,
    parent_runs: dict[str, str],
    console: Console,
):
    """The Tune run of the whole search: a new one, whose searcher creates the pairs' studies in the Optuna
    storage. With --resume, a new Tune run too, whose searcher continues from those studies
    (`PairSearcher.from_studies`): ended study trials count against the budget, and the ones left unfinished
    start again under their own number and MLflow run, from the latest checkpoint the earlier runs left
    (`ray_state.latest_checkpoints`). Ray's own saved state of the search is not read back: it is a periodic
    snapshot, which a killed driver leaves behind what the studies and MLflow hold. A saved state that does
    not even read back (`ray_state.damage`, a full disk mid-write) is set aside, with a note."""
    request, space = plan.request, plan.space
    pair_names = [pair.name for pair in plan.pairs]
    if request.resume:
        # Runs left RUNNING by a driver that died are marked interrupted; the trials started again reopen them.
        tracker.mark_interrupted()
        view.load(tracker.trial_runs())
        search.use_storage(plan.name, plan.optuna_url)
        checkpoints, damage = {}, None
        if search_plan.is_local(plan.storage):
            experiment = Path(plan.storage) / plan.name
            damage = ray_state.damage(experiment) if experiment.is_dir() else None
            if damage is not None:
                experiment = ray_state.set_aside(experiment)
            checkpoints = ray_state.latest_checkpoints(experiment)
        searcher, left = PairSearcher.from_studies(plan.name, pair_names, space, plan.optuna_url, checkpoints)
        if damage is not None:
            console.print(
                f"[yellow]note:[/] Ray's saved state of search {plan.name} cannot be read back ({damage}); "
                f"it is kept in {experiment}, and the search continues from its Optuna studies and MLflow "
                f"runs as every resume does ({left} trials to go)",
                highlight=False,
                soft_wrap=True,
            )
        return _new_tuner(plan, trainable, callback, searcher, left)
    searcher = PairSearcher(plan.name, pair_names, space, plan.optuna_url, parent_runs, plan.warm.points)
    return _new_tuner(plan, trainable, callback, searcher, len(pair_names) * space.budget.trials_per_pair)


def _new_tuner(plan: SearchPlan, trainable, callback, searcher: PairSearcher, trials: int):
    """A Tune run of `trials` trials (at least one: a searcher with nothing left says so at once)."""
    from ray import tune

    run_config = tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        verbose=0,
        callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=plan.request.max_failures),
        # Every checkpoint kept as far as Ray knows: with num_to_keep set, Ray rewrites the whole search's
        # saved state (every trial's) at every trial checkpoint, a cost per trial that grows with the trials.
        # The driver callback deletes a trial's superseded checkpoints instead (`TrackingCallback.on_checkpoint`);
        # a resume does not need Ray's snapshots (see `_tuner`).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )
    return tune.Tuner(
        trainable,
        run_config=run_config,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=PairScheduler(plan.space, evals_per_trial(plan.space)),
            num_samples=max(trials, 1),
            max_concurrent_trials=plan.max_concurrent,
            # A worker process serves trial after trial: no new interpreter, imports or ViT load per trial.
            reuse_actors=True,
            trial_dirname_creator=trial_folder_name,
        ),
    )


def trial_folder_name(trial) -> str:
    """A trial's folder under the Ray storage: its id, pair and study trial (Ray's default spells out the
    whole config, `resume_from` path included)."""
    config = trial.config
    return f"{trial.trial_id}_{config.get('pair', 'trial')}_t{config.get('optuna_trial', '')}"


def _conclude(plan: SearchPlan, tracker: tracking.SearchTracker, grid, stop: stopping.StopState) -> SearchSummary:
    """End the pair runs after Ray returned: KILLED and `SearchInterrupted` when trials are left (a signal),
    else FINISHED with each pair's winner, or FAILED for a pair whose every trial failed or diverged."""
    if stop.reason is not None:  # the search stopped itself: a full disk, or no tracking server, seen by a trial
        raise _stopped_itself(plan, stop.kind, stop.reason)
    if ended_trials(tracker, grid) < len(plan.pairs) * plan.space.budget.trials_per_pair:
        interrupted = tracker.mark_interrupted()
        for pair in plan.pairs:
            tracker.finish_pair(pair.name, status="KILLED", summary={})
        raise SearchInterrupted(plan.name, interrupted, stop.exit_code)
    summary = summarize(plan, tracker)
    for result in summary.pairs:
        tracker.finish_pair(
            result.pair,
            status="FAILED" if result.failure else "FINISHED",
            summary=winner_record(result, summary.metric),
        )
    return summary


def _start_ray(request: SearchRequest) -> None:
    """Start a local Ray, or join the cluster at --address (shipping this project's code to its workers),
    unless this process is already connected; then check that some node can hold one trial.

    Runs before the search writes anything, so a cluster that cannot be joined or is too small is a
    BadInput like any other (the connection this call made is closed again first).
    """
    import ray

    from splice_tune import cluster

    # A trial's failure is recorded (MLflow, the live counts); Ray's own report of each one at exit is noise.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
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
    values = space.values(name)
    return None if None in values else max(values)
