"""Generic closed-set identity layout (LIMA-style): identity folders or a labels.csv.

Accepted layouts under ROOT:

* ``ROOT/labels.csv`` with a header and the columns ``path, identity, session``
  (``path`` relative to ROOT or absolute; optional columns ``camera`` and ``frame``);
* ``ROOT/<session>/<class_id>/*.jpg`` (session folders named ``3``, ``s3``, ``session_3``...);
* ``ROOT/<class_id>/*.jpg`` (one session, numbered 1).

Class ids are integers; ``unknown_class`` (default 0) is the 'unknown' class
(background or several people) and becomes pid 0 in the records. Records carry
camid 1 unless the CSV has a ``camera`` column.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits, Record
from keras_reid.errors import DatasetError
from keras_reid.registry import register

from ._layout import IMAGE_SUFFIXES, ROOT_FIX, existing_root

CLOSED_SET_LAYOUT = ("a closed-set layout: labels.csv (path, identity, session), "
                     "<session>/<class_id>/*.jpg or <class_id>/*.jpg")
CSV_NAME = "labels.csv"
_CLASS_DIR = re.compile(r"^\d+$")
_SESSION_DIR = re.compile(r"^(?:[A-Za-z_-]*?)(\d+)$")


class ClosedSetConfig(BaseModel):
    """Parameters of the closed-set reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder with labels.csv or identity folders")
    unknown_class: int = Field(0, description="class id of 'unknown' (background, several people)")
    test_session: int | None = Field(
        None, description="leave-one-session-out: this session is 'test', the others 'train'")


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def _subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted((Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")),
                      key=lambda p: p.name)


def _class_folders(folder: Path, session: int) -> list[Record]:
    records = []
    for cls_dir in _subdirs(folder):
        if not _CLASS_DIR.match(cls_dir.name):
            raise DatasetError(
                f"closed_set: folder {cls_dir} is not a class id (expected integer class folders "
                f"like 0/, 1/, 12/ in {CLOSED_SET_LAYOUT})")
        pid = int(cls_dir.name)
        records.extend(Record(str(cls_dir / f), pid, 1, 0, 0, session) for f in _images(cls_dir))
    return records


def read_folders(root: Path) -> list[Record]:
    """Records from ``<session>/<class_id>/`` or ``<class_id>/`` folders (session 1 for the latter)."""
    subdirs = _subdirs(root)
    if not subdirs:
        raise DatasetError(f"closed_set root {root} has no file '{CSV_NAME}' and no class or session "
                           f"folders (expected {CLOSED_SET_LAYOUT}); {ROOT_FIX}")
    # class folders hold images; session folders hold class folders
    if all(_CLASS_DIR.match(d.name) for d in subdirs) and any(_images(d) for d in subdirs):
        return _class_folders(root, session=1)
    records: list[Record] = []
    for sdir in subdirs:
        m = _SESSION_DIR.match(sdir.name)
        if m is None:
            raise DatasetError(
                f"closed_set: cannot read a session number from folder {sdir} (expected session "
                f"folders like 1/, s1/, session_1/ holding class folders; {CLOSED_SET_LAYOUT})")
        records.extend(_class_folders(sdir, session=int(m.group(1))))
    return records


def read_csv(path: Path) -> tuple[list[Record], int]:
    """Records from labels.csv; returns (records, rows skipped because the image is missing).

    Raises DatasetError for missing columns or a bad value (with file:line).
    """
    root = path.parent
    records, missing, first_missing = [], 0, None
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        need = [c for c in ("path", "identity", "session") if c not in cols]
        if need:
            raise DatasetError(f"{path}: missing column(s) {', '.join(need)}; expected a header "
                               f"'path,identity,session' (optional: camera, frame)")
        for row in reader:
            lineno = reader.line_num
            try:
                values = {k: (row[cols[k]] or "").strip() for k in cols}
                pid = int(values["identity"])
                session = int(values["session"])
                camid = int(values["camera"]) if values.get("camera") else 1
                frame = int(values["frame"]) if values.get("frame") else 0
            except (TypeError, ValueError):
                raise DatasetError(f"{path}:{lineno}: identity, session (and camera, frame) must "
                                   f"be integers, got {dict(row)}") from None
            img = Path(values["path"])
            img = img if img.is_absolute() else root / img
            if not img.is_file():
                missing += 1
                first_missing = first_missing or img
                continue
            records.append(Record(str(img), pid, camid, 0, frame, session))
    if missing and not records:
        raise DatasetError(f"{path}: none of the {missing} listed images exist (first: {first_missing}); "
                           "paths are read relative to the folder of labels.csv")
    if missing:
        warnings.warn(f"{path}: skipped {missing} rows whose image does not exist "
                      f"(first: {first_missing})", stacklevel=2)
    return records, missing


@register("dataset", "closed_set", config=ClosedSetConfig)
class ClosedSet:
    """Closed-set identities (LIMA-style): class 0 'unknown', sessions for leave-one-out."""

    def __init__(self, config: ClosedSetConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return ``train``/``test`` (leave ``test_session`` out; without it ``train`` is
        everything and there is no ``test``) plus one split ``session_<k>`` per session.

        Raises DatasetError for an empty dataset or a ``test_session`` that does not exist.
        """
        cfg = self.config
        root = existing_root(cfg.root, "closed_set", CLOSED_SET_LAYOUT)
        skipped = 0
        if (root / CSV_NAME).is_file():
            records, skipped = read_csv(root / CSV_NAME)
        else:
            records = read_folders(root)
        if not records:
            raise DatasetError(f"closed_set root {root} holds no images (expected "
                               f"{CLOSED_SET_LAYOUT}; image suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
        records = self._map_unknown(records, root)
        by_session: dict[int, list[Record]] = defaultdict(list)
        for r in records:
            by_session[r.session].append(r)
        sessions = sorted(by_session)
        splits: dict[str, list[Record]] = {}
        if cfg.test_session is None:
            splits["train"] = records
        else:
            if cfg.test_session not in by_session:
                raise DatasetError(
                    f"closed_set: test_session {cfg.test_session} does not exist in {root}; "
                    f"sessions: {', '.join(map(str, sessions))}")
            splits["train"] = [r for r in records if r.session != cfg.test_session]
            splits["test"] = by_session[cfg.test_session]
            if not splits["train"]:
                raise DatasetError(f"closed_set: leaving session {cfg.test_session} out leaves no "
                                   f"training images (only one session in {root})")
        for s in sessions:
            splits[f"session_{s}"] = by_session[s]
        return DatasetSplits(name="closed_set", splits=splits, root=str(root), kind="closed_set",
                             num_skipped=skipped)

    def _map_unknown(self, records: list[Record], root: Path) -> list[Record]:
        unknown = self.config.unknown_class
        if unknown == 0:
            return records
        classes = sorted({r.pid for r in records})
        if unknown not in classes:
            raise DatasetError(f"closed_set: unknown_class {unknown} is not one of the classes in {root} "
                               f"({', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}); "
                               "give the class id of the 'unknown' images (default 0)")
        if any(r.pid == 0 for r in records):
            raise DatasetError(f"closed_set: unknown_class is {unknown} but {root} also has a class 0; "
                               "set unknown_class: 0 or renumber the classes")
        return [Record(r.path, 0 if r.pid == unknown else r.pid, r.camid, r.sequence, r.frame,
                       r.session) for r in records]

    @classmethod
    def layout_score(cls, root: str) -> int:
        """5 for a labels.csv, 3 for integer class folders (or sessions of them), else 0."""
        base = Path(root)
        if (base / CSV_NAME).is_file():
            return 5
        try:
            subdirs = _subdirs(base)
        except OSError:
            return 0
        if subdirs and all(_CLASS_DIR.match(d.name) for d in subdirs):
            return 3
        if subdirs and all(_SESSION_DIR.match(d.name) for d in subdirs) and all(
                _subdirs(d) and all(_CLASS_DIR.match(c.name) for c in _subdirs(d)) for d in subdirs):
            return 3
        return 0
