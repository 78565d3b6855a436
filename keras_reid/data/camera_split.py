"""The camera-pair split of the thesis (DataSplit): what a camera-A -> camera-B generator trains on.

For cameras A and B of a training set, images are grouped by (pid, sequence):

* *train pairs*: every (a, b) with a in camera A, b in camera B, same pid and same
  sequence (the cross product within each group);
* *test images*: camera-A images whose (pid, sequence) never occurs in camera B
  (they are generated into camera B's style);
* *new-id images*: camera-A images whose pid never occurs in camera B at all
  (a subset of the test images).

Junk (pid -1) and distractor (pid 0) images are not identities and take no part.
Only records are used (parsed file names), so the split of a full Market-1501
training set is instant. Layouts without sequences (DukeMTMC-reID, MSMT17, CUHK03-NP)
give every image sequence 1, where test images and new-id images coincide.
The thesis (Table 2) counts 14,133 train pairs and 695 test images for Market c5 -> c6.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from keras_reid.data.records import DISTRACTOR_PID, JUNK_PID, Record
from keras_reid.errors import DatasetError


@dataclass
class CameraPairSplit:
    """The result of :func:`camera_pair_split` for cameras ``cam_a`` -> ``cam_b``."""

    cam_a: int
    cam_b: int
    train_pairs: list[tuple[Record, Record]] = field(default_factory=list)
    test_images: list[Record] = field(default_factory=list)
    new_id_images: list[Record] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """``{"train_pairs": .., "test_images": .., "new_id_images": ..}``."""
        return {"train_pairs": len(self.train_pairs), "test_images": len(self.test_images),
                "new_id_images": len(self.new_id_images)}


def _sort_key(r: Record) -> tuple:
    return (r.pid, r.sequence, r.frame, r.path)


def camera_pair_split(records: Iterable[Record], cam_a: int, cam_b: int, *,
                      source: str = "the records") -> CameraPairSplit:
    """Split ``records`` (usually a training split) for a camera ``cam_a`` -> ``cam_b`` generator.

    Returns a :class:`CameraPairSplit` whose lists are ordered by (pid, sequence, frame,
    path) of the camera-A image (then of the camera-B image), so the result is
    deterministic. Raises DatasetError if A equals B or a camera does not occur in
    ``records`` (naming the cameras that do; ``source`` names the records in the message).
    """
    records = [r for r in records if r.pid not in (JUNK_PID, DISTRACTOR_PID)]
    cameras = sorted({r.camid for r in records})
    if cam_a == cam_b:
        raise DatasetError(f"camera-pair split needs two different cameras, got {cam_a} twice")
    for cam in (cam_a, cam_b):
        if cam not in cameras:
            raise DatasetError(
                f"camera {cam} does not occur in {source}; cameras present: "
                f"{', '.join(map(str, cameras)) if cameras else '(none)'}")
    a_images = sorted((r for r in records if r.camid == cam_a), key=_sort_key)
    b_groups: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in sorted((r for r in records if r.camid == cam_b), key=_sort_key):
        b_groups[(r.pid, r.sequence)].append(r)
    b_pids = {pid for pid, _ in b_groups}

    split = CameraPairSplit(cam_a, cam_b)
    for a in a_images:
        partners = b_groups.get((a.pid, a.sequence))
        if partners:
            split.train_pairs.extend((a, b) for b in partners)
        else:
            split.test_images.append(a)
            if a.pid not in b_pids:
                split.new_id_images.append(a)
    return split
