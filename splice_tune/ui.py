"""`splice-tune ui`: the MLflow UI (and its REST API) over the local store, until Ctrl-C.

Runs this environment's ``python -m mlflow server`` as a child process. The child gets its own process
group because the server starts worker processes of its own: stopping the whole group on Ctrl-C (or
SIGTERM) leaves nothing behind holding the port. The server binds 127.0.0.1 unless told otherwise: the
MLflow server has no login, so anyone who can reach it can read and change every run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

from splice_tune import results, store
from splice_tune.errors import BadInput

READY_TIMEOUT_S = 120.0  # a first start migrates the store's schema and imports a lot: tens of seconds
STOP_TIMEOUT_S = 15.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def server_command(root: Path, host: str, port: int) -> list[str]:
    """The `mlflow server` command line for the store under `root`."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        results.store_uri(None, root),
        # Where experiments created from the UI (or by a search pointed at this server) keep artifacts:
        # beside the searches' own, so the layout under ROOT stays the same.
        "--default-artifact-root",
        store.artifact_root(root).as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        # One user browsing: one worker starts faster and holds less memory than MLflow's default 4.
        "--workers",
        "1",
    ]


def serve_ui(root: Path, host: str = "127.0.0.1", port: int = 5000, console: Console | None = None) -> int:
    """Serve the UI until Ctrl-C or SIGTERM; returns the exit code (0 after a clean stop).

    Raises BadInput, before starting anything, when the store is missing or the port cannot be used.
    """
    console = console or Console(stderr=True)
    command = server_command(root, host, port)  # checks the store exists
    check_port(host, port)
    url = f"http://{url_host(host)}:{port}"
    exposed = (
        f"anyone who can reach this machine on port {port} can read and change your runs; MLflow only accepts "
        f"localhost and private-network host names unless its --allowed-hosts says otherwise"
    )
    return serve_until_stopped(
        command,
        url,
        "/health",
        server="the MLflow server",
        banner=f"MLflow UI for {root}: [bold]{url}[/]  (Ctrl-C to stop)",
        stopping="stopping the MLflow UI",
        exposed=exposed if host not in LOOPBACK else None,
        host=host,
        console=console,
        on_ready=lambda: _announce(root, url),
        on_stop=lambda: _withdraw(root),
    )


def serve_until_stopped(
    command: list[str],
    url: str,
    ready_path: str,
    *,
    server: str,
    banner: str,
    stopping: str,
    exposed: str | None,
    host: str,
    console: Console,
    on_ready=lambda: None,
    on_stop=lambda: None,
) -> int:
    """Run a local web server (`ui`, `dashboard`) until Ctrl-C or SIGTERM; returns the exit code: 0 after a
    clean stop, 1 when it did not come up or stopped by itself. `exposed`: the warning for a non-loopback host."""
    process = subprocess.Popen(command, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        if not wait_ready(process, url, ready_path):
            code = process.poll()
            reason = f"exited with code {code}" if code is not None else f"did not answer in {READY_TIMEOUT_S:.0f} s"
            console.print(f"[red]error:[/] {server} {reason}; its messages are above", highlight=False)
            return 1
        on_ready()
        console.print(banner, highlight=False)
        if exposed:
            console.print(f"[yellow]note:[/] listening on {host}: {exposed}", highlight=False)
        code = process.wait()
        console.print(f"[red]error:[/] {server} stopped by itself (exit code {code})", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print(stopping)
        return 0
    finally:
        stop_server(process)
        on_stop()
        signal.signal(signal.SIGTERM, previous)


def _announce(root: Path, url: str) -> None:
    """Tell `best` and `report` where this store's UI is, so their links open here (results.serving_ui)."""
    state = {"url": url, "pid": os.getpid(), "host": socket.gethostname()}
    try:
        (root / results.UI_STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    except OSError:
        pass  # a read-only store: links then name the default port, and the UI still serves


def _withdraw(root: Path) -> None:
    path = root / results.UI_STATE_FILE
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass  # never written, or another `ui` on this store has announced itself since


def interrupt(signum, frame) -> None:
    """SIGTERM handler: raise KeyboardInterrupt."""
    # SIGTERM (a service manager, a test) stops the server as cleanly as Ctrl-C does.
    raise KeyboardInterrupt


def url_host(host: str) -> str:
    """How this machine reaches a server bound to `host`, as a URL's host."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"  # bound to every interface: this machine reaches it on loopback
    return f"[{host}]" if ":" in host else host


def check_port(host: str, port: int) -> None:
    """Raise BadInput (one line naming --port or --host) unless a server can listen on host:port."""
    if not 1 <= port <= 65535:
        raise BadInput(f"--port {port}: must be between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BadInput(f"--host {host}: not an address of this machine; use 127.0.0.1 (or 0.0.0.0 for all)") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The server sets SO_REUSEADDR too, so a port only in TIME_WAIT is free for it as for us.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except PermissionError:
            raise BadInput(
                f"--port {port}: not allowed for this user (ports below 1024 need root); use e.g. --port 5000"
            ) from None
        except OSError as error:
            raise BadInput(
                f"--port {port}: cannot listen on {host}:{port} ({error.strerror}); it is probably "
                f"in use: choose another --port or stop what uses it"
            ) from None


def wait_ready(process: subprocess.Popen, url: str, path: str = "/health") -> bool:
    """Whether the server at `url` answers `path` with 200 within READY_TIMEOUT_S (False once it exited)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        time.sleep(0.3)
    return False


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL for whatever is left once the server
    process has exited (or after a grace period)."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    # The server's helpers (job runner, queue consumers) can outlive it; nothing of theirs needs saving.
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # the whole group has exited already
