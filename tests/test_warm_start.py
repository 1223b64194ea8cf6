"""Warm starts: fitting known points into a space, ordering them per pair, and finding earlier winners."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from splice_tune import tracking, warm_start
from splice_tune.driver import SearchRequest, plan_search
from splice_tune.errors import BadInput
from splice_tune.spaces import load_space
from splice_tune.warm_start import WarmPoint


def space_file(tmp_path, params: str, trials: int = 4):
    path = tmp_path / "space.yaml"
    path.write_text(f"params: {{{params}}}\nbudget: {{trials_per_pair: {trials}}}\n")
    return load_space(path)


def test_fit_clips_into_ranges_snaps_to_steps_and_leaves_missing_choices_to_the_sampler(tmp_path):
    space = space_file(
        tmp_path,
        "alpha: {type: float, low: 0.2, high: 0.5}, blur_p: {type: float, low: 0.0, high: 0.6, step: 0.3},"
        "steps: {type: int, low: 10, high: 40, step: 10}, vit_size: {type: categorical, choices: [48, 64]},"
        "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}",
    )
    fitted = warm_start.fit(space, {"alpha": 0.1, "blur_p": 0.4, "steps": 2000, "vit_size": 224, "lr": 2e-3})
    assert fitted == {"alpha": 0.2, "blur_p": 0.3, "steps": 40, "lr": 2e-3}
    assert isinstance(fitted["steps"], int)
    assert warm_start.fit(space, {"vit_size": 64})["vit_size"] == 64
    assert warm_start.paper_point(space).params == {"alpha": 0.2, "blur_p": 0.6, "steps": 40, "lr": 2e-3}
    assert warm_start.paper_point(space_file(tmp_path, "vit_size: {type: categorical, choices: [48, 64]}")) is None


def test_plan_orders_dedupes_and_keeps_half_the_budget_for_the_sampler(tmp_path):
    space = space_file(tmp_path, "alpha: {type: float, low: 0.01, high: 1.0}", trials=6)
    winners = [
        WarmPoint({"alpha": 0.4}, "old/x", 0.9, "x"),
        WarmPoint({"alpha": 0.1}, "old/y", 0.2, "y"),  # the paper's value again: tried once
        WarmPoint({"alpha": 0.7}, "old/z", 0.5, "z"),
        WarmPoint({"alpha": 0.05}, "old/w", 0.3, "w"),
        WarmPoint({"alpha": 0.6}, "older/x", math.nan, "x"),
    ]
    plan = warm_start.plan(space, ["x", "v"], True, winners)
    assert [point.source for point in plan.points["x"]] == ["paper", "old/x", "older/x"]
    assert [point.source for point in plan.points["v"]] == ["paper", "old/w", "old/z"]
    assert "2 more left out: at most half a pair's trials are warm starts" in plan.notes[0]
    assert warm_start.plan(space, ["x"], False, []).points == {"x": []}


def next_search(finished_search, root, name: str, warm: list[str]) -> SearchRequest:
    """A new search over the finished search's pairs and space, warm-started from the searches `warm` names."""
    folder = finished_search.folder
    return SearchRequest(
        pairs_csv=folder / "pairs.csv", space=str(folder / "space.yaml"), name=name, root=root, warm_start=warm
    )


@pytest.mark.slow
def test_warm_start_from_an_earlier_search_plans_its_winners_first(finished_search, tmp_path):
    root = finished_search.folder / "splice-runs"
    request = next_search(finished_search, root, "warm", ["test-search"])
    plan = plan_search(request)  # checks everything, starts and writes nothing
    client = MlflowClient(finished_search.tracking_uri)
    winners = {result.pair: client.get_run(result.run_id) for result in finished_search.summary.pairs}
    for pair in ("cows", "fruits"):
        other = "fruits" if pair == "cows" else "cows"
        points = plan.warm.points[pair]
        # The paper's point, then the pair's own winner: 2 of the test space's 3 trials.
        assert [point.source for point in points] == ["paper", f"test-search/{pair}"]
        assert points[1].params == {name: float(winners[pair].data.params[name]) for name in ("alpha", "lr")}
        assert f"test-search/{other}" not in [point.source for point in points]
    # auto: the earlier search with the same fixed settings and ranges is found by itself.
    auto = plan_search(SearchRequest(**{**request.__dict__, "warm_start": ["auto"]}))
    assert [point.source for point in auto.warm.points["cows"]] == ["paper", "test-search/cows"]
    assert "--warm-start auto: starting from the winners of test-search" in auto.warm.notes
    # Other ranges: auto finds no earlier search, the paper's point stays.
    other = plan_search(SearchRequest(**{**request.__dict__, "warm_start": ["auto"], "overrides": ["steps=20"]}))
    assert [point.source for point in other.warm.points["cows"]] == ["paper"]
    assert other.warm.notes[0].endswith(
        "no earlier search in the store has this space's settings and ranges and a finished trial"
    )
    assert plan_search(SearchRequest(**{**request.__dict__, "no_warm_start": True, "warm_start": []})).warm.points == {}
    assert not (root / "ray" / "warm").exists()
    assert client.get_experiment_by_name("warm") is None


@pytest.mark.slow
def test_a_search_without_a_winner_cannot_warm_start(finished_search, tmp_path):
    root = tmp_path / "runs"
    tracker = tracking.SearchTracker(f"sqlite:///{root / 'mlflow.db'}", "empty", artifact_root=root / "art")
    folder = finished_search.folder
    tracker.pair_run("cows", folder / "cows_structure.png", folder / "cows_appearance.png")
    request = next_search(finished_search, root, "next", ["empty"])
    with pytest.raises(BadInput) as error:
        plan_search(request)
    assert error.value.problems == [
        "--warm-start empty: the search has no finished trial to start from yet; let one finish, or leave it out"
    ]
