"""The report's analysis of each pair's stored Optuna study, and the cross-pair summary over them.

Per pair, one figure of three panels drawn from the study in the Optuna storage (docs/design.md, Ray
layout): the optimisation history, parallel coordinates of the sampled params, and the params' importances
(Optuna's default evaluator). Own matplotlib plots rather than `optuna.visualization.matplotlib`: those drop
pruned trials, and here a trial stopped early is shown as such, at its last eval's score. Too few finished
trials for importances gives a note in the panel's place, never an error.
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from splice_tune import studies
from splice_tune.formatting import number

# fANOVA fits a forest on the finished trials: with fewer, every split is noise.
MIN_TRIALS_FOR_IMPORTANCE = 4
_COMPLETE, _PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@dataclass
class PairAnalysis:
    """What the report shows of one pair's study."""

    pair: str
    figure: Path | None  # None when the storage has no study for the pair
    importances: dict[str, float] = field(default_factory=dict)  # param -> importance; empty when not computed
    note: str | None = None  # why a panel is missing


def load_pair_study(storage_url: str, search: str, pair: str) -> optuna.Study | None:
    """The pair's stored study, None when the storage (never created here) does not hold it."""
    names = studies.stored_names(storage_url) or []
    name = studies.study_name(search, pair)
    if name not in names:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage_url)


def analyse_pair(storage_url: str, search: str, pair: str, title: str, path: Path) -> PairAnalysis:
    """Draw the pair's history, parallel coordinates and importances to `path`; a note instead when the
    storage has no study of the pair."""
    study = load_pair_study(storage_url, search, pair)
    if study is None:
        return PairAnalysis(
            pair, None, note=f"no Optuna study {studies.study_name(search, pair)!r} in {studies.shown(storage_url)}"
        )
    importances, note = _importances(study)
    figure = Figure(figsize=(16, 4.8), layout="constrained")
    history, parallel, bars = figure.subplots(1, 3, width_ratios=[1, 1.4, 0.8])
    _draw_history(history, study)
    _draw_parallel(parallel, study)
    _draw_importances(bars, importances, note)
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return PairAnalysis(pair, path, importances, note)


def _shown_value(trial: optuna.trial.FrozenTrial) -> float | None:
    """A finished trial's value; a stopped-early trial's last reported score; None otherwise."""
    if trial.state == _COMPLETE and trial.value is not None and math.isfinite(trial.value):
        return trial.value
    if trial.state == _PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    finished = study.get_trials(deepcopy=False, states=[_COMPLETE])
    sampled = {name for trial in finished for name in trial.params}
    if not sampled:
        return {}, "nothing sampled: no parameter importances"
    if len(finished) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, (
            f"{len(finished)} finished trial(s): parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE}"
        )
    try:
        return dict(optuna.importance.get_param_importances(study)), None
    except (ValueError, RuntimeError) as error:  # e.g. every finished trial has the same value
        return {}, f"no parameter importances: {error}"


def _draw_history(axes, study: optuna.Study) -> None:
    trials = study.get_trials(deepcopy=False)
    done = [(t.number, _shown_value(t)) for t in trials if t.state == _COMPLETE and _shown_value(t) is not None]
    stopped = [(t.number, _shown_value(t)) for t in trials if t.state == _PRUNED and _shown_value(t) is not None]
    if done:
        axes.scatter(*zip(*done), color="tab:blue", label="finished", zorder=3)
        best, line = math.inf if study.direction.name == "MINIMIZE" else -math.inf, []
        pick = min if study.direction.name == "MINIMIZE" else max
        for trial_number, value in sorted(done):
            best = pick(best, value)
            line.append((trial_number, best))
        axes.step(*zip(*line), where="post", color="tab:orange", label="best so far")
    if stopped:
        axes.scatter(*zip(*stopped), marker="x", color="tab:gray", label="stopped early (last eval)", zorder=3)
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
    axes.set_title("optimisation history" + (f" ({failed} failed, not shown)" if failed else ""))
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("objective")
    if done or stopped:
        axes.legend(fontsize="small")


def _position(value, distribution: optuna.distributions.BaseDistribution) -> float:
    """Where `value` sits on its param's axis, 0 at the low end and 1 at the high end of its range."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return distribution.choices.index(value) / max(len(distribution.choices) - 1, 1)
    low, high = distribution.low, distribution.high
    if distribution.log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low) if high > low else 0.5


def _draw_parallel(axes, study: optuna.Study) -> None:
    trials = [t for t in study.get_trials(deepcopy=False) if _shown_value(t) is not None]
    names = sorted({name for trial in trials for name in trial.params})
    axes.set_title("parallel coordinates (colour: objective; dashed: stopped early)")
    if not names or not trials:
        axes.text(0.5, 0.5, "nothing to draw yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    values = [_shown_value(trial) for trial in trials]
    low, high = min(values), max(values)
    colours = colormaps["viridis_r" if study.direction.name == "MINIMIZE" else "viridis"]
    for trial, value in zip(trials, values):
        share = (value - low) / (high - low) if high > low else 0.5
        points = [_position(trial.params[name], trial.distributions[name]) for name in names if name in trial.params]
        stopped = trial.state == _PRUNED
        axes.plot(
            range(len(points) + 1),
            [*points, share],
            color="tab:gray" if stopped else colours(share),
            linestyle="--" if stopped else "-",
            alpha=0.6 if stopped else 0.9,
        )
    axes.set_xticks(range(len(names) + 1), [*names, "objective"], rotation=20, fontsize="small")
    axes.set_yticks([0, 1], ["low", "high"])
    for index, name in enumerate(names):
        distribution = next(t.distributions[name] for t in trials if name in t.distributions)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            ends = (distribution.choices[0], distribution.choices[-1])
        else:
            ends = (distribution.low, distribution.high)
        axes.annotate(number(ends[0]), (index, 0), textcoords="offset points", xytext=(3, -10))
        axes.annotate(number(ends[1]), (index, 1), textcoords="offset points", xytext=(3, 4))
    axes.annotate(number(low), (len(names), 0), textcoords="offset points", xytext=(3, -10))
    axes.annotate(number(high), (len(names), 1), textcoords="offset points", xytext=(3, 4))


def _draw_importances(axes, importances: dict[str, float], note: str | None) -> None:
    axes.set_title("parameter importances (fANOVA)")
    if not importances:
        axes.text(0.5, 0.5, textwrap.fill(note or "", 32), ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    ordered = sorted(importances.items(), key=lambda item: item[1])
    axes.barh([name for name, _ in ordered], [value for _, value in ordered], color="tab:blue")
    for index, (_, value) in enumerate(ordered):
        axes.annotate(number(value), (value, index), textcoords="offset points", xytext=(3, -3), fontsize="small")
    axes.set_xlim(0, 1.15)


def mattered(analyses: list[PairAnalysis]) -> list[tuple[str, float, int]]:
    """Which params mattered across pairs: (param, mean importance over the pairs that have importances,
    in how many of those pairs it was the most important), most important first."""
    with_importances = [analysis.importances for analysis in analyses if analysis.importances]
    names = sorted({name for importances in with_importances for name in importances})
    rows = []
    for name in names:
        mean = sum(importances.get(name, 0.0) for importances in with_importances) / len(with_importances)
        top = sum(max(importances, key=importances.get) == name for importances in with_importances)
        rows.append((name, mean, top))
    return sorted(rows, key=lambda row: (-row[1], row[0]))


WIDE_PAIRS = 12  # up to this many pairs, the summary has a column per pair


def summary_html(winners: dict[str, dict[str, str] | None], params: list[str], analyses: list[PairAnalysis]) -> str:
    """The cross-pair summary on top of the report: each pair's winner params side by side (None: no winner
    yet), then which params mattered across pairs."""
    escape = html.escape
    parts = ["<h2>All pairs</h2>"]
    if len(winners) <= WIDE_PAIRS:  # a column per pair, the params side by side
        parts += ["<table><tr><th>param</th>", *(f"<th>{escape(pair)}</th>" for pair in winners), "</tr>"]
        for name in params:
            cells = [
                f"<td>{escape(number(won.get(name))) if won is not None else '-'}</td>" for won in winners.values()
            ]
            parts.append(f'<tr><td class="text">{escape(name)}</td>{"".join(cells)}</tr>')
    else:  # many pairs: a row per pair, which a page can hold at any number
        parts += ["<table><tr><th>pair</th>", *(f"<th>{escape(name)}</th>" for name in params), "</tr>"]
        for pair, won in winners.items():
            cells = [f"<td>{escape(number(won.get(name))) if won is not None else '-'}</td>" for name in params]
            parts.append(f'<tr><td class="text">{escape(pair)}</td>{"".join(cells)}</tr>')
    parts.append("</table>")
    rows = mattered(analyses)
    counted = sum(bool(analysis.importances) for analysis in analyses)
    if not rows:
        parts.append("<p>Which params mattered: no pair has enough finished trials for importances yet.</p>")
        return "\n".join(parts)
    parts.append(
        f"<p>Which params mattered (fANOVA importance, mean over the {counted} pair(s) with importances):</p>"
        "<table><tr><th>param</th><th>mean importance</th><th>most important in</th></tr>"
    )
    for name, mean, top in rows:
        parts.append(f'<tr><td class="text">{escape(name)}</td><td>{number(mean)}</td><td>{top} of {counted}</td></tr>')
    parts.append("</table>")
    return "\n".join(parts)
