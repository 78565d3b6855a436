"""The generated set: what an ``augment`` stage leaves in its folder, and the one place that
knows its layout.

::

    <stage folder>/
      data/bounding_box_train/<file>.jpg   the kept images (Market-1501 names, see output names
                                           in the augment stage), written atomically
      manifest-<i>-of-<n>.jsonl            one :class:`ManifestRow` per generated image (kept or
      manifest-ray.jsonl                   not), appended and synced per batch by each shard

Every stage that reads generated images (``train_reid``'s ``generated:`` sets, ``evaluate``'s
``generated:`` quality report and PN-GAN fusion) goes through :func:`read_manifest`,
:func:`image_path` and :func:`generated_records`. Pure Python and NumPy-free: no TensorFlow.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, TypedDict

from keras_reid.data.records import Record

DATA_DIR = "data"
"""The augment stage's dataset root inside its folder (a Market-style tree)."""
TRAIN_FOLDER = "bounding_box_train"
"""The folder of the generated images under :data:`DATA_DIR`."""


class _RowRequired(TypedDict):
    file: str
    kept: bool
    pid: int
    camera: int


class ManifestRow(_RowRequired, total=False):
    """One line of a manifest (JSON). ``file`` is the image's name in :func:`images_dir`;
    ``kept`` whether every filter passed (only kept images are written); ``pid`` the identity it
    shows; ``camera`` the camera whose style it has. The rest describe where it came from."""

    scores: dict[str, float]      # filter type -> score of the filters that decide ``kept``
    measured: dict[str, float]    # filter type -> score of the filters only measured
    source: str                   # the source image's path ("" for noise samples)
    source_camera: int
    sequence: int
    frame: int
    copy: int                     # copy number, or the canonical pose index
    seed: int                     # the image's own seed (same pixels whatever the shard)
    target_mask_of: str | None    # the target-camera image whose mask was used, if any
    pose_index: int               # pose generators: the canonical pose
    generator_stage: str
    generator: dict
    recipe_seed: int
    checkpoint: str               # the generator file (relative to the run folder)
    checkpoint_sha256: str


def images_dir(stage_dir: str | os.PathLike) -> Path:
    """The folder holding the generated images of an augment stage folder."""
    return Path(stage_dir) / DATA_DIR / TRAIN_FOLDER


def image_path(stage_dir: str | os.PathLike, row: ManifestRow | str) -> Path:
    """The path of a generated image (a manifest row or its ``file`` name)."""
    return images_dir(stage_dir) / (row if isinstance(row, str) else row["file"])


def manifest_files(stage_dir: str | os.PathLike) -> list[Path]:
    """The manifest parts of an augment stage folder."""
    return sorted(Path(stage_dir).glob("manifest-*.jsonl"))


def manifest_part(stage_dir: str | os.PathLike, shard: tuple[int, int] | None = None, *,
                  ray: bool = False) -> Path:
    """The manifest part a writer appends to: ``manifest-<i>-of-<n>.jsonl`` for shard ``(i, n)``
    (one process: ``(0, 1)``), ``manifest-ray.jsonl`` for the Ray engine."""
    if ray:
        return Path(stage_dir) / "manifest-ray.jsonl"
    i, n = shard or (0, 1)
    return Path(stage_dir) / f"manifest-{i}-of-{n}.jsonl"


def read_manifest(stage_dir: str | os.PathLike, *, kept_only: bool = False) -> list[ManifestRow]:
    """All manifest rows of an augment stage folder (parts merged, one row per file name, the
    last one written wins); a trailing partial line left by a killed process is ignored."""
    rows: dict[str, ManifestRow] = {}
    for path in manifest_files(stage_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["file"]] = row
    out = list(rows.values())
    return [r for r in out if r["kept"]] if kept_only else out


def kept_rows(stage_dir: str | os.PathLike) -> list[ManifestRow]:
    """The kept rows, sorted by file name (the order every reader uses)."""
    return sorted(read_manifest(stage_dir, kept_only=True), key=lambda r: r["file"])


def generated_records(stage_dir: str | os.PathLike) -> list[Record]:
    """Records of the kept images (identity, target camera, source sequence and frame)."""
    return [Record(path=str(image_path(stage_dir, row)), pid=int(row["pid"]), camid=int(row["camera"]),
                   sequence=int(row.get("sequence", 1)), frame=int(row.get("frame", 0)))
            for row in kept_rows(stage_dir)]


def repair(manifest: Path) -> None:
    """Drop a trailing partial line (a process killed mid-write) before appending."""
    if not manifest.exists():
        return
    data = manifest.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(manifest, "r+b") as fh:
            fh.truncate(cut)


def append_rows(fh, rows: Iterable[ManifestRow]) -> None:
    """Append ``rows`` to an open manifest part and make them durable (flush + fsync): a row is
    on disk only after its image is."""
    fh.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    fh.flush()
    os.fsync(fh.fileno())
