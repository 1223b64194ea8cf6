"""splice_tune.tracking and .trial_logger (and the reads of what they write) against a real SQLite MLflow store
in tmp_path (no mocks)."""

from __future__ import annotations

import multiprocessing
import re
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from splice_tune import results
from splice_tune.errors import BadInput
from splice_tune.store import DEFAULT_ROOT, default_tracking_uri, resolve_tracking_uri, retry
from splice_tune.tracking import (
    TAG_ATTEMPT,
    TAG_ERROR,
    TAG_KIND,
    TAG_NODE,
    TAG_PAIR,
    TAG_SEARCH,
    TAG_STOPPED_EARLY,
    TAG_TRIAL,
    TAG_VIT,
    SearchTracker,
)
from splice_tune.trial_logger import TrialLogger

LOSSES = ("loss/total", "loss/appearance", "loss/structure", "loss/identity")
SCORES = ("structure_score", "appearance_score", "splice_score")
PARAMS = {"vit": "tiny_random", "alpha": 0.1, "beta": 0.2, "lr": 0.002, "crops": [0.95, 1.0]}
IMAGE_STEP = re.compile(r"images/output\+step\+(\d+)\+.*\.png$")


def _image(color=(200, 30, 30), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture(scope="session")
def empty_database(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema created once: migrations cost ~1.5 s per fresh store."""
    root = tmp_path_factory.mktemp("template")
    MlflowClient(default_tracking_uri(root)).search_experiments()
    return root / "mlflow.db"


@pytest.fixture
def store(tmp_path, empty_database):
    """A fresh tracker on the embedded store layout, with one pair run and its input files."""
    root = tmp_path / "splice-runs"
    root.mkdir()
    shutil.copy(empty_database, root / "mlflow.db")
    uri = default_tracking_uri(root)
    structure, appearance = tmp_path / "s.jpg", tmp_path / "a.png"
    _image((10, 20, 30)).save(structure)
    Image.new("L", (30, 40), 128).save(appearance)  # grayscale: must come back as RGB PNG
    tracker = SearchTracker(uri, "search-1", artifact_root=root / "mlartifacts")
    parent = tracker.pair_run(
        "cows",
        structure,
        appearance,
        baselines={"structure_base": 0.4, "appearance_base": 0.25},
        notes=["ViT weights are random (offline preset)"],
    )
    return {
        "root": root,
        "uri": uri,
        "tracker": tracker,
        "parent": parent,
        "client": MlflowClient(uri),
        "structure": structure,
        "appearance": appearance,
    }


def _logger(store, trial_id="trial_0001", params=PARAMS, tags=None) -> TrialLogger:
    tracker = store["tracker"]
    return TrialLogger(store["uri"], tracker.experiment_id, store["parent"], trial_id, "cows", "search-1", params, tags)


def _run_evals(logger: TrialLogger, evals: int, steps_per_eval: int, offset: float = 0.0) -> list[int]:
    step, eval_steps = 0, []
    for _ in range(evals):
        for _ in range(steps_per_eval):
            step += 1
            logger.log_step(step, {key: offset + 1.0 / step + i for i, key in enumerate(LOSSES)})
        logger.log_eval(step, {key: offset + 0.5 / step + i for i, key in enumerate(SCORES)}, _image())
        eval_steps.append(step)
    return eval_steps


def _image_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(
        int(match.group(1))
        for info in client.list_artifacts(run_id, "images")
        if (match := IMAGE_STEP.match(info.path))
    )


def test_tracking_uri_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(DEFAULT_ROOT) == f"sqlite:///{tmp_path.resolve()}/splice-runs/mlflow.db"
    assert resolve_tracking_uri(None, DEFAULT_ROOT) == default_tracking_uri(DEFAULT_ROOT)
    assert resolve_tracking_uri("http://mlflow:5000", DEFAULT_ROOT) == "http://mlflow:5000"


def test_experiment_and_pair_run_layout(store):
    client, tracker, parent = store["client"], store["tracker"], store["parent"]
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "search-1"
    assert experiment.tags[TAG_SEARCH] == "search-1"
    assert experiment.artifact_location == (store["root"] / "mlartifacts").resolve().as_uri()

    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "cows"
    assert run.data.tags[TAG_KIND] == "pair" and run.data.tags[TAG_PAIR] == "cows"
    assert run.data.tags[TAG_SEARCH] == "search-1"
    assert run.data.tags["mlflow.note.content"] == "ViT weights are random (offline preset)"
    assert run.data.params == {"structure": str(store["structure"]), "appearance": str(store["appearance"])}
    assert run.data.metrics == {"structure_base": 0.4, "appearance_base": 0.25}
    assert sorted(info.path for info in client.list_artifacts(parent, "inputs")) == [
        "inputs/appearance.png",
        "inputs/structure.png",
    ]
    local = Path(client.download_artifacts(parent, "inputs/appearance.png", str(store["root"].parent)))
    with Image.open(local) as logged:
        assert (logged.format, logged.mode, logged.size) == ("PNG", "RGB", (30, 40))


def test_trial_run_layout(store, tmp_path):
    client = store["client"]
    logger = _logger(store, tags={TAG_NODE: "node-abc"})
    eval_steps = _run_evals(logger, evals=3, steps_per_eval=5)
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"generator weights")
    logger.log_final(_image(), checkpoint, {"splice_score": 0.3, "structure_score": 0.01})
    logger.finish("FINISHED")

    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "trial_0001"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == store["parent"]
    assert (tags[TAG_KIND], tags[TAG_PAIR], tags[TAG_SEARCH]) == ("trial", "cows", "search-1")
    assert (tags[TAG_TRIAL], tags[TAG_VIT], tags[TAG_NODE], tags[TAG_ATTEMPT]) == (
        "trial_0001",
        "tiny_random",
        "node-abc",
        "1",
    )
    assert run.data.params == {key: str(value) for key, value in PARAMS.items()}

    for key in LOSSES:
        history = client.get_metric_history(logger.run_id, key)
        assert sorted(metric.step for metric in history) == list(range(1, 16))
    for key in SCORES:
        assert sorted(metric.step for metric in client.get_metric_history(logger.run_id, key)) == eval_steps
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "final_splice_score")] == [(15, 0.3)]
    assert _image_steps(client, logger.run_id) == eval_steps

    top = {info.path for info in client.list_artifacts(logger.run_id)}
    assert {"output.png", "checkpoint", "images"} <= top
    assert [info.path for info in client.list_artifacts(logger.run_id, "checkpoint")] == ["checkpoint/generator.pt"]
    downloaded = client.download_artifacts(logger.run_id, "checkpoint/generator.pt", str(tmp_path))
    assert Path(downloaded).read_bytes() == b"generator weights"


def test_flush_splits_batches_over_mlflow_limit(store):
    logger = _logger(store)
    # 300 buffered steps x 4 losses + 3 scores = 1203 metrics: more than one log_batch may carry.
    _run_evals(logger, evals=1, steps_per_eval=300)
    for key in LOSSES:
        assert len(store["client"].get_metric_history(logger.run_id, key)) == 300


def test_trial_logger_get_or_create_keeps_one_run(store):
    client = store["client"]
    first = _logger(store)
    _run_evals(first, evals=1, steps_per_eval=3)
    first.fail("CUDA out of memory")

    # A restart with a changed param value must neither fail nor create a second run.
    second = _logger(store, params={**PARAMS, "alpha": 0.5, "new_param": 7}, tags={TAG_NODE: "node-2"})
    assert second.run_id == first.run_id
    run = client.get_run(second.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[TAG_ATTEMPT] == "2" and run.data.tags[TAG_NODE] == "node-2"
    assert TAG_ERROR not in run.data.tags
    assert run.data.params["alpha"] == "0.1" and run.data.params["new_param"] == "7"
    assert len(store["tracker"].trial_runs("cows")) == 1

    other = _logger(store, trial_id="trial_0002")
    assert other.run_id != first.run_id
    assert len(store["tracker"].trial_runs()) == 2


def test_a_restarted_trial_does_not_log_the_steps_it_replays_twice(store):
    client = store["client"]
    first = _logger(store)
    assert _run_evals(first, evals=2, steps_per_eval=5) == [5, 10]
    first.log_step(11, {key: 1.0 / 11 for key in LOSSES})  # buffered: lost when the process dies now

    # The retry resumes from the checkpoint of step 5 (Ray had not kept step 10's yet) and replays 6..10
    # with the same values before going on to 15.
    again = _logger(store)
    for step in range(6, 16):
        again.log_step(step, {key: 1.0 / step + i for i, key in enumerate(LOSSES)})
        if step % 5 == 0:
            again.log_eval(step, {key: 0.5 / step + i for i, key in enumerate(SCORES)}, _image())
    again.finish("FINISHED")

    assert again.run_id == first.run_id
    for key in LOSSES:
        assert [m.step for m in sorted(client.get_metric_history(again.run_id, key), key=lambda m: m.step)] == list(
            range(1, 16)
        ), key
    for key in SCORES:
        assert sorted(m.step for m in client.get_metric_history(again.run_id, key)) == [5, 10, 15], key
    assert _image_steps(client, again.run_id) == [5, 10, 15]


class _Killed(BaseException):
    """The trial process dying at this call (no retry catches it)."""


def _image_files(client: MlflowClient, run_id: str) -> dict[int, list[str]]:
    files: dict[int, list[str]] = {}
    for info in client.list_artifacts(run_id, "images"):
        match = re.match(r"images/(output\+step\+(\d+)\+.*?)(\+compressed\.webp|\.png)$", info.path)
        files.setdefault(int(match.group(2)), []).append(match.group(1) + match.group(3))
    return {step: sorted(names) for step, names in files.items()}


@pytest.mark.parametrize("dies_before", [".png", "+compressed.webp"])
def test_a_trial_killed_while_writing_an_eval_image_has_it_finished_by_the_attempt_that_replays_it(
    store, monkeypatch, dies_before
):
    client = store["client"]
    first = _logger(store)
    assert _run_evals(first, evals=1, steps_per_eval=5) == [5]
    real_log_artifact = first.client.log_artifact

    def dies_at_that_file(run_id, local_path, artifact_path=None):
        if local_path.endswith(dies_before):
            raise _Killed
        return real_log_artifact(run_id, local_path, artifact_path)

    monkeypatch.setattr(first.client, "log_artifact", dies_at_that_file)
    for step in range(6, 11):
        first.log_step(step, {key: 1.0 / step + i for i, key in enumerate(LOSSES)})
    with pytest.raises(_Killed):  # step 10: its scores are stored, its image is not whole
        first.log_eval(10, {key: 0.5 / 10 + i for i, key in enumerate(SCORES)}, _image())
    written = _image_files(client, first.run_id).get(10, [])
    assert len(written) == (1 if dies_before != ".png" else 0)
    assert sorted(m.step for m in client.get_metric_history(first.run_id, SCORES[0])) == [5, 10]

    # The retry resumes from step 5's checkpoint and replays 6..10 before going on to 15.
    again = _logger(store)
    for step in range(6, 16):
        again.log_step(step, {key: 1.0 / step + i for i, key in enumerate(LOSSES)})
        if step % 5 == 0:
            again.log_eval(step, {key: 0.5 / step + i for i, key in enumerate(SCORES)}, _image())
    again.finish("FINISHED")

    files = _image_files(client, again.run_id)
    assert sorted(files) == [5, 10, 15]
    for step, names in files.items():
        assert len(names) == 2 and names[0].endswith("+compressed.webp") and names[1].endswith(".png"), names
        assert names[0].removesuffix("+compressed.webp") == names[1].removesuffix(".png"), names
    if written:
        assert written[0] in files[10], "the half-written image is finished under its own name"
    for key in SCORES:
        assert sorted(m.step for m in client.get_metric_history(again.run_id, key)) == [5, 10, 15], key


def _pair(store) -> results.PairRuns:
    client = store["client"]
    return results.search_pairs(client, client.get_experiment(store["tracker"].experiment_id))["cows"]


def test_a_pair_whose_trials_all_failed_or_diverged_names_the_causes_and_offers_no_retrain(store):
    from splice_tune.best import _choose

    diverged = [_logger(store, f"trial_{n}") for n in range(2)]
    for logger in diverged:
        _run_evals(logger, evals=1, steps_per_eval=3)  # a score to "retrain" from, which would diverge again
        logger.mark_stopped_early(reason="non-finite loss at step 4: loss/total=nan")
    crashed = _logger(store, "trial_2")
    crashed.fail('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: boom')
    store["tracker"].finish_pair("cows", status="FAILED", summary={})
    pair = _pair(store)

    failure = "2 trials diverged (non-finite loss at step 4), 1 trial failed (ValueError: boom)"
    assert results.pair_failure(pair.trials) == failure
    for retrain in (False, True):
        run, advice = _choose(pair, "splice_score", "search-1", retrain, "LINK")
        assert run is None and failure in advice and "LINK" in advice and "--retrain-steps" not in advice


def test_search_tracker_and_pair_run_are_reused_on_resume(store):
    tracker = store["tracker"]
    tracker.finish_pair("cows", summary={"best_trial_run_id": "abc", "splice_score": 0.3})
    resumed = SearchTracker(store["uri"], "search-1")
    assert resumed.experiment_id == tracker.experiment_id
    moved = store["root"].parent / "moved.png"  # the user moved the file between the runs
    moved.write_bytes(store["appearance"].read_bytes())
    again = resumed.pair_run(
        "cows", store["structure"], moved, baselines={"structure_base": 0.4, "appearance_base": 0.25}
    )
    assert again == store["parent"]
    run = store["client"].get_run(again)
    assert run.info.status == "RUNNING"
    assert run.data.params["appearance"] == str(store["appearance"])
    assert len(store["client"].get_metric_history(again, "structure_base")) == 1


def test_stopped_early_and_failed_statuses(store):
    client = store["client"]
    stopped = _logger(store, trial_id="stopped")
    _run_evals(stopped, evals=1, steps_per_eval=2)
    stopped.log_step(3, {"loss/total": 9.0})  # buffered when the scheduler stops it: still written
    stopped.mark_stopped_early()
    run = client.get_run(stopped.run_id)
    assert run.info.status == "KILLED" and run.data.tags[TAG_STOPPED_EARLY] == "true"
    assert [m.step for m in client.get_metric_history(stopped.run_id, "loss/total")] == [1, 2, 3]

    failed = _logger(store, trial_id="failed")
    failed.fail("Traceback ...\n" + "x" * 6000 + "\nRuntimeError: boom")
    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags[TAG_ERROR]
    assert len(error) == 5000 and error.endswith("RuntimeError: boom")

    with pytest.raises(ValueError):
        failed.finish("DONE")


def test_the_winner_and_its_record_on_the_pair_run(store):
    client, tracker = store["client"], store["tracker"]
    scores = {"a": 0.8, "b": 0.2, "c": 0.5}
    for trial_id, score in scores.items():
        logger = _logger(store, trial_id=trial_id, params={**PARAMS, "alpha": score})
        logger.log_eval(10, {"splice_score": 2.0}, _image())
        logger.log_eval(20, {"splice_score": score}, _image())  # latest value, not the minimum, counts
        logger.finish("FINISHED")
    without_score = _logger(store, trial_id="no-score")
    without_score.finish("FINISHED")
    killed = _logger(store, trial_id="killed")
    killed.log_eval(10, {"splice_score": 0.01}, _image())
    killed.mark_stopped_early()

    trials = _pair(store).trials
    finished = [run for run in trials if results.trial_state(run) == results.FINISHED]
    assert len(finished) == 4
    winner = results.winner(trials)
    assert winner.data.tags[TAG_TRIAL] == "b"
    assert results.winner(trials, states=results.STATES).data.tags[TAG_TRIAL] == "killed"
    assert results.winner([run for run in finished if run.data.tags[TAG_TRIAL] == "no-score"]) is None

    tracker.finish_pair(
        "cows",
        summary={"best_trial_run_id": winner.info.run_id, "splice_score": 0.2, "alpha": 0.2, "vit": "tiny_random"},
    )
    parent = client.get_run(store["parent"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial_run_id"] == winner.info.run_id
    assert parent.data.metrics["best_splice_score"] == 0.2
    assert parent.data.metrics["best_alpha"] == 0.2
    assert parent.data.tags["splice_tune.best.vit"] == "tiny_random"


def test_find_search(store):
    client, uri = store["client"], store["uri"]
    with pytest.raises(BadInput, match="known searches.*search-1"):
        results.find_search(client, "nope", uri)
    assert results.find_search(client, None, uri).name == "search-1"
    newer = SearchTracker(uri, "search-2")
    assert results.find_search(client, None, uri).experiment_id == newer.experiment_id
    assert results.find_search(client, "search-1", uri).experiment_id == store["tracker"].experiment_id


def test_deleted_experiment_name_is_bad_input(store):
    store["client"].delete_experiment(store["tracker"].experiment_id)
    with pytest.raises(BadInput, match="was deleted"):
        SearchTracker(store["uri"], "search-1")
    with pytest.raises(BadInput, match="no splice-tune search"):
        results.find_search(store["client"], None, store["uri"])


def test_retry_rides_out_a_real_lock_and_passes_other_errors(tmp_path):
    database = tmp_path / "locked.db"
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    # No busy wait in this engine, so every attempt while the lock is held fails at once with
    # "database is locked", like a write that lost a lock upgrade in MLflow's store.
    engine = sqlalchemy.create_engine(f"sqlite:///{database}", connect_args={"timeout": 0})
    attempts = []

    def insert():
        attempts.append(1)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))

    release = threading.Timer(0.5, holder.execute, ("COMMIT",))
    release.start()
    retry(insert)
    release.join()
    assert len(attempts) > 1
    assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)

    def bad_call():
        attempts.append(1)
        raise MlflowException("invalid parameter")

    attempts.clear()
    with pytest.raises(MlflowException, match="invalid parameter"):
        retry(bad_call)
    assert len(attempts) == 1
    engine.dispose()
    holder.close()


WRITERS, EVALS, STEPS_PER_EVAL = 8, 20, 15


def _concurrent_writer(
    uri: str, experiment_id: str, parent: str, index: int, ready: multiprocessing.synchronize.Barrier
) -> None:
    logger = TrialLogger(uri, experiment_id, parent, f"writer_{index}", "cows", "search-1", {**PARAMS, "index": index})
    ready.wait()  # start together so the writes really contend for the database lock
    _run_evals(logger, EVALS, STEPS_PER_EVAL, offset=index)
    logger.finish("FINISHED")


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(store):
    client, tracker = store["client"], store["tracker"]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(WRITERS, timeout=120)
    processes = [
        context.Process(
            target=_concurrent_writer, args=(store["uri"], tracker.experiment_id, store["parent"], index, ready)
        )
        for index in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * WRITERS

    runs = tracker.trial_runs("cows")
    assert sorted(run.data.tags[TAG_TRIAL] for run in runs) == sorted(f"writer_{i}" for i in range(WRITERS))
    eval_steps = [STEPS_PER_EVAL * (i + 1) for i in range(EVALS)]
    for run in runs:
        assert run.info.status == "FINISHED"
        index = int(run.data.params["index"])
        assert len(run.data.params) == len(PARAMS) + 1
        for position, key in enumerate(LOSSES):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted((m.step, m.value) for m in history) == [
                (step, index + 1.0 / step + position) for step in range(1, EVALS * STEPS_PER_EVAL + 1)
            ]
        for key in SCORES:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == eval_steps
        assert _image_steps(client, run.info.run_id) == eval_steps


def _start_search(root: Path, name: str, ready: multiprocessing.synchronize.Barrier) -> None:
    ready.wait()  # both drivers open the fresh store at the same moment
    SearchTracker(default_tracking_uri(root), name, artifact_root=root / "mlartifacts")


@pytest.mark.slow
def test_two_searches_starting_together_on_a_fresh_root_both_get_their_experiment(tmp_path):
    """Without a lock both processes build MLflow's schema at once and one dies in the migration."""
    root = tmp_path / "splice-runs"  # does not exist yet
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(2, timeout=120)
    processes = [context.Process(target=_start_search, args=(root, name, ready)) for name in ("a", "b")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0, 0]
    client = MlflowClient(default_tracking_uri(root))
    assert sorted(experiment.name for experiment in client.search_experiments()) == ["Default", "a", "b"]
