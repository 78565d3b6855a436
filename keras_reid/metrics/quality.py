"""Generated-image quality: SSIM (whole image and person-masked) and identity preservation.

SSIM uses an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 and 'valid' windows only,
as ``tf.image.ssim`` does (so the unmasked per-image values and mean are ``tf.image.ssim``'s, to
float32 rounding). The SSIM map is computed here so that a mask can choose the pixels that count:
with 'valid' windows the map covers the image's centre crop, 5 pixels in from every side, and the
mask is cropped the same way (map pixel (i, j) is the window centred on image pixel (i+5, j+5)).
TensorFlow is imported inside the functions only; importing this module is numpy-only.

FID is not offered: it needs Inception weights, which cannot be downloaded here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from keras_reid.metrics.retrieval import evaluate_retrieval, pairwise_distance

__all__ = ["ssim", "ssim_map", "identity_preservation"]

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
_CHUNK = 32  # images per TensorFlow call: bounds memory (about 15 float32 copies of a chunk)


def _gaussian_window() -> np.ndarray:
    """The normalised 2-D Gaussian window [WINDOW, WINDOW] (float32)."""
    x = np.arange(WINDOW, dtype=np.float64) - (WINDOW - 1) / 2.0
    g = np.exp(-(x ** 2) / (2 * SIGMA ** 2))
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"ssim needs two image batches of one shape [N, H, W, C], got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < WINDOW:
        raise ValueError(f"ssim needs images of at least {WINDOW}x{WINDOW} pixels (the Gaussian window), "
                         f"got {a.shape[1]}x{a.shape[2]}")


def ssim_map(a: np.ndarray, b: np.ndarray, max_val: float = 255.0) -> np.ndarray:
    """SSIM map of two image batches [N, H, W, C] in the same value range (``max_val`` its maximum).

    Returns float32 [N, H - 10, W - 10]: at each 'valid' window position, luminance x
    contrast-structure, averaged over the channels. Its mean over a whole image is that image's
    ``tf.image.ssim``. Raises ``ValueError`` on mismatched shapes or images under 11x11 pixels.
    """
    import tensorflow as tf  # deferred: TensorFlow, importing keras_reid.metrics stays numpy-only

    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    _check_pair(a, b)
    if not max_val > 0:
        raise ValueError(f"max_val must be positive, got {max_val}")
    c = a.shape[-1]
    kernel = tf.constant(np.tile(_gaussian_window()[:, :, None, None], (1, 1, c, 1)))

    def blur(x):
        return tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")

    c1 = (K1 * max_val) ** 2
    c2 = (K2 * max_val) ** 2
    ta, tb = tf.constant(a), tf.constant(b)
    mu_a, mu_b = blur(ta), blur(tb)
    var_a = blur(ta * ta) - mu_a ** 2
    var_b = blur(tb * tb) - mu_b ** 2
    cov = blur(ta * tb) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    contrast = (2 * cov + c2) / (var_a + var_b + c2)
    return tf.reduce_mean(luminance * contrast, axis=-1).numpy()


def _prepare_masks(masks: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean masks [N, H, W] (True where > 0.5) from [N, H, W] or [N, H, W, 1] input."""
    mk = np.asarray(masks)
    if mk.ndim == 4 and mk.shape[-1] == 1:
        mk = mk[..., 0]
    if mk.shape != tuple(shape[:3]):
        raise ValueError(f"masks must be [N, H, W] or [N, H, W, 1] matching the images {tuple(shape[:3])}, "
                         f"got {np.asarray(masks).shape}")
    return mk.astype(np.float32) > 0.5


def ssim(generated: np.ndarray, target: np.ndarray, *, masks: np.ndarray | None = None,
         max_val: float = 255.0) -> dict[str, Any]:
    """SSIM of ``generated`` against ``target`` (uint8 or float images [N, H, W, C], same range,
    ``max_val`` its maximum: 255 for uint8 / [0, 255] floats, 1.0 for [0, 1] floats).

    Returns a dict:

    - ``"ssim"``: float, mean of the per-image SSIM;
    - ``"ssim_per_image"``: float64 [N], the mean of each image's SSIM map ('valid' windows, equal
      to ``tf.image.ssim`` with filter_size 11, filter_sigma 1.5, k1 0.01, k2 0.03);
    - ``"masked_ssim"``: float mean of the per-image masked values (images whose mask selects no
      map pixel are left out; None if there is no such image or ``masks`` is None);
    - ``"masked_ssim_per_image"``: float64 [N] (NaN where the mask selects nothing) or None:
      the SSIM map averaged over the pixels where ``masks`` ([N, H, W] or [N, H, W, 1]; bool or
      values in [0, 1]) is > 0.5. The map covers the image minus a 5-pixel border, so mask
      pixels in that border do not count.

    Raises ``ValueError`` for mismatched shapes, an empty batch or images under 11x11 pixels.
    """
    generated, target = np.asarray(generated), np.asarray(target)
    _check_pair(generated, target)
    n = generated.shape[0]
    if n == 0:
        raise ValueError("ssim needs at least one image pair")
    mk = None if masks is None else _prepare_masks(masks, generated.shape)
    r = WINDOW // 2
    h, w = generated.shape[1] - 2 * r, generated.shape[2] - 2 * r
    per_image = np.empty(n, np.float64)
    masked = None if mk is None else np.full(n, np.nan, np.float64)
    for s in range(0, n, _CHUNK):
        m = ssim_map(generated[s:s + _CHUNK], target[s:s + _CHUNK], max_val=max_val).astype(np.float64)
        per_image[s:s + len(m)] = m.mean(axis=(1, 2))
        if mk is not None:
            sel = mk[s:s + _CHUNK, r:r + h, r:r + w]
            counts = sel.sum(axis=(1, 2))
            has = counts > 0
            masked[s:s + len(m)][has] = (m * sel).sum(axis=(1, 2))[has] / counts[has]
    out: dict[str, Any] = {"ssim": float(per_image.mean()), "ssim_per_image": per_image,
                           "masked_ssim": None, "masked_ssim_per_image": masked}
    if masked is not None and not np.isnan(masked).all():
        out["masked_ssim"] = float(np.nanmean(masked))
    return out


def identity_preservation(gen_features: np.ndarray, gen_pids: np.ndarray, gallery_features: np.ndarray,
                          gallery_pids: np.ndarray, *, gen_cams: np.ndarray | None = None,
                          gallery_cams: np.ndarray | None = None, max_rank: int = 20) -> dict[str, Any]:
    """Generated images as queries against real gallery images: how often a re-ID model finds
    the generated image's identity.

    Distances are Euclidean on the given features (pass L2-normalised features, e.g. from
    ``extract_features``); ranking, junk removal and AP follow ``evaluate_retrieval`` (Market
    protocol): gallery entries with the query's pid AND camera id are left out.

    Cameras: a generated image has no real counterpart in its target camera, so by default
    (``gen_cams`` None) every query gets a camera id that no gallery entry has and NO gallery
    image is left out. A caller can instead pass e.g. each generated image's *source* camera as
    ``gen_cams`` (with ``gallery_cams``) to leave out its source image and the identity's other
    images from that camera, so a near-copy of the source cannot make the match trivial.
    ``gallery_cams`` None puts the whole gallery in camera 0.

    Returns ``{"rank1", "rank5", "rank10", "mAP", "valid_queries", "num_queries"}``: CMC at ranks
    1/5/10 and mAP (floats in [0, 1], over the valid queries: those with at least one kept gallery
    entry of their pid; all four are None when no query is valid), and the two counts. The CMC
    is computed to ``max(max_rank, 10)``.
    """
    gen_pids = np.asarray(gen_pids).ravel()
    gallery_pids = np.asarray(gallery_pids).ravel()
    q_cams, g_cams = _cameras(len(gen_pids), len(gallery_pids), gen_cams, gallery_cams)
    qf, gf = np.asarray(gen_features), np.asarray(gallery_features)
    _check_query_gallery(qf, gf, gen_pids, gallery_pids, q_cams, g_cams)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    num_queries = int(len(gen_pids))
    # a query is valid when its pid has a gallery entry outside the query's camera
    valid = any(np.any(g_cams[gallery_pids == p] != c) for p, c in zip(gen_pids, q_cams))
    if not valid:
        return {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "valid_queries": 0,
                "num_queries": num_queries}
    dist = pairwise_distance(qf, gf)
    res = evaluate_retrieval(dist, gen_pids, gallery_pids, q_cams, g_cams, max_rank=max(max_rank, 10))
    cmc = np.asarray(res["cmc"])
    return {"rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9]),
            "mAP": float(res["mAP"]), "valid_queries": int(res["num_valid_queries"]),
            "num_queries": num_queries}


def _cameras(num_queries: int, num_gallery: int, gen_cams, gallery_cams) -> tuple[np.ndarray, np.ndarray]:
    """``(query cameras, gallery cameras)`` of :func:`identity_preservation`: the gallery in
    camera 0 when not given; without ``gen_cams`` every query in a camera no gallery entry has."""
    g_cams = (np.zeros(num_gallery, np.int64) if gallery_cams is None
              else np.asarray(gallery_cams).ravel())
    if gen_cams is None:
        unused = -1 if not np.any(g_cams == -1) else int(g_cams.min()) - 1
        q_cams = np.full(num_queries, unused, np.int64)
    else:
        q_cams = np.asarray(gen_cams).ravel()
    return q_cams, g_cams


def _check_query_gallery(qf, gf, gen_pids, gallery_pids, q_cams, g_cams) -> None:
    """Raises ValueError unless features are 2-D with one pid and camera per row."""
    if qf.ndim != 2 or len(qf) != len(gen_pids) or len(q_cams) != len(gen_pids):
        raise ValueError(f"gen_features must be [Q, D] with one pid (and camera) per row: got features "
                         f"{qf.shape}, {len(gen_pids)} pids, {len(q_cams)} cameras")
    if gf.ndim != 2 or len(gf) != len(gallery_pids) or len(g_cams) != len(gallery_pids):
        raise ValueError(f"gallery_features must be [G, D] with one pid (and camera) per row: got "
                         f"features {gf.shape}, {len(gallery_pids)} pids, {len(g_cams)} cameras")


def pixel_diversity(images: np.ndarray) -> float:
    """How much a set of images differs from image to image: the per-pixel standard deviation
    across the set ``[N, H, W, C]`` (uint8 or float, same scale as given), averaged over pixels
    and channels. 0 for identical images; a generator that has collapsed onto a few outputs
    scores far below its real training images (e.g. 8-9 against 45 for 128x64 synthetic
    people on the 0-255 scale)."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"pixel_diversity needs at least 2 images [N, H, W, C], got shape {images.shape}")
    return float(images.std(axis=0).mean())
