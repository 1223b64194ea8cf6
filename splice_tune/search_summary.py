"""How a search ended, read from what MLflow recorded: how many trials ended, each pair's winner and trial
counts, and what a pair's run keeps of its winner."""

from __future__ import annotations

from dataclasses import dataclass, field

from splice_tune import results, tracking
from splice_tune.search_plan import SearchPlan


@dataclass
class PairResult:
    """One pair's outcome: its winning trial (None when no trial finished) and how its trials ended."""

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
    """The outcome of a whole search, what `run_search` returns and the CLI prints."""

    name: str
    experiment_id: str
    tracking_uri: str
    metric: str
    pairs: list[PairResult]
    vit: str  # the ViT preset the trials used (the first choice, when it is sampled)


def ended_trials(tracker: tracking.SearchTracker, grid) -> int:
    """How many trials of the search ended (finished, stopped early, diverged or failed).

    Counted from their MLflow runs, not from Ray: on Ctrl-C Ray marks the trials it stops TERMINATED, as if
    they had finished. Only a trial that failed before it opened its run is known to Ray alone.
    """
    counts = results.count_states(tracker.trial_runs())
    ended = counts[results.FINISHED] + counts[results.STOPPED_EARLY] + counts[results.FAILED]
    return ended + max(0, grid.num_errors - counts[results.FAILED])


def summarize(plan: SearchPlan, tracker: tracking.SearchTracker) -> SearchSummary:
    """Each pair's winner (lowest objective among its finished trials) and its trial counts, from MLflow."""
    metric = plan.space.objective.metric
    sampled = set(plan.space.params)
    by_pair: dict[str, list] = {}
    for run in tracker.trial_runs():  # one read of the store for every pair: the cost stays per trial
        by_pair.setdefault(run.data.tags.get(tracking.TAG_PAIR), []).append(run)
    pairs = []
    for pair in plan.pairs:
        runs = by_pair.get(pair.name, [])
        best = results.winner(runs, metric)
        pairs.append(
            PairResult(
                pair.name,
                best.info.run_id if best else None,
                best.data.metrics.get(metric) if best else None,
                {k: v for k, v in best.data.params.items() if k in sampled} if best else {},
                results.count_states(runs),
                scores={k: v for k, v in best.data.metrics.items() if k in results.SCORES} if best else {},
                parent_run_id=tracker.parent_run_id(pair.name),
                failure=None if best else results.pair_failure(runs),
            )
        )
    vit = plan.space.lowest_config().vit
    return SearchSummary(plan.name, tracker.experiment_id, plan.tracking_uri, metric, pairs, vit)


def winner_record(result: PairResult, metric: str) -> dict:
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
