"""Cluster mode: `splice-tune search --address ... --tracking-uri http://...` on a real two-node Ray cluster
logging to a real `mlflow server`, plus the fast checks that refuse a cluster search that cannot work.

The slow tests start, in processes of their own (the pytest process may already hold a local Ray from the
`ray_session` fixture, and a process can be connected to one Ray only): a Ray cluster of two nodes with one
CPU each (`ray.cluster_utils.Cluster`, both on this host, under a private RAY_TMPDIR so that no other Ray
user of this machine joins it by accident), an MLflow server on 127.0.0.1 with a temporary backend store and
artifact folder, and every `splice-tune` command as a subprocess. Each process started here is stopped here,
also when a test fails.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import write_search_inputs
from mlflow import MlflowClient

from splice_tune import driver, studies, tracking

SPLICE_TUNE = str(Path(sys.executable).parent / "splice-tune")
START_TIMEOUT_S = 120
SEARCH_TIMEOUT_S = 300

# Two nodes of one CPU: with one CPU per trial and two trials at a time, Ray must use both.
CLUSTER_HELPER = """
import signal, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # after the nodes: they inherit it
print(cluster.address, flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
cluster.shutdown()
"""


# ------------------------------------------------------------------------------------- fast: refusals


def _snapshot(root: Path) -> dict[str, tuple]:
    return {str(path.relative_to(root)): (path.is_dir(), path.stat().st_size) for path in sorted(root.rglob("*"))}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding pairs.csv and space.yaml, as the current directory; starting Ray is
    forbidden (every case here must be refused before that)."""
    import splice_tune.driver

    def no_ray(request):
        raise AssertionError("validation passed: the search would now start or join Ray")

    write_search_inputs(tmp_path, pairs=("cows",))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(splice_tune.driver, "_start_ray", no_ray)
    return tmp_path


def _refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, folder: Path, *flags: str) -> list[str]:
    """Run `splice-tune search pairs.csv --space space.yaml FLAGS` in-process; assert exit 2, no traceback and
    nothing written; return the error lines."""
    from splice_tune.cli import main

    before = _snapshot(folder)
    monkeypatch.setattr(sys, "argv", ["splice-tune", "search", "pairs.csv", "--space", "space.yaml", *flags])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err + out
    assert "Traceback" not in err + out and out == ""
    assert _snapshot(folder) == before, "nothing may be written for bad input"
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("error: ") for line in lines), err
    return lines


def test_address_with_the_sqlite_default_is_refused(inputs, monkeypatch, capsys):
    # `auto` is taken as it is (ray.init resolves it), so the only problem is where trials would log.
    [line] = _refused(monkeypatch, capsys, inputs, "--address", "auto")
    assert "--address auto: trials on other machines cannot write this machine's MLflow store" in line
    assert "--tracking-uri http://HOST:PORT" in line and "Running on a cluster" in line


def test_unreachable_cluster_and_server_are_one_line_each(inputs, monkeypatch, capsys):
    ray_port, mlflow_port = _free_port(), _free_port()
    started = time.monotonic()
    lines = _refused(
        monkeypatch,
        capsys,
        inputs,
        "--address",
        f"127.0.0.1:{ray_port}",
        "--tracking-uri",
        f"http://127.0.0.1:{mlflow_port}",
    )
    assert len(lines) == 2, lines
    assert f"--address 127.0.0.1:{ray_port}: nothing answers at 127.0.0.1:{ray_port}" in lines[0]
    assert f"--tracking-uri http://127.0.0.1:{mlflow_port}: nothing answers" in lines[1]
    assert time.monotonic() - started < 30, "a wrong address must not wait for Ray's or MLflow's retries"


def test_ray_client_and_database_uris_are_refused_on_a_cluster(inputs, monkeypatch, capsys):
    lines = _refused(
        monkeypatch,
        capsys,
        inputs,
        "--address",
        "ray://head:10001",
        "--tracking-uri",
        "postgresql://user@127.0.0.1/mlflow",
    )
    assert len(lines) == 2, lines
    assert "Ray Client (ray://) addresses are not supported" in lines[0]
    assert "--tracking-uri postgresql://user@127.0.0.1/mlflow: on a cluster use an MLflow server" in lines[1]


@pytest.mark.parametrize(
    "resume, restorable, expected",
    [
        (False, True, "--name 's3-search': a search of that name exists under s3://bucket/ray"),
        (True, False, "--resume: no search named 's3-search' under s3://bucket/ray"),
    ],
)
def test_remote_storage_existence_is_asked_of_ray(inputs, monkeypatch, capsys, resume, restorable, expected):
    from ray import tune

    asked = []
    monkeypatch.setattr(
        tune.Tuner, "can_restore", lambda path, storage_filesystem=None: asked.append(path) or restorable
    )
    flags = ["--storage", "s3://bucket/ray/", "--name", "s3-search"] + (["--resume"] if resume else [])
    [line] = _refused(monkeypatch, capsys, inputs, *flags)
    assert asked == ["s3://bucket/ray/s3-search"]
    assert expected in line


def test_unreadable_remote_storage_is_one_line(inputs, monkeypatch, capsys):
    from ray import tune

    def unreachable(path, storage_filesystem=None):
        raise OSError("When resolving region for bucket 'bucket': AWS Error NETWORK_CONNECTION")

    monkeypatch.setattr(tune.Tuner, "can_restore", unreachable)
    [line] = _refused(monkeypatch, capsys, inputs, "--storage", "s3://bucket/ray", "--name", "s3-search")
    assert line.startswith("error: --storage s3://bucket/ray: cannot read it (When resolving region")


def test_a_trial_must_fit_on_one_node(monkeypatch):
    import ray

    from splice_tune.cluster import resource_problem

    nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert resource_problem(1, 0.25, "the cluster") is None, "a quarter of the one GPU fits"
    # Two CPUs in total, but no node has two: Ray could never place the trial. The dead node does not count.
    problem = resource_problem(2, 0, "the cluster")
    assert problem == (
        "--cpus-per-trial 2 --gpus-per-trial 0: no node of the cluster has that much (the largest "
        "has 1 CPUs and 1 GPUs); lower them or add a node that has it"
    )


# ------------------------------------------------------------------- slow: a real cluster and server


def _stop(process: subprocess.Popen, group: bool = False) -> None:
    """SIGTERM (to the process group when `group`), wait, then SIGKILL: stopped even if it hangs."""
    if process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    send(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_tmpdir():
    # Short on purpose: Ray's unix socket paths under it must stay below the 107-character limit.
    folder = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def env(ray_tmpdir) -> dict[str, str]:
    """Environment of every process started here: Ray's state under the private folder, no usage stats."""
    return {**os.environ, "RAY_TMPDIR": ray_tmpdir, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ray_cluster(env, tmp_path_factory) -> str:
    """A two-node Ray cluster (one CPU per node) in a helper process; yields its address."""
    log = tmp_path_factory.mktemp("ray-cluster") / "helper.log"
    with open(log, "w") as stderr:
        helper = subprocess.Popen(
            [sys.executable, "-c", CLUSTER_HELPER], stdout=subprocess.PIPE, stderr=stderr, env=env, text=True
        )
    try:
        ready, _, _ = select.select([helper.stdout], [], [], START_TIMEOUT_S)
        address = helper.stdout.readline().strip() if ready else ""
        assert address, f"the Ray cluster did not start:\n{log.read_text()[-3000:]}"
        yield address
    finally:
        _stop(helper)


def start_mlflow_server(folder: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port`, its SQLite backend and artifacts in `folder` (so a server started
    again on the same folder and port carries on with the same store); returns once it answers /health.
    The caller stops it with `_stop(server, group=True)`."""
    with open(folder / "server.log", "a") as log:
        # Its own session, so the whole group (the server and its worker processes) can be stopped.
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(folder / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, f"mlflow server exited:\n{(folder / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        return server
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)
    except BaseException:
        _stop(server, group=True)
        raise


@pytest.fixture(scope="module")
def mlflow_server(env, tmp_path_factory) -> tuple[str, Path]:
    """`mlflow server` on a free port of 127.0.0.1, SQLite backend and artifact folder in a temporary folder;
    yields (tracking URI, artifact folder)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    server = start_mlflow_server(folder, port, env)
    try:
        yield f"http://127.0.0.1:{port}", folder / "artifacts"
    finally:
        _stop(server, group=True)


@dataclass
class ClusterSearch:
    work: Path  # the search's working directory (pairs.csv, space.yaml)
    tracking_uri: str
    artifacts: Path  # the server's artifact folder
    command: list[str]  # the search command, for re-running it
    env: dict[str, str]


def _run(command: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=SEARCH_TIMEOUT_S)


def _show(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


@pytest.fixture(scope="module")
def cluster_search(ray_cluster, mlflow_server, env, tmp_path_factory) -> ClusterSearch:
    """2 pairs x 2 trials, two at a time, on the two-node cluster, logged to the server."""
    tracking_uri, artifacts = mlflow_server
    work = tmp_path_factory.mktemp("cluster-search")
    write_search_inputs(work)
    command = [
        SPLICE_TUNE,
        "search",
        "pairs.csv",
        "--space",
        "space.yaml",
        "--address",
        ray_cluster,
        "--tracking-uri",
        tracking_uri,
        "--storage",
        str(work.parent / f"{work.name}-ray"),
        "--cpus-per-trial",
        "1",
        "--name",
        "cluster-test",
        "--quiet",
        "--set",
        "budget.max_concurrent=2",
        "--set",
        "budget.trials_per_pair=2",
    ]
    result = _run(command, work, env)
    assert result.returncode == 0, _show(result)
    return ClusterSearch(work, tracking_uri, artifacts, command, env)


def _runs(tracking_uri: str, search: str) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(search)
    every = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in every if run.data.tags.get(tracking.TAG_KIND) == tracking.KIND_PAIR]
    children = [run for run in every if run.data.tags.get(tracking.TAG_KIND) == tracking.KIND_TRIAL]
    return client, parents, children


@pytest.mark.slow
def test_cluster_too_small_is_refused_before_anything_is_logged(ray_cluster, mlflow_server, env, tmp_path):
    # This machine has no GPU, but with --address the cluster's nodes are what counts: none has a GPU either.
    tracking_uri, _ = mlflow_server
    write_search_inputs(tmp_path, pairs=("cows",))
    result = _run(
        [
            SPLICE_TUNE,
            "search",
            "pairs.csv",
            "--space",
            "space.yaml",
            "--address",
            ray_cluster,
            "--tracking-uri",
            tracking_uri,
            "--storage",
            str(tmp_path / "ray"),
            "--gpus-per-trial",
            "0.25",
            "--name",
            "too-small",
            "--quiet",
        ],
        tmp_path,
        env,
    )
    assert result.returncode == 2, _show(result)
    assert "--cpus-per-trial 1 --gpus-per-trial 0.25: no node of the Ray cluster at" in result.stderr
    assert "Traceback" not in result.stderr
    assert MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name("too-small") is None
    assert not (tmp_path / "ray").exists() and not (tmp_path / "splice-runs").exists()


@pytest.mark.slow
def test_trials_on_both_nodes_log_everything_through_the_server(cluster_search):
    client, parents, children = _runs(cluster_search.tracking_uri, "cluster-test")
    assert sorted(run.data.tags[tracking.TAG_PAIR] for run in parents) == ["cows", "fruits"]
    assert all(run.info.status == "FINISHED" for run in parents)
    assert len(children) == 4
    for run in children:
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
        assert client.list_artifacts(run.info.run_id, "images"), "an output image per eval"
        assert "checkpoint/generator.pt" in {info.path for info in client.list_artifacts(run.info.run_id, "checkpoint")}
    nodes = {run.data.tags[tracking.TAG_NODE] for run in children}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s), expected both: {nodes}"
    assert any(cluster_search.artifacts.rglob("generator.pt")), "the server stored the files"
    # The server is the MLflow store; only the studies (and the search's lock) stay on the driver's machine.
    root = cluster_search.work / "splice-runs"
    assert sorted(path.name for path in root.iterdir()) == sorted([studies.OPTUNA_DB, driver.LOCKS_FOLDER])
    for parent in parents:
        pair = parent.data.tags[tracking.TAG_PAIR]
        study = optuna.load_study(study_name=f"cluster-test/{pair}", storage=studies.default_url(root))
        assert study.user_attrs[studies.ATTR_PARENT_RUN] == parent.info.run_id
        assert {trial.user_attrs[studies.ATTR_RUN] for trial in study.trials} == {
            run.info.run_id for run in children if run.data.tags[tracking.TAG_PAIR] == pair
        }


@pytest.mark.slow
def test_best_renders_from_the_server(cluster_search, tmp_path):
    out = tmp_path / "cows_best.png"
    result = _run(
        [
            SPLICE_TUNE,
            "best",
            "--pair",
            "cows",
            "--search",
            "cluster-test",
            "--tracking-uri",
            cluster_search.tracking_uri,
            "--out",
            str(out),
        ],
        cluster_search.work,
        cluster_search.env,
    )
    assert result.returncode == 0, _show(result)
    assert out.stat().st_size > 0
    assert not (cluster_search.work / "splice-runs" / "mlflow.db").exists()


@pytest.mark.slow
def test_resume_on_the_cluster_reuses_the_finished_search(cluster_search):
    resumed = _run([*cluster_search.command, "--resume"], cluster_search.work, cluster_search.env)
    assert resumed.returncode == 0, _show(resumed)
    _, parents, children = _runs(cluster_search.tracking_uri, "cluster-test")
    assert (len(parents), len(children)) == (2, 4), "a resumed search reuses its runs"
