"""The pix2pix generator plugin: shapes, every variant's losses, Model 4's background-only
discriminator, learning, explicit generation noise, saving, and two replicas = one device."""
import numpy as np
import pytest
import tensorflow as tf

from keras_reid.registry import REGISTRY
from keras_reid.training.loop import train
from keras_reid_plugins.generators.pix2pix import unet_depth

VARIANTS = ["model1", "model2", "model3", "model4", "variable"]


def _factory(variant="model4", **kw):
    return REGISTRY.create("generator", {"type": "pix2pix", "variant": variant, "filters": 4,
                                         "max_filters": 16, **kw})


def _batch(n=4, size=(32, 16), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    return {"source": rng.uniform(-1, 1, (n, h, w, 3)).astype("f4"),
            "target": rng.uniform(-1, 1, (n, h, w, 3)).astype("f4"),
            "source_mask": (rng.random((n, h, w, 1)) > 0.5).astype("f4"),
            "target_mask": (rng.random((n, h, w, 1)) > 0.5).astype("f4")}


def _compiled(factory, size=(32, 16), strategy=None):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        gan = factory.build(size)
        gan.compile(**factory.optimizers(steps_per_epoch=10, epochs=1))
    return gan


@pytest.mark.parametrize("size,depth", [((256, 128), 7), ((128, 64), 6), ((64, 32), 5), ((32, 16), 4),
                                        ((96, 48), 4)])
def test_unet_depth_follows_the_input_shape(size, depth):
    assert unet_depth(size) == depth


def test_unet_keeps_the_person_aspect_and_rejects_bad_sizes():
    gan = _factory().build((128, 64))
    assert gan.generator.output_shape == (None, 128, 64, 3)
    assert gan.generator.get_layer("down5_conv").output.shape[1:3] == (2, 1)
    with pytest.raises(ValueError, match="not divisible"):
        unet_depth((100, 50), depth=4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_logs_each_loss_term(variant):
    f = _factory(variant)
    gan = _compiled(f)
    batch = {k: v for k, v in _batch().items() if k in f.needs}
    hist = train(gan, lambda c, e: tf.data.Dataset.from_tensors(batch).repeat(2),
                 strategy=tf.distribute.get_strategy(), epochs=1, steps_per_epoch=2, verbose=0)
    recon = {"g_fg", "g_bg"} if variant in ("model4", "variable") else {"g_l1"}
    assert {"d_loss", "d_real", "d_fake", "g_loss", "g_gan"} | recon <= set(hist)
    assert all(np.isfinite(v[-1]) for v in hist.values())
    gen = {k: v for k, v in _batch().items() if k in f.generation_needs}
    out = np.asarray(gan.generate(gen))
    assert out.shape == (4, 32, 16, 3) and out.min() >= -1 and out.max() <= 1
    assert f.pairing == ("random_target" if variant == "model4" else "camera_pairs")


def test_model4_discriminator_sees_only_the_background():
    gan = _factory("model4").build((32, 16))
    b = {k: tf.constant(v) for k, v in _batch().items()}
    person = (1.0 - (1.0 - b["source_mask"]) * (1.0 - b["target_mask"]))
    other = b["target"] + 0.7 * person  # change only person pixels of either mask
    np.testing.assert_array_equal(gan.discriminator_pair(b, b["target"]).numpy(),
                                  gan.discriminator_pair(b, other).numpy())
    changed = b["target"] + 0.7 * (1.0 - person)
    assert not np.array_equal(gan.discriminator_pair(b, b["target"]).numpy(),
                              gan.discriminator_pair(b, changed).numpy())
    # model1's discriminator sees the whole image
    g1 = _factory("model1").build((32, 16))
    assert not np.array_equal(g1.discriminator_pair(b, b["target"]).numpy(),
                              g1.discriminator_pair(b, other).numpy())


def test_static_loss_terms_follow_the_thesis_formula():
    from keras_reid_plugins.generators._pix2pix_model import reconstruction_terms

    b = {k: tf.constant(v) for k, v in _batch().items()}
    m_in, m_out = b["source_mask"], b["target_mask"]
    fake = b["source"] * m_in + b["target"] * (1 - m_in)  # copies the person, pastes the target
    t = reconstruction_terms("model4", fake, b, {"fg": 70.0, "bg": 30.0, "l1": 100.0})
    np.testing.assert_allclose(t["g_fg"].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(t["g_bg"].numpy(), 0.0, atol=1e-6)
    t = reconstruction_terms("model4", fake + 0.5, b, {"fg": 70.0, "bg": 30.0, "l1": 100.0})
    expect_fg = 70 * 0.5 * m_in.numpy().mean(axis=(1, 2, 3))
    expect_bg = 30 * 0.5 * ((1 - m_in) * (1 - m_out)).numpy().mean(axis=(1, 2, 3))
    np.testing.assert_allclose(t["g_fg"].numpy(), expect_fg, rtol=1e-5)
    np.testing.assert_allclose(t["g_bg"].numpy(), expect_bg, rtol=1e-5)


def test_a_few_steps_on_one_batch_reduce_the_foreground_loss():
    f = _factory("model4", lambda_bg=0.0, lr=0.002)
    gan = _compiled(f)
    batch = _batch(n=4, seed=1)
    # smooth pictures (blocks of 4x4 pixels) that a small U-Net can learn to copy
    batch["source"] = np.repeat(np.repeat(batch["source"][:, ::4, ::4], 4, 1), 4, 2)
    hist = train(gan, lambda c, e: tf.data.Dataset.from_tensors(batch).repeat(15),
                 strategy=tf.distribute.get_strategy(), epochs=2, steps_per_epoch=15, verbose=0)
    assert hist["g_fg"][-1] < 0.9 * hist["g_fg"][0]  # epoch means: 16.0 -> 13.8 measured


def test_generation_noise_is_explicit():
    quiet = _factory("model1", dropout=0.5).build((32, 16))
    b = {"source": _batch()["source"]}
    a1, a2 = np.asarray(quiet.generate(b)), np.asarray(quiet.generate(b))
    np.testing.assert_array_equal(a1, a2)
    n1, n2 = np.asarray(quiet.generate(b, noise=True)), np.asarray(quiet.generate(b, noise=True))
    assert np.abs(n1 - n2).max() > 0
    noisy = _factory("model1", dropout_at_generation=True).build((32, 16))
    assert np.abs(np.asarray(noisy.generate(b)) - np.asarray(noisy.generate(b))).max() > 0


def test_saved_gan_reloads_with_the_same_generator(tmp_path):
    f = _factory("model3")
    gan = _compiled(f)
    path = tmp_path / "g.keras"
    gan.save(path)
    again = f.load(str(path))
    b = {k: v for k, v in _batch().items() if k in f.generation_needs}
    np.testing.assert_allclose(np.asarray(again.generate(b)), np.asarray(gan.generate(b)), atol=1e-6)
    assert again.variant == "model3"


def test_two_replicas_train_like_one_device():
    f = _factory("model4", norm="instance", dropout=0.0)
    batch = _batch(n=4, seed=2)
    logs = []
    for strategy in (tf.distribute.get_strategy(),
                     tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                                    cross_device_ops=tf.distribute.ReductionToOneDevice())):
        tf.keras.utils.set_random_seed(0) if hasattr(tf, "keras") else None
        import keras
        keras.utils.set_random_seed(0)
        gan = _compiled(f, strategy=strategy)

        def ds(ctx, epoch):
            per = 4 // ctx.num_replicas_in_sync
            d = tf.data.Dataset.from_tensor_slices(batch).batch(per)
            return d.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).repeat(2)

        hist = train(gan, ds, strategy=strategy, epochs=1, steps_per_epoch=2, verbose=0)
        logs.append((hist, [w.numpy() for w in gan.generator.weights[:3]]))
    for key in ("d_loss", "g_gan", "g_fg", "g_bg"):
        assert logs[0][0][key][0] == pytest.approx(logs[1][0][key][0], rel=1e-4)
    for a, b in zip(logs[0][1], logs[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)
