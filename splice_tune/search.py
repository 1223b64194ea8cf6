"""The search driver: per-pair Optuna studies and per-pair early stopping inside one Ray Tune run.

One Tuner runs the trials of every pair at once, so free slots never idle while any pair has trials left.
`PairSearcher` keeps one Optuna study per pair and hands out trials round-robin over the pairs with budget
left; `PairScheduler` keeps one ASHA comparison per pair (comparing scores across different images would be
meaningless). Both live in the driver. Ray saves the searcher (with its studies) in the experiment state,
so `--resume` continues the same studies; it does not save schedulers, so after a resume each pair's ASHA
rungs fill again from the trials that report from then on.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter

import optuna
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from splice_tune.spaces import SearchSpace


def make_sampler(space: SearchSpace, pair: str) -> optuna.samplers.BaseSampler:
    """The pair's Optuna sampler, seeded from the space's seed and the pair name."""
    seed = space.sampler.seed_for(pair)
    if space.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = space.sampler.startup_trials
    return optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": startup} if startup is not None else {}))


class PairSearcher(Searcher):
    """Proposes trials from one Optuna study per pair; a trial's values only ever come from its own pair."""

    def __init__(self, pairs: list[str], space: SearchSpace):
        super().__init__(metric=space.objective.metric, mode=space.objective.mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.pairs = list(pairs)
        self.budget = space.budget.trials_per_pair
        self.distributions = space.distributions()
        direction = "minimize" if space.objective.mode == "min" else "maximize"
        self.studies = {
            pair: optuna.create_study(study_name=pair, direction=direction, sampler=make_sampler(space, pair))
            for pair in self.pairs
        }
        self.assigned: dict[str, tuple[str, int]] = {}  # Ray trial id -> (pair, Optuna trial number)
        self.open_trials: dict[str, optuna.trial.Trial] = {}  # Ray trial id -> its Optuna trial, until told

    def started(self) -> Counter:
        return Counter(pair for pair, _ in self.assigned.values())

    def suggest(self, trial_id: str) -> dict | str | None:
        started = self.started()
        open_pairs = [pair for pair in self.pairs if started[pair] < self.budget]
        if not open_pairs:
            return Searcher.FINISHED
        pair = min(open_pairs, key=lambda name: started[name])  # ties keep the CSV's order
        optuna_trial = self.studies[pair].ask(self.distributions)
        self.assigned[trial_id] = (pair, optuna_trial.number)
        self.open_trials[trial_id] = optuna_trial
        return {"pair": pair, "params": dict(optuna_trial.params), "optuna_trial": optuna_trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate values let TPE rank trials that the scheduler stops (told PRUNED below).
        value = result.get(self.metric)
        if trial_id in self.open_trials and value is not None and math.isfinite(value):
            self.open_trials[trial_id].report(value, step=result["training_iteration"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        optuna_trial = self.open_trials.pop(trial_id, None)
        if optuna_trial is None:
            return  # told already (a resumed search replays completions)
        pair, number = self.assigned[trial_id]
        study = self.studies[pair]
        result = result or {}
        value = result.get(self.metric)
        if error or value is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif result.get("diverged"):
            # Diverged: these values are bad. Told as the worst score seen so far, so TPE steers away from
            # them; with nothing to compare against yet, as failed.
            seen = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if seen:
                study.tell(number, max(seen) if self.mode == "min" else min(seen))
            else:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif not result.get("final"):
            study.tell(number, state=optuna.trial.TrialState.PRUNED)  # stopped early by the scheduler
        else:
            study.tell(number, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"studies": self.studies, "assigned": self.assigned, "open_trials": self.open_trials}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        self.studies, self.assigned, self.open_trials = state["studies"], state["assigned"], state["open_trials"]


class PairScheduler(FIFOScheduler):
    """ASHA within each pair (or no early stopping): every pair gets its own rungs."""

    def __init__(self, space: SearchSpace, max_evals: int):
        super().__init__()
        self.space = space
        self.max_evals = max_evals
        self.per_pair: dict[str, AsyncHyperBandScheduler] = {}

    def _asha(self, trial: Trial) -> AsyncHyperBandScheduler | None:
        if self.space.scheduler.type != "asha":
            return None
        pair = trial.config["pair"]
        if pair not in self.per_pair:
            self.per_pair[pair] = AsyncHyperBandScheduler(
                time_attr="training_iteration",
                metric=self.space.objective.metric,
                mode=self.space.objective.mode,
                max_t=max(self.max_evals, 1),
                grace_period=min(self.space.scheduler.grace_period, self.max_evals),
                reduction_factor=self.space.scheduler.reduction_factor,
            )
        return self.per_pair[pair]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        asha = self._asha(trial)
        if asha is None or result.get("final"):
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        if asha := self._asha(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        if asha := self._asha(trial):
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"per-pair {self.space.scheduler.type} over {len(self.per_pair)} pairs"


def evals_per_trial(space: SearchSpace) -> int:
    """The most reports a trial can make (ASHA's horizon): one per eval_every steps, rounding up for the last."""
    return math.ceil(max(space.values("steps")) / min(space.values("eval_every")))
