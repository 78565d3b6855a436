"""Generated-image quality metrics: SSIM (whole and masked) and identity preservation."""
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.metrics import quality
from keras_reid.metrics.quality import identity_preservation, ssim


def _images(n=3, h=32, w=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h // 4, w // 4, 3)).astype(np.float32)
    return np.repeat(np.repeat(base, 4, 1), 4, 2)  # blocky images: structure at window scale


def _tf_ssim(a, b, max_val=255.0):
    return tf.image.ssim(tf.constant(a), tf.constant(b), max_val=max_val, filter_size=11,
                         filter_sigma=1.5, k1=0.01, k2=0.03).numpy()


def test_ssim_of_an_image_with_itself_is_one_and_noise_lowers_it():
    a = _images()
    res = ssim(a, a)
    assert res["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert res["ssim_per_image"].shape == (3,)
    assert res["masked_ssim"] is None and res["masked_ssim_per_image"] is None
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255)
    assert ssim(a, noisy)["ssim"] < 0.9
    noisier = np.clip(a + np.random.default_rng(1).normal(0, 80, a.shape), 0, 255)
    assert ssim(a, noisier)["ssim"] < ssim(a, noisy)["ssim"]


def test_ssim_matches_tensorflow(monkeypatch):
    monkeypatch.setattr(quality, "_CHUNK", 2)  # several chunks
    a, b = _images(n=5, seed=0), _images(n=5, seed=1)
    b = 0.6 * a + 0.4 * b
    res = ssim(a, b)
    np.testing.assert_allclose(res["ssim_per_image"], _tf_ssim(a, b), atol=1e-4)
    assert res["ssim"] == pytest.approx(float(_tf_ssim(a, b).mean()), abs=1e-4)
    rng = np.random.default_rng(2)  # plain uniform noise, odd sizes
    x = rng.integers(0, 256, (2, 13, 17, 3)).astype(np.uint8)
    y = rng.integers(0, 256, (2, 13, 17, 3)).astype(np.uint8)
    np.testing.assert_allclose(ssim(x, y)["ssim_per_image"], _tf_ssim(x, y), atol=1e-4)


def test_ssim_is_the_same_for_uint8_and_unit_range_floats():
    a, b = _images(seed=3).astype(np.uint8), _images(seed=4).astype(np.uint8)
    u8 = ssim(a, b)["ssim_per_image"]
    unit = ssim(a / 255.0, b / 255.0, max_val=1.0)["ssim_per_image"]
    np.testing.assert_allclose(u8, unit, atol=1e-5)


def _half_corrupted():
    a = _images(n=2, h=48, w=24)
    b = a.copy()
    b[:, :, 12:] = 255 - b[:, :, 12:]  # corrupt the right half only
    left = np.zeros(a.shape[:3] + (1,), np.float32)
    left[:, :, :6] = 1  # left part, away from the corruption by more than the window radius
    return a, b, left


def test_masked_ssim_ignores_corruption_outside_the_mask():
    a, b, left = _half_corrupted()
    res = ssim(b, a, masks=left)
    assert res["masked_ssim"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(res["masked_ssim_per_image"], 1.0, atol=1e-5)
    assert res["ssim"] < 0.7


def test_masked_ssim_sees_corruption_inside_the_mask():
    a, b, left = _half_corrupted()
    right = np.zeros(a.shape[:3], bool)
    right[:, :, 18:] = True  # [N, H, W] bool masks work too
    res = ssim(b, a, masks=right)
    assert res["masked_ssim"] < res["ssim"] < 0.7
    full = ssim(b, a, masks=np.ones(a.shape[:3]))  # an all-ones mask gives the global value
    assert full["masked_ssim"] == pytest.approx(full["ssim"], abs=1e-6)


def test_masked_ssim_with_an_empty_mask_is_none_and_bad_masks_raise():
    a, b, _ = _half_corrupted()
    border = np.zeros(a.shape[:3])
    border[1, :, :3] = 1  # image 1: only the 5-pixel border, which the map does not cover
    border[0, 20:30, 5:10] = 1
    res = ssim(b, a, masks=border)
    assert np.isnan(res["masked_ssim_per_image"][1]) and not np.isnan(res["masked_ssim_per_image"][0])
    assert res["masked_ssim"] == pytest.approx(res["masked_ssim_per_image"][0])
    assert ssim(b, a, masks=np.zeros(a.shape[:3]))["masked_ssim"] is None
    with pytest.raises(ValueError, match="masks"):
        ssim(b, a, masks=np.ones((2, 40, 24)))


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 8, 20, 3)), np.zeros((1, 8, 20, 3)))
    with pytest.raises(ValueError, match="one shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 12, 3)))


def _features(seed=0):
    rng = np.random.default_rng(seed)
    g_pids = np.repeat(np.arange(1, 21), 3)
    centres = rng.normal(size=(21, 32))
    gallery = centres[g_pids] + 0.05 * rng.normal(size=(60, 32))
    q_pids = np.arange(1, 21)
    faithful = centres[q_pids] + 0.05 * rng.normal(size=(20, 32))
    return faithful, q_pids, gallery, g_pids, rng


def test_identity_preservation_is_high_for_faithful_and_low_for_shuffled_identities():
    faithful, q_pids, gallery, g_pids, rng = _features()
    good = identity_preservation(faithful, q_pids, gallery, g_pids)
    assert good["rank1"] == 1.0 and good["mAP"] > 0.99
    assert good["valid_queries"] == good["num_queries"] == 20
    assert set(good) == {"rank1", "rank5", "rank10", "mAP", "valid_queries", "num_queries"}
    shuffled = identity_preservation(faithful, rng.permutation(q_pids), gallery, g_pids)
    assert shuffled["rank1"] < 0.3 and shuffled["mAP"] < 0.3


def test_identity_preservation_cameras():
    faithful, q_pids, gallery, g_pids, _ = _features()
    g_cams = np.tile([-1, 1, 2], 20)  # each pid once per camera, camera -1 included
    default = identity_preservation(faithful, q_pids, gallery, g_pids, gallery_cams=g_cams)
    assert default["valid_queries"] == 20 and default["mAP"] > 0.99  # nothing left out
    # the caller's cameras leave out same-pid same-camera entries, as for real queries
    own = identity_preservation(faithful, q_pids, gallery, g_pids, gen_cams=np.full(20, 1),
                                gallery_cams=g_cams)
    assert own["valid_queries"] == 20 and own["rank1"] == 1.0
    none = identity_preservation(faithful, q_pids, gallery, g_pids, gen_cams=np.ones(20, int),
                                 gallery_cams=np.ones(60, int))
    assert none["valid_queries"] == 0 and none["rank1"] is None and none["num_queries"] == 20


def test_identity_preservation_ranks_beyond_max_rank_and_small_galleries():
    from keras_reid.metrics import evaluate_retrieval, pairwise_distance

    faithful, q_pids, gallery, g_pids, rng = _features(seed=5)
    noisy = faithful + 1.5 * rng.normal(size=faithful.shape)  # ranks spread over 1..60
    res = identity_preservation(noisy, q_pids, gallery, g_pids, max_rank=1)
    ref = evaluate_retrieval(pairwise_distance(noisy, gallery), q_pids, g_pids,
                             np.full(20, -1), np.zeros(60), max_rank=10)
    assert res["rank1"] < res["rank10"]  # the test means something
    for r in (1, 5, 10):
        assert res[f"rank{r}"] == pytest.approx(ref["cmc"][r - 1])
    assert res["mAP"] == pytest.approx(ref["mAP"])
    small = identity_preservation(faithful[:1], q_pids[:1], gallery[:4], g_pids[:4])  # gallery under 10
    assert small["rank1"] == small["rank10"] == 1.0


def test_pixel_diversity_is_zero_for_identical_images_and_grows_with_spread():
    from keras_reid.metrics.quality import pixel_diversity

    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (8, 4, 3)).astype(np.uint8)
    assert pixel_diversity(np.stack([one] * 5)) == 0.0
    narrow = np.clip(one[None] + rng.normal(0, 5, (50, 8, 4, 3)), 0, 255)
    wide = np.clip(one[None] + rng.normal(0, 40, (50, 8, 4, 3)), 0, 255)
    assert 3 < pixel_diversity(narrow) < 7 < pixel_diversity(wide)
    with pytest.raises(ValueError, match="at least 2 images"):
        pixel_diversity(one[None])
