"""Precise BN: moving statistics re-estimated for the final weights, trainable weights untouched."""
import numpy as np

from keras_reid.training.batchnorm import batchnorm_layers, recalibrate_batchnorm


def _model():
    import keras

    inner = keras.Sequential([keras.layers.Dense(4), keras.layers.BatchNormalization()], name="inner")
    x = keras.Input((3,))
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    return keras.Model(x, frozen(inner(x))), inner, frozen


def test_moving_statistics_match_the_data_and_weights_stay():
    import tensorflow as tf

    import keras

    keras.utils.set_random_seed(0)
    model, inner, frozen = _model()
    bn = inner.layers[1]
    assert batchnorm_layers(model) == [bn]
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 2.0, (1000 * 20, 3)).astype("float32")
    weights = [w.copy() for w in inner.layers[0].get_weights()]
    batches = tf.data.Dataset.from_tensor_slices(data).batch(1000)
    assert recalibrate_batchnorm(model, batches, momentum=0.8) == 20
    target = data @ weights[0] + weights[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), target.mean(0), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(bn.moving_variance.numpy(), target.var(0), rtol=0.15)
    assert bn.momentum == 0.99                                   # restored
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(4))  # frozen: untouched
    for a, b in zip(inner.layers[0].get_weights(), weights):
        np.testing.assert_array_equal(a, b)
