"""Ray's saved state of a search (its experiment folder under --storage), as a resume meets it.

A resume does not restore Ray's run: it starts a new one that continues from the Optuna studies and MLflow
runs (`search.PairSearcher.from_studies`), because Ray snapshots its state only periodically and a killed
driver leaves the snapshot behind those records. What a resume takes from the folder is each unfinished
trial's latest checkpoint (`latest_checkpoints`). Ray saves its state in the driver's staging folder and then
copies it into the storage folder, a copy that is not atomic: a full disk (or a crash) mid-copy leaves a
truncated file. A folder whose newest state does not read back (`damage`) is set aside (`set_aside`, nothing
deleted), so the new run starts in a clean folder, and the driver says so.
"""

from __future__ import annotations

import datetime as dt
import json
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


def latest_checkpoints(folder: Path) -> dict[tuple[str, int], str]:
    """The newest readable-looking checkpoint folder of each study trial (pair, Optuna trial number) among
    the trial folders of every earlier Tune run of the search in `folder` (each trial's `params.json` names
    its pair and study trial). A resume hands these to the trials it starts again."""
    found: dict[tuple[str, int], tuple[float, str]] = {}
    for params in folder.glob("*/params.json"):
        try:
            with open(params) as file:
                config = json.load(file)
            key = (str(config["pair"]), int(config["optuna_trial"]))
        except (OSError, ValueError, KeyError, TypeError):  # not one of ours, or cut short: nothing to carry
            continue
        for state in params.parent.glob("checkpoint_*/trainer.pt"):
            try:
                written = state.stat().st_mtime
            except OSError:
                continue
            if key not in found or written > found[key][0]:
                found[key] = (written, str(state.parent))
    return {key: path for key, (_, path) in found.items()}


def set_aside(folder: Path) -> Path:
    """Rename the damaged state folder to `<name>.damaged-<time>` beside it (kept, for whoever wants to look)
    and return the new path."""
    target = folder.with_name(f"{folder.name}.damaged-{dt.datetime.now():%Y%m%d-%H%M%S}")
    folder.rename(target)
    return target
