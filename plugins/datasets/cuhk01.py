"""CUHK01 reader (Li et al. ACCV 2012; PN-GAN Table 2b): 971 identities, two cameras, two images
per person and camera; 486 identities for testing, the other 485 for training, 10 random splits;
camera A's images are the queries (probe), camera B's the gallery.

Layout: the ``campus/`` folder of CUHK01.zip (3,884 PNGs named ``0001001.png``: person 0001,
image 001; images 001-002 come from camera A, 003-004 from camera B). The split with index
``split`` is drawn by a random permutation of the identities seeded with that index (the same
split on every machine; not the splits of any other tool, which draw theirs unseeded). Evaluate
with ``single_shot: true`` for the single-shot CMC (one gallery image per identity).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits
from keras_reid.errors import DatasetError
from keras_reid.registry import register

from ._layout import existing_root, folder_names_match, locate, require_layout, scan_folder

CUHK01_LAYOUT = "the CUHK01 layout: campus/ with images named like 0001001.png (from CUHK01.zip)"
CUHK01_FOLDER = "campus"

_NAME = re.compile(r"^(\d{4})(\d{3})\.png$")


def parse_cuhk01_name(fname: str) -> tuple[int, int, int, int] | None:
    """``parse_cuhk01_name("0001003.png") -> (1, 2, 1, 3)`` (pid, camera: 1 = A for images 1-2,
    2 = B for 3-4, sequence 1, frame = the image index), or None."""
    m = _NAME.match(fname)
    if m is None:
        return None
    image = int(m.group(2))
    return int(m.group(1)), (image - 1) // 2 + 1, 1, image


class Cuhk01Config(BaseModel):
    """Parameters of the CUHK01 reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder holding campus/ (CUHK01.zip extracted)")
    split: int = Field(0, ge=0, description="random split index (the seed of the identity "
                       "permutation); PN-GAN averages 10: --sweep datasets.<name>.split=0,1,...,9")
    test_ids: int | None = Field(None, gt=0, description="test identities (null: 486 of 971, the "
                                 "identities left after half of them, rounded down, train)")


@register("dataset", "cuhk01", config=Cuhk01Config)
class Cuhk01:
    """CUHK01: 971 identities, cameras A (query) and B (gallery), 485/486 split (split: 0..9)."""

    def __init__(self, config: Cuhk01Config):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return ``train`` (both cameras of the training identities), ``query`` (camera A of the
        test identities) and ``gallery`` (their camera B)."""
        c = self.config
        root = existing_root(c.root, "cuhk01", CUHK01_LAYOUT)
        base = require_layout(root, [CUHK01_FOLDER], "cuhk01", CUHK01_LAYOUT)
        records, _, ignored = scan_folder(base / CUHK01_FOLDER, parse_cuhk01_name)
        pids = sorted({r.pid for r in records})
        n_test = len(pids) - len(pids) // 2 if c.test_ids is None else c.test_ids
        if len(pids) < 2 or n_test >= len(pids):
            raise DatasetError(f"cuhk01: {base / CUHK01_FOLDER} has {len(pids)} identities (images "
                               f"named like 0001001.png), too few for {n_test} test identities and "
                               "a training set; check the dataset root (or lower test_ids)")
        order = np.random.default_rng(c.split).permutation(len(pids))
        test = {pids[i] for i in order[len(pids) - n_test:]}
        train = [r for r in records if r.pid not in test]
        query = [r for r in records if r.pid in test and r.camid == 1]
        gallery = [r for r in records if r.pid in test and r.camid == 2]
        if not query or not gallery:
            raise DatasetError(f"cuhk01: the test identities of split {c.split} have no "
                               f"{'camera A' if not query else 'camera B'} images (names 0001001.png-"
                               "0001002.png are camera A, 0001003.png-0001004.png camera B); check "
                               "the dataset root")
        return DatasetSplits(name=f"cuhk01/split{c.split}",
                             splits={"train": train, "query": query, "gallery": gallery},
                             root=str(base), kind="retrieval", num_ignored=ignored)

    @classmethod
    def layout_score(cls, root: str) -> int:
        """10 when ``root`` holds campus/ with CUHK01 names, 2 for the bare folder, else 0."""
        base = locate(Path(root), [CUHK01_FOLDER])
        if base is None:
            return 0
        return 10 if folder_names_match(base / CUHK01_FOLDER, parse_cuhk01_name) else 2
