"""A toy classifier and deterministic data for the training-loop tests (in-process and workers).

Importable from the tests (``tests/workers`` is put on ``sys.path``) and from the multi-worker
script next to it. No BatchNorm: its batch statistics would differ between replicas.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

NUM_CLASSES = 3
INPUT_SHAPE = (4, 4, 1)
GLOBAL_BATCH = 8


class ToyClassifier(keras.Model):
    """Conv + dense softmax classifier whose ``train_step`` follows the loop's contract."""

    def __init__(self, loss_over_local_batch: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.logits = keras.layers.Dense(NUM_CLASSES)
        # a deliberately wrong variant (mean over the replica's batch) for the negative control
        self.loss_over_local_batch = loss_over_local_batch

    def call(self, x, training=None):
        return self.logits(self.hidden(self.flatten(self.conv(x))))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            logits = self(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            if self.loss_over_local_batch:
                loss = tf.reduce_mean(per_example)
            else:
                loss = tf.nn.compute_average_loss(per_example)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
        return {"loss": tf.reduce_mean(per_example), "accuracy": tf.reduce_mean(correct)}


def initial_weights(seed: int = 0) -> list[np.ndarray]:
    """Deterministic initial weights for :class:`ToyClassifier` (same in every process)."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 1, 4), (4,), (16, 8), (8,), (8, NUM_CLASSES), (NUM_CLASSES,)]
    return [rng.normal(0, 0.5, s).astype(np.float32) for s in shapes]


def make_model(strategy, optimizer: str = "sgd", lr=0.1, seed: int = 0,
               loss_over_local_batch: bool = False) -> ToyClassifier:
    """Build and compile a ToyClassifier inside ``strategy.scope()`` with fixed initial weights."""
    with strategy.scope():
        model = ToyClassifier(loss_over_local_batch=loss_over_local_batch)
        model(np.zeros((1, *INPUT_SHAPE), np.float32))
        model.set_weights(initial_weights(seed))
        if optimizer == "sgd":
            opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
        else:
            opt = keras.optimizers.Adam(learning_rate=lr)
        model.compile(optimizer=opt)
    return model


def global_stream(epoch: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's deterministic global stream of examples (images [size, 4, 4, 1], labels [size])."""
    rng = np.random.default_rng(1000 + epoch)
    x = rng.normal(size=(size, *INPUT_SHAPE)).astype(np.float32)
    y = (x.reshape(size, -1).sum(axis=1) > 0).astype(np.int32) + (x[:, 0, 0, 0] > 1).astype(np.int32)
    return x, y


def per_replica_batches(dataset: tf.data.Dataset, ctx: tf.distribute.InputContext,
                        global_batch: int) -> tf.data.Dataset:
    """Cut a global example stream into per-replica batches and shard them over input pipelines.

    Batches of ``global_batch // replicas`` in stream order, sharded with
    ``.shard(num_input_pipelines, input_pipeline_id)``: one global step covers the same
    examples as one ``global_batch`` batch of a single-device run.
    """
    dataset = dataset.batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
    if ctx.num_input_pipelines > 1:
        dataset = dataset.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    return dataset


def dataset_fn(ctx: tf.distribute.InputContext, epoch: int, global_batch: int = GLOBAL_BATCH,
               size: int = 64) -> tf.data.Dataset:
    """The loop's ``dataset_fn``: this pipeline's per-replica batches of the epoch's stream."""
    return per_replica_batches(tf.data.Dataset.from_tensor_slices(global_stream(epoch, size)),
                               ctx, global_batch)
