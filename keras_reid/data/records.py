"""Image records and dataset splits: what every dataset reader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from keras_reid.errors import DatasetError

JUNK_PID = -1
"""Market-1501 pid of junk boxes (dropped by the readers, as in the Market protocol)."""
DISTRACTOR_PID = 0
"""Market-1501 pid 0000: distractor boxes, kept in the gallery as negatives."""


@dataclass(frozen=True)
class Record:
    """One image of a dataset.

    ``pid`` is the identity (-1 junk, 0 distractor for Market-style data; for
    closed-set data 0 is the 'unknown' class), ``camid`` the camera (1-based as in
    the file names), ``sequence`` the per-camera sequence, ``frame`` the frame
    number, ``session`` the recording session for closed-set data (0 when unused).
    """

    path: str
    pid: int
    camid: int
    sequence: int = 0
    frame: int = 0
    session: int = 0

    @property
    def is_distractor(self) -> bool:
        return self.pid == DISTRACTOR_PID

    @property
    def is_junk(self) -> bool:
        return self.pid == JUNK_PID


@dataclass
class DatasetSplits:
    """Named splits of a dataset: ``train``, ``query``, ``gallery`` for retrieval data,
    ``train``/``test`` (and per-session lists) for closed-set data."""

    name: str
    splits: dict[str, list[Record]] = field(default_factory=dict)
    root: str = ""
    kind: str = "retrieval"  # or "closed_set"
    num_skipped: int = 0
    #: files in the split folders whose names the layout does not parse (``Thumbs.db``, a
    #: renamed image): not read, counted so that the user hears of them
    num_ignored: int = 0

    def __getitem__(self, split: str) -> list[Record]:
        try:
            return self.splits[split]
        except KeyError:
            raise DatasetError(
                f"dataset '{self.name}' has no split '{split}'; use one of: {', '.join(self.splits)}"
            ) from None

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    def summary(self) -> list[dict]:
        """One row per split: split, identities, images, cameras."""
        return [summarize(name, recs) for name, recs in self.splits.items()]


def summarize(split: str, records: Iterable[Record]) -> dict:
    """Counts for one split: identities (distractors excluded), images, cameras."""
    records = list(records)
    return {
        "split": split,
        "identities": len({r.pid for r in records} - {JUNK_PID, DISTRACTOR_PID}),
        "images": len(records),
        "cameras": len({r.camid for r in records}),
        "distractors": sum(r.is_distractor for r in records),
    }


def relabel(records: Iterable[Record]) -> tuple[list[int], Mapping[int, int]]:
    """Map pids to contiguous labels 0..K-1 (sorted by pid); returns (labels, pid->label)."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [mapping[r.pid] for r in records], mapping


def select_records(records: list[Record], cameras: list[int] | None, closed_set: bool) -> list[Record]:
    """Training records: junk and (for retrieval data) distractors dropped, optional camera subset."""
    out = [r for r in records if r.pid >= (0 if closed_set else 1)]
    if cameras:
        wanted = set(cameras)
        out = [r for r in out if r.camid in wanted]
    return out


def subset(items: list, n: int | None, seed: int) -> list:
    """A deterministic subset of ``n`` of ``items`` in their order (``seed`` chooses which); all of
    them when ``n`` is None or 0 or not smaller than their number."""
    if not n or len(items) <= n:
        return items
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]
