"""Person masks for lists of images, from any masker, with a cache in the stage folder."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_reid import io
from keras_reid.progress import progbar


def masks_for(masker: Any, paths: Sequence[str], size: tuple[int, int], *, batch: int = 64,
              images: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Return uint8 masks [N, H, W, 1] (0..255, 255 = person) of the images at ``paths``.

    Uses ``masker.masks_for(paths, size)`` when the masker reads files (``synthetic``,
    ``precomputed``), else calls the masker on the decoded images (``images`` if given,
    uint8 [N, H, W, 3] aligned with ``paths``) in batches of ``batch``.
    """
    from keras_reid.data.gan_input import load_images

    h, w = size
    out = np.zeros((len(paths), h, w, 1), np.uint8)
    bar = None
    if progress and len(paths) > 200:
        bar = progbar(len(paths), unit_name="mask")
    file_based = callable(getattr(masker, "masks_for", None))
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
    key = hashlib.sha256(json.dumps([spec, list(map(str, paths)), list(size)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"masks-{key}.npy"
    if path.exists():
        masks = np.load(path)
        if masks.shape == (len(paths), size[0], size[1], 1):
            return masks, True
    masks = masks_for(masker, paths, size, **kwargs)
    with io.atomic_path(path) as tmp:
        np.save(tmp, masks)
    return masks, False
