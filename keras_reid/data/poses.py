"""Body keypoints of image files for the stages: estimated once, cached, rendered as skeletons.

A pose estimator (kind ``pose``) gives float32 ``[N, 18, 3]`` (y, x, score) at the size asked
for, -1 where a keypoint is missing. File-based estimators (``synthetic``, ``precomputed``:
``reads_files``) read their annotations by path; image-based ones (``mediapipe_pose``) see the
decoded images. A pose is *found* when at least ``min_keypoints`` keypoints are present.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_reid.data.array_cache import cached_array
from keras_reid.keypoints import flip_keypoints, render_skeleton


def keypoints_for(estimator: Any, paths: Sequence[str], size: tuple[int, int], *,
                  images: np.ndarray | None = None, batch: int = 32) -> np.ndarray:
    """float32 keypoints [N, 18, 3] of the images at ``paths`` at ``size`` (height, width).

    Uses ``estimator.keypoints_for(paths, size)`` for file-based estimators and when ``images``
    is None (an image-based estimator then decodes the files itself); otherwise calls the
    estimator on ``images`` (uint8 [N, H, W, 3] aligned with ``paths``) in batches of ``batch``."""
    if getattr(estimator, "reads_files", False) or images is None:
        return np.asarray(estimator.keypoints_for(list(map(str, paths)), tuple(size)), np.float32)
    out = np.full((len(paths), 18, 3), -1.0, np.float32)
    for start in range(0, len(paths), batch):
        out[start:start + batch] = np.asarray(estimator(images[start:start + batch]), np.float32)
    return out


def cached_keypoints(cache_dir: Path, spec: dict, estimator: Any, paths: Sequence[str],
                     size: tuple[int, int], **kwargs: Any) -> tuple[np.ndarray, bool]:
    """``(keypoints, from_cache)``: :func:`keypoints_for` stored as ``poses-<hash>.npy`` in
    ``cache_dir``, keyed by the estimator spec, the paths and the size (written atomically)."""
    return cached_array(cache_dir, "poses", spec, paths, size, (len(paths), 18, 3),
                        lambda: keypoints_for(estimator, paths, size, **kwargs))


def pose_found(keypoints: np.ndarray, min_keypoints: int) -> np.ndarray:
    """bool [N]: at least ``min_keypoints`` of the 18 keypoints are present."""
    kp = np.asarray(keypoints)
    present = (kp[..., 0] >= 0) & (kp[..., 1] >= 0)
    return present.sum(axis=-1) >= int(min_keypoints)


def skeleton_images(keypoints: np.ndarray, size: tuple[int, int], *, flipped: bool = False) -> np.ndarray:
    """uint8 skeleton images [N, H, W, 3] of ``keypoints`` [N, 18, 2+] (OpenPose colours);
    ``flipped`` renders the horizontally mirrored poses (left and right swapped, so a mirrored
    image gets a correctly coloured skeleton rather than a mirrored drawing)."""
    h, w = size
    out = np.zeros((len(keypoints), h, w, 3), np.uint8)
    for i, kp in enumerate(np.asarray(keypoints, np.float32)):
        out[i] = render_skeleton(flip_keypoints(kp, w) if flipped else kp, (h, w))
    return out
