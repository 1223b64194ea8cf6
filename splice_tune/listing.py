"""`splice-tune ls`: the searches in a tracking store and, per pair, how its trials ended and the best score."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splice_tune import results


def list_searches(root: Path, tracking_uri: str | None = None, console: Console | None = None) -> None:
    """Print one table row per pair of every search, newest search first, and a NOT DINO note under it for
    searches that used a random-weight ViT; BadInput if the store is missing or cannot be read."""
    console = console or Console()
    client, uri = results.open_store(tracking_uri, root)
    experiments = results.search_experiments(client)
    if not experiments:
        console.print(f"no searches in {uri} yet; start one with `splice-tune search PAIRS.csv`", highlight=False)
        return
    searches = [(experiment, results.search_pairs(client, experiment)) for experiment in experiments]
    counted = {(experiment.name, name): results.count_states(pair.trials)
               for experiment, pairs in searches for name, pair in pairs.items()}
    # Interrupted trials are rare (a search stopped by hand): a column only when there are some.
    states = [state for state in results.STATES
              if state != results.INTERRUPTED or any(counts[state] for counts in counted.values())]

    table = Table(title=f"searches in {uri}", title_justify="left")
    for column in ("search", "created", "pair", "trials", *states, "best splice_score"):
        table.add_column(column, justify="left" if column in ("search", "created", "pair") else "right")
    for experiment, pairs in searches:
        created = dt.datetime.fromtimestamp((experiment.creation_time or 0) / 1000).strftime("%Y-%m-%d %H:%M")
        if not pairs:
            table.add_row(experiment.name, created, "-", "0", *("0" for _ in states), "-")
        for index, (name, pair) in enumerate(pairs.items()):
            counts = counted[(experiment.name, name)]
            best = results.winner(pair.trials)
            table.add_row(experiment.name if index == 0 else "", created if index == 0 else "", name,
                          str(len(pair.trials)), *(str(counts[state]) for state in states),
                          f"{best.data.metrics['splice_score']:.4f}" if best else "-")
        table.add_section()
    console.print(table)
    for experiment, pairs in searches:
        note = results.vit_note([trial for pair in pairs.values() for trial in pair.trials])
        if note:
            console.print(f"search {experiment.name}: {note}", highlight=False)
    console.print("next: splice-tune best --pair PAIR --search SEARCH (render a winner), splice-tune report "
                  "--search SEARCH (plots and contact sheets), splice-tune ui (browse in MLflow)", highlight=False)
