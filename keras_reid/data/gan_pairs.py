"""Training examples for image-to-image generators: which images are paired with which.

A generator declares its ``pairing`` (see ``keras_reid.interfaces.GeneratorFactory``):

* ``camera_pairs``: the camera-pair split's train pairs (same pid and sequence, camera A -> B;
  thesis Models 1-3 and the variable loss);
* ``random_target``: every camera-A image with ``n`` random camera-B images, identities ignored
  (thesis Model 4: the target camera may be unlabelled);
* ``identity_pairs``: ordered pairs of different images of one identity (any cameras; PN-GAN);
* ``unpaired``: single images (DCGAN).

Pairs are index pairs into one list of unique records (:class:`GANPairs`), so each image is
decoded once. Everything is a pure function of the records and the seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from keras_reid.data.camera_split import camera_pair_split
from keras_reid.data.records import DISTRACTOR_PID, JUNK_PID, Record
from keras_reid.errors import DatasetError

PAIRINGS = ("camera_pairs", "random_target", "identity_pairs", "unpaired")


@dataclass
class GANPairs:
    """``records`` (unique images) and ``pairs`` int64 [P, 2] of (source index, target index);
    for ``unpaired`` the target index equals the source index."""

    pairing: str
    records: list[Record] = field(default_factory=list)
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    def __len__(self) -> int:
        return int(len(self.pairs))

    def keep_sources(self, accepted: np.ndarray) -> "GANPairs":
        """Returns the pairs whose source image is accepted (bool [len(records)]); records kept."""
        keep = np.asarray(accepted, bool)[self.pairs[:, 0]]
        return GANPairs(self.pairing, self.records, self.pairs[keep])

    def summary(self) -> dict:
        """``{"pairing", "pairs", "images", "source_images", "target_images"}``."""
        return {"pairing": self.pairing, "pairs": len(self), "images": len(self.records),
                "source_images": int(len(np.unique(self.pairs[:, 0]))) if len(self) else 0,
                "target_images": int(len(np.unique(self.pairs[:, 1]))) if len(self) else 0}


def _index(records: list[Record]) -> tuple[list[Record], dict[str, int]]:
    unique: list[Record] = []
    pos: dict[str, int] = {}
    for r in records:
        if r.path not in pos:
            pos[r.path] = len(unique)
            unique.append(r)
    return unique, pos


def _usable(records: list[Record], closed_set: bool = False) -> list[Record]:
    """Records to train on: junk dropped, and Market distractors (pid 0) unless the data is a
    closed set, where pid 0 is the 'unknown' class (LIMA's generic G trains on every class)."""
    dropped = (JUNK_PID,) if closed_set else (JUNK_PID, DISTRACTOR_PID)
    return sorted((r for r in records if r.pid not in dropped),
                  key=lambda r: (r.pid, r.camid, r.sequence, r.frame, r.path))


def make_pairs(pairing: str, records: list[Record], *, source_camera: int | None = None,
               target_camera: int | None = None, targets_per_source: int = 10,
               max_pairs_per_identity: int | None = None, seed: int = 0,
               source: str = "the training split", closed_set: bool = False) -> GANPairs:
    """Build the training pairs of ``pairing`` from ``records``; returns :class:`GANPairs`.

    Raises :class:`DatasetError` naming the problem when cameras are missing or nothing can be
    paired (e.g. two cameras without a shared identity and sequence for ``camera_pairs``).
    """
    if pairing not in PAIRINGS:
        raise DatasetError(f"unknown pairing '{pairing}'; expected one of {', '.join(PAIRINGS)}")
    rng = np.random.default_rng(seed)
    if pairing in ("camera_pairs", "random_target"):
        if source_camera is None or target_camera is None:
            raise DatasetError(f"pairing '{pairing}' needs source_camera and target_camera")
    if pairing == "camera_pairs":
        return _camera_pairs(records, source_camera, target_camera, source)
    usable = _usable(records, closed_set)
    if pairing == "random_target":
        return _random_targets(usable, source_camera, target_camera, targets_per_source, rng, source)
    if pairing == "identity_pairs":
        return _identity_pairs(usable, max_pairs_per_identity, rng, source)
    unique, _ = _index(usable)
    if not unique:
        raise DatasetError(f"{source} has no images with an identity to train on")
    idx = np.arange(len(unique), dtype=np.int64)
    return GANPairs(pairing, unique, np.stack([idx, idx], 1))


def _camera_pairs(records: list[Record], source_camera: int, target_camera: int, source: str) -> GANPairs:
    """``camera_pairs``: the labelled pairs of the camera-pair split (same identity, same sequence)."""
    split = camera_pair_split(records, source_camera, target_camera, source=source)
    if not split.train_pairs:
        raise DatasetError(
            f"cameras {source_camera} and {target_camera} share no identity in the same sequence "
            f"in {source}, so there are no labelled pairs to train on; pick another camera pair "
            "(`keras-reid data pairs ROOT` lists them) or use variant model4, which needs no "
            "labelled target images")
    unique, pos = _index([r for pair in split.train_pairs for r in pair])
    pairs = np.array([(pos[a.path], pos[b.path]) for a, b in split.train_pairs], np.int64)
    return GANPairs("camera_pairs", unique, pairs)


def _random_targets(usable: list[Record], source_camera: int, target_camera: int,
                    targets_per_source: int, rng: np.random.Generator, source: str) -> GANPairs:
    """``random_target``: each source-camera image with ``targets_per_source`` random
    target-camera images (any identity)."""
    cams = sorted({r.camid for r in usable})
    for cam in (source_camera, target_camera):
        if cam not in cams:
            raise DatasetError(f"camera {cam} does not occur in {source}; cameras present: "
                               f"{', '.join(map(str, cams)) or '(none)'}")
    if source_camera == target_camera:
        raise DatasetError(f"source and target camera are both {source_camera}; pick two cameras")
    a = [r for r in usable if r.camid == source_camera]
    b = [r for r in usable if r.camid == target_camera]
    unique, pos = _index(a + b)
    b_idx = np.array([pos[r.path] for r in b], np.int64)
    n = int(targets_per_source)
    pairs = []
    for r in a:
        chosen = rng.choice(len(b_idx), size=n, replace=n > len(b_idx))
        pairs.extend((pos[r.path], int(b_idx[j])) for j in chosen)
    return GANPairs("random_target", unique, np.array(pairs, np.int64).reshape(-1, 2))


def _identity_pairs(usable: list[Record], max_pairs_per_identity: int | None,
                    rng: np.random.Generator, source: str) -> GANPairs:
    """``identity_pairs``: every ordered pair of two images of one identity (a seeded subset of
    ``max_pairs_per_identity`` per identity when set)."""
    unique, pos = _index(usable)
    by_pid: dict[int, list[int]] = {}
    for r in unique:
        by_pid.setdefault(r.pid, []).append(pos[r.path])
    pairs = []
    for pid in sorted(by_pid):
        idx = by_pid[pid]
        ordered = [(i, j) for i in idx for j in idx if i != j]
        if max_pairs_per_identity and len(ordered) > max_pairs_per_identity:
            keep = rng.choice(len(ordered), size=max_pairs_per_identity, replace=False)
            ordered = [ordered[k] for k in sorted(keep)]
        pairs.extend(ordered)
    if not pairs:
        raise DatasetError(f"no identity in {source} has two images, so there are no "
                           "same-identity pairs to train on")
    return GANPairs("identity_pairs", unique, np.array(pairs, np.int64))
