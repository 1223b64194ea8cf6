"""The MLflow store of searches: where it is, whether it is sound, and how every call reaches it.

Shared by the writer (`tracking`) and the reader (`results`), so each of these is decided in one place:

- **Where.** The embedded store is SQLite at ROOT/mlflow.db with artifacts in ROOT/mlartifacts
  (docs/design.md, MLflow layout); `--tracking-uri` names another. `local_path` is the one parser of local
  store URIs.
- **Sound.** MLflow creates and migrates a SQLite schema on first contact with no locking of its own, and
  builds it into any file it is given (an empty one included) or fails with a page of SQLAlchemy traceback
  on a damaged one. Whoever may create the store holds `store_lock`; an existing file must pass `_damage`
  first, and a damaged one is one line of `BadInput`.
- **Reached.** Every database call goes through `retry`, which rides out SQLite's "database is locked" when
  many trials write at once, and an MLflow server that is unreachable for a while (down, restarting,
  answering 5xx) for up to `outage_limit()` seconds; `search_all` reads runs across result pages.
- **Movable.** `mv` or `cp -r` the root and read on: `StoreClient` finds a run's artifacts under the root it
  was opened with, wherever the store was when the run was created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import mlflow.artifacts
import requests.exceptions
import sqlalchemy.exc
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import FileInfo, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from splice_tune.errors import BadInput, Failure

_log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("splice-runs")
ARTIFACTS_FOLDER = "mlartifacts"

# SQLite's own busy handler (MLflow sets busy_timeout = 20 s) already waits for most locks; what reaches us
# are the cases it gives up on (lock upgrades that would deadlock, or a writer holding the lock > 20 s).
RETRY_SECONDS = 60.0
_FIRST_DELAY = 0.05
_MAX_DELAY = 2.0

# An MLflow server that does not answer (docs/design.md, Lost nodes and tracking outages): every call waits
# for it with capped exponential backoff, for at most this long in all (per process and outage), then fails.
OUTAGE_ENV = "SPLICE_TUNE_TRACKING_OUTAGE_S"
DEFAULT_OUTAGE_S = 300.0
_OUTAGE_FIRST_DELAY = 0.5
_OUTAGE_MAX_DELAY = 10.0
# MLflow's HTTP client retries every request on its own, by default 7 times with backoff factor 2 (about
# 4 minutes) and a 120 s timeout per attempt. Under `retry`'s own loop that would multiply the wait and log a
# urllib3 warning per attempt, so each request is tried once here, with a timeout that still lets a large
# artifact upload progress (the timeout bounds each socket wait, not the transfer). A user's own setting wins.
MLFLOW_HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
for _name, _value in MLFLOW_HTTP_LIMITS.items():
    os.environ.setdefault(_name, _value)  # MLflow reads them at every request, and Ray workers inherit them

_SQLITE_MAGIC = b"SQLite format 3\x00"
_DAMAGED_HINT = "restore it from a backup, or use another --root (splice-tune never repairs or replaces a store)"

_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------------- where


def default_tracking_uri(root: Path) -> str:
    """The embedded store: ``sqlite:///<absolute root>/mlflow.db`` (MLflow creates the folder)."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db').as_posix()}"


def resolve_tracking_uri(tracking_uri: str | None, root: Path) -> str:
    """The URI to use: the one the user gave (``http://...``, ``sqlite:///...``), else the embedded store."""
    return tracking_uri if tracking_uri else default_tracking_uri(root)


def artifact_root(root: Path) -> Path:
    """Where the embedded store under `root` keeps artifacts: ROOT/mlartifacts, absolute."""
    return Path(root).resolve() / ARTIFACTS_FOLDER


def scheme(tracking_uri: str | None) -> str:
    """The URI's scheme ("sqlite" for None, the embedded store; "databricks" for MLflow's bare name)."""
    if not tracking_uri:
        return "sqlite"
    if tracking_uri == "databricks":
        return "databricks"  # MLflow's bare name for the configured Databricks workspace
    return urlparse(tracking_uri).scheme


def local_path(tracking_uri: str) -> Path | None:
    """The file or folder a local store lives in (SQLite file, file store); None for servers, other databases
    and ``:memory:``."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
    if "://" not in tracking_uri:
        return Path(tracking_uri)
    return None


def sqlite_file(tracking_uri: str) -> Path | None:
    """The absolute database file of a file-backed SQLite store, None for any other store."""
    path = local_path(tracking_uri) if tracking_uri.startswith("sqlite:///") else None
    return path.resolve() if path is not None else None


# ----------------------------------------------------------------------------------------------- sound


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold the store's creation lock (a file beside a local SQLite store; nothing for other stores), after
    checking that a database file already there is an MLflow store (`BadInput` if not).

    Two processes creating a schema at once break each other's migration, so whoever may create the store
    holds this while MLflow first touches it.
    """
    db = sqlite_file(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(db)):
        if db.exists() and (problem := _damage(db)) is not None:
            raise BadInput(_damaged(db, problem))
        yield


def refuse_damaged(tracking_uri: str) -> None:
    """`BadInput` naming the file when `tracking_uri` is a local SQLite file that exists but is not a readable
    MLflow store. Reads only; a store another process is creating right now is waited for, not reported."""
    db = sqlite_file(tracking_uri)
    if db is None or not db.exists():
        return
    problem = _damage(db)
    if problem is not None and _lock_path(db).exists():
        with FileLock(_lock_path(db)):  # its creator holds the lock until the schema is complete
            problem = _damage(db)
    if problem is not None:
        raise BadInput(_damaged(db, problem))


def _damaged(db: Path, problem: str) -> str:
    return f"{db}: not a readable MLflow store ({problem}); {_DAMAGED_HINT}"


def _damage(db: Path) -> str | None:
    """What is wrong with the SQLite file `db` as an MLflow store, in a few words; None when nothing is."""
    if not db.is_file():
        return "not a regular file"
    with db.open("rb") as file:
        header = file.read(100)
    if not header:
        return "the file is empty (0 bytes)"
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        return "not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid only when its "version valid for" matches the change counter.
    if header[92:96] == header[24:28] and db.stat().st_size < pages * page_size:
        return f"truncated: {db.stat().st_size:,} of {pages * page_size:,} bytes"
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"alembic_version", "experiments", "runs"} <= tables:
                return "an SQLite database without MLflow's tables"
            connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as error:
        return f"SQLite: {error}"
    return None


# --------------------------------------------------------------------------------------------- reached


def is_locked(error: BaseException) -> bool:
    """True when `error` is SQLite reporting that another connection holds the lock."""
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


class TrackingUnreachable(Failure):
    """The MLflow tracking server did not answer for longer than `outage_limit()`; the message names it."""


def outage_limit() -> float:
    """How long (seconds) a call waits for an unreachable tracking server: ``$SPLICE_TUNE_TRACKING_OUTAGE_S``,
    else `DEFAULT_OUTAGE_S`. A value that is not a number is refused rather than silently replaced."""
    text = os.environ.get(OUTAGE_ENV, "").strip()
    if not text:
        return DEFAULT_OUTAGE_S
    try:
        return max(0.0, float(text))
    except ValueError:
        raise BadInput(f"{OUTAGE_ENV}={text}: expected a number of seconds (default {DEFAULT_OUTAGE_S:g})") from None


# requests' errors for "the server is not there or not well": refused, reset, timed out, or answering 5xx /
# 429 until urllib3 gave up (RetryError). MLflow wraps them into an MlflowException's message and context.
_UNREACHABLE_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,
    requests.exceptions.ChunkedEncodingError,
)
_API_URL = re.compile(r"API request to (\w+://[^/\s]+)")


def is_unreachable(error: BaseException) -> bool:
    """True when `error` (or what it wraps) says the tracking server could not be reached or was
    temporarily unable to answer, rather than refusing the request itself."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _UNREACHABLE_ERRORS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _server(error: BaseException) -> str:
    found = _API_URL.search(str(error))
    return found.group(1) if found else "(unknown URL)"


class _Outage:
    """This process's view of an outage of the tracking server, shared by every thread's calls, so that an
    outage is announced once (and its end once) however many calls and retries wait for it, and so that a
    process that already gave up on the server does not wait the whole limit again on its next call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None  # when the first call of this outage failed
        self.last: float = 0.0  # when a call last failed
        self.server = ""

    def failed(self, error: BaseException) -> float:
        """Note a failed call; the seconds it has been unreachable. Logs the outage's first line."""
        now = time.monotonic()
        with self._lock:
            # A failure long after the last one (the process was idle) starts a new outage; "long" allows for
            # the longest backoff and a request that waited its whole timeout for a server that hangs.
            if self.since is None or now - self.last > 2 * _OUTAGE_MAX_DELAY + _request_timeout():
                self.since, self.server = now, _server(error)
                _log.warning(
                    "MLflow tracking server %s unreachable (%s); waiting for it, for up to %g s (%s)",
                    self.server,
                    _reason(error),
                    outage_limit(),
                    OUTAGE_ENV,
                )
            self.last = now
            return now - self.since

    def answered(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is not None:
                _log.warning(
                    "MLflow tracking server %s reachable again after %.0f s", self.server, time.monotonic() - self.since
                )
                self.since = None


_OUTAGE = _Outage()


def _request_timeout() -> float:
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
    except ValueError:
        return 120.0  # MLflow's default; MLflow itself reports the bad value on its next request


def _reason(error: BaseException) -> str:
    """A few words from an unreachable server's error: urllib3's innermost cause, not its paragraph."""
    text = " ".join(str(error).split())
    found = re.search(
        r"(Connection refused|Connection reset by peer|Connection aborted|RemoteDisconnected|"
        r"Read timed out|timed out|too many \d+ error responses|Name or service not known)",
        text,
    )
    return found.group(1) if found else text[:160]


def retry(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call `call`, retrying while the store is locked or the tracking server is unreachable.

    A locked SQLite database is retried with jittered exponential backoff for about `RETRY_SECONDS`, then
    the error is re-raised. An unreachable server (refused, reset, timed out, 5xx) is waited for with
    jittered backoff capped at `_OUTAGE_MAX_DELAY`, for `outage_limit()` seconds from the outage's start in
    this process; then `TrackingUnreachable` names the server and the limit. Only safe for calls that are
    atomic or idempotent: a write that failed on a lock was rolled back, and one whose answer was lost in an
    outage may have been applied, which MLflow makes harmless for metrics (an identical row is kept once),
    tags, params of the same value and artifacts (replaced).
    """
    deadline = time.monotonic() + RETRY_SECONDS
    delay = _FIRST_DELAY
    outage_delay = _OUTAGE_FIRST_DELAY
    while True:
        try:
            result = call(*args, **kwargs)
        except (MlflowException, sqlalchemy.exc.OperationalError) as error:
            if is_unreachable(error):
                waited, limit = _OUTAGE.failed(error), outage_limit()
                if waited >= limit:
                    raise TrackingUnreachable(
                        f"the MLflow tracking server at {_server(error)} was unreachable for {waited:.0f} s; "
                        f"gave up at the limit of {limit:g} s (set {OUTAGE_ENV} to wait longer); last error: "
                        f"{_reason(error)}"
                    ) from error
                # The last wait ends at the limit, so that the call is tried once more right then.
                time.sleep(min(outage_delay * random.uniform(0.5, 1.0), limit - waited))
                outage_delay = min(outage_delay * 2, _OUTAGE_MAX_DELAY)
                continue
            if not is_locked(error) or time.monotonic() + delay > deadline:
                raise
            _log.debug("tracking store locked; retrying %s in %.2f s", getattr(call, "__name__", call), delay)
        else:
            _OUTAGE.answered()
            return result
        # Jitter keeps writers that collided once from colliding again in lockstep.
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _MAX_DELAY)


def _quote(value: str) -> str:
    """A filter-string literal for `value` (MLflow's parser has no escapes, so pick a quote it lacks)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for a value containing both kinds of quote: {value!r}")


def tag_filter(**tags: str) -> str:
    """An MLflow filter string matching runs that carry every one of `tags` with exactly that value."""
    return " and ".join(f"tags.`{key}` = {_quote(value)}" for key, value in tags.items())


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run of the experiment matching `filter_string`, across all result pages."""
    runs: list[Run] = []
    page_token = None
    while True:
        page = retry(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


# ------------------------------------------------------------------------------------------------- movable


def _file_path(location: str) -> Path:
    return Path(unquote(urlparse(location).path))


def lies_under(location: str, root: Path) -> bool:
    """True unless the artifact `location` is a local folder (file:// URI) outside `root`."""
    return not location.startswith("file:") or _file_path(location).is_relative_to(Path(root).resolve())


def located_under(recorded: str, root: Path) -> str | None:
    """The URI of the artifacts recorded at `recorded` as they lie under `root`: `recorded` itself when it is
    not a local folder or already lies under `root`, the same place below ROOT/mlartifacts when the store
    was moved or copied there, and None when `root` holds no copy of them."""
    if lies_under(recorded, root):
        return recorded
    parts = _file_path(recorded).parts
    if ARTIFACTS_FOLDER not in parts:
        return None
    below = parts[len(parts) - parts[::-1].index(ARTIFACTS_FOLDER) :]
    moved = Path(root).resolve().joinpath(ARTIFACTS_FOLDER, *below)
    return moved.as_uri() if moved.exists() else None


class StoreClient(MlflowClient):
    """An MlflowClient on the embedded store under `root` that reads and writes artifacts there, wherever
    the store was when its runs were created.

    MLflow records every run's artifact location as an absolute ``file://`` URI of where the store was when
    the run was created. After the root moved, that place is gone (or, for a copy, belongs to the original
    store), so the part of the recorded path below ``mlartifacts`` is looked up under ROOT/mlartifacts.
    Reading falls back to the recorded place when the root holds no copy; writing never leaves the root (it
    is refused with one line instead).
    """

    def __init__(self, tracking_uri: str, root: Path):
        super().__init__(tracking_uri=tracking_uri)
        self.root = Path(root).resolve()

    def _artifact_uri(self, run_id: str, writing: bool = False) -> str:
        recorded = self.get_run(run_id).info.artifact_uri
        located = located_under(recorded, self.root)
        if located is None and writing:
            raise BadInput(
                f"run {run_id}: its artifacts are recorded at {_file_path(recorded)}, "
                f"outside --root {self.root}, which has no copy of them (the store was moved or "
                f"copied without its {ARTIFACTS_FOLDER} folder?); splice-tune writes only under --root: "
                f"copy {ARTIFACTS_FOLDER}/ next to mlflow.db"
            )
        return located or recorded

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        """Download artifact `path` of the run into `dst_path` (a temporary folder when None)."""
        uri = f"{self._artifact_uri(run_id).rstrip('/')}/{path.lstrip('/')}"
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        """The run's artifacts directly under `path` (the top level when None)."""
        return get_artifact_repository(self._artifact_uri(run_id)).list_artifacts(path)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Store the file `local_path` with the run's artifacts (under `artifact_path`), inside the root."""
        get_artifact_repository(self._artifact_uri(run_id, writing=True)).log_artifact(local_path, artifact_path)
