"""Reading image files into arrays (OpenCV; no TensorFlow, so light commands stay fast), and
the uint8 <-> [-1, 1] conversions generators use."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from keras_reid.errors import DatasetError
from keras_reid.progress import progbar


def read_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """Return the image at ``path`` as uint8 RGB [H, W, 3], resized to ``size`` (area filter)
    unless ``size`` is None.

    Raises DatasetError if the file is missing or cannot be decoded.
    """
    import cv2  # deferred: OpenCV, the CLI imports this module without reading an image

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path}; check the path and that the file is an image")
    if size is not None and img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])


def load_images(paths: Sequence[str], size: tuple[int, int], workers: int = 4,
                progress: bool = False) -> np.ndarray:
    """Return uint8 [N, H, W, 3] RGB images of ``paths`` resized to ``size`` (threads decode)."""
    h, w = size
    out = np.zeros((len(paths), h, w, 3), np.uint8)
    bar = None
    if progress and len(paths) > 200:
        bar = progbar(len(paths), unit_name="image")

    def one(i: int) -> None:
        out[i] = read_image(paths[i], size)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, _ in enumerate(pool.map(one, range(len(paths)))):
            if bar is not None and (k + 1) % 100 == 0:
                bar.update(k + 1)
    if bar is not None:
        bar.update(len(paths), finalize=True)
    return out


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float images in [-1, 1] -> uint8 (rounded, clipped)."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
