"""Generated-image quality metrics: SSIM (whole and masked) and identity preservation."""
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.metrics.quality import identity_preservation, ssim


def _images(n=3, h=32, w=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h // 4, w // 4, 3)).astype(np.float32)
    return np.repeat(np.repeat(base, 4, 1), 4, 2)  # blocky images: structure at window scale


def test_ssim_of_an_image_with_itself_is_one_and_noise_lowers_it():
    a = _images()
    assert ssim(a, a)["ssim"] == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255)
    assert ssim(a, noisy)["ssim"] < 0.9


def test_ssim_matches_tensorflow():
    a, b = _images(seed=0), _images(seed=1)
    b = 0.6 * a + 0.4 * b
    ours = ssim(a, b)["ssim_per_image"]
    theirs = tf.image.ssim(tf.constant(a), tf.constant(b), max_val=255.0, filter_size=11,
                           filter_sigma=1.5).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_masked_ssim_counts_only_the_masked_pixels():
    a = _images(n=2, h=48, w=24)
    b = a.copy()
    b[:, :, 12:] = 255 - b[:, :, 12:]  # corrupt the right half only
    mask = np.zeros(a.shape[:3] + (1,), np.float32)
    mask[:, :, :6] = 1  # left part, away from the corruption by more than the window radius
    res = ssim(b, a, masks=mask)
    assert res["masked_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert res["ssim"] < 0.7


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))


def test_identity_preservation_is_high_for_faithful_and_low_for_shuffled_identities():
    rng = np.random.default_rng(0)
    g_pids = np.repeat(np.arange(1, 21), 3)
    centres = rng.normal(size=(21, 32))
    gallery = centres[g_pids] + 0.05 * rng.normal(size=(60, 32))
    q_pids = np.arange(1, 21)
    faithful = centres[q_pids] + 0.05 * rng.normal(size=(20, 32))
    good = identity_preservation(faithful, q_pids, gallery, g_pids)
    assert good["rank1"] == 1.0 and good["mAP"] > 0.99 and good["valid_queries"] == 20
    shuffled = identity_preservation(faithful, rng.permutation(q_pids), gallery, g_pids)
    assert shuffled["rank1"] < 0.3
    # the query's own camera is left out: with every gallery image in camera 1, nothing matches
    none = identity_preservation(faithful, q_pids, gallery, g_pids, gen_cams=np.ones(20, int),
                                 gallery_cams=np.ones(60, int))
    assert none["valid_queries"] == 0 and none["rank1"] is None
