"""Reading image files into arrays (OpenCV; no TensorFlow, so light commands stay fast)."""
from __future__ import annotations

import numpy as np

from keras_reid.errors import DatasetError


def read_image(path: str, size: tuple[int, int] | None) -> np.ndarray:
    """Return the image at ``path`` as uint8 RGB [H, W, 3], resized to ``size`` (area filter)
    unless ``size`` is None.

    Raises DatasetError if the file is missing or cannot be decoded.
    """
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path}; check the path and that the file is an image")
    if size is not None and img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])
