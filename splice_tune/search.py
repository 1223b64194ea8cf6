"""The search driver: per-pair Optuna studies and per-pair early stopping inside one Ray Tune run.

One Tuner runs the trials of every pair at once, so free slots never idle while any pair has trials left.
`PairSearcher` keeps one Optuna study per pair and hands out trials round-robin over the pairs with budget
left; `PairScheduler` keeps one ASHA comparison per pair (comparing scores across different images would be
meaningless). Both live in the driver. The studies are in Optuna's storage (`studies`), the record a
`--resume` continues from (`PairSearcher.from_studies`: Ray's own saved state of the search is not needed,
so how often Ray snapshots it does not matter); schedulers are not saved, so after a resume each pair's
ASHA rungs fill again from the trials that report from then on.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter

import optuna
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from splice_tune import studies
from splice_tune.spaces import SearchSpace
from splice_tune.warm_start import SOURCE, WarmPoint


def make_sampler(space: SearchSpace, pair: str, asked: int = 0) -> optuna.samplers.BaseSampler:
    """The pair's Optuna sampler, seeded from the space's seed and the pair name, and for a resumed study
    from how many trials it holds (`asked`): a resumed random sampler must not propose its first points again."""
    seed = space.sampler.seed_for(pair)
    if seed is not None and asked:
        seed = (seed + 1_000_003 * asked) % 2**32
    if space.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = space.sampler.startup_trials
    return optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": startup} if startup is not None else {}))


# The storage each search's studies are reattached to when Ray restores its pickled searcher: the driver
# registers the one this run was asked for (--optuna-storage, or ROOT/optuna.db of the current --root).
_STORAGE_URLS: dict[str, str] = {}


def use_storage(search: str, url: str) -> None:
    """Make a restored searcher of search `search` reattach to the Optuna storage at `url`."""
    _STORAGE_URLS[search] = url


class PairSearcher(Searcher):
    """Proposes trials from one Optuna study per pair; a trial's values only ever come from its own pair.

    The studies live in Optuna's storage (`studies.study_name` = SEARCH/PAIR), which is the record of every
    trial's state and value. Ray pickles the searcher with only what the storage does not hold: which Ray
    trial has which study trial, which are not told yet, and each sampler's state. A restored searcher
    reattaches to the storage on first use.

    `warm` holds each pair's warm-start points (`warm_start.plan`): they are enqueued in its new study, so
    they are its first trials; every trial records where its values came from (user attr `SOURCE`).
    """

    def __init__(
        self,
        search: str,
        pairs: list[str],
        space: SearchSpace,
        storage_url: str,
        parent_runs: dict,
        warm: dict[str, list[WarmPoint]] | None = None,
    ):
        super().__init__(metric=space.objective.metric, mode=space.objective.mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.search = search
        self.pairs = list(pairs)
        self.space = space
        self.storage_url = storage_url
        self.budget = space.budget.trials_per_pair
        self.distributions = space.distributions()
        direction = "minimize" if space.objective.mode == "min" else "maximize"
        self.assigned: dict[str, tuple[str, int]] = {}  # Ray trial id -> (pair, Optuna trial number)
        self.open: set[str] = set()  # Ray trial ids whose study trial is not told yet
        self.samplers = {pair: make_sampler(space, pair) for pair in self.pairs}
        self._run_ids_stored: set[str] = set()
        self.checkpoints: dict[tuple[str, int], str] = {}  # (pair, number) -> an earlier run's checkpoint
        use_storage(search, storage_url)
        studies.make_folder(storage_url)
        storage = optuna.storages.get_storage(storage_url)
        for pair in self.pairs:
            study = optuna.create_study(
                storage=storage, study_name=studies.study_name(search, pair), direction=direction
            )
            study.set_user_attr(studies.ATTR_PARENT_RUN, parent_runs[pair])
            for point in (warm or {}).get(pair, []):
                study.enqueue_trial(point.params, user_attrs={SOURCE: point.source})
        self._attach()

    @classmethod
    def from_studies(
        cls,
        search: str,
        pairs: list[str],
        space: SearchSpace,
        storage_url: str,
        checkpoints: dict[tuple[str, int], str] | None = None,
    ) -> tuple["PairSearcher", int]:
        """A searcher that continues search `search` from its stored studies (what every --resume does):
        every study trial that ended counts against its pair's budget, and each one still RUNNING (stopped
        with the search, or asked just before its driver died) is handed out again first, with its number
        and params, so its MLflow run continues, and with its latest checkpoint folder from `checkpoints`
        ((pair, number) -> folder), so it continues from there. Returns it and how many trials the pairs
        have left to start."""
        searcher = cls.__new__(cls)
        Searcher.__init__(searcher, metric=space.objective.metric, mode=space.objective.mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher.search, searcher.pairs, searcher.space = search, list(pairs), space
        searcher.storage_url = storage_url
        searcher.budget = space.budget.trials_per_pair
        searcher.distributions = space.distributions()
        searcher.assigned, searcher.open, searcher.samplers = {}, set(), {}
        searcher._run_ids_stored = set()
        searcher.checkpoints = dict(checkpoints or {})
        use_storage(search, storage_url)
        storage = optuna.storages.get_storage(storage_url)
        ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        for pair in searcher.pairs:
            study = optuna.load_study(study_name=studies.study_name(search, pair), storage=storage)
            stored = study.get_trials(deepcopy=False)
            searcher.samplers[pair] = make_sampler(space, pair, asked=len(stored))
            for trial in stored:
                if trial.state in ended:
                    searcher.assigned[f"ended:{pair}:{trial.number}"] = (pair, trial.number)
        searcher._attach()
        left = len(searcher.pairs) * searcher.budget - len(searcher.assigned)
        return searcher, left

    def __getstate__(self) -> dict:
        # Studies and the storage's connections stay out of Ray's pickles; the storage holds them.
        state = dict(self.__dict__)
        for live in ("studies", "_storage", "_study_ids", "_unclaimed", "_live"):
            state.pop(live, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.studies = None

    def _attach(self) -> None:
        """Open the storage and the search's stored studies. A stored trial no Ray trial of the restored state
        holds was asked after Ray's last save (the driver died in between): it is handed out again, with its
        stored params, before anything new is asked, so its number (and MLflow run) is reused."""
        self._storage = optuna.storages.get_storage(_STORAGE_URLS.get(self.search, self.storage_url))
        self.studies, self._study_ids, self._unclaimed = {}, {}, {}
        # Which stored trials are RUNNING, kept here: this searcher is the only writer of the search's
        # studies (one driver per search: its lock), and a storage read per result cost more than Ray's own
        # bookkeeping of the trial.
        self._live: set[tuple[str, int]] = set()
        claimed = set(self.assigned.values())
        for pair in self.pairs:
            name = studies.study_name(self.search, pair)
            study = optuna.load_study(study_name=name, storage=self._storage, sampler=self.samplers[pair])
            self.studies[pair] = study
            self._study_ids[pair] = self._storage.get_study_id_from_name(name)
            stored = study.get_trials(deepcopy=False)
            self._live.update(
                (pair, trial.number) for trial in stored if trial.state == optuna.trial.TrialState.RUNNING
            )
            # WAITING trials are warm starts not asked yet: `ask` hands them out in order.
            self._unclaimed[pair] = [
                trial.number
                for trial in stored
                if (pair, trial.number) not in claimed and trial.state != optuna.trial.TrialState.WAITING
            ]

    def _study(self, pair: str) -> optuna.Study:
        if self.studies is None:
            self._attach()
        return self.studies[pair]

    def _trial_id(self, pair: str, number: int) -> int:
        self._study(pair)
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_ids[pair], number)

    def _running(self, pair: str, number: int) -> bool:
        """Whether the stored trial can still be updated (RUNNING in the storage, not told yet)."""
        self._study(pair)
        return (pair, number) in self._live

    def started(self) -> Counter:
        return Counter(pair for pair, _ in self.assigned.values())

    def suggest(self, trial_id: str) -> dict | str | None:
        started = self.started()
        open_pairs = [pair for pair in self.pairs if started[pair] < self.budget]
        if not open_pairs:
            return Searcher.FINISHED
        pair = min(open_pairs, key=lambda name: started[name])  # ties keep the CSV's order
        study = self._study(pair)
        if self._unclaimed.get(pair):
            number = self._unclaimed[pair].pop(0)
            stored = self._storage.get_trial(self._trial_id(pair, number))
            params, source = dict(stored.params), stored.user_attrs.get(SOURCE, self.space.sampler.type)
        else:
            optuna_trial = study.ask(self.distributions)
            number, params = optuna_trial.number, dict(optuna_trial.params)
            self._live.add((pair, number))
            source = optuna_trial.user_attrs.get(SOURCE)
            if source is None:  # not enqueued: the sampler's
                source = self.space.sampler.type
                optuna_trial.set_user_attr(SOURCE, source)
        self.assigned[trial_id] = (pair, number)
        self.open.add(trial_id)
        proposal = {"pair": pair, "params": params, "optuna_trial": number, "source": source}
        if carried := getattr(self, "checkpoints", {}).get((pair, number)):
            proposal["resume_from"] = carried
        return proposal

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.open:
            return
        pair, number = self.assigned[trial_id]
        if not self._running(pair, number):
            return
        stored_id = self._trial_id(pair, number)
        run_id = result.get("mlflow_run_id")
        if run_id and trial_id not in self._run_ids_stored:
            self._storage.set_trial_user_attr(stored_id, studies.ATTR_RUN, run_id)
            self._run_ids_stored.add(trial_id)
        # Intermediate values let TPE rank trials that the scheduler stops (told PRUNED below).
        value = result.get(self.metric)
        if value is not None and math.isfinite(value):
            self._storage.set_trial_intermediate_value(stored_id, result["training_iteration"], value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.open:
            return  # told already (a resumed search replays completions)
        self.open.discard(trial_id)
        pair, number = self.assigned[trial_id]
        if not self._running(pair, number):
            return  # not RUNNING in the storage: told already
        self._live.discard((pair, number))
        study = self.studies[pair]
        result = result or {}
        value = result.get(self.metric)
        if error or value is None:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        elif result.get("diverged"):
            # Diverged: these values are bad. Told as the worst score seen so far, so TPE steers away from
            # them; with nothing to compare against yet, as failed.
            seen = [t.value for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])]
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
            pickle.dump({"assigned": self.assigned, "open": self.open, "samplers": self.samplers}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        self.assigned, self.open, self.samplers = state["assigned"], state["open"], state["samplers"]
        self._attach()


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
