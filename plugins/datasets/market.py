"""Market-1501 reader (also the layout of the built-in synthetic dataset)."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits
from keras_reid.registry import register

from ._layout import (existing_root, folder_names_match, locate, read_split_folders, regex_parser,
                      require_layout, scan_folder)

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
"""Split -> folder of the Market-1501 layout (DukeMTMC-reID and CUHK03-NP use it too)."""

MULTI_QUERY_FOLDER = "gt_bbox"
"""Market-1501's hand-drawn boxes of the test identities (25,259 images, the query images among
them): read as split ``gt_bbox`` when present; multi-query evaluation pools, for each query, the
images of this split that show its person in its camera (``evaluate`` ``multi_query``)."""

MARKET_LAYOUT = ("the Market-1501 layout: bounding_box_train/, query/, bounding_box_test/")

MARKET_NAME = r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})(?:_g\d+k\d+(?:x\d+)?)?\.jpg$"
"""pid, camera, sequence, frame, box index (SPECS.md); pid -1 = junk, 0000 = distractor. The
optional suffix ``_g<source camera>k<copy>`` marks images written by the augment stage (no
real Market-1501 file has one, so generated and real names never collide)."""

parse_market_name = regex_parser(MARKET_NAME, sequence_group=3, frame_group=4)
"""``parse_market_name("0002_c1s1_000451_03.jpg") -> (2, 1, 1, 451)`` (pid, camid, sequence,
frame), or None for a name that is not a Market-1501 image (``Thumbs.db``)."""


def read_market_layout(root: str | os.PathLike, name: str = "market1501", *,
                       include_junk: bool = False) -> DatasetSplits:
    """Read a Market-1501 tree; returns splits ``train``, ``query``, ``gallery`` (and ``gt_bbox``
    when the tree has a ``gt_bbox/`` folder with images: the multi-query set).

    Junk boxes (pid -1) are dropped unless ``include_junk``; distractors (pid 0) stay
    (in the gallery they are negatives); files whose names do not match
    ``NNNN_cCsS_FFFFFF_BB.jpg`` are ignored. Camera ids are 1-based as in the names.
    ``root`` may also be the folder that holds the extracted ``Market-1501-v15.09.15``.
    Raises DatasetError naming the missing folder, or the split that has no images.
    """
    base = existing_root(root, name, MARKET_LAYOUT)
    base = require_layout(base, list(MARKET_FOLDERS.values()), name, MARKET_LAYOUT)
    splits = read_split_folders(base, MARKET_FOLDERS, parse_market_name, name=name,
                                expected="0002_c1s1_000451_03.jpg", include_junk=include_junk)
    if (base / MULTI_QUERY_FOLDER).is_dir():   # Market-1501's multi-query set, when extracted
        records, _, ignored = scan_folder(base / MULTI_QUERY_FOLDER, parse_market_name)
        if records:
            splits.splits[MULTI_QUERY_FOLDER] = records
            splits.num_ignored += ignored
    return splits


class MarketConfig(BaseModel):
    """Parameters of the Market-1501 reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder with bounding_box_train/, query/, bounding_box_test/")
    include_junk: bool = Field(False, description="keep junk boxes (pid -1) instead of dropping them")


@register("dataset", "market1501", config=MarketConfig)
class Market1501:
    """Market-1501: 1,501 identities, 6 cameras; train/query/gallery from the file names."""

    def __init__(self, config: MarketConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return the train/query/gallery splits (see :func:`read_market_layout`)."""
        return read_market_layout(self.config.root, "market1501", include_junk=self.config.include_junk)

    @classmethod
    def layout_score(cls, root: str) -> int:
        """How surely ``root`` is a Market-1501 tree: 10 (folders and names), 2 (folders only), 0."""
        return three_folder_layout_score(root, parse_market_name)


def three_folder_layout_score(root: str, parse, sub: str = "") -> int:
    """Score for layout detection: 10 when the three Market folders exist (under ``sub``)
    and the training names parse, 2 when only the folders exist, 0 otherwise."""
    required = [os.path.join(sub, f) if sub else f for f in MARKET_FOLDERS.values()]
    base = locate(Path(root), required)
    if base is None:
        return 0
    return 10 if folder_names_match(base / required[0], parse) else 2
