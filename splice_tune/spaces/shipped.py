"""Which file a search space name means: a shipped space (`--space quick`) or a path."""

from __future__ import annotations

import os
import site
import sys
import typing
from pathlib import Path

import yaml

from splice_tune.errors import BadInput
from splice_tune.spaces.document import Loader
from splice_tune.spaces.messages import suggest


def shipped_spaces_dir(repo: Path | None = None, prefixes: typing.Sequence[Path] | None = None) -> Path:
    """Where the shipped search spaces are: the repository's `search_spaces/` beside the `splice_tune`
    package (a checkout, an editable install), else PREFIX/share/splice-tune/search_spaces, where a wheel
    install puts them (pyproject's data-files; PREFIX is the environment's, or the user base of a --user
    install). When none exists, the repository's path (load_space then says the folder is missing)."""
    # parents: [0] splice_tune/spaces, [1] splice_tune, [2] the repository (or site-packages when installed)
    repo = repo if repo is not None else Path(__file__).resolve().parents[2] / "search_spaces"
    if prefixes is None:
        prefixes = [Path(sys.prefix), Path(site.getuserbase())]
    for folder in [repo, *(Path(prefix) / "share" / "splice-tune" / "search_spaces" for prefix in prefixes)]:
        if folder.is_dir():
            return folder
    return repo


SPACES_DIR = shipped_spaces_dir()
"""The shipped search spaces (see `shipped_spaces_dir`)."""


def shipped_spaces() -> dict[str, str]:
    """Names of the shipped search spaces and their one-line descriptions (for `--help` and `ls`)."""
    spaces = {}
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None
        description = data.get("description") if isinstance(data, dict) else None
        spaces[path.stem] = description if isinstance(description, str) else ""
    return spaces


def locate(text: str) -> tuple[Path, str]:
    """The regular file a name or path refers to, and how to show it in messages; `BadInput` when there is
    none. A bare name (no path separator, no .yaml/.yml suffix) means a shipped space."""
    if "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        path, shown = Path(text).expanduser(), text
    else:
        path = _shipped(text)
        try:
            shown = str(path.relative_to(Path.cwd()))
        except ValueError:
            shown = str(path)
    if not path.exists():
        raise BadInput(
            f"{shown}: no such file; check the path, or give the name of a shipped space "
            f"({', '.join(shipped_spaces()) or 'none found'})"
        )
    if path.is_dir():
        raise BadInput(f"{shown}: is a directory; give a .yaml file")
    if not path.is_file():
        raise BadInput(f"{shown}: is not a regular file (a FIFO, socket or device); give a .yaml file")
    return path, shown


def _shipped(name: str) -> Path:
    if not SPACES_DIR.is_dir():
        raise BadInput(
            f"search space '{name}': the shipped search_spaces folder is missing from this install "
            f"({SPACES_DIR}); pass the path of a .yaml file instead"
        )
    path = SPACES_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
        raise BadInput(
            f"search space '{name}' is not shipped; {suggest(name, names, 'shipped spaces are')} "
            f"(or pass the path of a .yaml file)"
        )
    return path
