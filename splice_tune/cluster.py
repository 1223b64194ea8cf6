"""Cluster mode: a search on an existing Ray cluster, logging to a shared MLflow tracking server.

Trials then run on other machines, which changes three things the driver must check before it writes
anything: every trial must reach the tracking store itself (a SQLite file on the driver's disk is out of
reach, and with a bare database URI each node would keep its images and checkpoints on its own disk, so it
must be an MLflow server, which stores artifacts for everyone); the cluster and the server must answer
(else Ray or MLflow retry for minutes); and some node must be big enough for one trial (else Ray waits
forever). The project's code travels to the workers with the job (`code_runtime_env`), so the nodes need
the dependencies installed but not this checkout.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from splice_tune import store
from splice_tune.errors import BadInput

# Tracking URIs whose runs *and* artifacts every node reaches through one server.
SERVER_SCHEMES = ("http", "https", "databricks")
# Tracking stores MLflow opens directly (a "+driver" suffix, as in postgresql+psycopg2, is allowed).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file")
# A server or head node that is up answers in milliseconds; without a limit a wrong address costs minutes.
CONNECT_TIMEOUT_S = 5
SEE_README = "see README: Running on a cluster"


def tracking_problems(tracking_uri: str | None, address: str | None) -> list[str]:
    """Why `tracking_uri` (None: the embedded SQLite store) cannot serve this search, or [] when it can.

    With a cluster `address` it must be an MLflow server; a server must answer (checked with a real API
    call, so a wrong port, a proxy that is not MLflow or refused credentials all show here). A tracking
    outage limit (`store.OUTAGE_ENV`) that is not a number is refused here too, not in every trial.
    """
    try:
        store.outage_limit()
    except BadInput as error:
        return [*error.problems, *_store_problems(tracking_uri, address)]
    return _store_problems(tracking_uri, address)


def _store_problems(tracking_uri: str | None, address: str | None) -> list[str]:
    scheme = store.scheme(tracking_uri)
    if scheme.split("+")[0] not in (*SERVER_SCHEMES, *DATABASE_SCHEMES):
        return [
            f"--tracking-uri {tracking_uri}: unsupported scheme {scheme!r}; use http(s)://HOST:PORT of an "
            f"MLflow server or sqlite:///PATH (or a database URI such as postgresql://...)"
        ]
    if address and scheme not in SERVER_SCHEMES:
        if scheme in ("sqlite", "file", ""):
            return [
                f"--address {address}: trials on other machines cannot write this machine's MLflow store "
                f"({tracking_uri or 'the default SQLite file'}); pass --tracking-uri http://HOST:PORT of an "
                f"MLflow server ({SEE_README})"
            ]
        return [
            f"--tracking-uri {tracking_uri}: on a cluster use an MLflow server (http://HOST:PORT): with a "
            f"database URI every node would keep its images and checkpoints on its own disk ({SEE_README})"
        ]
    if scheme not in SERVER_SCHEMES:
        return []
    problem = server_problem(tracking_uri)
    return [problem] if problem else []


def server_problem(tracking_uri: str) -> str | None:
    """None when the MLflow server at `tracking_uri` answers an API call within seconds, else why not."""
    from mlflow import MlflowClient

    url = urlparse(tracking_uri)
    if url.scheme in ("http", "https"):
        # A plain connect first: it fails fast and says why in a few words, where MLflow's error is a
        # paragraph about connection pools.
        problem = _unreachable(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
        if problem:
            return (
                f"--tracking-uri {tracking_uri}: {problem}; start the MLflow server (`mlflow server --host "
                f"0.0.0.0 --port 5000`) or fix the address ({SEE_README})"
            )
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CONNECT_TIMEOUT_S)}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)  # MLflow reads these per request; restored below
    try:
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # any failure here means the search could not log: report it, not a traceback
        reason = " ".join(str(error).split())[:200]
        return f"--tracking-uri {tracking_uri}: not usable as the MLflow server: {reason}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return None


def address_problems(address: str | None) -> list[str]:
    """Why the Ray `address` cannot be joined, or [] when it answers (or is ``auto``/``local``, which
    `ray.init` resolves itself)."""
    if not address or address in ("auto", "local"):
        return []
    if address.startswith("ray://"):
        # Through Ray Client, Tune runs its loop in a process on the head node, where this driver's live
        # table and MLflow bookkeeping (driver-side callbacks) do not exist.
        return [
            f"--address {address}: Ray Client (ray://) addresses are not supported; run splice-tune on a "
            f"node of the cluster with --address HEAD:6379 (or auto), or submit it as a Ray job ({SEE_README})"
        ]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return [f"--address {address}: expected HOST:PORT of the Ray head node's GCS (e.g. head:6379), auto or local"]
    problem = _unreachable(host, int(port))
    if problem:
        return [
            f"--address {address}: {problem}; start the head with `ray start --head` and pass the address "
            f"it prints ({SEE_README})"
        ]
    return []


def _unreachable(host: str, port: int) -> str | None:
    """None when something accepts TCP connections at host:port, else a few words saying why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as error:
        return f"nothing answers at {host}:{port} ({error.strerror or error})"


def code_runtime_env() -> dict:
    """A Ray runtime_env that ships the `splice_model` and `splice_tune` package folders with the job, and
    the driver's tracking-outage limit (`store.OUTAGE_ENV`) when it sets one.

    Workers import the code from there (ahead of any installed copy), so every node runs the driver's version
    of the code and needs only the dependencies installed. The nodes' processes were started by `ray start`,
    not by the driver, so they do not see its environment: without this a limit set for a search would
    hold for the driver's own calls only, and trials would wait the default.
    """
    import splice_model
    import splice_tune

    runtime_env = {
        "py_modules": [str(Path(package.__file__).parent) for package in (splice_model, splice_tune)],
        "excludes": ["__pycache__", "*.pyc"],
    }
    if os.environ.get(store.OUTAGE_ENV):
        runtime_env["env_vars"] = {store.OUTAGE_ENV: os.environ[store.OUTAGE_ENV]}
    return runtime_env


def join(address: str) -> None:
    """Connect this process to the Ray cluster at `address`, shipping the project's code with the job."""
    import logging

    import ray

    try:
        ray.init(address=address, runtime_env=code_runtime_env(), logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError) as error:  # what ray.init raises for an address it cannot use
        raise BadInput(
            [f"--address {address}: cannot join a Ray cluster there: {' '.join(str(error).split())} ({SEE_README})"]
        ) from None


def resource_problem(cpus_per_trial: float, gpus_per_trial: float, where: str) -> str | None:
    """None when some live node of the connected Ray has room for one trial, else why not.

    Checked per node, not over the cluster's total: a trial's CPUs and GPU share must all sit on one node.
    """
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= cpus_per_trial and node.get("GPU", 0) >= gpus_per_trial for node in nodes):
        return None
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
    return (
        f"--cpus-per-trial {cpus_per_trial:g} --gpus-per-trial {gpus_per_trial:g}: no node of {where} has "
        f"that much (the largest has {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs); "
        f"lower them or add a node that has it"
    )
