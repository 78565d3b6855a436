"""Losses ``softmax``, ``triplet`` and ``softmax_triplet`` against NumPy and Keras references."""
import numpy as np
import pytest
from pydantic import ValidationError

from keras_reid.registry import REGISTRY


def np_batch_hard(emb, labels, margin, normalize=False):
    """Reference batch-hard triplet loss per anchor, with plain loops."""
    emb = np.asarray(emb, np.float64)
    if normalize:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(labels)
    out = np.zeros(n)
    for a in range(n):
        pos = [np.linalg.norm(emb[a] - emb[p]) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [np.linalg.norm(emb[a] - emb[q]) for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        d = max(pos) - min(neg)
        out[a] = np.log1p(np.exp(d)) if margin is None else max(0.0, d + margin)
    return out


def loss(spec):
    return REGISTRY.create("loss", spec)


def outputs(emb=None, logits=None):
    import tensorflow as tf

    out = {}
    if emb is not None:
        out["embedding"] = tf.constant(emb, tf.float32)
    if logits is not None:
        out["logits"] = tf.constant(logits, tf.float32)
    return out


# labels 7 and 9 occur once: those anchors have no positive and must contribute 0
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 7, 9, 2], np.int32)


@pytest.mark.parametrize("margin,normalize", [(0.3, False), (None, False), (0.5, True), (0.0, False)])
def test_batch_hard_triplet_matches_numpy(margin, normalize):
    emb = np.random.default_rng(0).normal(size=(len(LABELS), 6)).astype(np.float32)
    got = np.asarray(loss({"type": "triplet", "margin": margin, "normalize": normalize})(
        LABELS, outputs(emb=emb)))
    want = np_batch_hard(emb, LABELS, margin, normalize)
    assert got.shape == (len(LABELS),) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got[7] == 0 and got[8] == 0
    assert np.count_nonzero(got) >= 3  # the reference is not trivially zero


def test_triplet_without_negatives_is_zero_and_gradients_are_finite_at_zero_distance():
    import tensorflow as tf

    tri = loss({"type": "triplet"})
    emb = tf.Variable(np.ones((4, 3), np.float32))  # all distances 0
    with tf.GradientTape() as tape:
        same = tri(np.zeros(4, np.int32), {"embedding": emb})
    np.testing.assert_array_equal(np.asarray(same), 0.0)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(tri(np.array([0, 0, 1, 1], np.int32), {"embedding": emb}))
    grad = tape.gradient(value, emb)
    assert float(value) == pytest.approx(4 * 0.3)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_softmax_label_smoothing_equals_keras():
    import keras

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = np.array([0, 4, 2, 2, 1, 3], np.int32)
    for eps in (0.0, 0.1, 0.3):
        got = np.asarray(loss({"type": "softmax", "label_smoothing": eps})(labels, outputs(logits=logits)))
        ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps, reduction=None)
        want = np.asarray(ref(keras.ops.one_hot(labels, 5), logits))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_softmax_accepts_soft_targets():
    from scipy.special import log_softmax

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    targets = np.array([[1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0.7, 0.3, 0]], np.float32)
    got = np.asarray(loss({"type": "softmax", "label_smoothing": 0.0})(targets, outputs(logits=logits)))
    np.testing.assert_allclose(got, -(targets * log_softmax(logits, axis=1)).sum(1), rtol=1e-5)
    hard = np.asarray(loss({"type": "softmax", "label_smoothing": 0.0})(
        np.array([0], np.int32), outputs(logits=logits[:1])))
    np.testing.assert_allclose(hard, got[:1], rtol=1e-6)
    smoothed = np.asarray(loss({"type": "softmax"})(targets, outputs(logits=logits)))
    want = -((targets * 0.9 + 0.1 / 4) * log_softmax(logits, axis=1)).sum(1)
    np.testing.assert_allclose(smoothed, want, rtol=1e-5)


def test_triplet_with_soft_targets_ignores_rows_without_identity():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 4)).astype(np.float32)
    ids = np.array([0, 0, 1, 1, 2, 2])
    targets = np.eye(3, dtype=np.float32)[ids]
    targets[4:] = 1 / 3  # LSRO-style uniform rows: no identity
    got = np.asarray(loss({"type": "triplet"})(targets, outputs(emb=emb)))
    want = np_batch_hard(emb[:4], ids[:4], 0.3)
    np.testing.assert_allclose(got[:4], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got[4:], 0.0)


def test_softmax_triplet_is_the_weighted_sum_of_its_terms():
    rng = np.random.default_rng(4)
    out = outputs(emb=rng.normal(size=(len(LABELS), 5)), logits=rng.normal(size=(len(LABELS), 10)))
    combo = loss({"type": "softmax_triplet", "softmax_weight": 0.5, "triplet_weight": 2.0,
                  "label_smoothing": 0.1, "margin": 0.3})
    assert combo.term_names == ("softmax", "triplet")
    terms = combo.terms(LABELS, out)
    ce = np.asarray(loss({"type": "softmax", "label_smoothing": 0.1})(LABELS, out))
    tri = np.asarray(loss({"type": "triplet", "margin": 0.3})(LABELS, out))
    np.testing.assert_allclose(np.asarray(terms["softmax"]), 0.5 * ce, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(terms["triplet"]), 2.0 * tri, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(combo(LABELS, out)), 0.5 * ce + 2.0 * tri, rtol=1e-6)


def test_loss_configs_are_validated():
    with pytest.raises(ValidationError):
        loss({"type": "triplet", "margin": -1})
    with pytest.raises(ValidationError):
        loss({"type": "softmax", "label_smoothing": 1.5})
    with pytest.raises(ValidationError):
        loss({"type": "softmax_triplet", "marign": 0.3})
    assert loss({"type": "triplet", "margin": None}).config.margin is None
