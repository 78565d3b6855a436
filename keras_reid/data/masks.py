"""Per-image results of components over lists of images: person masks (any masker) and
semantic filter scores, each cached in the stage folder under a key of the component's spec,
the image paths and the size."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_reid import io
from keras_reid.data.array_cache import cache_path, cached_array
from keras_reid.data.images import load_images, read_image
from keras_reid.progress import progbar


def masks_for(masker: Any, paths: Sequence[str], size: tuple[int, int], *, batch: int = 64,
              images: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Return uint8 masks [N, H, W, 1] (0..255, 255 = person) of the images at ``paths``.

    Uses ``masker.masks_for(paths, size)`` when the masker reads mask files (``reads_files``:
    ``synthetic``, ``precomputed``), else calls the masker on the decoded images (``images`` if
    given, uint8 [N, H, W, 3] aligned with ``paths``, so they are not decoded again) in batches
    of ``batch``.
    """
    h, w = size
    out = np.zeros((len(paths), h, w, 1), np.uint8)
    bar = None
    if progress and len(paths) > 200:
        bar = progbar(len(paths), unit_name="mask")
    file_based = bool(getattr(masker, "reads_files", False))
    for start in range(0, len(paths), batch):
        chunk = list(paths[start:start + batch])
        if file_based:
            m = masker.masks_for(chunk, (h, w))
        else:
            imgs = images[start:start + len(chunk)] if images is not None else load_images(chunk, (h, w))
            m = masker(imgs)
        m = np.asarray(m, np.float32).reshape(len(chunk), h, w, 1)
        out[start:start + len(chunk)] = np.clip(np.rint(m * 255.0), 0, 255).astype(np.uint8)
        if bar is not None:
            bar.update(min(start + batch, len(paths)))
    return out


def cached_masks(cache_dir: Path, spec: dict, masker: Any, paths: Sequence[str],
                 size: tuple[int, int], **kwargs: Any) -> tuple[np.ndarray, bool]:
    """Return ``(masks, from_cache)``: :func:`masks_for` stored as ``masks-<hash>.npy`` in
    ``cache_dir``, keyed by the masker spec, the paths and the size (written atomically)."""
    return cached_array(cache_dir, "masks", spec, paths, size, (len(paths), size[0], size[1], 1),
                        lambda: masks_for(masker, paths, size, **kwargs))


def cached_scores(cache_dir: Path, spec: dict, scorer: Any, paths: Sequence[str],
                  images: np.ndarray | None, batch: int = 64) -> tuple[np.ndarray, bool]:
    """Return ``(scores float32 [N], from_cache)`` of a semantic filter over ``images`` (uint8
    [N, H, W, 3] of ``paths``), stored as ``scores-<hash>.json`` in ``cache_dir``.

    ``images`` None: every image is read from its file and scored at its native size, one at a
    time (crops of different sizes; a face filter then sees all the pixels the camera gave)."""
    size = list(images.shape[1:3]) if images is not None else ["native"]
    path = cache_path(cache_dir, "scores", spec, paths, size, ".json")
    cached = io.read_json(path)
    if cached is not None and len(cached) == len(paths):
        return np.asarray(cached, np.float32), True
    scores = np.zeros(len(paths), np.float32)
    if images is None:
        for i, p in enumerate(paths):
            scores[i] = float(np.asarray(scorer(read_image(p, None)[None]), np.float32)[0])
    else:
        for start in range(0, len(images), batch):
            scores[start:start + batch] = np.asarray(scorer(images[start:start + batch]), np.float32)
    io.write_json(path, [round(float(v), 5) for v in scores])
    return scores, False
