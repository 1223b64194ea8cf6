"""A full disk, recognised wherever it surfaces, and said in one line that names the full place.

A search writes to three places that may sit on different disks: the MLflow store (SQLite file and artifact
folder), Ray's storage (experiment state and trial checkpoints) and the Optuna storage. When one fills up,
the error arrives in many shapes: OSError ENOSPC from a file write, SQLite's "database or disk is full"
through SQLAlchemy and MLflow, a trial's traceback text relayed by Ray. `is_full` recognises them all;
`full_places` says which of the search's places are on a filesystem that is (nearly) full, from the
filesystems themselves, since SQLite's message names no file.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXTS = (
    "no space left on device",
    "database or disk is full",
    "disk quota exceeded",
    f"[errno {errno.ENOSPC}]",  # an OSError's text, e.g. pyarrow's "Error writing bytes to file"
)
# A filesystem with less than this free is named as the full one (a write that failed may leave a little).
NEARLY_FULL_BYTES = 16 * 2**20


def is_full(error: BaseException | str | None) -> bool:
    """True when `error` (an exception, its cause chain included, or a traceback's text) is a full disk."""
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return isinstance(error, str) and any(text in error.lower() for text in _FULL_TEXTS)


def full_line(text: str) -> str:
    """The line of an error's text (or a trial's traceback) that says the disk is full, else its last line;
    at most 300 characters, for the one line the search ends with."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = [line for line in lines if is_full(line)]
    return (found or lines or ["a write failed: no space left on device"])[-1][:300]


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (a store not created yet lives on its parent's disk)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _device(path: Path) -> int:
    """The filesystem `path` is on (places on one filesystem fill up together)."""
    return os.stat(path).st_dev


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"  # pragma: no cover - the loop returns first


def full_places(places: dict[str, Path | None], only_full: bool = False) -> str:
    """ "the MLflow store and Ray's storage (/tmp/small: 12 KB free of 12.0 MB)": the labelled local places
    whose filesystem is (nearly) full, together per filesystem; all of them, if none looks full now (space
    was freed meanwhile, or the full one was a quota), or "" with `only_full`."""
    by_device: dict[int, tuple[Path, list[str]]] = {}
    for label, path in places.items():
        if path is None:
            continue
        where = _existing(path)
        device = _device(where)
        by_device.setdefault(device, (where, []))[1].append(label)
    described = []
    for where, labels in by_device.values():
        usage = shutil.disk_usage(where)
        described.append((usage.free, f"{_join(labels)} ({where}: {_size(usage.free)} free of {_size(usage.total)})"))
    nearly_full = [text for free, text in described if free < NEARLY_FULL_BYTES]
    if only_full:
        return "; ".join(nearly_full)
    return "; ".join(nearly_full or [text for _, text in sorted(described)])


def _join(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
