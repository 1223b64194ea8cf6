"""Failing trials and interrupted searches: the search goes on, resumes where it stopped, loses nothing.

Real Ray and a real SQLite MLflow store. Faults are injected inside real trials (after their MLflow run
exists): an exception, and the trial's process killed with SIGKILL. The resume test drives the real CLI in
subprocesses and interrupts it with Ctrl-C (SIGINT) and with SIGKILL of the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle
from conftest import write_search_inputs
from mlflow import MlflowClient

from splice_model import NonFiniteLossError
from splice_tune import store, studies, tracking
from splice_tune.driver import SearchRequest, run_search
from splice_tune.trainable import run_trial

pytestmark = pytest.mark.slow
# Ray ships functions by reference; this module is not importable in Ray's workers, so ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPACE = """\
fixed: {vit: random_tiny8, max_side: 64, vit_size: 48, vit_max_side: 96, steps: STEPS, eval_every: 10,
        full_image_every: 10}
params: {alpha: {type: float, low: 0.05, high: 0.3, log: true}}
budget: {trials_per_pair: TRIALS, max_concurrent: CONCURRENT}
scheduler: {type: none}
sampler: {type: random, seed: 0}
"""


def write_space(folder: Path, steps: int, trials: int, concurrent: int) -> Path:
    text = SPACE.replace("STEPS", str(steps)).replace("TRIALS", str(trials)).replace("CONCURRENT", str(concurrent))
    (folder / "space.yaml").write_text(text)
    return folder / "space.yaml"


def faulty_trial(trial: dict, setup) -> None:
    """Study trial 0 of 'fruits' raises at step 3; study trial 0 of 'cows' has its process SIGKILLed;
    study trial 1 of 'cows' diverges (its loss turns NaN) at step 3."""

    def fault(event) -> None:
        if event.step != 3:
            return
        if trial["optuna_trial"] == 0 and trial["pair"] == "fruits":
            raise RuntimeError("injected fault: fruits trial 0")
        if trial["optuna_trial"] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if trial["optuna_trial"] == 1 and trial["pair"] == "cows":
            raise NonFiniteLossError(3, {"loss/total": math.nan})

    run_trial(trial, setup, on_event=fault)


def child_runs(tracking_uri: str, search: str) -> list:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(search)
    if experiment is None:
        return []
    return [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=1000)
        if run.data.tags.get(tracking.TAG_KIND) == "trial"
    ]


def test_failing_and_diverging_trials_are_recorded_and_the_search_completes(tmp_path, ray_session):
    write_search_inputs(tmp_path)
    space = write_space(tmp_path, steps=20, trials=3, concurrent=2)
    request = SearchRequest(
        pairs_csv=tmp_path / "pairs.csv",
        space=str(space),
        name="faults",
        root=tmp_path / "splice-runs",
        max_failures=1,
        quiet=True,
    )
    summary = run_search(request, trainable=faulty_trial)

    runs = child_runs(summary.tracking_uri, "faults")
    assert len(runs) == 6, "one run per trial: a retry reopens its trial's run"
    by_trial = {(run.data.tags[tracking.TAG_PAIR], run.data.tags[tracking.TAG_STUDY_TRIAL]): run for run in runs}
    raised, killed = by_trial[("fruits", "0")], by_trial[("cows", "0")]
    for run in (raised, killed):
        assert run.info.status == "FAILED"
        assert run.data.tags[tracking.TAG_ATTEMPT] == "2", "retried once (--max-failures 1), then failed"
    assert "injected fault: fruits trial 0" in raised.data.tags[tracking.TAG_ERROR]
    assert "died" in killed.data.tags[tracking.TAG_ERROR].lower()
    diverged = by_trial[("cows", "1")]
    assert diverged.info.status == "KILLED", "a diverged trial is a result, not a crash to retry"
    assert diverged.data.tags[tracking.TAG_STOPPED_EARLY] == "true"
    assert "non-finite loss at step 3" in diverged.data.tags[tracking.TAG_STOP_REASON]
    assert diverged.data.tags[tracking.TAG_ATTEMPT] == "1"
    for key in (("fruits", "1"), ("fruits", "2"), ("cows", "2")):
        assert by_trial[key].info.status == "FINISHED"
    counts = {result.pair: result.counts for result in summary.pairs}
    assert counts["fruits"] == {"finished": 2, "stopped early": 0, "failed": 1, "running": 0, "interrupted": 0}
    assert counts["cows"] == {"finished": 1, "stopped early": 1, "failed": 1, "running": 0, "interrupted": 0}
    winners = {result.pair: result.run_id for result in summary.pairs}
    assert winners["cows"] == by_trial[("cows", "2")].info.run_id


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "splice_tune.cli", *args]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI run to its end in a process of its own; its exit code and output."""
    command = [sys.executable, "-m", "splice_tune.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wait_finished(tracking_uri: str, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"search ended early:\n{process.stdout.read()}"
        if sum(run.info.status == "FINISHED" for run in child_runs(tracking_uri, "resume-test")) >= count:
            return
        time.sleep(1.0)
    raise AssertionError(f"fewer than {count} finished trials after {timeout} s")


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then whatever it started (its Ray), as a crashed machine session would leave."""
    process.kill()
    process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_interrupted_search_resumes_to_exactly_its_budget(tmp_path):
    write_search_inputs(tmp_path)
    write_space(tmp_path, steps=30, trials=3, concurrent=1)
    root = tmp_path / "splice-runs"
    tracking_uri = store.default_tracking_uri(root.resolve())
    args = ["search", "pairs.csv", "--space", "space.yaml", "--name", "resume-test", "--quiet"]

    # 1. Ctrl-C after two finished trials: a clean stop that says how to resume.
    first = _start(args, tmp_path)
    try:
        _wait_finished(tracking_uri, 2, first)
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        _kill_group(first)
    assert first.returncode == 130, output
    assert "--resume" in output and "Traceback" not in output
    assert not [run for run in child_runs(tracking_uri, "resume-test") if run.info.status == "RUNNING"]

    # 2. Resume, then SIGKILL the driver mid-way after one more finished trial.
    second = _start([*args, "--resume"], tmp_path)
    try:
        _wait_finished(tracking_uri, 3, second)
    finally:
        _kill_group(second)

    # The studies hold what the driver told them before it died: no more trials than the budget.
    for pair in ("cows", "fruits"):
        study = optuna.load_study(study_name=f"resume-test/{pair}", storage=studies.default_url(root))
        assert len(study.trials) <= 3
    assert sum(s.n_trials for s in optuna.get_all_study_summaries(studies.default_url(root))) >= 3

    # 3. Resume again, to the end.
    third = _run([*args, "--resume"], tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr

    runs = child_runs(tracking_uri, "resume-test")
    per_trial = Counter((run.data.tags[tracking.TAG_PAIR], run.data.tags[tracking.TAG_STUDY_TRIAL]) for run in runs)
    assert sorted(per_trial) == [(pair, str(n)) for pair in ("cows", "fruits") for n in range(3)]
    assert set(per_trial.values()) == {1}, "exactly one MLflow run per trial, no duplicates"
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    for run in runs:  # every finished trial has its full record, each eval once: 3 evals of every score
        history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "splice_score")
        assert sorted(m.step for m in history) == [10, 20, 30]
    _assert_studies_match_mlflow(root, tracking_uri, "resume-test", runs, trials=3)


def _assert_studies_match_mlflow(root: Path, tracking_uri: str, search: str, runs: list, trials: int) -> None:
    """Each pair's stored study has exactly the budgeted trials, all complete with their MLflow run's final
    score and run id, and the pair's MLflow run id."""
    client = MlflowClient(tracking_uri)
    parents = client.search_runs(
        [client.get_experiment_by_name(search).experiment_id], filter_string="tags.`splice_tune.kind` = 'pair'"
    )
    by_trial = {(run.data.tags[tracking.TAG_PAIR], int(run.data.tags[tracking.TAG_STUDY_TRIAL])): run for run in runs}
    for parent in parents:
        pair = parent.data.tags[tracking.TAG_PAIR]
        study = optuna.load_study(study_name=f"{search}/{pair}", storage=studies.default_url(root))
        assert study.user_attrs == {studies.ATTR_PARENT_RUN: parent.info.run_id}
        assert [trial.number for trial in study.trials] == list(range(trials)), "nothing asked twice"
        for trial in study.trials:
            run = by_trial[(pair, trial.number)]
            assert trial.state.name == "COMPLETE", (pair, trial.number, trial.state)
            assert trial.user_attrs[studies.ATTR_RUN] == run.info.run_id
            assert trial.value == pytest.approx(run.data.metrics["final_splice_score"])


def _wait_running(tracking_uri: str, search: str, count: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"search ended early:\n{process.stdout.read()}"
        if sum(run.info.status == "RUNNING" for run in child_runs(tracking_uri, search)) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} running trials after {timeout} s")


def test_ctrl_c_while_every_trial_runs_exits_130_and_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C when the whole budget has started: Ray then marks both running trials TERMINATED, as if done."""
    from splice_tune.cli import main

    write_search_inputs(tmp_path, pairs=("cows",))
    write_space(tmp_path, steps=150, trials=2, concurrent=2)
    root = tmp_path / "splice-runs"
    tracking_uri = store.default_tracking_uri(root.resolve())
    args = ["search", "pairs.csv", "--space", "space.yaml", "--name", "all-running", "--quiet"]

    first = _start(args, tmp_path)
    try:
        _wait_running(tracking_uri, "all-running", 2, first)
        # Meanwhile `best` says the search still runs, not to retrain what does not exist yet.
        monkeypatch.setattr(sys, "argv", ["splice-tune", "best", "--pair", "cows", "--root", str(root)])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as best_exit:
            main()
        best_err = capsys.readouterr().err
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        _kill_group(first)
    assert best_exit.value.code == 2 and "still running" in best_err and "--retrain-steps" not in best_err, best_err
    assert first.returncode == 130, output
    assert "--resume" in output and "Tuner.restore" not in output and "Traceback" not in output, output
    runs = child_runs(tracking_uri, "all-running")
    assert len(runs) == 2 and all(run.info.status == "KILLED" for run in runs), [r.info.status for r in runs]
    assert all(run.data.tags.get(tracking.TAG_INTERRUPTED) == "true" for run in runs)
    client = MlflowClient(tracking_uri)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("all-running").experiment_id], filter_string="tags.`splice_tune.kind` = 'pair'"
    )
    assert parent.info.status == "KILLED"

    again = subprocess.run(
        [sys.executable, "-m", "splice_tune.cli", *args, "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    runs = child_runs(tracking_uri, "all-running")
    assert sorted(run.data.tags[tracking.TAG_STUDY_TRIAL] for run in runs) == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in runs)
    for run in runs:  # continued from the last eval: every eval once
        history = client.get_metric_history(run.info.run_id, "splice_score")
        assert sorted(m.step for m in history) == list(range(10, 151, 10))
    _assert_studies_match_mlflow(root, tracking_uri, "all-running", runs, trials=2)


def lr_pinned_trial(trial: dict, setup) -> None:
    """Study trial 0 trains with a sane lr and has its worker process SIGKILLed at step 3; the others train
    with the space's lr as given (--set lr=1e300 makes Adam's first step raise)."""
    if trial["optuna_trial"] != 0:
        return run_trial(trial, setup)

    def fault(event) -> None:
        if event.step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    sane = dataclasses.replace(setup, space=setup.space.with_overrides({"lr": 1e-3}))
    run_trial(trial, sane, on_event=fault)


def test_a_search_where_every_trial_fails_says_why_in_a_few_lines_and_exits_1(
    tmp_path, ray_session, monkeypatch, capfd
):
    import splice_tune.driver
    from splice_tune.cli import main

    write_search_inputs(tmp_path, pairs=("cows",))
    space = write_space(tmp_path, steps=20, trials=3, concurrent=2)
    space.write_text(space.read_text().replace("params: {", "params: {lr: {type: float, low: 1.0e-4, high: 1.0e-2}, "))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        splice_tune.driver, "run_search", functools.partial(splice_tune.driver.run_search, trainable=lr_pinned_trial)
    )
    monkeypatch.setenv("COLUMNS", "200")

    def cli(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["splice-tune", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capfd.readouterr()
        return exit_info.value.code, out + err

    code, output = cli(
        "search",
        "pairs.csv",
        "--space",
        "space.yaml",
        "--name",
        "all-fail",
        "--quiet",
        "--set",
        "lr=1e300",
        "--max-failures",
        "0",
    )
    assert code == 1, output
    for noise in ("Traceback", "ActorDiedError", "Trials did not complete"):
        assert noise not in output, output
    assert len(output.splitlines()) < 30, output
    assert "--set lr=1e300: lr is sampled by space.yaml; it is now fixed at 1e300" in output
    [failure] = [line for line in output.splitlines() if line.startswith("error: pair cows")]
    assert (
        "no trial finished: 2 trials failed (RuntimeError: value cannot be converted to type float without "
        "overflow), 1 trial failed (worker process died" in failure
    ), failure
    assert "/#/experiments/" in failure

    tracking_uri = store.default_tracking_uri(tmp_path / "splice-runs")
    runs = {run.data.tags[tracking.TAG_STUDY_TRIAL]: run for run in child_runs(tracking_uri, "all-fail")}
    assert all(run.info.status == "FAILED" for run in runs.values())
    assert runs["0"].data.tags[tracking.TAG_ERROR].startswith("worker process died (")
    assert "Traceback" in runs["1"].data.tags[tracking.TAG_ERROR], "the full traceback stays in MLflow"
    client = MlflowClient(tracking_uri)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("all-fail").experiment_id], filter_string="tags.`splice_tune.kind` = 'pair'"
    )
    assert parent.info.status == "FAILED"

    code, output = cli("best", "--pair", "cows", "--search", "all-fail")
    assert code == 2 and "--retrain-steps" not in output, output
    assert "2 trials failed (RuntimeError: value cannot be converted" in output and "/#/experiments/" in output
