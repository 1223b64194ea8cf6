"""`splice-tune best`: render a pair's winning trial at the structure image's full resolution.

The winner is the trial with the lowest ``<by>_score`` (``--by judge``: the held-out judge's splice_score)
among the pair's FINISHED trials (stopped-early and failed trials never win: their scores are from fewer
steps). Its logged generator checkpoint is downloaded,
loaded with `weights_only` (a checkpoint cannot run code) and run on the full structure image. With
``--retrain-steps N`` the winner's settings are instead trained again from scratch for N steps, which also
works when no trial finished (the best stopped-early trial's settings are used then).
"""

from __future__ import annotations

import difflib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Experiment, Run
from rich.console import Console
from rich.table import Table

from splice_model import (
    CheckpointError,
    ImageError,
    NonFiniteLossError,
    SpliceTrainer,
    WeightsError,
    load_checkpoint,
    load_image,
    render,
    save_checkpoint,
    to_pil,
)
from splice_model.presets import not_dino_note
from splice_tune import results, store
from splice_tune.errors import BadInput, Failure
from splice_tune.formatting import number
from splice_tune.outputs import MIN_SIDE, at_least, image_problems
from splice_tune.progress import train_with_progress
from splice_tune.results import NOT_SETTINGS, SCORES

# `--by` names a score without its _score suffix; "judge" is the judge's splice_score.
BY_METRIC = {
    **{name.removesuffix("_score"): name for name in SCORES if name != "judge_splice_score"},
    "judge": "judge_splice_score",
}
SCORE_NAMES = tuple(BY_METRIC)


def by_name(metric: str) -> str:
    """The `--by` name of a score (judge_splice_score -> judge)."""
    return next(name for name, score in BY_METRIC.items() if score == metric)


CHECKPOINT_ARTIFACT = "checkpoint/generator.pt"


@dataclass
class BestRequest:
    """What `splice-tune best` was asked to do (flags, not yet validated)."""

    pair: str | None = None
    all_pairs: bool = False
    trial: str | None = None  # PAIR-tN: this trial, not the winner (e.g. one picked from the contact sheet)
    search: str | None = None
    by: str = "splice"
    out: Path | None = None
    out_dir: Path | None = None
    max_side: int | None = None
    retrain_steps: int | None = None
    root: Path = store.DEFAULT_ROOT
    tracking_uri: str | None = None
    as_json: bool = False  # stdout: one JSON document (`json_document`); the human text goes to stderr


@dataclass
class BestResult:
    """One rendered winner."""

    pair: str
    run_id: str
    path: Path
    size: tuple[int, int]
    scores: dict[str, float]  # the trial's, or the retraining's with --retrain-steps
    checkpoint: Path | None = None  # the retrained generator (--retrain-steps)


def run_best(
    request: BestRequest, console: Console | None = None, progress_console: Console | None = None
) -> list[BestResult]:
    """Find and render the winner of each requested pair; BadInput (nothing written) when the flags, the
    store, the search or the pair are wrong or the pair has no finished trial."""
    console = console or Console(stderr=request.as_json)
    progress_console = progress_console or Console(stderr=True)
    _check_flags(request)
    client, uri = results.open_store(request.tracking_uri, request.root)
    experiment = results.find_search(client, request.search, uri)
    pairs = results.search_pairs(client, experiment)
    metric = BY_METRIC[request.by]
    if request.trial is not None:
        pair, run = _picked_trial(pairs, request.trial, experiment.name)
        return _render_chosen(request, [(pair, run)], {}, client, uri, experiment, metric, console, progress_console)
    if request.all_pairs:
        targets = list(pairs.values())
        if not targets:
            raise BadInput(f"--search {experiment.name}: the search has no pairs yet; wait for it to start trials")
    else:
        targets = [results.select_pair(pairs, request.pair, experiment.name)]

    if metric in results.JUDGE_SCORES and not results.judged([run for pair in targets for run in pair.trials]):
        raise BadInput(
            f"--by {request.by}: search {experiment.name!r} has no judge scores (its search space names no "
            f"judge_vit); rank by --by splice, or search with a space that sets judge_vit"
        )
    chosen: list[tuple[results.PairRuns, Run]] = []
    skipped: dict[str, str] = {}
    for pair in targets:
        link = results.ui_link(uri, experiment.experiment_id, pair.parent.info.run_id)
        run, problem = _choose(pair, metric, experiment.name, request.retrain_steps is not None, link)
        if run is not None:
            chosen.append((pair, run))
        else:
            skipped[pair.name] = problem
    # With --all a pair without a winner is skipped with its reason; with nothing to render it is an error.
    if not chosen:
        raise BadInput(list(skipped.values()))
    for problem in skipped.values():
        console.print(f"[yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    return _render_chosen(request, chosen, skipped, client, uri, experiment, metric, console, progress_console)


def _picked_trial(pairs: dict[str, results.PairRuns], name: str, search: str) -> tuple[results.PairRuns, Run]:
    """The pair and run of trial `name` (PAIR-tN, as the contact sheet and `report` name it); BadInput
    naming the search's trials of that pair, or the closest names, when there is no such trial."""
    for pair in pairs.values():
        for run in pair.trials:
            if results.trial_name(run) == name:
                return pair, run
    pair_name = name.rsplit("-t", 1)[0]
    if pair_name in pairs:
        known = sorted((results.trial_name(run) for run in pairs[pair_name].trials), key=_trial_number)
        hint = f"pair {pair_name}'s trials are {', '.join(known) or 'none yet'}"
    else:
        names = [results.trial_name(run) for pair in pairs.values() for run in pair.trials]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"its pairs are {', '.join(pairs) or 'none yet'}"
    raise BadInput(
        f"--trial {name}: search {search!r} has no such trial; {hint} (names as in `splice-tune report`'s contact "
        f"sheets: PAIR-tN)"
    )


def _trial_number(name: str) -> int:
    number = name.rsplit("-t", 1)[-1]
    return int(number) if number.isdigit() else -1


def _render_chosen(
    request: BestRequest,
    chosen: list[tuple[results.PairRuns, Run]],
    skipped: dict[str, str],
    client: MlflowClient,
    uri: str,
    experiment: Experiment,
    metric: str,
    console: Console,
    progress_console: Console,
) -> list[BestResult]:
    rendered = []
    for pair, run in chosen:
        out = _out_path(request, pair.name)
        how = "picked" if request.trial is not None else f"winner by {metric}"
        _describe(console, pair, run, how, uri, experiment.experiment_id)
        with tempfile.TemporaryDirectory(prefix="splice-best-") as tmp:
            rendered.append(_render(client, pair, run, request, out, Path(tmp), console, progress_console))
    if request.as_json:
        runs = [run for _, run in chosen]
        print(
            json.dumps(json_document(experiment, uri, metric, runs, rendered, skipped, request.retrain_steps), indent=2)
        )
    return rendered


def json_document(
    experiment: Experiment,
    uri: str,
    metric: str,
    runs: list[Run],
    rendered: list[BestResult],
    skipped: dict[str, str],
    retrain_steps: int | None = None,
) -> dict:
    """What `best --json` prints; its keys (README, "After a search") are kept stable:

    {"search": str, "experiment_id": str, "tracking_uri": str, "by": "<by>_score",
     "winners": [{"pair": str, "run_id": str, "trial": str, "state": str, "image": absolute path,
                  "width": int, "height": int, "scores": {score: float}, "sampled": {name: value},
                  "settings": {every SpliceConfig field: value}, "retrained_steps": int | null,
                  "retrained_scores": {score: float} | null, "checkpoint": absolute path | null,
                  "mlflow_url": str}],
     "skipped": [{"pair": str, "reason": str}]}
    """
    base, _ = results.ui_base(uri)
    winners = []
    for run, result in zip(runs, rendered):
        settings = results.config_from_params(run.data.params).to_dict()
        retrained = result.checkpoint is not None
        winners.append(
            {
                "pair": result.pair,
                "run_id": result.run_id,
                "trial": results.trial_name(run),
                "state": results.trial_state(run),
                "image": str(result.path.resolve()),
                "width": result.size[0],
                "height": result.size[1],
                "scores": {name: run.data.metrics[name] for name in SCORES if name in run.data.metrics},
                "sampled": {name: settings[name] for name in results.sampled_names(run) if name in settings},
                "settings": settings,
                "retrained_steps": retrain_steps if retrained else None,
                "retrained_scores": result.scores if retrained else None,
                "checkpoint": str(result.checkpoint.resolve()) if retrained else None,
                "mlflow_url": results.ui_link(base, experiment.experiment_id, result.run_id),
            }
        )
    return {
        "search": experiment.name,
        "experiment_id": experiment.experiment_id,
        "tracking_uri": uri,
        "by": metric,
        "winners": winners,
        "skipped": [{"pair": pair, "reason": reason} for pair, reason in skipped.items()],
    }


def _check_flags(request: BestRequest) -> None:
    problems = []
    flags = (("--pair", request.pair), ("--all", request.all_pairs), ("--trial", request.trial))
    chosen = [flag for flag, given in flags if given]
    if len(chosen) != 1:
        given = f" (got {' and '.join(chosen)})" if chosen else ""
        problems.append(
            f"--pair NAME, --all or --trial PAIR-tN: give exactly one (which pair's winner, or which trial, "
            f"to render){given}"
        )
    if request.by not in SCORE_NAMES:
        problems.append(f"--by {request.by}: choose one of {', '.join(SCORE_NAMES)}")
    if request.out is not None:
        if request.all_pairs:
            problems.append("--out: with --all every pair gets its own file; use --out-dir FOLDER instead")
        problems += image_problems(request.out)
    if request.out_dir is not None and request.out_dir.exists() and not request.out_dir.is_dir():
        problems.append(f"--out-dir {request.out_dir}: is a file, not a folder; name a folder")
    problems += at_least("--max-side", request.max_side, MIN_SIDE)
    problems += at_least("--retrain-steps", request.retrain_steps, 1)
    if problems:
        raise BadInput(problems)


def _choose(pair: results.PairRuns, metric: str, search: str, retrain: bool, link: str) -> tuple[Run | None, str]:
    """(winning run, "") or (None, why there is none and what to do: advice that leads somewhere)."""
    run = results.winner(pair.trials, metric)
    if run is not None:
        return run, ""
    # Retraining a diverged trial's settings would diverge again.
    retrainable = [trial for trial in pair.trials if not results.diverged(trial)]
    candidate = results.winner(retrainable, metric, states=(results.STOPPED_EARLY,))
    if retrain and candidate is not None:
        return candidate, ""
    counts = ", ".join(f"{count} {state}" for state, count in results.count_states(pair.trials).items() if count)
    why = f"pair {pair.name}: no finished trial with a {metric} in search {search!r} ({counts or 'no trials yet'})"
    if pair.parent.info.status == "RUNNING" or any(results.trial_state(t) == results.RUNNING for t in pair.trials):
        return None, (
            f"{why}; the search is still running: try again once a trial of this pair has finished "
            f"(follow it in MLflow: {link}; if its driver died, continue it with --resume)"
        )
    failure = results.pair_failure(pair.trials)
    if failure is not None:
        return None, f"{why}: {failure}; nothing to render or retrain; each trial's full error is in MLflow: {link}"
    if candidate is not None:
        return None, f"{why}; retrain the best stopped-early trial's settings with --retrain-steps N"
    return None, (
        f"{why}; no trial reached an eval, so there is nothing to render or retrain; continue the "
        f"search with `splice-tune search ... --name {search} --resume`"
    )


def _out_path(request: BestRequest, pair: str) -> Path:
    name = f"{request.trial}.png" if request.trial is not None else f"{pair}_best.png"
    return request.out or (request.out_dir or Path(".")) / name


def _describe(console: Console, pair: results.PairRuns, run: Run, how: str, uri: str, experiment_id: str) -> None:
    """The trial's params (sampled ones first), scores, run id and MLflow link; `how` it was chosen."""
    state = results.trial_state(run)
    console.print(
        f"[bold]{pair.name}[/]: {how}: trial {results.trial_name(run)} ({state}), run {run.info.run_id}",
        highlight=False,
        soft_wrap=True,
    )
    sampled = results.sampled_names(run)
    fixed = sorted(name for name in run.data.params if name not in NOT_SETTINGS and name not in sampled)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("sampled", ", ".join(f"{name}={number(run.data.params.get(name))}" for name in sampled) or "-")
    table.add_row("fixed", ", ".join(f"{name}={number(run.data.params[name])}" for name in fixed) or "-")
    table.add_row(
        "scores", ", ".join(f"{name} {number(run.data.metrics[name])}" for name in SCORES if name in run.data.metrics)
    )
    note = not_dino_note(results.trial_vit(run) or "")
    if note:
        table.add_row("ViT", f"[bold red]{note}[/]")
    console.print(table, highlight=False)
    # Links on lines of their own: a table cell would cut or break them in a narrow terminal.
    base, how_to_start = results.ui_base(uri)
    console.print(
        f"MLflow run: {results.ui_link(base, experiment_id, run.info.run_id)}", highlight=False, soft_wrap=True
    )
    console.print(
        f"MLflow, every trial: {results.ui_link(base, experiment_id)}"
        + (f"  ({how_to_start})" if how_to_start else ""),
        highlight=False,
        soft_wrap=True,
    )


def _render(
    client: MlflowClient,
    pair: results.PairRuns,
    run: Run,
    request: BestRequest,
    out: Path,
    tmp: Path,
    console: Console,
    progress_console: Console,
) -> BestResult:
    structure_path = results.input_image(client, pair, "structure", tmp)
    try:
        structure = load_image(structure_path)
    except ImageError as error:
        raise BadInput(str(error)) from None
    if request.retrain_steps is not None:
        appearance_path = results.input_image(client, pair, "appearance", tmp)
        generator, config, scores = _retrain(
            run, structure_path, appearance_path, request.retrain_steps, progress_console
        )
        how = f"retrained from scratch for {request.retrain_steps} steps"
    else:
        checkpoint = results.download(client, run, CHECKPOINT_ARTIFACT, tmp)
        try:
            generator, _, _ = load_checkpoint(checkpoint)
        except CheckpointError as error:
            raise BadInput(f"run {run.info.run_id}: {error}; retrain it with --retrain-steps N") from None
        scores = {name: run.data.metrics[name] for name in SCORES if name in run.data.metrics}
        how = "rendered with the trial's generator"
    out.parent.mkdir(parents=True, exist_ok=True)
    written, checkpoint_out = f"{out}", None
    if request.retrain_steps is not None:
        # A retraining can take long: keep its generator, like `splice-tune train`, before the render (the
        # largest thing a run computes) can fail.
        checkpoint_out = save_checkpoint(out.with_suffix(".pt"), generator, config, config.steps, scores)
        written = f"{checkpoint_out} and {out}"
        console.print(
            "retrained scores: " + ", ".join(f"{name} {number(scores[name])}" for name in SCORES if name in scores),
            highlight=False,
            soft_wrap=True,
        )
    try:
        image = to_pil(render(generator, structure, request.max_side))
    except RuntimeError as error:  # e.g. out of device memory
        kept = f"; the retrained generator is saved in {checkpoint_out}" if checkpoint_out else ""
        raise Failure(
            f"pair {pair.name}: cannot render at this size ({str(error).splitlines()[0]}); try --max-side N{kept}"
        ) from None
    image.save(out)
    console.print(f"wrote {written} ({image.width}x{image.height}, {how})", highlight=False, soft_wrap=True)
    return BestResult(pair.name, run.info.run_id, out, image.size, scores, checkpoint_out)


def _retrain(run: Run, structure: Path, appearance: Path, steps: int, console: Console):
    """Train the run's settings from scratch for `steps` steps with a progress bar: (generator, config, scores)."""
    # "auto": the trial may have run on a GPU machine this one does not have (or the reverse).
    config = results.config_from_params(run.data.params).replace(steps=steps, device="auto")
    problems = config.validate()
    if problems:
        raise BadInput([f"run {run.info.run_id}: logged setting {problem}" for problem in problems])
    try:
        trainer = SpliceTrainer(structure, appearance, config)
    except WeightsError as error:
        raise BadInput(str(error)) from None
    try:
        scores = train_with_progress(trainer, console, label="retrain")
    except NonFiniteLossError as error:
        raise Failure(
            f"retraining run {run.info.run_id}'s settings diverged ({error}); try another "
            f"--retrain-steps or another trial"
        ) from None
    return trainer.generator, trainer.config, scores
