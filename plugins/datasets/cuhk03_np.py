"""CUHK03-NP reader (the new protocol of Zhong et al. 2017: 767 training, 700 test identities)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits
from keras_reid.registry import register

from ._layout import existing_root, read_split_folders, regex_parser, require_layout
from .market import MARKET_FOLDERS, three_folder_layout_score

CUHK03_NP_LAYOUT = ("the CUHK03-NP layout: detected/ and labeled/, each with bounding_box_train/, "
                    "query/, bounding_box_test/")

CUHK03_NP_NAME = r"^(-?\d+)_c(\d+)(?:_(\d+))?\.(?:png|jpe?g)$"
"""pid, camera (1 or 2 of the camera pair), image index: ``0001_c1_1.png``."""

parse_cuhk03_np_name = regex_parser(CUHK03_NP_NAME, sequence_group=None, frame_group=3)
"""``parse_cuhk03_np_name("0001_c1_1.png") -> (1, 1, 1, 1)`` (pid, camid, sequence, frame):
no sequence in the names (sequence 1); the trailing image index is kept as the frame."""


class Cuhk03NpConfig(BaseModel):
    """Parameters of the CUHK03-NP reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="the cuhk03-np folder (holding detected/ and labeled/)")
    variant: Literal["detected", "labeled"] = Field(
        "detected", description="bounding boxes from the DPM detector or drawn by hand")


@register("dataset", "cuhk03_np", config=Cuhk03NpConfig)
class Cuhk03Np:
    """CUHK03-NP (new protocol), detected or labeled boxes; train/query/gallery."""

    def __init__(self, config: Cuhk03NpConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return the train/query/gallery splits of the configured variant."""
        variant = self.config.variant
        name = f"cuhk03_np/{variant}"
        base = existing_root(self.config.root, "cuhk03_np", CUHK03_NP_LAYOUT)
        folders = {split: f"{variant}/{sub}" for split, sub in MARKET_FOLDERS.items()}
        base = require_layout(base, list(folders.values()), "cuhk03_np", CUHK03_NP_LAYOUT)
        return read_split_folders(base, folders, parse_cuhk03_np_name, name=name,
                                  expected="0001_c1_1.png")

    @classmethod
    def layout_score(cls, root: str) -> int:
        """10 when detected/ (or labeled/) holds the three Market folders with CUHK03-NP names."""
        return max(three_folder_layout_score(root, parse_cuhk03_np_name, sub=v)
                   for v in ("detected", "labeled"))
