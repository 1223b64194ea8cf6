"""A search name belongs to one search: its MLflow records are never mixed with another search's."""

from __future__ import annotations

import pytest

from conftest import write_search_inputs
from splice_tune import tracking
from splice_tune.driver import SearchRequest, plan_search, search_spec
from splice_tune.errors import BadInput


@pytest.fixture
def inputs(tmp_path):
    write_search_inputs(tmp_path)
    root = tmp_path / "splice-runs"
    return tmp_path, root, tracking.default_tracking_uri(root.resolve())


def request(folder, root, **changes) -> SearchRequest:
    return SearchRequest(pairs_csv=folder / "pairs.csv", space=str(folder / "space.yaml"), name="s1", root=root,
                         quiet=True, **changes)


def test_a_name_mlflow_already_holds_is_refused_even_without_ray_state(inputs):
    folder, root, uri = inputs
    tracking.SearchTracker(uri, "s1")  # e.g. Ray's folder was deleted, MLflow still has the search
    with pytest.raises(BadInput, match="already holds a search of that name"):
        plan_search(request(folder, root))


def test_resume_refuses_changed_inputs(inputs):
    folder, root, uri = inputs
    plan = plan_search(request(folder, root))
    tracker = tracking.SearchTracker(uri, "s1")
    tracker.tag_search(tracking.TAG_SPEC, search_spec(plan.space, plan.pairs))
    (root / "ray" / "s1").mkdir(parents=True)  # what Ray leaves for an interrupted search
    assert plan_search(request(folder, root, resume=True)).name == "s1", "same inputs resume"
    with pytest.raises(BadInput, match="differs from what search 's1' started with"):
        plan_search(request(folder, root, resume=True, overrides=["steps=40"]))


def test_resume_needs_the_store_the_search_used(inputs):
    folder, root, _ = inputs
    (root / "ray" / "s1").mkdir(parents=True)
    with pytest.raises(BadInput, match="has no search named 's1'"):
        plan_search(request(folder, root, resume=True))
    assert not (root / "mlflow.db").exists(), "looking never creates a store"
