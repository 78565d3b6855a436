"""Generated-image quality: SSIM (whole image and person-masked) and identity preservation.

SSIM uses an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03 and 'valid' windows
only, exactly as ``tf.image.ssim`` (which gives the same global value); the SSIM map is
computed here too so a mask can select the pixels that count (the map is the mask's centre
crop, 5 pixels in from every side). FID is not offered: it needs Inception weights, which
this project cannot download at run time.
"""
from __future__ import annotations

from typing import Any

import numpy as np

WINDOW = 11
SIGMA = 1.5


def _gaussian_window() -> np.ndarray:
    x = np.arange(WINDOW, dtype=np.float64) - (WINDOW - 1) / 2.0
    g = np.exp(-(x ** 2) / (2 * SIGMA ** 2))
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)


def ssim_map(a: np.ndarray, b: np.ndarray, max_val: float = 255.0) -> np.ndarray:
    """Returns the SSIM map float32 [N, H - 10, W - 10] (mean over channels) of images
    [N, H, W, C] ``a`` and ``b`` in the same value range (``max_val`` its maximum)."""
    import tensorflow as tf

    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two image batches of one shape [N, H, W, C], got {a.shape} and {b.shape}")
    if min(a.shape[1:3]) < WINDOW:
        raise ValueError(f"ssim needs images of at least {WINDOW}x{WINDOW} pixels, got {a.shape[1]}x{a.shape[2]}")
    c = a.shape[-1]
    kernel = tf.constant(np.tile(_gaussian_window()[:, :, None, None], (1, 1, c, 1)))

    def blur(x):
        return tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")

    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    ta, tb = tf.constant(a), tf.constant(b)
    mu_a, mu_b = blur(ta), blur(tb)
    var_a = blur(ta * ta) - mu_a ** 2
    var_b = blur(tb * tb) - mu_b ** 2
    cov = blur(ta * tb) - mu_a * mu_b
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    contrast = (2 * cov + c2) / (var_a + var_b + c2)
    return tf.reduce_mean(luminance * contrast, axis=-1).numpy()


def ssim(generated: np.ndarray, target: np.ndarray, *, masks: np.ndarray | None = None,
         max_val: float = 255.0) -> dict[str, Any]:
    """SSIM of ``generated`` against ``target`` (uint8 or float images [N, H, W, C], same range).

    Returns ``{"ssim": mean, "ssim_per_image": [N], "masked_ssim": mean or None,
    "masked_ssim_per_image": [N] or None}``; the masked values average the SSIM map over the
    pixels where ``masks`` ([N, H, W] or [N, H, W, 1], true/ > 0.5 = counted) is set (images
    with no such pixel in the map's area are left out of the mean, NaN per image).
    """
    m = ssim_map(generated, target, max_val=max_val)
    per_image = m.mean(axis=(1, 2))
    out: dict[str, Any] = {"ssim": float(per_image.mean()) if len(per_image) else float("nan"),
                           "ssim_per_image": per_image, "masked_ssim": None,
                           "masked_ssim_per_image": None}
    if masks is not None:
        mk = np.asarray(masks)
        mk = (mk[..., 0] if mk.ndim == 4 else mk).astype(np.float32) > 0.5
        r = WINDOW // 2
        mk = mk[:, r:r + m.shape[1], r:r + m.shape[2]]
        counts = mk.sum(axis=(1, 2))
        masked = np.where(counts > 0, (m * mk).sum(axis=(1, 2)) / np.maximum(counts, 1), np.nan)
        out["masked_ssim_per_image"] = masked
        out["masked_ssim"] = float(np.nanmean(masked)) if np.any(counts > 0) else None
    return out


def identity_preservation(gen_features: np.ndarray, gen_pids: np.ndarray, gallery_features: np.ndarray,
                          gallery_pids: np.ndarray, *, gen_cams: np.ndarray | None = None,
                          gallery_cams: np.ndarray | None = None, max_rank: int = 20) -> dict[str, Any]:
    """Generated images as queries against real images (Market protocol, Euclidean distance on
    the given features). Returns ``{"rank1", "rank5", "rank10", "mAP", "valid_queries",
    "num_queries"}`` (the ranks and mAP are None when no query has a match in the gallery).

    Gallery entries with the query's pid AND camera are left out, as for real queries; the
    caller chooses the cameras: pass each generated image's source camera to leave out its
    source image (and the rest of that camera), or leave ``gen_cams`` None to keep every
    gallery image (queries get camera -1, which no gallery image has).
    """
    from keras_reid.metrics.retrieval import evaluate_retrieval, pairwise_distance

    gen_pids = np.asarray(gen_pids)
    gallery_pids = np.asarray(gallery_pids)
    q_cams = np.full(len(gen_pids), -1) if gen_cams is None else np.asarray(gen_cams)
    g_cams = np.zeros(len(gallery_pids), int) if gallery_cams is None else np.asarray(gallery_cams)
    dist = pairwise_distance(np.asarray(gen_features, np.float32), np.asarray(gallery_features, np.float32))
    valid = [np.any((gallery_pids == p) & (g_cams != c)) for p, c in zip(gen_pids, q_cams)]
    if not any(valid):  # no generated identity has a real image to be found (outside its camera)
        return {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "valid_queries": 0,
                "num_queries": int(len(gen_pids))}
    res = evaluate_retrieval(dist, gen_pids, gallery_pids, q_cams, g_cams,
                             max_rank=min(max_rank, len(gallery_pids)))
    cmc = np.asarray(res["cmc"])
    out = {f"rank{r}": float(cmc[min(r, len(cmc)) - 1]) for r in (1, 5, 10)}
    out.update(mAP=float(res["mAP"]), valid_queries=int(res["num_valid_queries"]),
               num_queries=int(len(gen_pids)))
    return out
