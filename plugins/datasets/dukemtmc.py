"""DukeMTMC-reID reader (Market-1501 layout, names without a sequence)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits
from keras_reid.registry import register

from ._layout import existing_root, read_split_folders, regex_parser, require_layout
from .market import MARKET_FOLDERS, three_folder_layout_score

DUKE_LAYOUT = "the DukeMTMC-reID layout: bounding_box_train/, query/, bounding_box_test/"

DUKE_NAME = r"^(-?\d+)_c(\d+)_f(\d+)\.jpg$"
"""pid, camera, frame: ``0001_c2_f0046182.jpg``."""

parse_duke_name = regex_parser(DUKE_NAME, sequence_group=None, frame_group=3)
"""``parse_duke_name("0001_c2_f0046182.jpg") -> (1, 2, 1, 46182)`` (pid, camid, sequence,
frame), or None. DukeMTMC-reID names carry no sequence: every image gets sequence 1, so
in the camera-pair split (pid, sequence) groups reduce to pids (test images = new-id images)."""


class DukeConfig(BaseModel):
    """Parameters of the DukeMTMC-reID reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder with bounding_box_train/, query/, bounding_box_test/")
    include_junk: bool = Field(False, description="keep boxes with pid -1 (DukeMTMC-reID has none)")


@register("dataset", "dukemtmc", config=DukeConfig)
class DukeMTMC:
    """DukeMTMC-reID: 1,404 identities plus distractors, 8 cameras, Market-1501 layout."""

    def __init__(self, config: DukeConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return the train/query/gallery splits; sequence is 1 for every image (no sequences)."""
        base = existing_root(self.config.root, "dukemtmc", DUKE_LAYOUT)
        base = require_layout(base, list(MARKET_FOLDERS.values()), "dukemtmc", DUKE_LAYOUT)
        return read_split_folders(base, MARKET_FOLDERS, parse_duke_name, name="dukemtmc",
                                  expected="0001_c2_f0046182.jpg",
                                  include_junk=self.config.include_junk)

    @classmethod
    def layout_score(cls, root: str) -> int:
        """10 when the Market folders hold Duke-style names, 1 for the bare folders, else 0."""
        score = three_folder_layout_score(root, parse_duke_name)
        return 10 if score == 10 else min(score, 1)
