"""The pix2pix generator plugin: shapes, every variant's losses, Model 4's discriminator (masked
condition, whole images; background-only as an option), learning, explicit generation noise and
batch statistics, saving, XLA, and two replicas = one device."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from keras_reid import testing
from keras_reid.registry import REGISTRY
from keras_reid.training.loop import train
from keras_reid_plugins.generators.pix2pix import unet_depth

VARIANTS = ["model1", "model2", "model3", "model4", "variable"]
LOG_KEYS = {"d_loss", "d_real", "d_fake", "g_loss", "g_gan"}


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


def _only(batch, keys):
    return {k: v for k, v in batch.items() if k in keys}


def _compiled(factory, size=(32, 16), strategy=None, steps=10, epochs=1):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        gan = factory.build(size)
        gan.compile(**factory.optimizers(steps_per_epoch=steps, epochs=epochs))
    return gan


def _repeat(batch, n):
    return lambda ctx, epoch: tf.data.Dataset.from_tensors(batch).repeat(n)


# ---------------------------------------------------------------- config and declared data
def test_config_is_validated():
    with pytest.raises(ValidationError, match="extra"):
        _factory(lamda_l1=10)
    with pytest.raises(ValidationError, match="max_filters"):
        _factory(filters=64, max_filters=32)
    with pytest.raises(ValidationError, match="dropout"):
        _factory(dropout=0.0, dropout_at_generation=True)
    with pytest.raises(ValidationError):
        _factory(depth=2)
    with pytest.raises(ValidationError):
        _factory(variant="model5")


@pytest.mark.parametrize("variant,pairing,needs,gen", [
    ("model1", "camera_pairs", {"source", "target"}, {"source"}),
    ("model2", "camera_pairs", {"source", "target", "source_mask"}, {"source", "source_mask"}),
    ("model3", "camera_pairs", {"source", "target", "source_mask", "target_mask"},
     {"source", "source_mask", "target_mask"}),
    ("model4", "random_target", {"source", "target", "source_mask", "target_mask"}, {"source"}),
    ("variable", "camera_pairs", {"source", "target", "source_mask", "target_mask"},
     {"source", "source_mask", "target_mask"}),
])
def test_each_variant_declares_its_pairing_and_data(variant, pairing, needs, gen):
    f = _factory(variant)
    assert (f.pairing, set(f.needs), set(f.generation_needs)) == (pairing, needs, gen)


def test_the_plugin_honours_the_generator_contract():
    testing.check_generator(_factory("model3"), image_size=(32, 16))
    testing.check_config_schema(REGISTRY.get("generator", "pix2pix"))


# ---------------------------------------------------------------- architecture
@pytest.mark.parametrize("size,depth", [((256, 128), 7), ((128, 64), 6), ((64, 32), 5), ((32, 16), 4),
                                        ((96, 48), 4)])
def test_unet_depth_follows_the_input_shape(size, depth):
    assert unet_depth(size) == depth


def test_unet_depth_rejects_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="not divisible"):
        unet_depth((100, 50), depth=4)
    with pytest.raises(ValueError, match="allows only"):
        unet_depth((36, 20))  # 36x20 -> 9x5 after two halvings


@pytest.mark.parametrize("size", [(256, 128), (128, 64), (64, 32), (32, 16)])
def test_unet_and_patchgan_keep_the_person_aspect(size):
    h, w = size
    gan = _factory("model1").build(size)
    depth = unet_depth(size)
    assert gan.generator.output_shape == (None, h, w, 3)
    # the innermost level is 2x1: halved, never squashed to a square
    assert tuple(gan.generator.get_layer(f"down{depth - 1}_conv").output.shape[1:3]) == (2, 1)
    assert len([l for l in gan.generator.layers if l.name.endswith("_dropout")]) == 3
    assert gan.discriminator.output_shape == (None, h // 8, w // 8, 1)


@pytest.mark.parametrize("variant,g_in,d_in", [("model1", 3, 6), ("model2", 4, 7), ("model3", 5, 8),
                                               ("model4", 3, 6), ("variable", 5, 8)])
def test_input_channels_by_variant(variant, g_in, d_in):
    gan = _factory(variant).build((32, 16))
    assert gan.generator.input_shape[-1] == g_in
    assert gan.discriminator.input_shape[-1] == d_in


def test_layers_do_not_share_initial_weights():
    gan = _factory("model1", filters=8, max_filters=8).build((64, 32))
    kernels = [w.numpy() for w in gan.generator.weights if w.path.endswith("kernel")]
    for i, a in enumerate(kernels):
        assert 0.01 < a.std() < 0.03  # N(0, 0.02)
        for b in kernels[i + 1:]:
            assert a.shape != b.shape or not np.allclose(a, b)


# ---------------------------------------------------------------- losses
def test_static_loss_terms_follow_the_thesis_formula():
    from keras_reid_plugins.generators._pix2pix_model import reconstruction_terms

    b = {k: tf.constant(v) for k, v in _batch().items()}
    m_in, m_out = b["source_mask"], b["target_mask"]
    lambdas = {"fg": 70.0, "bg": 30.0, "l1": 100.0}
    fake = b["source"] * m_in + b["target"] * (1 - m_in)  # keeps the person, pastes the target
    t = reconstruction_terms("model4", fake, b, lambdas)
    np.testing.assert_allclose(t["g_fg"].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(t["g_bg"].numpy(), 0.0, atol=1e-6)
    # per-pixel means over the whole image (masked pixels count as zeros)
    t = reconstruction_terms("model4", fake + 0.5, b, lambdas)
    np.testing.assert_allclose(t["g_fg"].numpy(), 70 * 0.5 * m_in.numpy().mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(t["g_bg"].numpy(),
                               30 * 0.5 * ((1 - m_in) * (1 - m_out)).numpy().mean(axis=(1, 2, 3)),
                               rtol=1e-5)
    # what lies under the target's person does not count in model 4's background term
    t2 = reconstruction_terms("model4", fake + 0.5 + 3.0 * m_out * (1 - m_in), b, lambdas)
    np.testing.assert_allclose(t2["g_bg"].numpy(), t["g_bg"].numpy(), rtol=1e-5)


def test_variable_and_l1_loss_terms():
    from keras_reid_plugins.generators._pix2pix_model import reconstruction_terms

    b = {k: tf.constant(v) for k, v in _batch().items()}
    lambdas = {"fg": 70.0, "bg": 30.0, "l1": 100.0}
    t = reconstruction_terms("variable", b["target"], b, lambdas)
    np.testing.assert_allclose(t["g_fg"].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(t["g_bg"].numpy(), 0.0, atol=1e-6)
    m_out = b["target_mask"].numpy().mean(axis=(1, 2, 3))
    t = reconstruction_terms("variable", b["target"] + 0.25, b, lambdas)
    np.testing.assert_allclose(t["g_fg"].numpy(), 70 * 0.25 * m_out, rtol=1e-5)
    np.testing.assert_allclose(t["g_bg"].numpy(), 30 * 0.25 * (1 - m_out), rtol=1e-5)
    t = reconstruction_terms("model2", b["target"] - 0.1, b, lambdas)
    assert set(t) == {"g_l1"}
    np.testing.assert_allclose(t["g_l1"].numpy(), 10.0, rtol=1e-5)


def _person(b):
    """1 on the pixels of either person (source or target mask), else 0."""
    return 1.0 - (1.0 - b["source_mask"]) * (1.0 - b["target_mask"])


def test_model4_discriminator_condition_is_the_background_and_images_are_whole():
    """Thesis Eq. 6: D(x * m, y) and D(x * m, G(x)): the condition loses both persons, while the
    real and the generated image reach D whole ("the GAN loss ... affects the whole image")."""
    gan = _factory("model4").build((32, 16))
    assert gan.d_image_mask == "none"
    b = {k: tf.constant(v) for k, v in _batch().items()}
    person = _person(b)
    pair = gan.discriminator_pair(b, b["target"]).numpy()
    np.testing.assert_array_equal(pair[..., 3:], b["target"].numpy())  # the image, unmasked
    np.testing.assert_array_equal(pair[..., :3], (b["source"] * (1.0 - person)).numpy())
    other = b["target"] + 0.7 * person  # changes only pixels of either person
    assert not np.array_equal(pair, gan.discriminator_pair(b, other).numpy())
    # the source's person does not reach it
    moved = dict(b, source=b["source"] - 0.3 * person)
    np.testing.assert_array_equal(pair, gan.discriminator_pair(moved, b["target"]).numpy())


def test_model4_gan_term_reaches_the_generated_person():
    """The generator's cGAN term has a gradient on person pixels of G(x) (zero there when the
    images are masked like the condition: d_image_mask background)."""
    from keras_reid_plugins.generators._pix2pix_model import _bce

    b = {k: tf.constant(v) for k, v in _batch().items()}
    person = _person(b).numpy()[..., 0] > 0

    def gan_term_grad(gan):
        fake = tf.constant(np.random.default_rng(3).uniform(-1, 1, (4, 32, 16, 3)).astype("f4"))
        with tf.GradientTape() as tape:
            tape.watch(fake)
            g_gan = tf.reduce_mean(_bce(gan.discriminator(gan.discriminator_pair(b, fake),
                                                          training=True), 1.0))
        return np.abs(tape.gradient(g_gan, fake).numpy()).sum(-1)

    grad = gan_term_grad(_factory("model4").build((32, 16)))
    assert np.all(grad[person] > 0) and np.all(grad[~person] > 0)
    masked = gan_term_grad(_factory("model4", d_image_mask="background").build((32, 16)))
    assert np.all(masked[person] == 0) and np.all(masked[~person] > 0)


def test_model4_background_only_discriminator_is_an_explicit_option():
    gan = _factory("model4", d_image_mask="background").build((32, 16))
    b = {k: tf.constant(v) for k, v in _batch().items()}
    other = b["target"] + 0.7 * _person(b)
    np.testing.assert_array_equal(gan.discriminator_pair(b, b["target"]).numpy(),
                                  gan.discriminator_pair(b, other).numpy())
    with pytest.raises(ValidationError, match="model4 only"):
        _factory("model1", d_image_mask="background")
    # model 1's discriminator sees the whole image and its whole condition
    g1 = _factory("model1").build((32, 16))
    np.testing.assert_array_equal(g1.discriminator_pair(b, b["target"]).numpy(),
                                  tf.concat([b["source"], b["target"]], -1).numpy())


def test_model4_train_step_feeds_the_discriminator_whole_generated_images(monkeypatch):
    """What D is called with inside train_step: the generated image unmasked in its last
    three channels (only the condition is masked)."""
    gan = _compiled(_factory("model4"))
    b = _batch()
    seen = []
    real_call = gan.discriminator.call

    def spy(inputs, *args, **kwargs):
        seen.append(inputs)
        return real_call(inputs, *args, **kwargs)

    monkeypatch.setattr(gan.discriminator, "call", spy)
    gan.train_step({k: tf.constant(v) for k, v in b.items()})
    assert len(seen) == 3  # real, generated for D's update, generated for G's
    person = _person({k: tf.constant(v) for k, v in b.items()}).numpy()[..., 0] > 0
    real, fake = seen[0].numpy(), seen[1].numpy()
    np.testing.assert_array_equal(real[..., 3:], b["target"])
    # the generated person is there: masking would zero every person pixel; an untrained
    # generator leaves a few exact zeros (tanh of a pixel whose inputs are all dead ReLUs)
    assert np.mean(fake[..., 3:][person] == 0.0) < 0.05
    np.testing.assert_array_equal(fake[..., :3][person], 0.0)  # the condition's persons are not


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_logs_each_loss_term(variant):
    f = _factory(variant)
    gan = _compiled(f)
    hist = train(gan, _repeat(_only(_batch(), f.needs), 2), strategy=tf.distribute.get_strategy(),
                 epochs=1, steps_per_epoch=2, verbose=0)
    recon = {"g_fg", "g_bg"} if variant in ("model4", "variable") else {"g_l1"}
    assert LOG_KEYS | recon <= set(hist)
    assert all(np.isfinite(v[-1]) for v in hist.values())
    assert hist["g_loss"][0] == pytest.approx(hist["g_gan"][0] + sum(hist[k][0] for k in recon), rel=1e-5)
    assert hist["d_loss"][0] == pytest.approx((hist["d_real"][0] + hist["d_fake"][0]) / 2, rel=1e-5)
    assert int(gan.d_optimizer.iterations.numpy()) == int(gan.g_optimizer.iterations.numpy()) == 2
    out = np.asarray(gan.generate(_only(_batch(), f.generation_needs)))
    assert out.shape == (4, 32, 16, 3) and out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("variant,term", [("model4", "g_fg"), ("model1", "g_l1")])
def test_a_few_steps_on_one_batch_reduce_the_reconstruction_loss(variant, term):
    keras.utils.set_random_seed(0)
    f = _factory(variant, filters=8, max_filters=32, lambda_bg=0.0, lr=2e-3)
    gan = _compiled(f)
    batch = _batch(n=4, seed=1)
    # smooth images, the target a fixed colour change of the source ("another camera"): a tiny
    # U-Net learns the mapping in a few steps
    batch["source"] = tf.image.resize(tf.image.resize(batch["source"], (8, 4)), (32, 16)).numpy()
    batch["target"] = np.clip(0.8 * batch["source"][..., ::-1] + 0.1, -1, 1)
    hist = train(gan, _repeat(_only(batch, f.needs), 10), strategy=tf.distribute.get_strategy(),
                 epochs=3, steps_per_epoch=10, verbose=0)
    assert hist[term][-1] < 0.7 * hist[term][0]


@pytest.mark.parametrize("jit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_train_step_runs_with_and_without_xla(jit):
    keras.utils.set_random_seed(0)
    f = _factory("model4", dropout=0.0)
    gan = _compiled(f)
    hist = train(gan, _repeat(_batch(), 1), strategy=tf.distribute.get_strategy(), epochs=1,
                 steps_per_epoch=1, verbose=0, jit_compile=jit)
    assert LOG_KEYS | {"g_fg", "g_bg"} <= set(hist)
    assert all(np.isfinite(v[0]) for v in hist.values())


def test_mixed_float16_scales_the_losses_and_trains():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        f = _factory("variable")
        gan = _compiled(f)
        assert isinstance(gan.d_optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
        before = gan.generator.trainable_weights[0].numpy().copy()
        hist = train(gan, _repeat(_batch(), 2), strategy=tf.distribute.get_strategy(), epochs=1,
                     steps_per_epoch=2, verbose=0)
        assert all(np.isfinite(v[0]) for v in hist.values())
        assert np.abs(gan.generator.trainable_weights[0].numpy() - before).max() > 0
        out = gan.generate(_only(_batch(), f.generation_needs))
        assert out.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_two_replicas_train_like_one_device():
    # instance norm and no dropout: nothing depends on how the batch is split
    hist = testing.check_generator_replicas(_factory("model4", norm="instance", dropout=0.0),
                                            _batch(n=4, seed=2))
    assert LOG_KEYS | {"g_fg", "g_bg"} <= set(hist)


# ---------------------------------------------------------------- generation and saving
def test_generation_noise_is_explicit():
    quiet = _factory("model1", dropout=0.5).build((32, 16))
    b = {"source": _batch()["source"]}
    np.testing.assert_array_equal(np.asarray(quiet.generate(b)), np.asarray(quiet.generate(b)))
    n1, n2 = np.asarray(quiet.generate(b, noise=True)), np.asarray(quiet.generate(b, noise=True))
    assert np.abs(n1 - n2).max() > 0
    # noise is off again after a noisy call
    np.testing.assert_array_equal(np.asarray(quiet.generate(b)), np.asarray(quiet.generate(b)))
    noisy = _factory("model1", dropout_at_generation=True).build((32, 16))
    assert np.abs(np.asarray(noisy.generate(b)) - np.asarray(noisy.generate(b))).max() > 0
    np.testing.assert_array_equal(np.asarray(noisy.generate(b, noise=False)),
                                  np.asarray(noisy.generate(b, noise=False)))


def test_generation_is_one_compiled_graph_equal_to_the_eager_pass():
    """generate() runs a tf.function: the same images as the generator called op by op, one
    trace for every batch size (reduce_retracing), one more per flag combination; seeded noise
    gives each image the same result in any batch."""
    gan = _factory("model2", dropout=0.5).build((32, 16))
    b = _only(_batch(n=4), {"source", "source_mask"})
    graph = np.asarray(gan.generate(b))
    eager = np.asarray(gan.generator(tf.concat([b["source"], b["source_mask"]], -1), training=False))
    np.testing.assert_allclose(graph, eager, atol=1e-5)
    fn = gan.as_graph(gan._generate_graph)
    for n in (1, 3, 4, 2):
        gan.generate({k: v[:n] for k, v in b.items()})
    assert 1 <= fn.experimental_get_tracing_count() <= 2  # generate() ran it: first shape, then a relaxed batch size
    traces = fn.experimental_get_tracing_count()
    seeded = np.asarray(gan.generate(b, noise=True, seeds=[5, 6, 7, 8]))
    part = np.asarray(gan.generate({k: v[2:] for k, v in b.items()}, noise=True, seeds=[7, 8]))
    np.testing.assert_allclose(part, seeded[2:], atol=1e-5)
    assert np.abs(seeded - graph).max() > 0
    assert 1 <= fn.experimental_get_tracing_count() - traces <= 2  # the noisy, seeded graph


def test_generation_with_batch_statistics_is_a_training_mode_pass_per_image():
    """batch_stats: each image normalised with its own statistics = the authors' test script
    (training mode, one image at a time) when dropout is off; differs from running statistics;
    leaves the running statistics alone; and does not depend on the rest of the batch."""
    gan = _factory("model1", dropout=0.0).build((32, 16))
    b = {"source": _batch(n=3)["source"]}
    norms = [l for l in gan.generator.layers if "norm" in l.name]
    assert norms and all(isinstance(l, keras.layers.BatchNormalization) for l in norms)
    moving = [np.asarray(v).copy() for l in norms for v in (l.moving_mean, l.moving_variance)]
    running = np.asarray(gan.generate(b))
    per_image = np.asarray(gan.generate(b, batch_stats=True))
    assert np.abs(per_image - running).max() > 0.05
    for before, l in zip(moving[::2], norms):
        np.testing.assert_array_equal(before, np.asarray(l.moving_mean))
    alone = np.asarray(gan.generate({"source": b["source"][1:2]}, batch_stats=True))
    np.testing.assert_allclose(alone[0], per_image[1], atol=1e-5)
    # the setting: generate() follows it, the explicit argument overrides it, it is saved
    authors = _factory("model1", dropout=0.0, batch_stats_at_generation=True).build((32, 16))
    authors.set_weights(gan.get_weights())
    np.testing.assert_allclose(np.asarray(authors.generate(b)), per_image, atol=1e-6)
    np.testing.assert_allclose(np.asarray(authors.generate(b, batch_stats=False)), running, atol=1e-6)
    assert authors.get_config()["batch_stats_at_generation"] is True
    # (training-mode passes update the running statistics: last)
    one_by_one = np.concatenate([np.asarray(gan.generator(b["source"][i:i + 1], training=True))
                                 for i in range(3)])
    np.testing.assert_allclose(per_image, one_by_one, atol=1e-5)
    with pytest.raises(ValidationError, match="norm: batch"):
        _factory("model1", norm="instance", batch_stats_at_generation=True)


def test_authors_generation_keeps_dropout_and_batch_statistics():
    gan = _factory("model4", dropout_at_generation=True, batch_stats_at_generation=True).build((32, 16))
    b = {"source": _batch(n=2)["source"]}
    first, second = np.asarray(gan.generate(b)), np.asarray(gan.generate(b))
    assert np.abs(first - second).max() > 0  # dropout noise
    quiet = np.asarray(gan.generate(b, noise=False))
    np.testing.assert_array_equal(quiet, np.asarray(gan.generate(b, noise=False)))
    running = np.asarray(gan.generate(b, noise=False, batch_stats=False))
    assert np.abs(quiet - running).max() > 0.05


def test_saved_gan_reloads_with_generator_and_optimizers(tmp_path):
    spec = {"type": "pix2pix", "variant": "model3", "filters": 4, "max_filters": 16, "decay_epochs": 1}
    gan, again = testing.check_generator_saving(spec, tmp_path, _only(_batch(), _factory("model3").needs),
                                                atol=1e-6)
    b = _only(_batch(), _factory("model3").generation_needs)
    assert (again.variant, again.dropout_at_generation) == ("model3", False)
    np.testing.assert_allclose(np.asarray(again.generate(b, batch_stats=True)),
                               np.asarray(gan.generate(b, batch_stats=True)), atol=1e-6)


def test_linear_decay_schedule():
    from keras_reid.training.gan import LinearDecay

    opt = _factory(decay_epochs=2).optimizers(steps_per_epoch=10, epochs=5)["g_optimizer"]
    values = []
    for step in (0, 30, 40, 50, 60):
        opt.iterations.assign(step)
        values.append(float(opt.learning_rate))
    np.testing.assert_allclose(values, [2e-4, 2e-4, 1e-4, 0.0, 0.0], atol=1e-9)
    sched = LinearDecay(2e-4, total_steps=50, decay_steps=20)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    assert float(again(40)) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="decay_steps"):
        LinearDecay(2e-4, total_steps=10, decay_steps=20)
    constant = _factory().optimizers(steps_per_epoch=10, epochs=5)["d_optimizer"]
    constant.iterations.assign(49)
    assert float(constant.learning_rate) == pytest.approx(2e-4)
