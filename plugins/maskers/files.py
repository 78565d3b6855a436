"""File-based maskers: ``synthetic`` (the exact masks the synthetic dataset writes) and
``precomputed`` (a folder of mask images named like the dataset images, as the thesis used).

Both read masks by image path: ``masks_for(paths, size) -> float32 [N, H, W, 1]`` (resized
with nearest-neighbour sampling, thresholded to 0/1). Called on bare images they cannot know
which image they see and say so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.synthetic import mask_path
from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import register


def read_mask(path: Path, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Returns the mask image at ``path`` as float32 [H, W, 1] in {0, 1} (values / 255 >= threshold)."""
    import cv2  # deferred: OpenCV, keeps plugin discovery light

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DatasetError(f"cannot read mask {path}; check the file")
    h, w = size
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return (m.astype(np.float32) / 255.0 >= threshold).astype(np.float32)[..., None]


class _FileMasker:
    """Base of the maskers that read a mask file per image path."""

    reads_files = True  # masks come from files named like the images: use masks_for(paths, size)

    def candidates(self, image_path: Path) -> list[Path]:  # pragma: no cover - interface
        """Returns the mask files to try for ``image_path``, first match wins."""
        raise NotImplementedError

    hint = ""
    threshold = 0.5

    def masks_for(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        """Returns float32 masks [N, H, W, 1] in {0, 1} of the images at ``paths``: their mask
        files resized to ``size`` (height, width) by nearest-neighbour sampling, then thresholded.
        Raises DatasetError naming the image when its mask file is missing or unreadable."""
        out = np.zeros((len(paths), size[0], size[1], 1), np.float32)
        for i, p in enumerate(paths):
            options = self.candidates(Path(p))
            found = next((c for c in options if c.is_file()), None)
            if found is None:
                raise DatasetError(f"no mask for image {p} (looked for {options[0]}); {self.hint}")
            out[i] = read_mask(found, size, self.threshold)
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Bare images carry no file name: always raises UserError pointing to ``masks_for``."""
        raise UserError(f"the {type(self).__name__} masker reads mask files by image path; call "
                        "masks_for(paths, size), or use masker: {type: mediapipe_selfie} for bare images")


class SyntheticMaskerConfig(BaseModel):
    """The ``synthetic`` masker has no parameters."""

    model_config = ConfigDict(extra="forbid")


@register("masker", "synthetic", config=SyntheticMaskerConfig)
class SyntheticMasker(_FileMasker):
    """The exact person masks of the built-in synthetic dataset (ROOT/masks/<split folder>/<stem>.png)."""

    hint = ("the synthetic masker works only on the built-in synthetic datasets (keras-reid data synth, "
            "synth-closed-set)")

    def __init__(self, config: SyntheticMaskerConfig | None = None) -> None:
        self.config = config or SyntheticMaskerConfig()

    def candidates(self, image_path: Path) -> list[Path]:
        """Returns ROOT/masks/<image folder>/<stem>.png (Market layout, ROOT = the image folder's
        parent), then ROOT/masks/<session>/<class>/<stem>.png (closed-set layout, ROOT = two up)."""
        folder = image_path.parent
        return [mask_path(folder.parent, image_path),
                folder.parent.parent / "masks" / folder.parent.name / folder.name / (image_path.stem + ".png")]


class PrecomputedMaskerConfig(BaseModel):
    """Parameters of the ``precomputed`` masker."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder of masks: <root>/<image folder>/<stem>.png or "
                      "<root>/<stem>.png (.png or .jpg)")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="mask value (0..1) counted as person")


@register("masker", "precomputed", config=PrecomputedMaskerConfig)
class PrecomputedMasker(_FileMasker):
    """Masks from a folder of images named like the dataset images (grey or colour, white = person)."""

    def __init__(self, config: PrecomputedMaskerConfig) -> None:
        self.config = config
        self.threshold = config.threshold
        self.hint = (f"put a mask named like each image into {config.root} (or <root>/<image folder>/) "
                     "or use masker: {type: mediapipe_selfie}")
        if not Path(config.root).is_dir():
            raise DatasetError(f"mask folder {config.root} does not exist; give the folder that holds "
                               "the masks (masker.root)")

    def candidates(self, image_path: Path) -> list[Path]:
        """Returns <root>/<image folder>/<stem>.png|.jpg, then <root>/<stem>.png|.jpg."""
        root = Path(self.config.root)
        return [base / (image_path.stem + ext) for base in (root / image_path.parent.name, root)
                for ext in (".png", ".jpg")]
