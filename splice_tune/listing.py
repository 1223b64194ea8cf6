"""`splice-tune ls`: the searches in a tracking store and, per pair, how its trials ended and the best score.

`--json` prints the same as one JSON document on stdout, for scripts; its keys (README, "After a search")
are kept stable:

    {"tracking_uri": str,
     "searches": [{"name": str, "experiment_id": str, "created": ISO 8601 str, "description": str,
                   "vit_note": str | null,
                   "pairs": [{"pair": str, "trials": int, "finished": int, "stopped_early": int, "failed": int,
                              "running": int, "interrupted": int, "best_splice_score": float | null,
                              "best_run_id": str | null}]}]}
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

from mlflow.entities import Experiment
from rich.console import Console
from rich.table import Table

from splice_tune import results, tracking
from splice_tune.formatting import number


def list_searches(
    root: Path, tracking_uri: str | None = None, console: Console | None = None, as_json: bool = False
) -> None:
    """Print every search of the store, newest first: per search a heading line and a table with one row
    per pair (or, with `as_json`, the JSON document above); BadInput if the store is missing or unreadable."""
    console = console or Console()
    client, uri = results.open_store(tracking_uri, root)
    searches = [
        (experiment, results.search_pairs(client, experiment)) for experiment in results.search_experiments(client)
    ]
    if as_json:
        print(
            json.dumps(
                {"tracking_uri": uri, "searches": [_search_json(experiment, pairs) for experiment, pairs in searches]},
                indent=2,
            )
        )
        return
    if not searches:
        console.print(
            f"no searches in {uri} yet; start one with `splice-tune search PAIRS.csv`", highlight=False, soft_wrap=True
        )
        return
    counted = {
        (experiment.name, name): results.count_states(pair.trials)
        for experiment, pairs in searches
        for name, pair in pairs.items()
    }
    # Interrupted trials are rare (a search stopped by hand): a column only when there are some.
    states = [
        state
        for state in results.STATES
        if state != results.INTERRUPTED or any(counts[state] for counts in counted.values())
    ]
    console.print(f"searches in {uri}, newest first", highlight=False, soft_wrap=True)
    for experiment, pairs in searches:
        _print_search(console, experiment, pairs, {name: counted[(experiment.name, name)] for name in pairs}, states)
    console.print(
        "next: splice-tune best --pair PAIR --search SEARCH (render a winner), splice-tune report "
        "--search SEARCH (plots and contact sheets), splice-tune ui (browse in MLflow)",
        highlight=False,
        soft_wrap=True,
    )


def _created(experiment: Experiment) -> dt.datetime:
    return dt.datetime.fromtimestamp((experiment.creation_time or 0) / 1000).astimezone()


def _search_json(experiment: Experiment, pairs: dict[str, results.PairRuns]) -> dict:
    return {
        "name": experiment.name,
        "experiment_id": experiment.experiment_id,
        "created": _created(experiment).isoformat(timespec="seconds"),
        "description": experiment.tags.get(tracking.TAG_DESCRIPTION, ""),
        "vit_note": results.vit_note([trial for pair in pairs.values() for trial in pair.trials]),
        "pairs": [_pair_json(name, pair) for name, pair in pairs.items()],
    }


def _pair_json(name: str, pair: results.PairRuns) -> dict:
    counts = results.count_states(pair.trials)
    best = results.winner(pair.trials)
    score = best.data.metrics["splice_score"] if best else None
    return {
        "pair": name,
        "trials": len(pair.trials),
        **{state.replace(" ", "_"): counts[state] for state in results.STATES},
        # JSON has no infinity: a score that is not finite is no score.
        "best_splice_score": score if score is not None and math.isfinite(score) else None,
        "best_run_id": best.info.run_id if best else None,
    }


def _print_search(
    console: Console, experiment, pairs: dict, counted: dict[str, dict[str, int]], states: list[str]
) -> None:
    """One search of `ls`: its name and date on a line, then a row per pair with its trial counts and best."""
    # The name on a line of its own, never in a table column: a narrow terminal would cut it short there,
    # and it is what the user copies into --search.
    console.print()
    console.print(
        f"[bold]{experiment.name}[/]  created {_created(experiment):%Y-%m-%d %H:%M}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    table.add_column("pair", overflow="fold")
    for column in ("trials", *states, "best splice_score"):
        table.add_column(column, justify="right")
    for name, pair in pairs.items():
        best = results.winner(pair.trials)
        table.add_row(
            name,
            str(len(pair.trials)),
            *(str(counted[name][state]) for state in states),
            number(best.data.metrics["splice_score"]) if best else "-",
        )
    if pairs:
        console.print(table)
    else:
        console.print("  no pairs yet")
    note = results.vit_note([trial for pair in pairs.values() for trial in pair.trials])
    if note:
        console.print(f"search {experiment.name}: {note}", highlight=False, soft_wrap=True)
