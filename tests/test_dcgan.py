"""The dcgan generator plugin: aspect-keeping shapes, training with a D:G ratio, semantic
control by per-example weights, and a guided mode that really changes the gradients."""
import numpy as np
import pytest
import tensorflow as tf

from keras_reid import testing
from keras_reid.registry import REGISTRY
from keras_reid.training.loop import train
from keras_reid_plugins.generators.dcgan import start_shape


def _gan(size=(32, 16), **kw):
    f = REGISTRY.create("generator", {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16, **kw})
    gan = f.build(size)
    gan.compile(**f.optimizers(steps_per_epoch=1, epochs=1))
    return f, gan


def _real(n=4, size=(32, 16), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *size, 3)).astype("f4")


@pytest.mark.parametrize("size,expect", [((128, 64), (8, 4, 4)), ((256, 128), (8, 4, 5)),
                                         ((128, 128), (8, 8, 4)), ((64, 32), (8, 4, 3))])
def test_start_shape_keeps_the_aspect(size, expect):
    assert start_shape(size) == expect


def test_bad_size_is_rejected():
    for bad in [(20, 10), (96, 40), (16, 16)]:
        with pytest.raises(ValueError, match="does not fit a DCGAN"):
            start_shape(bad)


def test_generates_native_aspect_images_and_trains_with_a_d_to_g_ratio():
    f, gan = _gan(d_steps=2)
    assert f.pairing == "unpaired" and f.generation_needs == {"noise"}
    out = np.asarray(gan.generate({"noise": np.zeros((3, 8), "f4")}))
    assert out.shape == (3, 32, 16, 3) and np.abs(out).max() <= 1
    batch = {"source": _real()}
    hist = train(gan, lambda c, e: tf.data.Dataset.from_tensors(batch).repeat(3),
                 strategy=tf.distribute.get_strategy(), epochs=1, steps_per_epoch=3, verbose=0)
    assert {"d_loss", "d_real", "d_fake", "g_loss"} <= set(hist)
    assert "fake_no_face" not in hist  # logged only in guided mode (without, it would read 0)
    assert all(np.isfinite(v[-1]) for v in hist.values())
    assert int(gan.d_optimizer.iterations.numpy()) == 6 and int(gan.g_optimizer.iterations.numpy()) == 3


def _d_grads(gan, batch, fake):
    delta = gan.fake_no_face(fake) if gan.guided else tf.zeros([fake.shape[0]])
    with tf.GradientTape() as tape:
        d_real, d_fake = gan.discriminator_losses(batch, fake, delta)
        loss = d_real + d_fake
    return [g.numpy() for g in tape.gradient(loss, gan.discriminator.trainable_variables)]


def test_guided_mode_changes_the_discriminator_gradients():
    _, plain = _gan()
    _, guided = _gan(guided=True, lambda_real=0.05, lambda_fake=0.025)
    _, zero = _gan(guided=True, lambda_real=0.0, lambda_fake=0.0)
    for g in (guided, zero):
        g.discriminator.set_weights(plain.discriminator.get_weights())
        g.set_semantic_filter(lambda images: np.zeros(len(images), np.float32))  # never a face
    batch = {"source": tf.constant(_real()), "real_no_face": tf.constant([1.0, 0.0, 1.0, 0.0])}
    fake = tf.constant(_real(seed=1))
    base = _d_grads(plain, batch, fake)
    same = _d_grads(zero, batch, fake)
    differ = _d_grads(guided, batch, fake)
    assert all(np.allclose(a, b, atol=1e-7) for a, b in zip(base, same))  # lambda 0 = plain
    assert max(np.abs(a - b).max() for a, b in zip(base, differ)) > 1e-6
    w_real, w_fake = guided.loss_weights(batch, guided.fake_no_face(fake))
    np.testing.assert_allclose(w_real.numpy(), [0.95, 1.0, 0.95, 1.0], atol=1e-6)
    np.testing.assert_allclose(w_fake.numpy(), [1.025] * 4, atol=1e-6)


def test_semantic_control_weight_removes_rejected_real_images_from_the_loss():
    _, gan = _gan()
    fake = tf.constant(_real(seed=1))
    real = tf.constant(_real())
    weights = tf.constant([1.0, 1.0, 0.0, 0.0])
    d_real, _ = gan.discriminator_losses({"source": real, "real_weight": weights}, fake, tf.zeros([4]))
    logits = gan.discriminator(real, training=True).numpy().ravel()
    bce = np.log1p(np.exp(-logits))  # BCE against 1
    assert float(d_real) == pytest.approx(float((weights.numpy() * bce).sum() / 4), rel=1e-5)
    d_none, _ = gan.discriminator_losses({"source": real, "real_weight": tf.zeros([4])}, fake, tf.zeros([4]))
    assert float(d_none) == 0.0


def test_saved_dcgan_reloads(tmp_path):
    # trained two steps, saved, loaded here and in a fresh process: the same images (1e-6)
    spec = {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16, "guided": True}
    gan, again = testing.check_generator_saving(spec, tmp_path, atol=1e-6)
    z = {"noise": np.random.default_rng(0).uniform(-1, 1, (2, 8)).astype("f4")}
    np.testing.assert_allclose(np.asarray(again.generate(z)), np.asarray(gan.generate(z)), atol=1e-6)
    assert again.guided and again.lambda_fake == 0.025
