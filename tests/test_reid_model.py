"""ReIDModel: training step contract, distribution semantics, saving and export."""
import os

import numpy as np
import pytest

from keras_reid.errors import ModelFileError
from keras_reid.registry import REGISTRY

SHAPE = (32, 16, 3)


def toy_data(ids=4, per_id=4, seed=0):
    """Images whose identity is their colour (plus noise): a separable problem."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(ids), per_id).astype(np.int32)
    colours = rng.uniform(20, 235, (ids, 3))
    noise = rng.normal(0, 25, (len(labels), *SHAPE))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.float32)
    return images, labels


def make_model(loss=None, backbone=None, num_classes=4, lr=3e-3):
    import keras

    from keras_reid.training.optim import OptimizerConfig, make_optimizer
    from keras_reid.training.reid_model import ReIDModel

    keras.utils.set_random_seed(0)
    backbone = backbone or {"type": "tiny", "width": 8, "embedding_dim": 16}
    net = REGISTRY.create("backbone", backbone).build(SHAPE, num_classes)
    model = ReIDModel(net, REGISTRY.create("loss", loss or {"type": "softmax_triplet"}))
    model.compile(make_optimizer(OptimizerConfig(lr=lr, weight_decay=0)))
    return model


def test_train_step_returns_scalars_and_decreases_the_loss():
    import tensorflow as tf

    images, labels = toy_data()
    model = make_model({"type": "softmax_triplet", "margin": 1.0, "normalize": True})
    step = tf.function(model.train_step)
    history = []
    for _ in range(15):
        logs = step((images, labels))
        assert set(logs) == {"loss", "softmax", "triplet", "accuracy"}
        assert all(v.shape == () for v in logs.values())
        history.append({k: float(v) for k, v in logs.items()})
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert history[0]["loss"] == pytest.approx(history[0]["softmax"] + history[0]["triplet"], rel=1e-5)
    assert history[-1]["accuracy"] == 1.0
    assert [m.name for m in model.metrics] == ["loss", "softmax", "triplet", "accuracy"]
    mean_loss = np.mean([h["loss"] for h in history])
    assert float(model.metrics[0].result()) == pytest.approx(mean_loss, rel=1e-5)
    assert int(model.optimizer.iterations) == 15


def test_regularisation_losses_are_added_and_soft_labels_are_accepted():
    import keras
    import tensorflow as tf

    from keras_reid.training.reid_model import ReIDModel

    inp = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inp))
    emb = keras.layers.Dense(8, kernel_regularizer=keras.regularizers.L2(0.1))(x)
    logits = keras.layers.Dense(4)(emb)
    net = keras.Model(inp, {"embedding": emb, "features": emb, "logits": logits})
    model = ReIDModel(net, REGISTRY.create("loss", {"type": "softmax", "label_smoothing": 0.0}))
    model.compile(keras.optimizers.SGD(0.0))
    images, labels = toy_data()
    kernel = np.asarray(net.layers[-2].kernel)
    logs = model.train_step((tf.constant(images), tf.constant(labels)))
    assert float(logs["loss"]) - float(logs["softmax"]) == pytest.approx(0.1 * np.sum(kernel ** 2), rel=1e-4)
    soft = np.eye(4, dtype=np.float32)[labels]
    soft_logs = model.train_step((tf.constant(images), tf.constant(soft)))
    assert float(soft_logs["softmax"]) == pytest.approx(float(logs["softmax"]), rel=1e-5)
    assert float(soft_logs["accuracy"]) == pytest.approx(float(logs["accuracy"]))


def test_fit_works_on_one_device():
    images, labels = toy_data()
    model = make_model({"type": "softmax"})
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "softmax", "accuracy"}
    assert history.history["loss"][1] < history.history["loss"][0]


def test_saved_model_reloads_with_optimizer_and_loss_and_identical_features(tmp_path):
    import keras
    import tensorflow as tf

    from keras_reid.training.optim import make_schedule
    from keras_reid.training.reid_model import ReIDModel

    images, labels = toy_data()
    model = make_model({"type": "softmax_triplet", "margin": 0.2},
                       backbone={"type": "tiny", "width": 4, "pooling": "gem", "embedding_dim": 8})
    model.compile(keras.optimizers.SGD(make_schedule({"type": "step", "milestones": [1]}, 2, 0.01)))
    for _ in range(3):
        model.train_step((tf.constant(images), tf.constant(labels)))
    path = tmp_path / "full.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert isinstance(again, ReIDModel)
    np.testing.assert_array_equal(np.asarray(again.embed(images)), np.asarray(model.embed(images)))
    assert again.reid_loss.config == model.reid_loss.config
    assert int(again.optimizer.iterations) == 3
    assert float(np.asarray(again.optimizer.learning_rate)) == pytest.approx(0.001)
    logs = again.train_step((tf.constant(images), tf.constant(labels)))
    assert np.isfinite(float(logs["loss"]))


def test_exported_inference_model_is_plain_keras_and_gives_the_same_features(tmp_path):
    import keras

    images, _ = toy_data()
    model = make_model()
    path = tmp_path / "sub" / "model.keras"
    assert model.export_inference_model(path) == path
    assert sorted(os.listdir(path.parent)) == ["model.keras"]  # no temporary file left
    loaded = keras.saving.load_model(path, compile=False)  # no custom objects needed
    assert type(loaded).__name__ == "Functional" and len(loaded.outputs) == 1
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model.embed(images)), atol=1e-6)
    with pytest.raises(ValueError, match=".keras"):
        model.export_inference_model(tmp_path / "model.h5")


def test_load_inference_model_errors(tmp_path):
    from keras_reid.training.reid_model import load_inference_model

    with pytest.raises(ModelFileError, match="does not exist"):
        load_inference_model(tmp_path / "missing.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(ModelFileError, match="could not be loaded"):
        load_inference_model(broken)


def test_step_values_reduced_over_two_replicas_equal_one_device():
    """Under MirroredStrategy (two logical CPUs, see conftest.py) the values train_step returns,
    reduced with ``step_logs_reduction``, the trackers and the updated weights equal one device's."""
    import keras
    import tensorflow as tf

    from keras_reid.training.reid_model import ReIDModel

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, *SHAPE)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3], "int32")

    def build():
        keras.utils.set_random_seed(0)
        inp = keras.Input(SHAPE)
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
        x = keras.layers.GlobalAveragePooling2D()(x)
        emb = keras.layers.Dense(8, kernel_regularizer=keras.regularizers.L2(0.01))(x)
        logits = keras.layers.Dense(4)(emb)
        return keras.Model(inp, {"embedding": emb, "features": emb, "logits": logits})

    single = ReIDModel(build(), REGISTRY.create("loss", {"type": "softmax"}))
    single.compile(keras.optimizers.SGD(0.1))
    ref = {k: float(v) for k, v in tf.function(single.train_step)((images, labels)).items()}

    from keras_reid.distribute import make_strategy

    strategy = make_strategy({"type": "mirrored", "devices": ["/cpu:0", "/cpu:1"]})
    with strategy.scope():
        model = ReIDModel(build(), REGISTRY.create("loss", {"type": "softmax"}))
        model.compile(keras.optimizers.SGD(0.1))
    dist = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(8))
    per_replica = tf.function(lambda b: strategy.run(model.train_step, args=(b,)))(next(iter(dist)))
    op = model.step_logs_reduction.upper()  # what the core loop uses
    got = {k: float(strategy.reduce(op, v, axis=None)) for k, v in per_replica.items()}
    trackers = {m.name: float(m.result()) for m in model.metrics}
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert trackers[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert ref["loss"] > ref["softmax"]  # the regularisation loss is in
    for a, b in zip(single.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_mixed_float16_wraps_the_optimizer_and_keeps_float32_outputs():
    import keras
    import tensorflow as tf

    from keras_reid.training.reid_model import ReIDModel

    images, labels = toy_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        net = REGISTRY.create("backbone", {"type": "tiny", "width": 4}).build(SHAPE, 4)
        model = ReIDModel(net, REGISTRY.create("loss", {"type": "softmax_triplet"}))
        model.compile(keras.optimizers.Adam(1e-3))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        out = model(images, training=False)
        assert {keras.backend.standardize_dtype(v.dtype) for v in out.values()} == {"float32"}
        logs = tf.function(model.train_step)((images, labels))
        assert np.isfinite(float(logs["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
