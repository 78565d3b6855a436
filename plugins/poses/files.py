"""File-based pose estimators: ``synthetic`` (the exact keypoints the synthetic dataset writes) and
``precomputed`` (a Pose-Transfer keypoint CSV, as most pose-guided re-ID work ships them).

Both read keypoints by image path: ``keypoints_for(paths, size) -> float32 [N, 18, 3]`` (y, x,
score) in pixels of ``size`` (height, width), scaled from the CSV's 128x64 coordinates; present
points have score 1, missing points are -1 in every column. Called on bare images they cannot
know which image they see and say so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import register

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def to_estimates(kp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Returns float32 [..., 18, 3]: CSV keypoints ``kp`` [..., 18, 2] (128x64 pixels, -1 missing)
    scaled to ``size`` with score 1 where present and -1 in every column where missing."""
    from keras_reid.keypoints import CSV_SIZE, scale_keypoints  # deferred: OpenCV, keeps plugin discovery light

    yx = scale_keypoints(np.asarray(kp)[..., :2], CSV_SIZE, size)
    present = (yx[..., 0] >= 0) & (yx[..., 1] >= 0)
    out = np.concatenate([yx, np.where(present, 1.0, -1.0)[..., None]], axis=-1).astype(np.float32)
    out[~present] = -1.0
    return out


class _FilePose:
    """Base of the estimators that look keypoints up by image path."""

    reads_files = True  # keypoints come from files: use keypoints_for(paths, size)
    hint = ""

    def lookup(self, image_path: Path) -> np.ndarray:  # pragma: no cover - interface
        """Returns the int [18, 2] CSV keypoints of ``image_path``; DatasetError when it has none."""
        raise NotImplementedError

    def keypoints_for(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        """Returns float32 [N, 18, 3] (y, x, score) of the images at ``paths`` in pixels of ``size``
        (height, width): score 1 where present, -1 in every column where missing. Raises
        DatasetError naming the image when it has no keypoints."""
        if not len(paths):
            return np.zeros((0, 18, 3), np.float32)
        return to_estimates(np.stack([self.lookup(Path(p)) for p in paths]), size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Bare images carry no file name: always raises UserError pointing to ``keypoints_for``."""
        raise UserError(f"the {type(self).__name__} pose estimator reads keypoints by image path; "
                        "call keypoints_for(paths, size), or use pose: {type: mediapipe_pose} for "
                        "bare images")


class SyntheticPoseConfig(BaseModel):
    """The ``synthetic`` pose estimator has no parameters."""

    model_config = ConfigDict(extra="forbid")


@register("pose", "synthetic", config=SyntheticPoseConfig)
class SyntheticPose(_FilePose):
    """The exact keypoints of the built-in synthetic dataset (ROOT/annotations/keypoints-<split folder>.csv)."""

    hint = "the synthetic pose estimator works only on the built-in synthetic dataset (keras-reid data synth)"

    def __init__(self, config: SyntheticPoseConfig | None = None) -> None:
        self.config = config or SyntheticPoseConfig()
        self._tables: dict[Path, dict[str, np.ndarray]] = {}

    @staticmethod
    def csv_path(image_path: Path) -> Path:
        """Returns ROOT/annotations/keypoints-<image folder>.csv, ROOT being the image folder's parent."""
        return image_path.parent.parent / "annotations" / f"keypoints-{image_path.parent.name}.csv"

    def lookup(self, image_path: Path) -> np.ndarray:
        """Returns the int [18, 2] keypoints of ``image_path`` from its split's CSV."""
        from keras_reid.keypoints import read_pose_csv  # deferred: OpenCV, keeps plugin discovery light

        csv = self.csv_path(image_path)
        table = self._tables.get(csv)
        if table is None:
            if not csv.is_file():
                raise DatasetError(f"no keypoints for image {image_path} (looked for {csv}); {self.hint}")
            table = self._tables[csv] = read_pose_csv(csv)
        if image_path.name not in table:
            raise DatasetError(f"no keypoints for image {image_path} in {csv}; {self.hint}")
        return table[image_path.name]


class PrecomputedPoseConfig(BaseModel):
    """Parameters of the ``precomputed`` pose estimator."""

    model_config = ConfigDict(extra="forbid")
    csv: str = Field(..., description="Pose-Transfer keypoint CSV (name:keypoints_y:keypoints_x, "
                     "coordinates for 128x64); relative paths are taken from root when given")
    root: str | None = Field(None, description="dataset folder: the CSV's names must be image files "
                             "under it (checked when loading)")


@register("pose", "precomputed", config=PrecomputedPoseConfig)
class PrecomputedPose(_FilePose):
    """Keypoints from a Pose-Transfer CSV (e.g. market-annotation-train.csv), looked up by image file name."""

    def __init__(self, config: PrecomputedPoseConfig) -> None:
        from keras_reid.keypoints import read_pose_csv  # deferred: OpenCV, keeps plugin discovery light

        self.config = config
        csv = Path(os.path.expanduser(config.csv))
        names = None
        if config.root is not None:
            root = Path(os.path.expanduser(config.root))
            if not root.is_dir():
                raise DatasetError(f"dataset folder {root} does not exist; give the folder that holds "
                                   "the images (pose.root)")
            if not csv.is_absolute():
                csv = root / csv
            names = {p.name for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        if not csv.is_file():
            raise DatasetError(f"keypoint file {csv} does not exist; give the Pose-Transfer CSV "
                               "(pose.csv)")
        self.csv = csv
        self.table = read_pose_csv(csv, names)
        self.hint = (f"add a row for it to {csv} (compute keypoints with an estimator, e.g. "
                     "pose: {type: mediapipe_pose})")

    def lookup(self, image_path: Path) -> np.ndarray:
        """Returns the int [18, 2] keypoints of the image's file name from the CSV."""
        row = self.table.get(image_path.name)
        if row is None:
            raise DatasetError(f"no keypoints for image {image_path} in {self.csv}; {self.hint}")
        return row
