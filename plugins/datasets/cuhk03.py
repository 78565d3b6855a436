"""CUHK03 reader, the classic protocol (Li et al. CVPR 2014; PN-GAN Table 2a): 20 random test
splits of 100 identities each, the other 1,367 identities for training.

The public release is one MATLAB v7.3 file, ``cuhk03_release/cuhk-03.mat``, an HDF5 file with
``detected`` and ``labeled`` (one cell array per camera pair, 5 pairs, rows = persons, 10 columns:
images 1-5 from the pair's first camera, 6-10 from its second, empty cells where a person has
fewer images) and ``testsets`` (20 arrays of 100 ``[camera pair, person]`` rows, 1-based). The
reader extracts the images once, on first use, to ``images_detected/`` (``images_labeled/``)
beside the release folder, named as torchreid names them (``1_001_1_01.png``: camera pair,
person in the pair, view 1 or 2, image 1..10), so a folder torchreid extracted is read as it is;
the test splits always come from the .mat (read with h5py, which Keras installs).

Records: pid ``1000 * pair + person`` (1001 = pair 1, person 1: persons are numbered per pair),
camera ``2 * (pair - 1) + view`` (1..10: each pair is two physical cameras), sequence 1, frame =
the image index. ``query`` and ``gallery`` both hold every image of the split's 100 test
identities, as torchreid's classic split does: the Market protocol then matches each image
against the other view's images of the same person (same person, same camera is left out).
Evaluate with ``single_shot: true`` for the classic single-shot CMC.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Literal

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits, Record
from keras_reid.errors import DatasetError
from keras_reid.registry import register

from ._layout import ROOT_FIX, existing_root, locate

CUHK03_LAYOUT = ("the CUHK03 release: cuhk-03.mat (in the folder or in its cuhk03_release/), "
                 "from cuhk03_release.zip")
MAT_NAME = "cuhk-03.mat"
NUM_TEST_SPLITS = 20

CUHK03_NAME = re.compile(r"^(\d)_(\d{3})_([12])_(\d{2})\.png$")
"""camera pair, person in the pair, view, image index: ``1_001_1_01.png`` (torchreid's names)."""


def parse_cuhk03_name(fname: str) -> tuple[int, int, int, int] | None:
    """``(pair, person, view, image)`` of an extracted image name, or None."""
    m = CUHK03_NAME.match(fname)
    return None if m is None else tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def record_of(path: str, pair: int, person: int, view: int, image: int) -> Record:
    """The Record of one extracted image (pid ``1000 * pair + person``, camera ``2 * (pair - 1) +
    view``)."""
    return Record(path, 1000 * pair + person, 2 * (pair - 1) + view, 1, image)


def _open_mat(path: Path):
    import h5py  # deferred: h5py (installed with TensorFlow), only cuhk-03.mat needs it

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"cuhk03: {path} cannot be read as a MATLAB v7.3 (HDF5) file ({exc}); "
                           "use the cuhk-03.mat of the official cuhk03_release.zip") from None


def read_test_splits(mat_path: Path) -> list[set[tuple[int, int]]]:
    """The test splits of ``cuhk-03.mat``: per split the set of ``(camera pair, person)``
    (1-based) of its test identities."""
    with _open_mat(mat_path) as mat:
        if "testsets" not in mat:
            raise DatasetError(f"cuhk03: {mat_path} has no 'testsets'; use the cuhk-03.mat of the "
                               "official cuhk03_release.zip")
        out = []
        for ref in np.asarray(mat["testsets"]).ravel():
            rows = np.asarray(mat[ref][()]).T   # MATLAB [100 x 2], stored transposed
            out.append({(int(a), int(b)) for a, b in rows.reshape(-1, 2)})
        return out


def extract_images(mat_path: Path, variant: str, out: Path, echo=None) -> int:
    """Write every ``variant`` image of ``cuhk-03.mat`` to ``out`` as a PNG named like
    ``1_001_1_01.png``; the folder appears complete or not at all (written beside it under a
    temporary name, then renamed). Returns the number of images."""
    import cv2  # deferred: OpenCV, keeps plugin discovery light

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        with _open_mat(mat_path) as mat:
            if variant not in mat:
                raise DatasetError(f"cuhk03: {mat_path} has no '{variant}' images; use the "
                                   "cuhk-03.mat of the official cuhk03_release.zip")
            if echo:
                echo(f"cuhk03: extracting the {variant} images of {mat_path} to {out} (once)")
            for pair, pair_ref in enumerate(np.asarray(mat[variant]).ravel(), start=1):
                cells = np.asarray(mat[pair_ref][()]).T   # [persons x 10] references
                for person in range(cells.shape[0]):
                    for col in range(cells.shape[1]):
                        img = np.asarray(mat[cells[person, col]][()])
                        if img.ndim < 3 or img.size == 0:
                            continue   # an empty cell: the person has fewer images
                        img = img.T    # MATLAB H x W x 3, stored transposed
                        name = f"{pair}_{person + 1:03d}_{1 if col < 5 else 2}_{col + 1:02d}.png"
                        if not cv2.imwrite(str(tmp / name), np.ascontiguousarray(img[..., ::-1])):
                            raise DatasetError(f"cuhk03: could not write {tmp / name}; check the "
                                               "free space and permissions of the dataset folder")
                        n += 1
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


class Cuhk03Config(BaseModel):
    """Parameters of the CUHK03 reader (classic protocol)."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder holding cuhk-03.mat (or cuhk03_release/cuhk-03.mat)")
    variant: Literal["detected", "labeled"] = Field(
        "detected", description="bounding boxes from the DPM detector (PN-GAN's setting) or drawn by hand")
    split: int = Field(0, ge=0, lt=NUM_TEST_SPLITS, description="which of the release's 20 test "
                       "splits (0..19); --sweep datasets.<name>.split=0,1,...,19 runs all of them")


@register("dataset", "cuhk03", config=Cuhk03Config)
class Cuhk03:
    """CUHK03, classic protocol: 1,367 training / 100 test identities, 20 splits (split: 0..19)."""

    def __init__(self, config: Cuhk03Config):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return ``train`` (every identity not in the test split) and ``query`` = ``gallery``
        (every image of the split's test identities); extracts the images on first use."""
        c = self.config
        root = existing_root(c.root, "cuhk03", CUHK03_LAYOUT)
        release = locate(root, [MAT_NAME])    # root itself or its cuhk03_release/
        if release is None:
            raise DatasetError(f"cuhk03 root {root} has no file '{MAT_NAME}' (expected {CUHK03_LAYOUT}); "
                               f"{ROOT_FIX}")
        mat_path = release / MAT_NAME
        images = root / f"images_{c.variant}"     # where torchreid extracts them too
        if not images.is_dir():
            extract_images(mat_path, c.variant, images, echo=click.echo)
        tests = read_test_splits(mat_path)
        if c.split >= len(tests):
            raise DatasetError(f"cuhk03: split {c.split} does not exist: {mat_path} has {len(tests)} "
                               f"test splits (0..{len(tests) - 1}); set datasets.<name>.split")
        test = tests[c.split]
        train: list[Record] = []
        held: list[Record] = []
        ignored = 0
        prefix = os.path.join(str(images), "")
        for fname in sorted(os.listdir(images)):
            parsed = parse_cuhk03_name(fname)
            if parsed is None:
                ignored += 1
                continue
            rec = record_of(prefix + fname, *parsed)
            (held if parsed[:2] in test else train).append(rec)
        name = f"cuhk03/{c.variant}/split{c.split}"
        for split, recs in (("train", train), ("query", held)):
            if not recs:
                raise DatasetError(f"cuhk03 split '{split}' is empty: {images} has no images of "
                                   f"{'the test' if split == 'query' else 'the training'} identities "
                                   "named like 1_001_1_01.png; delete that folder to have it "
                                   "extracted from the .mat again")
        return DatasetSplits(name=name, splits={"train": train, "query": held, "gallery": list(held)},
                             root=str(root), kind="retrieval", num_ignored=ignored)

    @classmethod
    def layout_score(cls, root: str) -> int:
        """10 when ``root`` (or its cuhk03_release/) holds cuhk-03.mat, else 0."""
        path = Path(root)
        return 10 if (path / MAT_NAME).is_file() or (path / "cuhk03_release" / MAT_NAME).is_file() else 0
