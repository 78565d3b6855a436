"""The pngan generator plugin: the paper's architecture at any size divisible by 4, the target
pose steering the output, the LSGAN + L1 losses, learning, the image pool, XLA and mixed
precision, saving (also read by a fresh process), and two replicas = one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from keras_reid import testing
from keras_reid.registry import REGISTRY
from keras_reid.training.loop import train
from keras_reid_plugins.generators.pngan import check_image_size

LOG_KEYS = {"d_loss", "d_real", "d_fake", "g_loss", "g_gan", "g_l1"}


def _factory(**kw):
    return REGISTRY.create("generator", {"type": "pngan", "width": 4, "res_blocks": 1, **kw})


def _skeletons(n, size, seed=0):
    """Skeleton-like pose images: -1 background, a few +1 "limbs" at random places."""
    rng = np.random.default_rng(seed)
    h, w = size
    pose = np.full((n, h, w, 3), -1.0, "f4")
    for i in range(n):
        for _ in range(3):
            y, x = rng.integers(0, h - h // 4), rng.integers(0, w - 2)
            pose[i, y:y + h // 4, x:x + 2, rng.integers(0, 3)] = 1.0
    return pose


def _batch(n=4, size=(32, 16), seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    return {"source": rng.uniform(-1, 1, (n, h, w, 3)).astype("f4"),
            "target": rng.uniform(-1, 1, (n, h, w, 3)).astype("f4"),
            "target_pose": _skeletons(n, size, seed)}


def _compiled(factory, size=(32, 16), strategy=None, steps=10, epochs=1):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        gan = factory.build(size)
        gan.compile(**factory.optimizers(steps_per_epoch=steps, epochs=epochs))
    return gan


def _repeat(batch, n):
    return lambda ctx, epoch: tf.data.Dataset.from_tensors(batch).repeat(n)


def _generation(batch):
    return {k: batch[k] for k in ("source", "target_pose")}


# ---------------------------------------------------------------- config and declared data
def test_config_declared_data_and_contract():
    with pytest.raises(ValidationError, match="extra"):
        _factory(l1_wieght=5)
    with pytest.raises(ValidationError):
        _factory(width=0)
    with pytest.raises(ValidationError):
        _factory(d_condition="image")
    f = _factory()
    assert f.pairing == "identity_pairs"
    assert set(f.needs) == {"source", "target", "target_pose"}
    assert set(f.generation_needs) == {"source", "target_pose"}
    testing.check_generator(f, image_size=(32, 16))
    testing.check_config_schema(REGISTRY.get("generator", "pngan"))


# ---------------------------------------------------------------- architecture
def test_default_architecture_follows_the_paper():
    gan = REGISTRY.create("generator", {"type": "pngan"}).build((32, 16))
    g, d = gan.generator, gan.discriminator
    assert g.input_shape == (None, 32, 16, 6)  # source + target skeleton
    widths = {l.name: l.filters for l in g.layers if l.name.endswith("conv")}
    assert widths == {"in_conv": 64, "down0_conv": 128, "down1_conv": 256, "up0_conv": 128,
                      "up1_conv": 64, "out_conv": 3}
    assert g.get_layer("in_conv").kernel_size == (7, 7) and g.get_layer("out_conv").kernel_size == (7, 7)
    assert len([l for l in g.layers if l.name.endswith("_add")]) == 9
    assert all(g.get_layer(f"res{i}_conv_a").filters == 256 for i in range(9))
    norms = [l for l in g.layers if isinstance(l, keras.layers.GroupNormalization)]
    assert len(norms) == 5 + 2 * 9 and all(l.groups == l.input.shape[-1] for l in norms)  # instance
    d_convs = [(l.filters, l.kernel_size, l.strides) for l in d.layers if isinstance(l, keras.layers.Conv2D)]
    assert d_convs == [(64, (4, 4), (2, 2)), (128, (4, 4), (2, 2)), (256, (4, 4), (2, 2)),
                       (512, (4, 4), (1, 1)), (1, (4, 4), (1, 1))]
    assert [l.name for l in d.layers if isinstance(l, keras.layers.GroupNormalization)] == \
        ["d1_norm", "d2_norm", "d3_norm"]  # none on the first layer
    assert d.input_shape[-1] == 3  # paper Eq. (3): the image alone


@pytest.mark.parametrize("size", [(64, 32), (96, 40), (256, 128)])
def test_shapes_keep_the_person_aspect(size):
    h, w = size
    gan = _factory().build(size)
    assert gan.generator.output_shape == (None, h, w, 3)
    assert tuple(gan.generator.get_layer("res0_add").output.shape[1:3]) == (h // 4, w // 4)
    assert gan.discriminator.output_shape == (None, -(-h // 8), -(-w // 8), 1)
    if size == (96, 40):
        out = np.asarray(gan.generate(_generation(_batch(n=2, size=size))))
        assert out.shape == (2, h, w, 3) and out.dtype == np.float32
        assert out.min() >= -1 and out.max() <= 1


def test_bad_sizes_are_rejected():
    for bad in [(30, 16), (32, 18), (4, 4)]:
        with pytest.raises(ValueError, match="divisible by 4"):
            check_image_size(bad)
        with pytest.raises(ValueError, match="divisible by 4"):
            _factory().build(bad)


@pytest.mark.parametrize("cond,channels", [("none", 3), ("pose", 6), ("source_pose", 9)])
def test_discriminator_condition(cond, channels):
    gan = _factory(d_condition=cond).build((32, 16))
    assert gan.discriminator.input_shape[-1] == channels
    b = {k: tf.constant(v) for k, v in _batch().items()}
    pair = gan.discriminator_input(b, b["target"]).numpy()
    np.testing.assert_array_equal(pair[..., -3:], b["target"].numpy())
    if cond != "none":
        np.testing.assert_array_equal(pair[..., -6:-3], b["target_pose"].numpy())


def test_reflect_padding_and_initial_weights():
    from keras_reid_plugins.generators._pngan_model import ReflectPad2D

    x = np.arange(2 * 5 * 4 * 3, dtype="f4").reshape(2, 5, 4, 3)
    np.testing.assert_array_equal(np.asarray(ReflectPad2D(2)(x)),
                                  np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect"))
    gan = _factory(width=8, res_blocks=2).build((32, 16))
    kernels = [w.numpy() for w in gan.generator.weights + gan.discriminator.weights
               if w.path.endswith("kernel")]
    for i, a in enumerate(kernels):
        assert 0.01 < a.std() < 0.03  # N(0, 0.02)
        for b in kernels[i + 1:]:
            assert a.shape != b.shape or not np.allclose(a, b)


def test_the_target_pose_steers_the_output():
    gan = _factory(width=8).build((32, 16))
    b = _batch()
    out = np.asarray(gan.generate(_generation(b)))
    np.testing.assert_array_equal(out, np.asarray(gan.generate(_generation(b))))  # deterministic
    moved = dict(b, target_pose=_skeletons(4, (32, 16), seed=9))
    other = np.asarray(gan.generate(_generation(moved)))
    assert np.abs(out - other).mean(axis=(1, 2, 3)).min() > 1e-3  # every example changes
    # and the source still matters
    swapped = dict(b, source=b["source"][::-1])
    assert np.abs(out - np.asarray(gan.generate(_generation(swapped)))).max() > 1e-3


# ---------------------------------------------------------------- losses and training
def test_logged_terms_follow_the_lsgan_and_l1_formulas():
    keras.utils.set_random_seed(0)
    gan = _compiled(_factory(l1_weight=7.0))
    gan.build_optimizers()
    b = {k: tf.constant(v) for k, v in _batch().items()}
    # before the step: no dropout, instance norm, so training-mode outputs equal these
    fake = gan.generator(gan.generator_input(b), training=False).numpy()
    real_scores = gan.discriminator(b["target"], training=False).numpy()
    fake_scores = gan.discriminator(fake, training=False).numpy()
    logs = {k: float(v) for k, v in gan.train_step(b).items()}
    assert set(logs) == LOG_KEYS
    assert logs["d_real"] == pytest.approx(np.mean((real_scores - 1) ** 2), rel=1e-4)
    assert logs["d_fake"] == pytest.approx(np.mean(fake_scores ** 2), rel=1e-4)
    assert logs["d_loss"] == pytest.approx((logs["d_real"] + logs["d_fake"]) / 2, rel=1e-6)
    assert logs["g_l1"] == pytest.approx(7.0 * np.mean(np.abs(fake - b["target"].numpy())), rel=1e-4)
    assert logs["g_loss"] == pytest.approx(logs["g_gan"] + logs["g_l1"], rel=1e-6)
    assert logs["g_gan"] > 0


def test_log_form_gan_loss_equals_the_hand_computed_cross_entropy():
    """gan_loss: log (the paper's Eq. 3): -log sigmoid(s) for real targets, -log(1 - sigmoid(s))
    for fake ones, averaged over the patches, on given logits."""
    from keras_reid_plugins.generators._pngan_model import patch_gan_loss

    s = np.array([[[[2.0], [-1.0]], [[0.5], [0.0]]],
                  [[[-3.0], [4.0]], [[1.5], [-0.25]]]], "f4")  # [2, 2, 2, 1] patch logits
    sig = 1.0 / (1.0 + np.exp(-s.astype("f8")))
    as_real = np.asarray(patch_gan_loss(tf.constant(s), 1.0, "log"))
    as_fake = np.asarray(patch_gan_loss(tf.constant(s), 0.0, "log"))
    np.testing.assert_allclose(as_real, (-np.log(sig)).reshape(2, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(as_fake, (-np.log(1 - sig)).reshape(2, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(patch_gan_loss(tf.constant(s), 1.0, "lsgan")),
                               ((s - 1) ** 2).reshape(2, -1).mean(1), rtol=1e-6)
    # the model's logged terms use it
    keras.utils.set_random_seed(0)
    gan = _compiled(_factory(gan_loss="log"))
    gan.build_optimizers()
    assert gan.gan_loss == "log" and gan.get_config()["gan_loss"] == "log"
    b = {k: tf.constant(v) for k, v in _batch().items()}
    fake = gan.generator(gan.generator_input(b), training=False).numpy()
    real_scores = gan.discriminator(b["target"], training=False).numpy().astype("f8")
    fake_scores = gan.discriminator(fake, training=False).numpy().astype("f8")
    logs = {k: float(v) for k, v in gan.train_step(b).items()}
    assert logs["d_real"] == pytest.approx(np.mean(np.log1p(np.exp(-real_scores))), rel=1e-4)
    assert logs["d_fake"] == pytest.approx(np.mean(np.log1p(np.exp(fake_scores))), rel=1e-4)
    assert _factory().config.gan_loss == "lsgan"  # the default stays the public code's
    with pytest.raises(ValidationError):
        _factory(gan_loss="wgan")


def test_xla_training_with_the_pool_on_one_pair_reduces_the_l1_loss():
    # one XLA compilation (slow on CPU) checks learning, XLA and the pool under XLA together
    keras.utils.set_random_seed(0)
    f = _factory(width=8, lr=2e-3, pool_size=6, d_condition="source_pose")
    gan = _compiled(f, steps=30, epochs=1)
    b = _batch(n=4, seed=1)
    # smooth images, the target a fixed colour change of the source
    b["source"] = tf.image.resize(tf.image.resize(b["source"], (8, 4)), (32, 16)).numpy()
    b["target"] = np.clip(0.8 * b["source"][..., ::-1] + 0.1, -1, 1)
    hist = train(gan, _repeat(b, 30), strategy=tf.distribute.get_strategy(), epochs=30,
                 steps_per_epoch=1, verbose=0, jit_compile=True)
    assert LOG_KEYS <= set(hist) and all(np.isfinite(v[-1]) for v in hist.values())
    l1 = hist["g_l1"]
    assert np.mean(l1[-3:]) < 0.7 * np.mean(l1[:3]), l1  # measured: ~0.25-0.3 of the start
    assert int(gan.pool_seen.numpy()) == 120
    stored = gan.pool.numpy()
    # each stored fake is kept with its condition (source and target skeleton)
    conditions = np.concatenate([b["source"], b["target_pose"]], -1)
    for slot in stored:
        assert min(np.abs(slot[..., :6] - c).max() for c in conditions) == 0
        assert 0 < np.abs(slot[..., 6:]).max() <= 1


def test_linear_decay_over_the_last_half_by_default():
    def rates(factory, steps_per_epoch, epochs, at):
        opt = factory.optimizers(steps_per_epoch=steps_per_epoch, epochs=epochs)["g_optimizer"]
        out = []
        for step in at:
            opt.iterations.assign(step)
            out.append(float(opt.learning_rate))
        return out

    np.testing.assert_allclose(rates(_factory(), 10, 20, (0, 100, 150, 200)),
                               [2e-4, 2e-4, 1e-4, 0.0], atol=1e-9)
    np.testing.assert_allclose(rates(_factory(decay_epochs=1), 10, 4, (0, 30, 35)),
                               [2e-4, 2e-4, 1e-4], atol=1e-9)
    np.testing.assert_allclose(rates(_factory(decay_epochs=0), 10, 4, (39,)), [2e-4], atol=1e-9)
    opt = _factory().optimizers(steps_per_epoch=1, epochs=1)["d_optimizer"]
    assert (opt.beta_1, opt.beta_2) == (0.5, 0.999)


# ---------------------------------------------------------------- image pool
def test_image_pool_follows_cyclegans_rule():
    gan = _factory(pool_size=4).build((8, 8))
    values = iter(range(1, 1000))

    def images(n):  # constant images 1, 2, 3, ... so each can be told apart by its value
        return tf.constant(np.stack([np.full((8, 8, 3), next(values), "f4") for _ in range(n)]))

    def ids(t):
        return [int(v) for v in np.asarray(t)[:, 0, 0, 0]]

    assert ids(gan.query_pool(images(3))) == [1, 2, 3]  # filling: returned as they come
    out = ids(gan.query_pool(images(3)))  # 4 fills the last slot; 5, 6 may swap
    assert out[0] == 4 and set(out[1:]) <= {1, 2, 3, 4, 5, 6}
    assert sorted(ids(gan.pool.value) + out) == sorted([1, 2, 3, 4] + [4, 5, 6])
    swapped = 0
    for _ in range(40):
        before = ids(gan.pool.value)
        new = images(4)
        out = ids(gan.query_pool(new))
        # every image returned is its own or one from the pool, which takes its place
        assert sorted(ids(gan.pool.value) + out) == sorted(before + ids(new))
        assert len(set(ids(gan.pool.value))) == 4
        swapped += sum(o != n for o, n in zip(out, ids(new)))
    assert 0.3 < swapped / 160 < 0.7  # probability 1/2
    assert int(gan.pool_seen.numpy()) == 166
    x = images(2)
    assert _factory().build((8, 8)).query_pool(x) is x  # pool off: the fakes themselves


def test_mixed_float16_trains():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        f = _factory()
        gan = _compiled(f)
        assert isinstance(gan.g_optimizer, keras.optimizers.LossScaleOptimizer)
        before = gan.generator.trainable_weights[0].numpy().copy()
        gan.build_optimizers()
        # eager steps (no tracing); the first may overflow in float16 and be skipped while the
        # loss scale adapts
        b = {k: tf.constant(v) for k, v in _batch().items()}
        for _ in range(4):
            logs = gan.train_step(b)
        assert all(np.isfinite(float(v)) for v in logs.values())
        assert int(gan.g_optimizer.iterations.numpy()) >= 1
        assert np.abs(gan.generator.trainable_weights[0].numpy() - before).max() > 0
        assert gan.generate(_generation(_batch())).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_two_replicas_train_like_one_device():
    hist = testing.check_generator_replicas(_factory(d_condition="pose"), _batch(n=4, seed=2))
    assert LOG_KEYS <= set(hist)


# ---------------------------------------------------------------- saving
def test_saved_gan_reloads_here_and_in_a_fresh_process(tmp_path):
    # two steps: optimizer state and pool to save; factory.load is what the augment stage uses
    # (no optimizers), keras.saving.load_model what a resumed training uses; a fresh process
    # (e.g. a Ray actor) imports the plugin without TensorFlow and load() works there
    spec = {"type": "pngan", "width": 4, "res_blocks": 1, "pool_size": 3, "decay_epochs": 1}
    gan, again = testing.check_generator_saving(spec, tmp_path, _batch(seed=0))
    assert (again.d_condition, again.pool_size, again.l1_weight) == ("none", 3, 10.0)
    np.testing.assert_array_equal(again.pool.numpy(), gan.pool.numpy())
    assert int(again.pool_seen.numpy()) == int(gan.pool_seen.numpy()) == 8
