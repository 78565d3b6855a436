"""Arrays computed per list of image files (masks, keypoints, scores), cached in a stage folder
under a hash of the component's spec, the paths and the size, written atomically."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from keras_reid import io


def cached_array(cache_dir: Path, prefix: str, spec: dict, paths: Sequence[str], size, shape: tuple,
                 compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """``(array, from_cache)``: ``<prefix>-<hash>.npy`` in ``cache_dir`` (keyed by the component
    spec, the paths and the size) when it holds an array of ``shape``, else ``compute()``
    stored there atomically."""
    path = cache_path(cache_dir, prefix, spec, paths, size, ".npy")
    if path.exists():
        arr = np.load(path)
        if arr.shape == tuple(shape):
            return arr, True
    arr = compute()
    with io.atomic_path(path) as tmp:
        np.save(tmp, arr)
    return arr, False


def cache_path(cache_dir: Path, prefix: str, spec: dict, paths: Sequence[str], size, suffix: str) -> Path:
    """``<cache_dir>/<prefix>-<hash><suffix>``, the hash over the spec, the paths and the size."""
    key = hashlib.sha256(json.dumps([spec, list(map(str, paths)), list(size)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{prefix}-{key}{suffix}"
