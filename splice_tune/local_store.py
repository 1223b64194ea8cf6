"""The embedded store (ROOT/mlflow.db with ROOT/mlartifacts) is movable: `mv` or `cp -r` the root and read on.

MLflow records every run's artifact location as an absolute ``file://`` URI of where the store was when the
run was created. After the root moved, that place is gone (or, for a copy, belongs to the original store);
`StoreClient` therefore resolves a run's artifacts against the root it was opened with: the part of the
recorded path below ``mlartifacts`` is looked up under ROOT/mlartifacts. Reading falls back to the recorded
place when the root holds no copy; writing never leaves the root (it is refused with one line instead).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from splice_tune.errors import BadInput

ARTIFACTS_FOLDER = "mlartifacts"


def located_under(recorded: str, root: Path) -> str | None:
    """The URI of the artifacts recorded at `recorded` as they lie under `root`: `recorded` itself when it is
    not a local folder or already lies under `root`, the same place below ROOT/mlartifacts when the store
    was moved or copied there, and None when `root` holds no copy of them."""
    if not recorded.startswith("file:"):
        return recorded
    path = Path(unquote(urlparse(recorded).path))
    root = root.resolve()
    if path.is_relative_to(root):
        return recorded
    parts = path.parts
    if ARTIFACTS_FOLDER not in parts:
        return None
    below = parts[len(parts) - parts[::-1].index(ARTIFACTS_FOLDER):]
    moved = root.joinpath(ARTIFACTS_FOLDER, *below)
    return moved.as_uri() if moved.exists() else None


class StoreClient(MlflowClient):
    """An MlflowClient on the embedded store under `root` that reads and writes artifacts there, wherever
    the store was when its runs were created (see the module's docstring)."""

    def __init__(self, tracking_uri: str, root: Path):
        super().__init__(tracking_uri=tracking_uri)
        self.root = Path(root).resolve()

    def _artifact_uri(self, run_id: str, writing: bool = False) -> str:
        recorded = self.get_run(run_id).info.artifact_uri
        located = located_under(recorded, self.root)
        if located is None and writing:
            raise BadInput(f"run {run_id}: its artifacts are recorded at {unquote(urlparse(recorded).path)}, "
                           f"outside --root {self.root}, which has no copy of them (the store was moved or "
                           f"copied without its {ARTIFACTS_FOLDER} folder?); splice-tune writes only under --root: "
                           f"copy {ARTIFACTS_FOLDER}/ next to mlflow.db")
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
