"""The dcgan plugin's small-data stabilisers: DiffAugment on every image D sees (real and generated,
in D's and G's updates, differentiable), one-sided label smoothing and D's own learning rate."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.registry import REGISTRY
from keras_reid_plugins.generators._dcgan_model import diff_augment


def _gan(size=(32, 16), **kw):
    f = REGISTRY.create("generator", {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16, **kw})
    gan = f.build(size)
    gan.compile(**f.optimizers(steps_per_epoch=1, epochs=1))
    return f, gan


def _real(n=4, size=(32, 16), seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *size, 3)).astype("f4")


def test_translation_and_cutout_zero_fill_and_keep_the_shape():
    ones = tf.ones((8, 32, 16, 3))
    seeds = keras.random.SeedGenerator(0)
    moved = diff_augment(ones, ["translation"], seeds).numpy()
    assert moved.shape == (8, 32, 16, 3) and set(np.unique(moved)) <= {0.0, 1.0}
    # a shift of at most 1/8 of each side: rows 4..27 and columns 2..13 always stay filled
    assert (moved[:, 4:28, 2:14] == 1).all() and (moved == 0).any()
    cut = diff_augment(ones, ["cutout"], seeds).numpy()
    holes = (cut == 0).all(axis=3).mean(axis=(1, 2))
    assert (holes > 0).all() and (holes <= 0.25 + 1e-6).all()  # half of each side, clipped
    colour = diff_augment(ones, ["color"], seeds).numpy()
    assert not np.allclose(colour, 1.0)
    x = tf.constant(_real())
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(diff_augment(x, ["color", "translation", "cutout"], seeds))
    grad = tape.gradient(y, x).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0  # differentiable in the images


def test_diff_augment_changes_what_d_sees_of_real_and_generated_images():
    _, plain = _gan()
    _, aug = _gan(diff_augment=["translation", "cutout"])
    aug.discriminator.set_weights(plain.discriminator.get_weights())
    batch = {"source": tf.constant(_real())}
    fake = tf.constant(_real(seed=1))
    p_real, p_fake = plain.discriminator_losses(batch, fake, tf.zeros([4]))
    a_real, a_fake = aug.discriminator_losses(batch, fake, tf.zeros([4]))
    assert abs(float(a_real) - float(p_real)) > 1e-6  # real images are augmented
    assert abs(float(a_fake) - float(p_fake)) > 1e-6  # and so are generated ones
    np.testing.assert_array_equal(plain.d_input(fake).numpy(), fake.numpy())  # off: unchanged


def test_diff_augment_is_applied_in_both_updates_and_g_gets_gradients_through_it():
    _, gan = _gan(diff_augment=["translation", "cutout"])
    seen = []
    original = gan.d_input

    def spy(images):
        seen.append(images)
        return original(images)

    gan.d_input = spy
    gan.build_optimizers()
    gan.train_step({"source": tf.constant(_real())})
    assert len(seen) == 3  # D update: real and generated; G update: generated
    z = tf.constant(np.random.default_rng(0).uniform(-1, 1, (4, 8)).astype("f4"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(gan.discriminator(original(gan.generator(z, training=True)), training=True))
    grads = tape.gradient(loss, gan.generator.trainable_variables)
    assert all(g is not None for g in grads) and max(float(tf.reduce_max(tf.abs(g))) for g in grads) > 0


def test_label_smoothing_sets_d_real_target_and_d_lr_sets_d_optimizer():
    _, gan = _gan(label_smoothing=0.1, d_lr=1e-4)
    real = tf.constant(_real())
    d_real, _ = gan.discriminator_losses({"source": real}, tf.constant(_real(seed=1)), tf.zeros([4]))
    logits = gan.discriminator(real, training=True).numpy().ravel().astype(np.float64)
    expect = np.mean(0.9 * np.log1p(np.exp(-logits)) + 0.1 * np.log1p(np.exp(logits)))
    assert float(d_real) == pytest.approx(expect, rel=1e-5)
    assert float(gan.d_optimizer.learning_rate) == pytest.approx(1e-4)
    assert float(gan.g_optimizer.learning_rate) == pytest.approx(2e-4)


def test_stabilisers_survive_saving(tmp_path):
    f, gan = _gan(diff_augment=["cutout"], label_smoothing=0.1)
    gan.save(tmp_path / "d.keras")
    again = f.load(str(tmp_path / "d.keras"))
    assert again.diff_augment == ["cutout"] and again.label_smoothing == pytest.approx(0.1)


def test_unknown_augmentation_is_a_config_error():
    with pytest.raises(Exception, match="diff_augment"):
        REGISTRY.create("generator", {"type": "dcgan", "diff_augment": ["rotate"]})
