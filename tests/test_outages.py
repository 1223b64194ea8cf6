"""A lost node and a lost tracking server, in cluster mode: the search goes on and loses nothing.

Real processes throughout, as in test_cluster: a two-node Ray cluster (one CPU per node) in a helper process
that can kill its worker node on request, an `mlflow server` that is stopped and started again on the same
port and store, and `splice-tune search` as a subprocess. Each process started here is stopped here, also
when a test fails (docs/design.md, Lost nodes and tracking outages).
"""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_search_inputs
from mlflow import MlflowClient
from test_cluster import SPLICE_TUNE, START_TIMEOUT_S, _free_port, _show, _stop, start_mlflow_server
from test_reliability import write_space

from splice_tune import store, tracking

pytestmark = pytest.mark.slow

SEARCH_TIMEOUT_S = 240
STEPS, EVAL_EVERY = 60, 10
OUTAGE_S = 30  # about how long the server is away in the outage test, its restart included
UNREACHABLE = "unreachable (Connection refused); waiting for it"

# Two nodes of one CPU, as in test_cluster, and a command on stdin that kills the worker node the way a lost
# machine goes: its raylet, object store and every worker process SIGKILLed at once. The head checks its
# nodes' health every second and gives a node up after 3 misses (Ray's default is 5 misses of 3 s), so the
# loss shows within seconds.
CLUSTER_HELPER = """
import os, signal, sys
from pathlib import Path
from ray.cluster_utils import Cluster

def stop(signum, frame):
    raise SystemExit(0)

def descendants(pid):
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found

signal.signal(signal.SIGTERM, stop)
cluster = Cluster(
    initialize_head=True,
    head_node_args={
        "num_cpus": 1,
        "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
    },
)
try:
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, cluster.head_node.node_id, worker.node_id, flush=True)
    for command in sys.stdin:
        if command.strip() == "kill-worker":
            workers = descendants(worker.all_processes["raylet"][0].process.pid)
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILL to the node's own processes
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            print("killed", len(workers), flush=True)
        elif command.strip() == "add-worker":
            worker = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            print(worker.node_id, flush=True)
finally:
    cluster.shutdown()
"""


class ClusterHelper:
    """The helper process: its cluster's address and node ids, and `kill_worker`."""

    def __init__(self, env: dict[str, str], log: Path):
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CLUSTER_HELPER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                text=True,
            )
        self.log = log
        line = self._line(START_TIMEOUT_S)
        assert line, f"the Ray cluster did not start:\n{log.read_text()[-3000:]}"
        self.address, self.head_id, self.worker_id = line.split()

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else ""

    def kill_worker(self) -> None:
        self.process.stdin.write("kill-worker\n")
        self.process.stdin.flush()
        line = self._line(60)
        assert line.startswith("killed"), f"the worker node was not killed:\n{self.log.read_text()[-3000:]}"

    def add_worker(self) -> None:
        """A new worker node in place of a killed one, so that later tests again have two nodes."""
        self.process.stdin.write("add-worker\n")
        self.process.stdin.flush()
        self.worker_id = self._line(START_TIMEOUT_S)
        assert self.worker_id, f"no worker node was added:\n{self.log.read_text()[-3000:]}"

    def stop(self) -> None:
        _stop(self.process)  # SIGTERM: the helper shuts its cluster down


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # A short RAY_TMPDIR: Ray's unix socket paths under it must stay below the 107-character limit.
    ray_tmpdir = tmp_path_factory.getbasetemp() / "ray"
    if len(str(ray_tmpdir)) > 40:
        import tempfile

        ray_tmpdir = Path(tempfile.mkdtemp(prefix="st-out-", dir="/tmp"))
    ray_tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cluster(env, tmp_path_factory):
    helper = ClusterHelper(env, tmp_path_factory.mktemp("cluster") / "helper.log")
    try:
        yield helper
    finally:
        helper.stop()


class Server:
    """An `mlflow server` that can be stopped and started again on the same port and store."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder, self.env, self.port = folder, env, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = start_mlflow_server(folder, self.port, env)

    def stop(self) -> None:
        _stop(self.process, group=True)

    def start(self) -> None:
        self.process = start_mlflow_server(self.folder, self.port, self.env)


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("mlflow-server"), env)
    try:
        yield running
    finally:
        running.stop()


def _search(work: Path, cluster: ClusterHelper, server: Server, name: str, *flags: str) -> list[str]:
    write_search_inputs(work, pairs=("cows",))
    write_space(work, steps=STEPS, trials=2, concurrent=2)
    return [
        SPLICE_TUNE,
        "search",
        "pairs.csv",
        "--space",
        "space.yaml",
        "--address",
        cluster.address,
        "--tracking-uri",
        server.uri,
        "--storage",
        str(work / "ray"),
        "--cpus-per-trial",
        "1",
        "--name",
        name,
        "--quiet",
        *flags,
    ]


def _start(command: list[str], work: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(search: subprocess.Popen, timeout: float = SEARCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        out, err = search.communicate(timeout=timeout)
    finally:
        _stop(search, group=True)
    return subprocess.CompletedProcess(search.args, search.returncode, out, err)


def _trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=100)
        if run.data.tags.get(tracking.TAG_KIND) == tracking.KIND_TRIAL
    ]


def _wait_for(condition, search: subprocess.Popen, what: str, timeout: float = SEARCH_TIMEOUT_S):
    """Poll `condition()` until it returns something truthy (returned); the search must still run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if search.poll() is not None:
            raise AssertionError(f"the search ended before {what}:\n{_show(_finish(search))}")
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _eval_steps(client: MlflowClient, run) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "splice_score"))


def _assert_complete(uri: str, name: str) -> list:
    """The budget is met and nothing is lost or doubled: two trial runs, FINISHED, every step's loss, every
    eval's scores and output image exactly once."""
    client = MlflowClient(tracking_uri=uri)
    runs = _trial_runs(uri, name)
    assert sorted(run.data.tags[tracking.TAG_STUDY_TRIAL] for run in runs) == ["0", "1"], "one run per trial"
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status, run.data.tags)
        assert _eval_steps(client, run) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)), run.info.run_name
        losses = Counter(metric.step for metric in client.get_metric_history(run.info.run_id, "loss/total"))
        assert losses == Counter(range(1, STEPS + 1)), f"{run.info.run_name}: each step's loss once"
        images = [info.path for info in client.list_artifacts(run.info.run_id, "images")]
        steps = [int(re.search(r"\+step\+(\d+)\+", path).group(1)) for path in images if path.endswith(".png")]
        assert sorted(steps) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)), f"{run.info.run_name}: {images}"
        assert len([path for path in images if path.endswith("+compressed.webp")]) == len(steps)
    return runs


def test_a_lost_worker_node_retries_its_trial_on_the_other_node_from_its_checkpoint(cluster, server, env, tmp_path):
    name = "lost-node"
    search = _start(_search(tmp_path, cluster, server, name), tmp_path, env)
    client = MlflowClient(tracking_uri=server.uri)

    def on_worker_after_an_eval():
        for run in _trial_runs(server.uri, name):
            if run.data.tags.get(tracking.TAG_NODE) == cluster.worker_id and run.info.status == "RUNNING":
                # Two evals logged: the first eval's checkpoint is surely registered with Ray by now.
                if len(_eval_steps(client, run)) >= 2:
                    return run
        return None

    try:
        victim = _wait_for(on_worker_after_an_eval, search, "a trial on the worker node logged two evals")
        cluster.kill_worker()
        result = _finish(search)
    finally:
        _stop(search, group=True)
        cluster.add_worker()
    assert result.returncode == 0, _show(result)

    runs = _assert_complete(server.uri, name)
    [retried] = [run for run in runs if run.info.run_id == victim.info.run_id]
    assert retried.data.tags[tracking.TAG_ATTEMPT] == "2", "retried once, in the same MLflow run"
    assert retried.data.tags[tracking.TAG_NODE] == cluster.head_id, "the retry ran on the node that was left"
    # Continued from a checkpoint, not from step 0, and from no later than what was logged before the loss.
    resumed = int(retried.data.tags[tracking.TAG_RESUMED_FROM])
    assert EVAL_EVERY <= resumed <= max(_eval_steps(client, victim)) + EVAL_EVERY, resumed


def _worker_lines(env: dict[str, str], text: str) -> Counter:
    """How many lines of each Ray worker's log contain `text`, per log file (one file per worker process)."""
    logs = Path(env["RAY_TMPDIR"]).glob("ray/session_*/logs/worker-*")
    return Counter({path.name: found for path in logs if (found := path.read_text(errors="replace").count(text))})


def test_a_tracking_server_outage_is_waited_out_and_loses_nothing(cluster, server, env, tmp_path):
    name = "server-outage"
    search = _start(_search(tmp_path, cluster, server, name), tmp_path, env)
    client = MlflowClient(tracking_uri=server.uri)

    def both_logged_an_eval():
        runs = _trial_runs(server.uri, name)
        return len(runs) == 2 and all(_eval_steps(client, run) for run in runs)

    try:
        _wait_for(both_logged_an_eval, search, "both trials logged an eval")
        down = time.monotonic()
        server.stop()
        time.sleep(OUTAGE_S / 2)  # then the restart itself: 5 to 20 s on a small machine
        server.start()
        outage = time.monotonic() - down
        result = _finish(search)
    finally:
        _stop(search, group=True)
    assert result.returncode == 0, _show(result)
    assert outage >= OUTAGE_S * 2 / 3, outage

    runs = _assert_complete(server.uri, name)
    assert all(run.data.tags[tracking.TAG_ATTEMPT] == "1" for run in runs), "waited, not failed and retried"
    # Each trial process that met the outage (one whose evals all fell outside it never calls the server
    # then) said once that the server was away and once that it was back; no per-request retry lines from
    # MLflow's HTTP client (urllib3's "Retrying (Retry(total=...") anywhere.
    # Its reason is the first failed call's: refused, or aborted when the server stopped mid-request.
    waited = _worker_lines(env, "); waiting for it, for up to")
    assert waited and set(waited.values()) == {1}, waited
    back = _worker_lines(env, "reachable again after")
    assert set(back) == set(waited) and set(back.values()) == {1}, (waited, back)
    assert not _worker_lines(env, "Retrying (Retry("), "MLflow's own retries must be off"
    assert "Traceback" not in result.stderr and "Retrying (Retry(" not in result.stderr, result.stderr


def test_a_server_away_longer_than_the_limit_fails_the_search_with_that_cause(cluster, server, env, tmp_path):
    name = "server-gone"
    command = _search(tmp_path, cluster, server, name, "--max-failures", "0")
    search = _start(command, tmp_path, {**env, store.OUTAGE_ENV: "5"})
    client = MlflowClient(tracking_uri=server.uri)

    def logged_an_eval():
        return any(_eval_steps(client, run) for run in _trial_runs(server.uri, name))

    try:
        _wait_for(logged_an_eval, search, "a trial logged an eval")
        server.stop()
        gone = time.monotonic()
        result = _finish(search, timeout=120)
        took = time.monotonic() - gone
    finally:
        _stop(search, group=True)
        server.start()  # for the tests after this one
    assert result.returncode == 1, _show(result)
    # The trials gave up after the limit (the driver's limit, which travels with the job to the nodes' own
    # processes), and so did the driver when it tried to record their failure: the search ends, naming why.
    assert (
        f"the MLflow tracking server at {server.uri} was unreachable for 5 s; gave up at the limit of 5 s (set "
        f"{store.OUTAGE_ENV} to wait longer); last error: Connection refused" in result.stderr
    ), _show(result)
    assert took < 60, f"the search took {took:.0f} s to give up on a 5 s limit"
    # One error line that says how to go on once the server is back, not Ray's traceback around it.
    assert "Traceback" not in result.stderr and "--resume" in result.stderr, _show(result)
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, _show(result)


# ------------------------------------------------------------------------------ the policy, in-process


def test_driver_calls_wait_out_an_outage_with_one_line_or_name_the_limit_they_exceeded(server, monkeypatch, caplog):
    tracker = tracking.SearchTracker(server.uri, "driver-outage")
    server.stop()
    try:
        with caplog.at_level(logging.WARNING):
            # A short limit: the call gives up, saying where and after how long.
            monkeypatch.setenv(store.OUTAGE_ENV, "2")
            started = time.monotonic()
            with pytest.raises(store.TrackingUnreachable) as gave_up:
                tracker.tag_search("splice_tune.test", "never")
            assert time.monotonic() - started < 5
            # The default limit: the next call waits while the server starts again, then succeeds.
            monkeypatch.delenv(store.OUTAGE_ENV)
            waiting = threading.Thread(target=tracker.tag_search, args=("splice_tune.test", "after the outage"))
            waiting.start()
            server.start()
            waiting.join(timeout=60)
            assert not waiting.is_alive(), "the call still waits after the server is back"
    finally:
        if server.process.poll() is not None:
            server.start()
    assert str(gave_up.value).startswith(f"the MLflow tracking server at {server.uri} was unreachable for 2 s;")
    assert f"gave up at the limit of 2 s (set {store.OUTAGE_ENV} to wait longer)" in str(gave_up.value)
    experiment = MlflowClient(tracking_uri=server.uri).get_experiment(tracker.experiment_id)
    assert experiment.tags["splice_tune.test"] == "after the outage"
    # One outage, one line when it began and one when it ended, however many calls and retries met it; none
    # of MLflow's per-request retry lines.
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if "unreachable" in line] == [
        f"MLflow tracking server {server.uri} {UNREACHABLE}, for up to 2 s ({store.OUTAGE_ENV})"
    ], lines
    assert len([line for line in lines if "reachable again after" in line]) == 1, lines
    assert not [line for line in lines if "Retrying" in line], lines


def test_an_outage_limit_that_is_not_a_number_is_refused_before_the_search_starts(monkeypatch):
    from splice_tune import cluster

    monkeypatch.setenv(store.OUTAGE_ENV, "5min")
    assert cluster.tracking_problems(None, None) == [
        f"{store.OUTAGE_ENV}=5min: expected a number of seconds (default {store.DEFAULT_OUTAGE_S:g})"
    ]
    monkeypatch.setenv(store.OUTAGE_ENV, "45")
    assert cluster.tracking_problems(None, None) == []
    assert cluster.code_runtime_env()["env_vars"] == {store.OUTAGE_ENV: "45"}, "the nodes get the driver's limit"
