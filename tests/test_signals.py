"""A search stopped as job schedulers and closed terminals stop it: SIGTERM, SIGHUP, a second signal during
cleanup, a second `--resume` of a search that is already running, Ray's saved state cut short, and a full
disk (a 12 MB tmpfs, where this runs as root).

The real CLI in subprocesses of its own (a new session each, as a scheduler's job step is), with a real
local Ray, SQLite MLflow store and Optuna storage; each part resumes what the previous one left, and the
last resume must end every pair with exactly its budget, one MLflow run per trial.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_search_inputs
from mlflow import MlflowClient
from test_reliability import _assert_studies_match_mlflow, _kill_group, _run, _start, child_runs, write_space

from splice_tune import store, tracking

pytestmark = pytest.mark.slow

SEARCH = "signals"
CLEANUP_LIMIT_S = 30  # the SIGKILL a scheduler sends after SIGTERM; the note records what it really takes


def _wait(tracking_uri: str, process: subprocess.Popen, status: str, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"search ended early:\n{process.stdout.read()}"
        if sum(run.info.status == status for run in child_runs(tracking_uri, SEARCH)) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} {status} trials after {timeout} s")


def _stop_with(process: subprocess.Popen, *signums: int) -> tuple[str, float]:
    """Send the signals (0.3 s apart), then wait for the process; its output and seconds from the first."""
    sent = time.monotonic()
    for index, signum in enumerate(signums):
        if index:
            time.sleep(0.3)
        process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return output, time.monotonic() - sent


def _pair_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(SEARCH)
    return client.search_runs([experiment.experiment_id], filter_string="tags.`splice_tune.kind` = 'pair'")


def test_sigterm_sighup_second_signal_and_a_concurrent_resume(tmp_path):
    write_search_inputs(tmp_path)
    write_space(tmp_path, steps=30, trials=3, concurrent=1)
    root = tmp_path / "splice-runs"
    tracking_uri = store.default_tracking_uri(root.resolve())
    args = ["search", "pairs.csv", "--space", "space.yaml", "--name", SEARCH, "--quiet"]

    # 1. SIGTERM (a job scheduler's stop) after one finished trial: as Ctrl-C, exit 143 within the limit.
    first = _start(args, tmp_path)
    try:
        _wait(tracking_uri, first, "FINISHED", 1)
        _wait(tracking_uri, first, "RUNNING", 1)
        output, took = _stop_with(first, signal.SIGTERM)
    finally:
        _kill_group(first)
    print(f"SIGTERM to exit: {took:.1f} s")  # with -s: the number the closing note reports
    assert first.returncode == 143, output
    assert took < CLEANUP_LIMIT_S, f"cleanup took {took:.1f} s"
    assert "--resume" in output and "Traceback" not in output and "SIGTERM received" not in output, output
    runs = child_runs(tracking_uri, SEARCH)
    assert not [run for run in runs if run.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
    assert any(run.data.tags.get(tracking.TAG_INTERRUPTED) == "true" for run in runs)
    assert {run.info.status for run in _pair_runs(tracking_uri)} == {"KILLED"}

    # 2. Resume; a second --resume meanwhile (another terminal) is refused in one line, starting nothing.
    second = _start([*args, "--resume"], tmp_path)
    try:
        _wait(tracking_uri, second, "RUNNING", 1)
        again = _run([*args, "--resume"], tmp_path, timeout=120)
        assert again.returncode == 2, again.stdout + again.stderr
        lines = again.stderr.strip().splitlines()
        assert len(lines) == 1 and "already running" in lines[0] and f"pid {second.pid}" in lines[0], lines
        assert "Ray" not in again.stderr and f"pid {second.pid}" in (root / "locks" / f"{SEARCH}.lock").read_text()

        # 3. SIGHUP (the terminal closed), then a second signal during its cleanup: it ends at once, 129.
        _wait(tracking_uri, second, "FINISHED", 2)
        output, took = _stop_with(second, signal.SIGHUP, signal.SIGTERM)
    finally:
        _kill_group(second)
    print(f"SIGHUP + SIGTERM to exit: {took:.1f} s")
    assert second.returncode == 129, output
    assert took < CLEANUP_LIMIT_S, f"a second signal took {took:.1f} s to end the search"
    assert "stopping at once" in output and "Traceback" not in output, output

    # 4. Ray's saved state cut short (as a full disk leaves it): the resume says so in a note and continues
    # from the Optuna studies and MLflow runs, keeping the damaged folder; then to the end: every pair has
    # exactly its budget, one finished run per trial, each eval once.
    [state] = sorted((root / "ray" / SEARCH).glob("experiment_state-*.json"))[-1:]
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    third = _run([*args, "--resume"], tmp_path, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "cannot be read back" in third.stderr and "continues from its Optuna studies" in third.stderr
    assert len(list((root / "ray").glob(f"{SEARCH}.damaged-*"))) == 1
    runs = child_runs(tracking_uri, SEARCH)
    per_trial = Counter((run.data.tags[tracking.TAG_PAIR], run.data.tags[tracking.TAG_STUDY_TRIAL]) for run in runs)
    assert sorted(per_trial) == [(pair, str(n)) for pair in ("cows", "fruits") for n in range(3)]
    assert set(per_trial.values()) == {1}, "exactly one MLflow run per trial"
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
    for run in runs:
        history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "splice_score")
        assert sorted(metric.step for metric in history) == [10, 20, 30]
    _assert_studies_match_mlflow(root, tracking_uri, SEARCH, runs, trials=3)
    assert {run.info.status for run in _pair_runs(tracking_uri)} == {"FINISHED"}


def test_a_lock_left_by_a_dead_driver_does_not_block(tmp_path):
    """The lock is the kernel's: a stale lock file (its driver SIGKILLed) does not refuse the next run."""
    from splice_tune.driver import _running_alone

    folder = tmp_path / "root" / "locks"
    folder.mkdir(parents=True)
    (folder / "x.lock").write_text("pid 1 on elsewhere, since 2026-01-01T00:00:00+00:00")
    with _running_alone(tmp_path / "root", "x"):
        text = (folder / "x.lock").read_text()
    assert text.startswith("pid ") and "elsewhere" not in text
    assert Path(folder / "x.lock").exists()


def _mount_small(folder: Path, size: str) -> None:
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


def test_a_full_disk_stops_the_search_in_one_line_and_resume_continues(tmp_path):
    write_search_inputs(tmp_path)
    write_space(tmp_path, steps=20, trials=2, concurrent=1)
    small = tmp_path / "small"
    _mount_small(small, "12m")
    root = small / "runs"
    args = ["search", "pairs.csv", "--space", "space.yaml", "--name", "full", "--root", str(root), "--quiet"]
    try:
        # A trial's checkpoint (the generator's and optimiser's state, ~12 MB) does not fit.
        first = _start(args, tmp_path)
        try:
            output, _ = first.communicate(timeout=300)
        finally:
            _kill_group(first)
        assert first.returncode == 1, output
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "no space left on device" in errors[0] and str(small) in errors[0], output
        assert "--resume" in output and "Traceback" not in output, output
        assert len(output.splitlines()) <= 12, output

        # Space freed: the same command with --resume completes the budget, losing nothing.
        subprocess.run(["mount", "-o", "remount,size=400m", str(small)], check=True)
        second = _run([*args, "--resume"], tmp_path, timeout=600)
        assert second.returncode == 0, second.stdout + second.stderr
        tracking_uri = store.default_tracking_uri(root)
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("full")
        runs = [
            run
            for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get(tracking.TAG_KIND) == "trial"
        ]
        per_trial = Counter((run.data.tags[tracking.TAG_PAIR], run.data.tags[tracking.TAG_STUDY_TRIAL]) for run in runs)
        assert sorted(per_trial) == [(pair, str(n)) for pair in ("cows", "fruits") for n in range(2)]
        assert set(per_trial.values()) == {1}
        assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]
        _assert_studies_match_mlflow(root, tracking_uri, "full", runs, trials=2)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
