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
  many trials write at once; `search_all` reads runs across result pages.
- **Movable.** `mv` or `cp -r` the root and read on: `StoreClient` finds a run's artifacts under the root it
  was opened with, wherever the store was when the run was created.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import mlflow.artifacts
import sqlalchemy.exc
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import FileInfo, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from splice_tune.errors import BadInput

_log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("splice-runs")
ARTIFACTS_FOLDER = "mlartifacts"

# SQLite's own busy handler (MLflow sets busy_timeout = 20 s) already waits for most locks; what reaches us
# are the cases it gives up on (lock upgrades that would deadlock, or a writer holding the lock > 20 s).
RETRY_SECONDS = 60.0
_FIRST_DELAY = 0.05
_MAX_DELAY = 2.0

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


def retry(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call `call`, retrying with jittered exponential backoff while the database reports a lock.

    Gives up (re-raises) after about `RETRY_SECONDS`. Only safe for calls that are atomic or idempotent:
    a write that failed on a lock was rolled back, so repeating it cannot duplicate anything.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    delay = _FIRST_DELAY
    while True:
        try:
            return call(*args, **kwargs)
        except (MlflowException, sqlalchemy.exc.OperationalError) as error:
            if not is_locked(error) or time.monotonic() + delay > deadline:
                raise
            _log.debug("tracking store locked; retrying %s in %.2f s", getattr(call, "__name__", call), delay)
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
