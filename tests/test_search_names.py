"""A search name belongs to one search: its MLflow records are never mixed with another search's."""

from __future__ import annotations

import optuna
import pytest
from conftest import write_search_inputs

from splice_tune import store, studies, tracking
from splice_tune.driver import SearchRequest, plan_search
from splice_tune.errors import BadInput
from splice_tune.search_plan import search_fingerprints


@pytest.fixture
def inputs(tmp_path):
    write_search_inputs(tmp_path)
    root = tmp_path / "splice-runs"
    return tmp_path, root, store.default_tracking_uri(root.resolve())


def request(folder, root, **changes) -> SearchRequest:
    return SearchRequest(
        pairs_csv=folder / "pairs.csv", space=str(folder / "space.yaml"), name="s1", root=root, quiet=True, **changes
    )


def test_a_name_mlflow_already_holds_is_refused_even_without_ray_state(inputs):
    folder, root, uri = inputs
    tracking.SearchTracker(uri, "s1")  # e.g. Ray's folder was deleted, MLflow still has the search
    with pytest.raises(BadInput, match="already holds a search of that name"):
        plan_search(request(folder, root))


def started(folder, root, uri, store_studies: bool = True) -> None:
    """What `search` records before its first trial (its fingerprints, with `store_studies` the pairs' studies
    in ROOT/optuna.db and where they are), and the Ray folder an interrupted search leaves."""
    plan = plan_search(request(folder, root))
    tracker = tracking.SearchTracker(uri, "s1")
    for key, value in search_fingerprints(plan.space, plan.pairs).items():
        tracker.tag_search(key, value)
    if store_studies:
        tracker.tag_search(studies.TAG_STORAGE, plan.optuna_url)
        for pair in plan.pairs:
            optuna.create_study(storage=plan.optuna_url, study_name=studies.study_name("s1", pair.name))
    (root / "ray" / "s1").mkdir(parents=True)


def test_resume_refuses_changed_inputs_and_says_which(inputs):
    folder, root, uri = inputs
    started(folder, root, uri)
    assert plan_search(request(folder, root, resume=True)).name == "s1", "same inputs resume"
    with pytest.raises(BadInput) as refused:
        plan_search(request(folder, root, resume=True, overrides=["steps=40"]))
    assert refused.value.problems == [
        f"--resume: the search space {folder / 'space.yaml'} (with its --set values) differs from what search "
        f"'s1' started with; resume with the inputs search 's1' started with, or start a new search with "
        f"another --name"
    ]

    (folder / "pairs.csv").write_text("pair,structure,appearance\ncows,cows_structure.png,cows_appearance.png\n")
    with pytest.raises(BadInput, match=r"^--resume: the pairs file .*pairs.csv lists other pairs or image paths"):
        plan_search(request(folder, root, resume=True))


def test_resume_refuses_an_image_whose_content_changed(inputs):
    from PIL import Image

    folder, root, uri = inputs
    started(folder, root, uri)
    image = folder / "fruits_appearance.png"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)  # same path, same CSV
    with pytest.raises(BadInput) as refused:
        plan_search(request(folder, root, resume=True))
    assert refused.value.problems == [
        f"--resume: {folder / 'pairs.csv'}:3: appearance image {image.resolve()} has changed since search 's1' "
        f"started (its content differs); put the original back, or start a new search with another --name"
    ]


def test_resume_needs_the_store_the_search_used(inputs):
    folder, root, _ = inputs
    (root / "ray" / "s1").mkdir(parents=True)
    with pytest.raises(BadInput, match="has no search named 's1'"):
        plan_search(request(folder, root, resume=True))
    assert not (root / "mlflow.db").exists(), "looking never creates a store"


def test_resume_refuses_a_store_moved_since_the_search_started(inputs, tmp_path):
    folder, root, uri = inputs
    started(folder, root, uri)
    moved = tmp_path / "moved"
    root.rename(moved)  # its experiment still puts new runs' artifacts under the old root
    with pytest.raises(BadInput, match=r"^--resume: search 's1' keeps its artifacts in .*, outside --root"):
        plan_search(request(folder, moved, resume=True))
    assert not root.exists()


def test_the_optuna_storage_must_hold_a_resumed_search_and_no_new_one(inputs, tmp_path):
    folder, root, uri = inputs
    assert plan_search(request(folder, root)).optuna_url == studies.default_url(root)
    assert not (root / "optuna.db").exists(), "looking never creates a storage"
    elsewhere = f"sqlite:///{tmp_path / 'team.db'}"
    optuna.create_study(storage=elsewhere, study_name="s1/cows")
    with pytest.raises(BadInput) as refused:
        plan_search(request(folder, root, optuna_storage=elsewhere))
    assert refused.value.problems == [
        f"--optuna-storage {elsewhere}: already holds study 's1/cows'; choose another --name or --optuna-storage"
    ]
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(BadInput, match=r"^--optuna-storage sqlite:///.*junk.db: cannot read it as an Optuna"):
        plan_search(request(folder, root, optuna_storage=f"sqlite:///{tmp_path / 'junk.db'}"))

    started(folder, root, uri)
    assert plan_search(request(folder, root, resume=True)).optuna_url == studies.default_url(root)
    with pytest.raises(BadInput) as refused:
        plan_search(request(folder, root, resume=True, optuna_storage=elsewhere))
    assert refused.value.problems == [
        f"--optuna-storage {elsewhere}: holds no study 's1/fruits'; search 's1' keeps its studies in "
        f"{studies.default_url(root)}, so pass that as --optuna-storage (or the --root it started with)"
    ]


def test_resume_refuses_a_search_started_before_studies_were_stored(inputs):
    folder, root, uri = inputs
    started(folder, root, uri, store_studies=False)
    with pytest.raises(BadInput, match=r"^--resume: search 's1' started before splice-tune stored studies"):
        plan_search(request(folder, root, resume=True))
