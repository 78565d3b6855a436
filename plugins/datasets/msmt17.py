"""MSMT17 reader (list files ``path label``; V1 ``train/``, ``test/`` or V2 ``mask_*_v2/`` images)."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.records import DatasetSplits, Record
from keras_reid.errors import DatasetError
from keras_reid.registry import register

from ._layout import ROOT_FIX, existing_root, locate, require_layout

MSMT17_LAYOUT = ("the MSMT17 layout: list_train.txt, list_val.txt, list_query.txt, list_gallery.txt "
                 "and the image folders train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2)")

LIST_FILES = {"train": "list_train.txt", "val": "list_val.txt",
              "query": "list_query.txt", "gallery": "list_gallery.txt"}
IMAGE_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}
LIST_IMAGE_DIR = {"train": "train", "val": "train", "query": "test", "gallery": "test"}


def parse_msmt17_name(fname: str) -> tuple[int, int] | None:
    """Camera and frame from an MSMT17 name ``0000_000_01_0303morning_0015_0.jpg``:
    returns (camid 1..15, frame) from the third and fifth fields, or None if it does not fit."""
    parts = Path(fname).stem.split("_")
    if len(parts) < 3 or not parts[2].isdigit():
        return None
    frame = int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else 0
    return int(parts[2]), frame


def read_list_file(path: Path, image_dir: Path) -> list[Record]:
    """Parse one ``path label`` list file; returns records (pid = label, sequence 1).

    Raises DatasetError with file:line for a malformed line, and when the first listed
    image is missing from ``image_dir`` (checked once, so reading stays instant).
    """
    records: list[Record] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split()
            parsed = parse_msmt17_name(fields[0]) if len(fields) == 2 else None
            if parsed is None or not fields[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"{path}:{lineno}: expected 'RELATIVE/PATH.jpg LABEL' with an MSMT17 image name "
                    f"like 0000/0000_000_01_0303morning_0015_0.jpg, got {line[:80]!r}")
            camid, frame = parsed
            records.append(Record(str(image_dir / fields[0]), int(fields[1]), camid, 1, frame))
    if records and not Path(records[0].path).exists():
        raise DatasetError(
            f"msmt17: {path.name} lists {records[0].path}, which does not exist; the image folder "
            f"{image_dir} does not match the list files ({ROOT_FIX})")
    return records


class Msmt17Config(BaseModel):
    """Parameters of the MSMT17 reader."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="the MSMT17_V1 (or MSMT17_V2) folder with the list files")
    merge_val: bool = Field(
        True, description="add list_val.txt to the train split (as torchreid does: 32,621 "
                          "images); false keeps it as a separate 'val' split")


@register("dataset", "msmt17", config=Msmt17Config)
class Msmt17:
    """MSMT17: 4,101 identities, 15 cameras; splits from list_*.txt (V1 or V2 folders)."""

    def __init__(self, config: Msmt17Config):
        self.config = config

    def load(self) -> DatasetSplits:
        """Return train (train+val unless ``merge_val`` is false), query and gallery splits.

        pid is the list file's label; the camera comes from the name's third field
        (1-based); MSMT17 names carry no sequence (sequence 1).
        """
        base = existing_root(self.config.root, "msmt17", MSMT17_LAYOUT)
        base = require_layout(base, list(LIST_FILES.values()), "msmt17", MSMT17_LAYOUT)
        dirs = {}
        for kind, candidates in IMAGE_DIRS.items():
            found = [c for c in candidates if (base / c).is_dir()]
            if not found:
                raise DatasetError(
                    f"msmt17 root {base} has no folder '{candidates[0]}' or '{candidates[1]}' "
                    f"(expected {MSMT17_LAYOUT}); {ROOT_FIX}")
            dirs[kind] = base / found[0]
        splits: dict[str, list[Record]] = {}
        for split, fname in LIST_FILES.items():
            records = read_list_file(base / fname, dirs[LIST_IMAGE_DIR[split]])
            if not records:
                raise DatasetError(f"msmt17 split '{split}' is empty: {base / fname} lists no images; "
                                   "check that the list files are complete")
            splits[split] = records
        if self.config.merge_val:
            splits["train"] = splits["train"] + splits.pop("val")
        ordered = {k: splits[k] for k in ("train", "val", "query", "gallery") if k in splits}
        return DatasetSplits(name="msmt17", splits=ordered, root=str(base), kind="retrieval")

    @classmethod
    def layout_score(cls, root: str) -> int:
        """10 when ``root`` (or its only matching sub-folder) holds the four list files."""
        return 10 if locate(Path(root), list(LIST_FILES.values())) is not None else 0
