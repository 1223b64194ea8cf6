"""The Optuna storage of searches: where each pair's study is kept, and the checks on it before a search.

Every pair's study is stored in Optuna's own storage (docs/design.md, Ray layout and Resume contract), by
default SQLite at ROOT/optuna.db; `--optuna-storage URL` names another (a team's PostgreSQL, say). Only the
driver writes studies, so on a cluster the default stays on the driver's machine. A study is named
``SEARCH/PAIR`` and carries the pair's MLflow run id in its user attrs; each trial carries its MLflow run id.

Optuna's `RDBStorage` creates its tables on first contact, so these checks never open a SQLite file that
does not exist yet: looking must not write.
"""

from __future__ import annotations

from pathlib import Path

OPTUNA_DB = "optuna.db"
ATTR_PARENT_RUN = "mlflow_parent_run_id"  # study user attr: the pair's MLflow run
ATTR_RUN = "mlflow_run_id"  # trial user attr: the trial's MLflow run
TAG_STORAGE = "splice_tune.optuna_storage"  # experiment tag: where the search's studies are (password hidden)


def default_url(root: Path) -> str:
    """The default storage: ``sqlite:///<absolute root>/optuna.db``."""
    return f"sqlite:///{(Path(root).resolve() / OPTUNA_DB).as_posix()}"


def resolve_url(url: str | None, root: Path) -> str:
    """The storage to use: --optuna-storage when given, else the default under `root`."""
    return url or default_url(root)


def study_name(search: str, pair: str) -> str:
    """A pair's study name in the storage: SEARCH/PAIR."""
    return f"{search}/{pair}"


def shown(url: str) -> str:
    """`url` with any password hidden, for messages and the experiment tag."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite storage URL, None for any other storage."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def make_folder(url: str) -> None:
    """Create the folder of a SQLite storage's file (SQLite creates the file, not its folder): with a
    tracking server, nothing else creates the root."""
    db = sqlite_file(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)


def stored_names(url: str) -> list[str] | None:
    """The study names in the storage at `url`; [] when a SQLite file does not exist yet (nothing is created),
    None when the storage cannot be read."""
    import optuna
    import sqlalchemy.exc

    db = sqlite_file(url)
    if db is not None and not db.exists():
        return []
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        return [study.study_name for study in storage.get_all_studies()]
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, ValueError, ImportError, RuntimeError):
        return None


def storage_problems(url: str, search: str, pairs: list[str], resume: bool, recorded: str | None) -> list[str]:
    """Why search `search` cannot (with `resume`: cannot go on to) keep its studies at `url`: unreadable,
    holding the search's studies already (a new search), or missing them (a resume). `recorded` is the
    storage the search's experiment recorded when it started (None: it started before studies were stored).
    """
    names = stored_names(url)
    flag = f"--optuna-storage {shown(url)}"
    if names is None:
        return [f"{flag}: cannot read it as an Optuna storage; check the URL, or leave it out for ROOT/{OPTUNA_DB}"]
    wanted = [study_name(search, pair) for pair in pairs]
    if not resume:
        taken = [name for name in wanted if name in names]
        if taken:
            return [f"{flag}: already holds study {taken[0]!r}; choose another --name or --optuna-storage"]
        return []
    if recorded is None:
        return [
            f"--resume: search {search!r} started before splice-tune stored studies in an Optuna storage; "
            f"finish it with the version that started it, or start a new search with another --name"
        ]
    missing = [name for name in wanted if name not in names]
    if missing:
        return [
            f"{flag}: holds no study {missing[0]!r}; search {search!r} keeps its studies in {recorded}, "
            f"so pass that as --optuna-storage (or the --root it started with)"
        ]
    return []
