"""MLflow reads: the store, the searches, their pairs, their trials and the winners.

Shared by `splice-tune best`, `report`, `ls` and `ui`, and by `search` for what a store already holds. Opening
a store never creates one: MLflow would happily create an empty ``mlflow.db`` on first contact, so local
stores are checked on disk first and a missing one is `BadInput` naming the path. Writing is `tracking`'s
job; where the store is and whether it is sound, `store`'s.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import shlex
import socket
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException

from splice_model.config import SpliceConfig
from splice_tune import store, tracking
from splice_tune.errors import BadInput

# What `splice-tune ui` serves by default; links printed for a local store point there unless it serves elsewhere.
DEFAULT_UI_URL = "http://127.0.0.1:5000"
# Written by `splice-tune ui` beside the store while it serves it: {"url": ..., "pid": ..., "host": ...}.
UI_STATE_FILE = "ui.json"

FINISHED = "finished"
STOPPED_EARLY = "stopped early"
FAILED = "failed"
RUNNING = "running"
INTERRUPTED = "interrupted"  # KILLED without the stopped-early tag: the search itself was stopped
STATES = (FINISHED, STOPPED_EARLY, FAILED, RUNNING, INTERRUPTED)

# The scores every trial logs (all lower-is-better), in the order results show them; then the held-out judge's,
# which trials of a space that names judge_vit log too.
TRAINING_SCORES = ("splice_score", "structure_score", "appearance_score")
JUDGE_SCORES = tuple(f"judge_{name}" for name in TRAINING_SCORES)
SCORES = TRAINING_SCORES + JUDGE_SCORES
# Bookkeeping params of a trial run, not settings of the training.
NOT_SETTINGS = frozenset({"pair", "optuna_trial", "sampled"})

# log_image's file names: images/output+step+<step>+timestamp+<ms>+<uuid>.png (plus a .webp preview)
_EVAL_IMAGE = re.compile(rf"^images/{re.escape(tracking.IMAGE_KEY)}\+step\+(\d+)\+.*(?<!\+compressed)\.png$")


@dataclass
class PairRuns:
    """One pair of a search: its parent run and every trial run (all statuses)."""

    name: str
    parent: Run
    trials: list[Run]


def store_uri(tracking_uri: str | None, root: Path) -> str:
    """The tracking URI to read (`--tracking-uri`, else ROOT/mlflow.db); BadInput if a local store is missing."""
    uri = store.resolve_tracking_uri(tracking_uri, root)
    local = store.local_path(uri)
    if local is not None and not local.exists():
        where = f"--tracking-uri {uri}" if tracking_uri else f"{local}"
        raise BadInput(
            f"{where}: no MLflow store there; run `splice-tune search` first, or pass the --root "
            f"(or --tracking-uri) the search used"
        )
    store.refuse_damaged(uri)  # looking must neither create nor touch a store
    if uri.startswith(("http://", "https://")):
        # A server that is down or not MLflow: one line within seconds, where MLflow's own client would
        # retry for minutes and then raise a paragraph about connection pools.
        from splice_tune.cluster import server_problem

        problem = server_problem(uri)
        if problem:
            raise BadInput(problem)
    return uri


def open_store(tracking_uri: str | None, root: Path) -> tuple[MlflowClient, str]:
    """A client on an existing store, and its URI (see `store_uri`). The embedded store's client finds
    artifacts under `root` even when the store was moved or copied there (see `store.StoreClient`)."""
    uri = store_uri(tracking_uri, root)
    return (MlflowClient(tracking_uri=uri) if tracking_uri else store.StoreClient(uri, root)), uri


def find_search(client: MlflowClient, name: str | None, uri: str) -> Experiment:
    """The experiment of search `name` (the newest search when None); BadInput listing known searches."""
    experiments = search_experiments(client, uri)
    if name is None:
        if experiments:
            return experiments[0]
        raise BadInput(
            "no splice-tune search in this tracking store yet; run `splice-tune search` first (or pass "
            "the --tracking-uri the search used)"
        )
    for experiment in experiments:
        if experiment.name == name:
            return experiment
    known = ", ".join(experiment.name for experiment in experiments) or "none"
    raise BadInput(f"no search named {name!r} in this tracking store; known searches (newest first): {known}")


def search_experiments(client: MlflowClient, uri: str | None = None) -> list[Experiment]:
    """Every active experiment that is a splice-tune search, newest first; BadInput naming `uri` (default: the
    client's) when the store cannot be read."""
    experiments: list[Experiment] = []
    page_token = None
    while True:
        try:
            page = store.retry(client.search_experiments, page_token=page_token)
        except MlflowException as error:
            uri = uri or client.tracking_uri
            raise BadInput(
                f"{uri}: cannot read the MLflow store ({' '.join(error.message.split())[:200]}); check --tracking-uri"
            ) from None
        experiments.extend(experiment for experiment in page if tracking.TAG_SEARCH in experiment.tags)
        page_token = page.token
        if not page_token:
            return sorted(experiments, key=lambda experiment: experiment.creation_time or 0, reverse=True)


def recorded_search(tracking_uri: str, search_name: str) -> Experiment | None:
    """The experiment of search `search_name` if the store has one (deleted ones included), without ever
    creating a store: a local SQLite file that does not exist yet means no search. Raises `BadInput` for a
    local file that is not a readable MLflow store."""
    db = store.sqlite_file(tracking_uri)
    if db is not None and not db.exists():
        return None
    store.refuse_damaged(tracking_uri)
    return store.retry(MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name, search_name)


def search_pairs(client: MlflowClient, experiment: Experiment) -> dict[str, PairRuns]:
    """The search's pairs by name (sorted), each with its parent run and trial runs."""
    experiment_id = experiment.experiment_id
    parents = store.search_all(client, experiment_id, store.tag_filter(**{tracking.TAG_KIND: tracking.KIND_PAIR}))
    trials = store.search_all(client, experiment_id, store.tag_filter(**{tracking.TAG_KIND: tracking.KIND_TRIAL}))
    pairs: dict[str, PairRuns] = {}
    # Oldest parent first, as the tracker picks it, should a crash ever have left two for one pair.
    for parent in sorted(parents, key=lambda run: run.info.start_time):
        name = parent.data.tags.get(tracking.TAG_PAIR, parent.info.run_name)
        pairs.setdefault(name, PairRuns(name, parent, []))
    for trial in trials:
        name = trial.data.tags.get(tracking.TAG_PAIR)
        if name in pairs:
            pairs[name].trials.append(trial)
    return dict(sorted(pairs.items()))


def select_pair(pairs: dict[str, PairRuns], name: str, search: str) -> PairRuns:
    """`pairs[name]`, or BadInput listing the search's pairs and the closest name."""
    if name in pairs:
        return pairs[name]
    close = difflib.get_close_matches(name, list(pairs), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise BadInput(
        f"--pair {name}: search {search!r} has no such pair; its pairs are {', '.join(pairs) or 'none'}{hint}"
    )


def trial_state(run: Run) -> str:
    """One of `STATES`: how a trial ended (or that it still runs)."""
    if run.data.tags.get(tracking.TAG_STOPPED_EARLY) == "true":
        return STOPPED_EARLY
    return {"FINISHED": FINISHED, "FAILED": FAILED, "KILLED": INTERRUPTED}.get(run.info.status, RUNNING)


def count_states(trials: list[Run]) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for trial in trials:
        counts[trial_state(trial)] += 1
    return counts


def diverged(run: Run) -> bool:
    """True for a trial that stopped because its loss became NaN or infinite (not stopped by the scheduler)."""
    return (
        trial_state(run) == STOPPED_EARLY
        and run.data.tags.get(tracking.TAG_STOP_REASON, tracking.SCHEDULER_STOP) != tracking.SCHEDULER_STOP
    )


def error_line(text: str) -> str:
    """The line of an error text that names what went wrong: a traceback's exception line (its last line
    that is not indented), else the first line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):
        lines = [line for line in lines if not line[0].isspace()][-1:] or lines
    return lines[0][:300] if lines else "no error text"


def pair_failure(trials: list[Run]) -> str | None:
    """Why a pair has nothing to render or retrain, when every one of its trials failed or diverged, e.g.
    "3 trials failed (RuntimeError: ...)"; None when some trial finished, was stopped by the scheduler or
    still runs (or there are none)."""
    if not trials or not all(trial_state(run) == FAILED or diverged(run) for run in trials):
        return None
    causes: dict[tuple[str, str], int] = {}
    for run in trials:
        if diverged(run):
            cause = ("diverged", error_line(run.data.tags[tracking.TAG_STOP_REASON]).split(":")[0])
        else:
            cause = ("failed", error_line(run.data.tags.get(tracking.TAG_ERROR, "")))
        causes[cause] = causes.get(cause, 0) + 1
    return ", ".join(
        f"{count} trial{'s' if count > 1 else ''} {how} ({why})"
        for (how, why), count in sorted(causes.items(), key=lambda item: -item[1])
    )


def winner(trials: list[Run], metric: str = "splice_score", states: tuple[str, ...] = (FINISHED,)) -> Run | None:
    """The trial in `states` with the lowest latest value of `metric` (every score is lower-is-better); trials
    without it (or with NaN) do not count. None if there is none."""
    scored = [
        trial
        for trial in trials
        if trial_state(trial) in states and not math.isnan(trial.data.metrics.get(metric, math.nan))
    ]
    return min(scored, key=lambda trial: trial.data.metrics[metric], default=None)


def judged(runs: list[Run]) -> bool:
    """Whether any of these trials was scored by a held-out judge ViT (its space named judge_vit)."""
    return any(JUDGE_SCORES[0] in run.data.metrics for run in runs)


def ranking_metric(runs: list[Run]) -> str:
    """The score results rank trials by: the judge's splice_score when they have one (the held-out measure),
    else splice_score."""
    return JUDGE_SCORES[0] if judged(runs) else TRAINING_SCORES[0]


def sampled_names(run: Run) -> list[str]:
    """The params Optuna sampled for this trial (the rest were fixed by the search space)."""
    listed = run.data.params.get("sampled", "-")
    return [] if listed in ("", "-") else listed.split(",")


def trial_name(run: Run) -> str:
    """How results name a trial: its run name (PAIR-t<study trial>; Ray's trial id for older searches)."""
    return run.info.run_name or run.data.tags.get(tracking.TAG_TRIAL, "")


def ui_base(tracking_uri: str) -> tuple[str, str | None]:
    """(the MLflow UI's URL for this store, None or how to start it): a tracking server serves its own UI;
    a local store's is the `splice-tune ui` serving it now, else where that command would serve it."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), None
    local = store.local_path(tracking_uri)
    if local is None or local.name != "mlflow.db":
        return DEFAULT_UI_URL, f"serve it with: mlflow server --backend-store-uri {tracking_uri}"
    served = serving_ui(local.parent)
    if served is not None:
        return served, None
    root = local.parent
    flag = "" if root.resolve() == store.DEFAULT_ROOT.resolve() else f" --root {shlex.quote(str(root))}"
    return DEFAULT_UI_URL, f"start the UI with: splice-tune ui{flag}"


def serving_ui(root: Path) -> str | None:
    """The URL of the `splice-tune ui` serving the store under `root` on this machine now, else None."""
    try:
        state = json.loads((Path(root) / UI_STATE_FILE).read_text(encoding="utf-8"))
        url, pid, host = str(state["url"]), int(state["pid"]), state["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # it was killed without cleaning up
    except PermissionError:
        pass  # alive, run by another user
    return url


# MLflow 3's UI opens every experiment in its GenAI view (traces, sessions, prompts) unless the link asks for
# its "model training" one: its global workflow switch wins over the experiment's mlflow.experimentKind tag.
UI_TRAINING_VIEW = "workflowType=machine_learning"


def ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of a run, or the experiment's runs view, under the UI at `base` (see `ui_base`),
    in the UI's model-training view."""
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + f"?{UI_TRAINING_VIEW}"


def config_from_params(params: dict[str, str]) -> SpliceConfig:
    """The SpliceConfig a trial logged (MLflow keeps params as strings; convert back by each field's type)."""
    hints = typing.get_type_hints(SpliceConfig)
    values = {
        field.name: _from_text(params[field.name], hints[field.name])
        for field in fields(SpliceConfig)
        if field.name in params
    }
    return SpliceConfig.from_dict(values)


def _from_text(text: str, hint) -> object:
    kinds = typing.get_args(hint) or (hint,)
    if text == "None" and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is bool and text in ("True", "False"):
            return text == "True"
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        if kind is str:
            return text
    raise ValueError(f"param value {text!r} does not fit type {hint}")


def download(client: MlflowClient, run: Run, artifact_path: str, folder: Path) -> Path:
    """Download one artifact of `run` into `folder`; BadInput naming the run when it is missing."""
    # MLflow draws a progress bar per download, which drowns our own output for a few small files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return Path(client.download_artifacts(run.info.run_id, artifact_path, str(folder)))
    except (MlflowException, OSError) as error:
        reason = error.message if isinstance(error, MlflowException) else str(error)
        raise BadInput(
            f"run {run.info.run_id}: cannot get artifact {artifact_path} ({reason.splitlines()[0]})"
        ) from None


def input_image(client: MlflowClient, pair: PairRuns, role: str, folder: Path) -> Path:
    """The pair's `role` ("structure"/"appearance") image at full resolution: the copy logged with the
    parent run (``inputs/<role>.png``, the exact RGB image the search trained on), else, for a run that has
    no such copy, the file at the path the search read (which may have been edited since)."""
    artifact = f"inputs/{role}.png"
    try:
        return download(client, pair.parent, artifact, folder)
    except BadInput as missing:
        logged_path = pair.parent.data.params.get(role)
        if logged_path and Path(logged_path).is_file():
            return Path(logged_path)
        raise BadInput(
            f"pair {pair.name}: {role} image not found: neither the copy logged with run "
            f"{pair.parent.info.run_id} ({missing.problems[0]}) nor the file the search read "
            f"({logged_path or 'not logged'})"
        ) from None


def last_eval_image(client: MlflowClient, run: Run) -> tuple[str, int] | None:
    """(artifact path, step) of the latest output image logged at an eval, or None if none was logged."""
    try:
        logged = client.list_artifacts(run.info.run_id, "images")
    except (MlflowException, OSError):
        return None
    steps = [(int(match.group(1)), info.path) for info in logged if (match := _EVAL_IMAGE.match(info.path))]
    if not steps:
        return None
    step, path = max(steps)
    return path, step


def trial_vit(run: Run) -> str | None:
    """The ViT preset a trial ran with (its `vit` param, else its ViT tag)."""
    return run.data.params.get("vit") or run.data.tags.get(tracking.TAG_VIT)


def vit_note(trials: list[Run]) -> str | None:
    """A warning to show with results computed with a random-weight ViT preset (not DINO); else None."""
    from splice_model.presets import not_dino_note

    notes = [not_dino_note(vit) for vit in sorted({trial_vit(trial) or "" for trial in trials})]
    return "; ".join(note for note in notes if note) or None
