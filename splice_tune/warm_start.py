"""Warm starts: the known-good points each pair's study tries first, before its sampler takes over.

Two kinds (docs/design.md, Warm starts):

- the paper's point (SpliceConfig's defaults: alpha = beta = 0.1, lr = 2e-3 and the paper's augmentation
  strengths), on by default;
- with ``--warm-start SEARCH`` (repeatable) or ``--warm-start auto`` (every earlier search in the store
  whose space has the same fixed settings and sampled ranges), the winners of those searches' pairs: the
  same pair's winner first, then the others by their splice_score.

A point is fitted into the space before it is enqueued: a value outside a range is clipped to its nearest
bound (and put on the range's step grid); a categorical parameter whose choices lack the value is left to
the sampler. Points that are equal after fitting are tried once. At most half of a pair's trials (rounded
up) are warm starts, so the sampler always has trials of its own. Every trial records where its values came
from: the Optuna trial's user attr and the MLflow run's tag `SOURCE` ("paper", "SEARCH/PAIR" for an earlier
winner, or the sampler's name).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from splice_model.config import SpliceConfig
from splice_tune.errors import BadInput
from splice_tune.spaces import SearchSpace

SOURCE = "splice_tune.params_from"  # Optuna trial user attr and MLflow trial tag: where its params came from
PAPER = "paper"
AUTO = "auto"
TAG_SETTINGS = "splice_tune.spec.settings"  # experiment tag: fingerprint of the space's fixed and params


@dataclass(frozen=True)
class WarmPoint:
    """One point to enqueue: the sampled parameters' values and where they came from."""

    params: dict[str, Any]
    source: str  # PAPER, or "SEARCH/PAIR": the winner of that pair in that search
    score: float = math.nan  # an earlier winner's splice_score (orders the winners; NaN for the paper's point)
    pair: str | None = None  # an earlier winner's pair


@dataclass
class WarmStart:
    """What each pair's study starts with, and the lines that tell the user about it."""

    points: dict[str, list[WarmPoint]] = field(default_factory=dict)  # pair -> points, in the order tried
    notes: list[str] = field(default_factory=list)


def settings_fingerprint(space: SearchSpace) -> str:
    """What `--warm-start auto` compares: the space's fixed settings and sampled ranges (not its budget,
    scheduler, sampler or objective, which do not change what a winner's values mean)."""
    raw = space.to_dict()
    part = {"fixed": raw["fixed"], "params": raw["params"]}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (SpliceConfig fields; others ignored) as a point of `space`: each sampled parameter's value
    clipped into its range and put on its step grid; a categorical value that is not a choice, or a value
    `values` lacks, is left out (the sampler picks it)."""
    point = {}
    for name, spec in space.params.items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if spec.type == "categorical":
            if value in spec.choices:
                point[name] = value
            continue
        value = min(max(float(value), spec.low), spec.high)
        if spec.step is not None:
            value = spec.low + round((value - spec.low) / spec.step) * spec.step
            value = min(value, spec.high)
        point[name] = int(round(value)) if spec.type == "int" else float(value)
    return point


def paper_point(space: SearchSpace) -> WarmPoint | None:
    """The paper's point fitted into `space`; None when nothing of it is left (no sampled parameter takes
    a value from it)."""
    point = fit(space, SpliceConfig().to_dict())
    return WarmPoint(point, PAPER) if point else None


def plan(space: SearchSpace, pairs: list[str], paper: bool, winners: list[WarmPoint]) -> WarmStart:
    """Each pair's points: the paper's (when `paper`), the pair's own earlier winners, then the other
    winners by score; fitted, without repeats, at most half the pair's trials (rounded up)."""
    cap = max(1, math.ceil(space.budget.trials_per_pair / 2))
    first = paper_point(space) if paper else None
    ordered = sorted(winners, key=lambda point: (math.isnan(point.score), point.score, point.source))
    warm = WarmStart()
    left_out = 0
    for pair in pairs:
        candidates = [first] if first is not None else []
        candidates += [point for point in ordered if point.pair == pair]
        candidates += [point for point in ordered if point.pair != pair]
        chosen: list[WarmPoint] = []
        for point in candidates:
            fitted = fit(space, point.params)
            if not fitted or any(fitted == kept.params for kept in chosen):
                continue
            chosen.append(WarmPoint(fitted, point.source, point.score, point.pair))
        left_out = max(left_out, len(chosen) - cap)
        warm.points[pair] = chosen[:cap]
    most = max((len(points) for points in warm.points.values()), default=0)
    if most:
        what = "the paper's point" if first is not None else ""
        if winners:
            what += (" and " if what else "") + "earlier searches' winners"
        left = f" ({left_out} more left out: at most half a pair's trials are warm starts)" if left_out else ""
        warm.notes.append(
            f"warm start: each pair's study first tries {what}{left}, {most} of its "
            f"{space.budget.trials_per_pair} trials; then its {space.sampler.type} sampler takes over"
        )
    return warm


def earlier_winners(
    tracking_uri: str, requested: list[str], space: SearchSpace, current: str
) -> tuple[list[WarmPoint], list[str]]:
    """The winners of the searches `requested` names (AUTO: every search in the store with the same fixed
    settings and sampled ranges as `space`, except `current`), and notes on what auto found. Raises
    `BadInput` for a named search the store lacks, the current search itself, or one without a winner."""
    from splice_tune import results, store

    if not requested:
        return [], []
    db = store.sqlite_file(tracking_uri)
    client, experiments = None, []
    if db is None or db.exists():  # looking never creates a store: none yet means no earlier search
        from mlflow import MlflowClient

        store.refuse_damaged(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = results.search_experiments(client, tracking_uri)
    by_name = {experiment.name: experiment for experiment in experiments}
    problems, chosen, notes = [], [], []
    auto = AUTO in requested
    for name in dict.fromkeys(requested):
        if name == AUTO:
            continue
        if name == current:
            problems.append(f"--warm-start {name}: is the search being started; name an earlier search")
        elif name not in by_name:
            known = ", ".join(by_name) or "none"
            problems.append(
                f"--warm-start {name}: no search of that name in the MLflow store {tracking_uri}; "
                f"known searches (newest first): {known}"
            )
        else:
            chosen.append(by_name[name])
    points = []
    for experiment in chosen:
        found = _winners(client, experiment)
        if not found:
            problems.append(
                f"--warm-start {experiment.name}: the search has no finished trial to start from yet; "
                f"let one finish, or leave it out"
            )
        points += found
    if auto:
        fingerprint = settings_fingerprint(space)
        named = {experiment.name for experiment in chosen}
        used = []
        for experiment in experiments:
            if experiment.tags.get(TAG_SETTINGS) == fingerprint and experiment.name not in named | {current}:
                found = _winners(client, experiment)  # one still without a finished trial adds nothing
                points += found
                used += [experiment.name] if found else []
        notes.append(
            "--warm-start auto: "
            + (
                f"starting from the winners of {', '.join(used)}"
                if used
                else "no earlier search in the store has this space's settings and ranges and a finished trial"
            )
        )
    if problems:
        raise BadInput(problems)
    return points, notes


def _winners(client, experiment) -> list[WarmPoint]:
    """Each pair's winner of an earlier search: the trial its pair run names, else its best finished one."""
    from splice_tune import results, tracking

    points = []
    for pair in results.search_pairs(client, experiment).values():
        best_id = pair.parent.data.tags.get(tracking.TAG_BEST_TRIAL)
        run = next((trial for trial in pair.trials if trial.info.run_id == best_id), None)
        run = run or results.winner(pair.trials)
        if run is None:
            continue
        config = results.config_from_params(run.data.params)
        points.append(
            WarmPoint(
                config.to_dict(),
                f"{experiment.name}/{pair.name}",
                run.data.metrics.get("splice_score", math.nan),
                pair.name,
            )
        )
    return points
