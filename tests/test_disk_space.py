"""A full disk is recognised in each shape it arrives in, and named by the filesystem it is on."""

from __future__ import annotations

import errno
import sqlite3
from collections import namedtuple

import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from splice_tune import disk_space


def test_every_shape_of_a_full_disk_is_recognised():
    sqlite_full = sqlalchemy.exc.OperationalError(
        "INSERT ...", {}, sqlite3.OperationalError("database or disk is full")
    )
    try:
        try:
            raise sqlite_full
        except sqlalchemy.exc.OperationalError as error:
            raise MlflowException("(sqlite3.OperationalError) write failed") from error
    except MlflowException as wrapped:
        assert disk_space.is_full(wrapped), "found in the cause chain"
    assert disk_space.is_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_space.is_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_space.is_full("Traceback ...\nOSError: [Errno 28] Error writing bytes to file. Detail: [errno 28]")
    assert not disk_space.is_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_space.is_full(RuntimeError("database is locked"))
    assert not disk_space.is_full(None)


def test_the_full_filesystem_is_named_with_every_place_on_it(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    full, roomy = tmp_path / "full", tmp_path / "roomy"
    full.mkdir()
    roomy.mkdir()
    monkeypatch.setattr(disk_space, "_device", lambda path: {full: 1, roomy: 2}[path])
    monkeypatch.setattr(
        disk_space.shutil,
        "disk_usage",
        lambda path: usage(12 * 2**20, 12 * 2**20 - 4096, 4096) if path == full else usage(2**40, 0, 2**40),
    )
    places = {
        "the MLflow store": full / "runs" / "mlflow.db",  # not created yet: its nearest existing folder counts
        "Ray's storage": full / "ray",
        "the Optuna storage": roomy / "optuna.db",
        "a server": None,
    }
    assert disk_space.full_places(places) == f"the MLflow store and Ray's storage ({full}: 4.0 KB free of 12.0 MB)"
    assert disk_space.full_places({"the Optuna storage": roomy / "optuna.db"}, only_full=True) == ""
    assert "1024.0 GB free" in disk_space.full_places({"the Optuna storage": roomy / "optuna.db"})
