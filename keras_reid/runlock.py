"""One process at a time owns a run folder.

``hold(run_dir)`` takes an exclusive ``flock`` on ``<run_dir>/.lock`` for as long as the run
lasts and records who holds it (pid, host, start time). The operating system drops the lock
when its process ends, however it ends (a ``kill -9`` included), so a killed run never leaves
the folder stuck. A second run into a folder in use stops at once with one line naming the
process that owns it. While the lock is held, temporary files that a killed run left behind
(``.tmp-*``, written by :mod:`keras_reid.io`) are removed: nobody else can be writing them.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from keras_reid.errors import UserError

LOCK_NAME = ".lock"


def owner(run_dir: str | Path) -> dict | None:
    """What ``<run_dir>/.lock`` says about its holder (pid, host, started), or None."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[Path]:
    """Own ``run_dir`` for the duration of the block; raises UserError if another process does."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = owner(run_dir) or {}
            raise UserError(
                f"run folder {run_dir} is in use by process {who.get('pid', '?')} on "
                f"{who.get('host', '?')} (started {who.get('started', '?')}); wait for it to finish "
                "or give another --run-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": _dt.datetime.now().isoformat(timespec="seconds")}))
        fh.flush()
        remove_leftovers(run_dir)
        yield path
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def remove_leftovers(run_dir: str | Path) -> int:
    """Delete the ``.tmp-*`` files of killed runs under ``run_dir`` (call it only while holding
    the folder's lock); returns how many were removed."""
    removed = 0
    for tmp in Path(run_dir).rglob(".tmp-*"):
        with contextlib.suppress(OSError):
            if tmp.is_file() or tmp.is_symlink():
                tmp.unlink()
                removed += 1
    return removed


def is_chief_process(strategy_type: str) -> bool:
    """False only for a non-chief worker of a multi-worker run (from ``TF_CONFIG``, without
    importing TensorFlow): those share the chief's run folder and must not lock it."""
    if strategy_type != "multi_worker":
        return True
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    cluster = config.get("cluster") or {}
    if task.get("type") == "chief":
        return True
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster
