"""Helpers shared by the dataset readers: root checks, folder scans, one-line errors.

Readers only list and parse file names; they never open an image, so reading a
full Market-1501 tree takes a fraction of a second.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Sequence

from keras_reid.data.records import JUNK_PID, DatasetSplits, Record
from keras_reid.errors import DatasetError

ROOT_FIX = "set the dataset's root in the recipe (datasets.<name>.root) or KERAS_REID_DATA"
"""The fix every 'wrong root' message ends with."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
"""File suffixes (lower case) that count as images where a layout does not fix one."""

NameParser = Callable[[str], "tuple[int, int, int, int] | None"]
"""file name -> (pid, camid, sequence, frame), or None for a name that is not a dataset image."""


def existing_root(root: str | os.PathLike, name: str, layout: str) -> Path:
    """Return ``root`` as an absolute Path; raise DatasetError if it is not a folder.

    ``layout`` describes what the folder should contain (used in the message).
    """
    if not str(root).strip():
        raise DatasetError(f"{name} root is empty (expected {layout}); {ROOT_FIX}")
    path = Path(os.path.expanduser(str(root))).absolute()
    if not path.exists():
        raise DatasetError(f"{name} root {path} does not exist (expected {layout}); {ROOT_FIX}")
    if not path.is_dir():
        raise DatasetError(f"{name} root {path} is not a folder (expected {layout}); {ROOT_FIX}")
    return path


def _present(root: Path, entry: str) -> bool:
    """A required entry: a file if its name has a suffix (list_train.txt), else a folder."""
    path = root / entry
    return path.is_file() if Path(entry).suffix else path.is_dir()


def locate(root: Path, required: Sequence[str]) -> Path | None:
    """Return the folder holding every entry of ``required``: ``root`` itself, or its only
    sub-folder that does (so the parent of an extracted archive also works); else None."""
    if all(_present(root, r) for r in required):
        return root
    try:
        children = [c for c in sorted(root.iterdir()) if c.is_dir()]
    except OSError:
        return None
    hits = [c for c in children if all(_present(c, r) for r in required)]
    return hits[0] if len(hits) == 1 else None


def require_layout(root: Path, required: Sequence[str], name: str, layout: str) -> Path:
    """Return the folder holding ``required`` (see :func:`locate`); raise a DatasetError
    naming the first missing entry otherwise."""
    found = locate(root, required)
    if found is not None:
        return found
    missing = next(r for r in required if not _present(root, r))
    what = "file" if Path(missing).suffix else "folder"
    raise DatasetError(
        f"{name} root {root} has no {what} '{missing}' (expected {layout}); {ROOT_FIX}")


def scan_folder(folder: Path, parse: NameParser, *, include_junk: bool = False,
                session: int = 0) -> tuple[list[Record], int, int]:
    """Parse the image names of one folder (not recursive, sorted by name).

    Returns (records, junk, ignored): junk images (pid -1) are dropped unless
    ``include_junk``; names ``parse`` rejects (Thumbs.db, stray files) are ignored.
    """
    records: list[Record] = []
    junk = ignored = 0
    prefix = os.path.join(str(folder), "")
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if e.is_file())
    for fname in names:
        parsed = parse(fname)
        if parsed is None:
            ignored += 1
            continue
        pid, camid, sequence, frame = parsed
        if pid == JUNK_PID:
            junk += 1
            if not include_junk:
                continue
        records.append(Record(prefix + fname, pid, camid, sequence, frame, session))
    return records, junk, ignored


def empty_split_error(name: str, split: str, folder: Path, ignored: int, junk: int,
                      expected: str) -> DatasetError:
    """The error for a split without usable images, saying what was found instead."""
    found = []
    if junk:
        found.append(f"{junk} junk images (pid -1), dropped")
    if ignored:
        found.append(f"{ignored} files whose names do not match")
    detail = f" ({'; '.join(found)})" if found else ""
    return DatasetError(
        f"{name} split '{split}' is empty: {folder} has no images named like {expected}{detail}; "
        "check the dataset root and that the archive was fully extracted")


def regex_parser(pattern: str, *, sequence_group: int | None, frame_group: int | None,
                 flags: int = 0) -> NameParser:
    """A NameParser from a regex whose groups 1 and 2 are pid and camera; sequence and
    frame come from the given groups (1 when a layout has no sequence, 0 for no frame)."""
    rx = re.compile(pattern, flags)

    def parse(fname: str) -> tuple[int, int, int, int] | None:
        m = rx.match(fname)
        if m is None:
            return None
        seq = int(m.group(sequence_group)) if sequence_group and m.group(sequence_group) else 1
        frame = int(m.group(frame_group)) if frame_group and m.group(frame_group) else 0
        return int(m.group(1)), int(m.group(2)), seq, frame

    return parse


def folder_names_match(folder: Path, parse: NameParser, limit: int = 50) -> int:
    """How many of the first ``limit`` file names in ``folder`` ``parse`` accepts (for detection)."""
    hits = 0
    try:
        with os.scandir(folder) as it:
            for i, e in enumerate(it):
                if i >= limit:
                    break
                hits += parse(e.name) is not None
    except OSError:
        return 0
    return hits


def read_split_folders(root: Path, folders: dict[str, str], parse: NameParser, *, name: str,
                       expected: str, include_junk: bool = False) -> DatasetSplits:
    """Read one folder per split (``{"train": "bounding_box_train", ...}``) under ``root``.

    Returns the splits; raises DatasetError for a split without usable images.
    """
    splits: dict[str, list[Record]] = {}
    total_ignored = 0
    for split, sub in folders.items():
        records, junk, ignored = scan_folder(root / sub, parse, include_junk=include_junk)
        if not records:
            raise empty_split_error(name, split, root / sub, ignored, junk, expected)
        splits[split] = records
        total_ignored += ignored
    return DatasetSplits(name=name, splits=splits, root=str(root), kind="retrieval",
                         num_ignored=total_ignored)
