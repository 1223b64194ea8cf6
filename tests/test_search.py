"""`splice-tune search` end to end: a real local Ray, a real SQLite MLflow store, the example images."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import re
from collections import defaultdict

import optuna
import pytest
from conftest import write_search_inputs
from mlflow import MlflowClient

from splice_model import CONFIG_FIELDS, SpliceConfig
from splice_tune import studies, tracking, warm_start
from splice_tune.search import PairSearcher, evals_per_trial
from splice_tune.spaces import load_space
from splice_tune.warm_start import WarmPoint

pytestmark = pytest.mark.slow
SCORES = ("structure_score", "appearance_score", "splice_score")


@pytest.fixture(scope="module")
def runs(finished_search):
    client = MlflowClient(tracking_uri=finished_search.tracking_uri)
    experiment = client.get_experiment_by_name("test-search")
    every = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in every if run.data.tags.get(tracking.TAG_KIND) == "pair"]
    children = [run for run in every if run.data.tags.get(tracking.TAG_KIND) == "trial"]
    return client, parents, children


def test_one_parent_run_per_pair_with_its_input_images(runs):
    client, parents, _ = runs
    assert sorted(run.data.tags[tracking.TAG_PAIR] for run in parents) == ["cows", "fruits"]
    for run in parents:
        files = {info.path for info in client.list_artifacts(run.info.run_id, "inputs")}
        assert files == {"inputs/structure.png", "inputs/appearance.png"}
        assert run.data.metrics["structure_base"] > 0 and run.data.metrics["appearance_base"] > 0


def test_every_trial_has_params_scores_images_and_checkpoint(runs):
    client, parents, children = runs
    assert len(children) == 6
    parent_ids = {run.info.run_id for run in parents}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] in parent_ids
        assert set(CONFIG_FIELDS) <= set(run.data.params), "every SpliceConfig field is a param"
        for score in SCORES:
            history = client.get_metric_history(run.info.run_id, score)
            assert len(history) >= 2, f"{score}: at least two evals"
            assert [m.step for m in history] == sorted(m.step for m in history)
        assert len(client.get_metric_history(run.info.run_id, "loss/total")) >= 20, "a loss point per step"
        images = client.list_artifacts(run.info.run_id, "images")
        assert len(images) >= 2, "an output image per eval"
        checkpoint = {info.path for info in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert checkpoint == {"checkpoint/generator.pt"}
        assert run.data.tags[tracking.TAG_VIT] == "random_tiny8"


def test_statuses_and_early_stopping_tags_agree(runs):
    _, _, children = runs
    stopped = [run for run in children if run.data.tags.get(tracking.TAG_STOPPED_EARLY) == "true"]
    assert stopped, "the 1e-6 learning rate trials should lose to the 4e-3 ones and be stopped by ASHA"
    for run in children:
        early = run.data.tags.get(tracking.TAG_STOPPED_EARLY) == "true"
        assert run.info.status == ("KILLED" if early else "FINISHED")
        if not early:
            assert "final_splice_score" in run.data.metrics


def test_each_pair_has_its_own_study(runs):
    _, _, children = runs
    numbers = defaultdict(list)
    for run in children:
        assert run.data.params["pair"] == run.data.tags[tracking.TAG_PAIR]
        numbers[run.data.params["pair"]].append(int(run.data.params["optuna_trial"]))
    # Each pair's study numbers its own trials 0, 1, 2: one shared study would have numbered them 0..5.
    assert {pair: sorted(found) for pair, found in numbers.items()} == {"cows": [0, 1, 2], "fruits": [0, 1, 2]}


def test_summary_names_each_pairs_best_finished_trial(finished_search, runs):
    _, _, children = runs
    summary = {result.pair: result for result in finished_search.summary.pairs}
    for pair in ("cows", "fruits"):
        finished = [
            run for run in children if run.data.tags[tracking.TAG_PAIR] == pair and run.info.status == "FINISHED"
        ]
        best = min(finished, key=lambda run: run.data.metrics["splice_score"])
        assert summary[pair].run_id == best.info.run_id
        assert summary[pair].score == pytest.approx(best.data.metrics["splice_score"])
        assert set(summary[pair].params) == {"lr", "alpha"}
        assert summary[pair].counts["finished"] + summary[pair].counts["stopped early"] == 3


def test_mlflow_names_trials_describes_the_search_and_keeps_each_winner_on_its_pair(finished_search, runs):
    client, parents, children = runs
    experiment = client.get_experiment_by_name("test-search")
    assert experiment.tags["mlflow.note.content"] == "test space (random tiny ViT, 64 px, 30 steps)"
    for run in children:
        assert run.info.run_name == f"{run.data.params['pair']}-t{run.data.params['optuna_trial']}"
    winners = {result.pair: result.run_id for result in finished_search.summary.pairs}
    for parent in parents:
        winner = client.get_run(winners[parent.data.tags[tracking.TAG_PAIR]])
        assert parent.data.tags[tracking.TAG_BEST_TRIAL] == winner.info.run_id
        for score in SCORES:
            assert parent.data.metrics[f"best_{score}"] == pytest.approx(winner.data.metrics[score])
        for name in ("alpha", "lr"):  # the sampled params
            assert parent.data.metrics[f"best_{name}"] == pytest.approx(float(winner.data.params[name]))


def test_a_search_with_a_judge_logs_six_scores_and_the_judges_baselines(runs):
    client, parents, children = runs
    for run in parents:
        for name in ("structure_base", "appearance_base"):
            assert run.data.metrics[f"judge_{name}"] > 0 and run.data.metrics[f"judge_{name}"] != run.data.metrics[name]
    for run in children:
        assert run.data.params["judge_vit"] == "random_tiny16"
        for score in SCORES:
            training = client.get_metric_history(run.info.run_id, score)
            judged = client.get_metric_history(run.info.run_id, f"judge_{score}")
            assert [m.step for m in judged] == [m.step for m in training], "the judge scores every eval"
            assert all(math.isfinite(m.value) and m.value >= 0 for m in judged)
        if run.info.status == "FINISHED":
            assert {f"final_judge_{score}" for score in SCORES} <= set(run.data.metrics)


def test_each_pairs_first_trial_is_the_papers_point_and_every_trial_says_where_its_params_came_from(runs):
    _, _, children = runs
    for run in children:
        first = run.data.params["optuna_trial"] == "0"
        assert run.data.tags[warm_start.SOURCE] == ("paper" if first else "random")
        if first:
            # The test space samples alpha in [0.05, 0.3] (the paper's 0.1 is inside) and lr from choices that
            # lack the paper's 2e-3, so lr is left to the sampler.
            assert float(run.data.params["alpha"]) == 0.1


def test_without_a_terminal_a_search_prints_progress_lines(tmp_path, ray_session):
    from rich.console import Console

    from splice_tune.driver import SearchRequest, run_search

    pairs_csv, space = write_search_inputs(tmp_path, pairs=("cows",))
    log = Console(file=io.StringIO(), force_terminal=False, width=100)
    request = SearchRequest(
        pairs_csv=pairs_csv,
        space=str(space),
        name="logged",
        root=tmp_path / "splice-runs",
        overrides=["budget.trials_per_pair=2", "scheduler.type=none"],
        progress_every=0.5,
    )
    run_search(request, console=log)
    lines = [line for line in log.file.getvalue().splitlines() if "search progress:" in line]
    pattern = re.compile(
        r"\[\d\d:\d\d:\d\d\] search progress: (?P<done>\d)/2 trials done, (?P<running>\d) running, 0 stopped "
        r"early, 0 failed; [01]/1 pairs complete, elapsed \d:\d\d:\d\d, ETA (?P<eta>-|\d:\d\d:\d\d) \| "
        r"cows (?P=done)/2( best (?P<best>[\d.]+))?"
    )
    matches = [pattern.fullmatch(line) for line in lines]
    assert lines and all(matches), log.file.getvalue()
    assert any(match["done"] == "1" and match["running"] == "1" for match in matches), lines  # mid-search
    assert any(match["eta"] != "-" and match["best"] for match in matches), lines  # an ETA, a best
    assert "\x1b[" not in log.file.getvalue()


def test_the_callback_reaches_its_session_only_while_the_run_lasts():
    from splice_tune import tune_callback

    tracker, view = object(), object()
    with pytest.raises(KeyboardInterrupt):
        with tune_callback.session("s", tracker, view) as callback:
            assert (callback.tracker, callback.view) == (tracker, view)
            raise KeyboardInterrupt  # Ctrl-C while Ray runs
    with pytest.raises(KeyError):
        callback.view  # noqa: B018 - the lookup itself is what must fail


def _stored_searcher(tmp_path, trials: int = 3) -> PairSearcher:
    (tmp_path / "space.yaml").write_text(
        "params: {alpha: {type: float, low: 0.01, high: 1.0, log: true}}\n"
        f"budget: {{trials_per_pair: {trials}}}\nsampler: {{type: random, seed: 0}}\n"
    )
    space = load_space(tmp_path / "space.yaml")
    url = studies.default_url(tmp_path)
    return PairSearcher("s", ["a", "b"], space, url, {"a": "run-a", "b": "run-b"})


def _as_ray_restores(searcher: PairSearcher, tmp_path) -> PairSearcher:
    """The searcher as `Tuner.restore` brings it back: unpickled, then given its last saved state."""
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "searcher.pkl"))
    return restored


def test_searcher_keeps_pairs_apart_and_respects_the_budget(tmp_path):
    searcher = _stored_searcher(tmp_path)
    proposals = [searcher.suggest(f"trial_{i}") for i in range(7)]
    assert proposals[-1] == PairSearcher.FINISHED, "3 + 3 trials, then done"
    assert [p["pair"] for p in proposals[:6]] == ["a", "b", "a", "b", "a", "b"], "pairs interleave"
    for pair in ("a", "b"):
        mine = [p["params"]["alpha"] for p in proposals[:6] if p["pair"] == pair]
        study = [trial.params["alpha"] for trial in searcher.studies[pair].trials]
        assert mine == study, "a trial's values come from its own pair's study"
    searcher.on_trial_result("trial_2", {"splice_score": 0.9, "training_iteration": 1, "mlflow_run_id": "r2"})
    searcher.on_trial_complete("trial_0", {"splice_score": 0.5, "final": True})
    searcher.on_trial_complete("trial_1", {"splice_score": 0.7}, error=True)
    searcher.on_trial_complete("trial_2", {"splice_score": 0.9, "final": False})  # the scheduler stopped it
    searcher.on_trial_complete("trial_4", {"splice_score": float("inf"), "final": True, "diverged": True})
    searcher.on_trial_complete("trial_3", {"splice_score": float("inf"), "final": True, "diverged": True})
    study_a, study_b = (
        optuna.load_study(study_name=f"s/{pair}", storage=studies.default_url(tmp_path)) for pair in "ab"
    )
    assert study_a.trials[0].value == 0.5
    assert study_b.trials[0].state.name == "FAIL"
    assert study_a.trials[1].state.name == "PRUNED" and study_a.trials[1].intermediate_values == {1: 0.9}
    assert study_a.trials[1].user_attrs == {studies.ATTR_RUN: "r2", warm_start.SOURCE: "random"}
    assert study_a.trials[2].value == 0.5, "a diverged trial counts as the worst result seen so far"
    assert study_b.trials[1].state.name == "FAIL", "nothing to compare a diverged trial with yet"
    assert study_a.user_attrs == {studies.ATTR_PARENT_RUN: "run-a"}
    restored = _as_ray_restores(searcher, tmp_path)
    assert restored.suggest("trial_7") == PairSearcher.FINISHED
    assert dataclasses.asdict(searcher.space.budget) == {"trials_per_pair": 3, "max_concurrent": None}


def test_a_restored_searcher_continues_the_stored_studies_without_duplicates(tmp_path):
    searcher = _stored_searcher(tmp_path)
    first = [searcher.suggest(f"trial_{i}") for i in range(2)]  # a0, b0
    searcher.save(str(tmp_path / "searcher.pkl"))
    pickled = pickle.dumps(searcher)  # Ray's last save
    # After that save, before the driver died: a trial told, and one more asked.
    searcher.on_trial_complete("trial_0", {"splice_score": 0.4, "final": True})
    lost = searcher.suggest("trial_2")
    restored = pickle.loads(pickled)
    restored.restore(str(tmp_path / "searcher.pkl"))
    # Ray resumes trial_0 from its final checkpoint and reports it again: the stored value stays.
    restored.on_trial_result("trial_0", {"splice_score": 0.4, "training_iteration": 3})
    restored.on_trial_complete("trial_0", {"splice_score": 0.4, "final": True})
    again = restored.suggest("trial_2b")
    assert again == lost, "the trial asked after Ray's last save is handed out again: same number, same params"
    rest = [restored.suggest(f"trial_{i}") for i in range(3, 8)]
    assert rest[-2:] == [PairSearcher.FINISHED] * 2
    stored = {pair: optuna.load_study(study_name=f"s/{pair}", storage=studies.default_url(tmp_path)) for pair in "ab"}
    assert [len(stored[pair].trials) for pair in "ab"] == [3, 3], "nothing asked twice"
    assert stored["a"].trials[0].value == 0.4 and stored["a"].trials[0].state.name == "COMPLETE"
    assert {p["optuna_trial"] for p in [*first, again, *rest[:3]] if p["pair"] == "a"} == {0, 1, 2}


def test_warm_start_points_are_each_pairs_first_trials_with_exactly_their_params(tmp_path):
    (tmp_path / "space.yaml").write_text(
        "params: {alpha: {type: float, low: 0.01, high: 1.0, log: true}, beta: {type: float, low: 0.0, high: 0.05}}"
        "\nbudget: {trials_per_pair: 4}\nsampler: {type: random, seed: 0}\n"
    )
    space = load_space(tmp_path / "space.yaml")
    winners = [
        WarmPoint({"alpha": 0.3, "beta": 0.02, "lr": 1.0}, "older/b", 0.5, "b"),
        WarmPoint({"alpha": 2.0, "beta": 0.04}, "older/a", 0.7, "a"),
    ]
    warm = warm_start.plan(space, ["a", "b"], True, winners)
    url = studies.default_url(tmp_path)
    searcher = PairSearcher("s", ["a", "b"], space, url, {"a": "run-a", "b": "run-b"}, warm.points)
    proposals = [searcher.suggest(f"trial_{i}") for i in range(8)]
    by_pair = {pair: [p for p in proposals if p["pair"] == pair] for pair in "ab"}
    # The paper's point (beta 0.1 clipped to the range's 0.05), then the pair's own winner (alpha 2.0 clipped
    # to 1.0), then the other pair's; at most half of the 4 trials.
    assert [(p["params"], p["source"]) for p in by_pair["a"][:2]] == [
        ({"alpha": 0.1, "beta": 0.05}, "paper"),
        ({"alpha": 1.0, "beta": 0.04}, "older/a"),
    ]
    assert [(p["params"], p["source"]) for p in by_pair["b"][:2]] == [
        ({"alpha": 0.1, "beta": 0.05}, "paper"),
        ({"alpha": 0.3, "beta": 0.02}, "older/b"),
    ]
    assert all(p["source"] == "random" for pair in "ab" for p in by_pair[pair][2:])
    stored = optuna.load_study(study_name="s/a", storage=url).trials
    assert [trial.user_attrs[warm_start.SOURCE] for trial in stored] == ["paper", "older/a", "random", "random"]
    assert [trial.params for trial in stored[:2]] == [p["params"] for p in by_pair["a"][:2]]


def test_a_restored_searcher_hands_out_the_warm_starts_it_has_not_asked_yet(tmp_path):
    (tmp_path / "space.yaml").write_text(
        "params: {alpha: {type: float, low: 0.01, high: 1.0, log: true}}\nbudget: {trials_per_pair: 4}\n"
    )
    space = load_space(tmp_path / "space.yaml")
    points = {"a": [WarmPoint({"alpha": 0.1}, "paper"), WarmPoint({"alpha": 0.5}, "older/a")]}
    searcher = PairSearcher("s", ["a"], space, studies.default_url(tmp_path), {"a": "run-a"}, points)
    first = searcher.suggest("trial_0")
    restored = _as_ray_restores(searcher, tmp_path)
    rest = [restored.suggest(f"trial_{i}") for i in range(1, 5)]
    assert [p["params"]["alpha"] for p in [first, rest[0]]] == [0.1, 0.5]
    assert [p["optuna_trial"] for p in [first, *rest[:3]]] == [0, 1, 2, 3] and rest[3] == PairSearcher.FINISHED


def test_the_quick_search_starts_every_pair_at_the_papers_point(tmp_path):
    space = load_space("quick")
    warm = warm_start.plan(space, ["cows", "fruits"], True, [])
    parents = {"cows": "run-c", "fruits": "run-f"}
    searcher = PairSearcher("q", ["cows", "fruits"], space, studies.default_url(tmp_path), parents, warm.points)
    first = [searcher.suggest(f"trial_{i}") for i in range(2)]
    paper = SpliceConfig()
    assert [p["pair"] for p in first] == ["cows", "fruits"]
    for proposal in first:
        assert proposal["source"] == "paper"
        assert proposal["params"] == {name: getattr(paper, name) for name in space.params}
        assert space.config_for(proposal["params"]).alpha == 0.1 and space.config_for(proposal["params"]).lr == 2e-3


def test_evals_per_trial_takes_the_longest_run_and_the_most_frequent_evals(tmp_path):
    (tmp_path / "space.yaml").write_text(
        "fixed: {steps: 250}\nparams: {eval_every: {type: categorical, choices: [100, 40]}}\n"
    )
    assert evals_per_trial(load_space(tmp_path / "space.yaml")) == 7  # ceil(250 / 40)
    (tmp_path / "sampled.yaml").write_text("params: {steps: {type: int, low: 100, high: 300}}\n")
    assert evals_per_trial(load_space(tmp_path / "sampled.yaml")) == 3  # ceil(300 / 100): eval_every keeps its default
