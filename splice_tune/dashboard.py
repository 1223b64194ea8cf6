"""`splice-tune dashboard`: optuna-dashboard over the searches' Optuna storage, until Ctrl-C.

Runs optuna-dashboard's `run_server` in a child process of this environment's Python, in its own process
group, and serves and stops it as `ui` does the MLflow server (`ui.serve_until_stopped`). It binds 127.0.0.1 unless told
otherwise: the dashboard has no login, and anyone who reaches it can add notes to and delete studies.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from splice_tune import studies, ui
from splice_tune.errors import BadInput

# optuna-dashboard's public entry point, run in the child: storage URL, host and port come as arguments.
_RUN = "import sys, optuna_dashboard; optuna_dashboard.run_server(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]))"


def dashboard_command(url: str, host: str, port: int) -> list[str]:
    """The command line that serves optuna-dashboard on the storage at `url`."""
    return [sys.executable, "-c", _RUN, url, host, str(port)]


def check_storage(url: str, flag: str) -> None:
    """Raise BadInput (one line naming `flag`) unless `url` is an existing, readable Optuna storage; a SQLite
    file that does not exist is never created by looking."""
    names = studies.stored_names(url)
    db = studies.sqlite_file(url)
    if db is not None and not db.exists():
        raise BadInput(f"{flag}: no Optuna storage at {db} (no search has stored studies there); run a search first")
    if names is None:
        raise BadInput(f"{flag}: cannot read {studies.shown(url)} as an Optuna storage; check it")


def serve_dashboard(
    url: str, flag: str, host: str = "127.0.0.1", port: int = 8080, console: Console | None = None
) -> int:
    """Serve optuna-dashboard on the storage at `url` until Ctrl-C or SIGTERM; returns the exit code (0 after
    a clean stop, 1 when the server stopped by itself). `flag` names where `url` came from, for messages.

    Raises BadInput, before starting anything, when the storage is missing or the port cannot be used.
    """
    console = console or Console(stderr=True)
    check_storage(url, flag)
    ui.check_port(host, port)
    address = f"http://{ui.url_host(host)}:{port}"
    exposed = f"anyone who can reach this machine on port {port} can change and delete your studies"
    return ui.serve_until_stopped(
        dashboard_command(url, host, port),
        address,
        "/api/studies",
        server="optuna-dashboard",
        banner=f"optuna-dashboard for {studies.shown(url)}: [bold]{address}[/]  (Ctrl-C to stop)",
        stopping="stopping optuna-dashboard",
        exposed=exposed if host not in ui.LOOPBACK else None,
        host=host,
        console=console,
    )


def storage_flag(optuna_storage: str | None, root: Path) -> tuple[str, str]:
    """The storage to serve and the flag to name in messages about it."""
    if optuna_storage:
        return optuna_storage, f"--optuna-storage {studies.shown(optuna_storage)}"
    return studies.default_url(root), f"--root {root}"
