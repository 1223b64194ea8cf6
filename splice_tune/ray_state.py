"""Ray's saved state of a search (its experiment folder under --storage), checked before a resume.

Ray saves the state in the driver's staging folder and then copies it into the storage folder, a copy that is
not atomic: a full disk (or a crash) mid-copy leaves a truncated file there. Restoring from one makes Ray log
"Failed to restore the run state" and start the run over with an empty state, which then re-runs every
trial. So a resume first reads back what Ray will read (`damage`); when that fails, the driver sets the folder
aside (nothing is deleted) and continues the search from the Optuna studies and MLflow runs instead
(`search.PairSearcher.from_studies`). A trial's `error.pkl` cut short is only Ray's copy of an error that
`error.txt` and MLflow keep too; Ray reads every one when the run ends, so damaged ones are removed.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
from pathlib import Path

EXPERIMENT_STATE = "experiment_state-"
# Per session: the state of Ray's search generator (a pickle despite its name) and of our searcher.
SESSION_FILES = ("search_gen_state-{}.json", "searcher-state-{}.pkl")


def _unreadable(path: Path, load) -> str | None:
    try:
        with open(path, "rb") as file:
            load(file)
    except Exception as error:  # what a truncated or garbled file raises varies (EOFError, JSON, pickle)
        return f"{path.name}: {type(error).__name__}: {' '.join(str(error).split())[:120]}"
    return None


def damage(folder: Path) -> str | None:
    """Why Ray could not restore the search saved in `folder` (its newest experiment state, that session's
    search state, the tuner), or None when every one of those files reads back."""
    import ray.cloudpickle

    states = sorted(folder.glob(f"{EXPERIMENT_STATE}*.json"))
    if not states:
        return f"no {EXPERIMENT_STATE}*.json in {folder}"
    newest = states[-1]
    problem = _unreadable(newest, json.load)
    session = newest.name.removeprefix(EXPERIMENT_STATE).removesuffix(".json")
    for pattern in SESSION_FILES:
        path = folder / pattern.format(session)
        if problem is None and path.exists():
            problem = _unreadable(path, ray.cloudpickle.load)
    tuner = folder / "tuner.pkl"
    if problem is None and tuner.exists():
        problem = _unreadable(tuner, ray.cloudpickle.load)
    return problem


def drop_damaged_errors(folder: Path) -> int:
    """Remove the trials' `error.pkl` files that cannot be read back; returns how many."""
    dropped = 0
    for path in folder.glob("*/error.pkl"):
        if _unreadable(path, pickle.load):
            path.unlink()
            dropped += 1
    return dropped


def set_aside(folder: Path) -> Path:
    """Rename the damaged state folder to `<name>.damaged-<time>` beside it (kept, for whoever wants to look)
    and return the new path."""
    target = folder.with_name(f"{folder.name}.damaged-{dt.datetime.now():%Y%m%d-%H%M%S}")
    folder.rename(target)
    return target
