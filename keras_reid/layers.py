"""Keras layers that built-in backbones share and that Keras has no equivalent for.

Importing this module registers them for Keras serialization (package ``keras_reid``),
so a ``.keras`` file that uses them reloads after ``import keras_reid.layers``
(``keras_reid.training.reid_model.load_inference_model`` does that for you).
This module imports Keras: plugin modules import it inside their ``build`` methods.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_reid")
class GeneralizedMeanPooling2D(keras.layers.Layer):
    """Generalised-mean (GeM) pooling over height and width: ``mean(clip(x, eps) ** p) ** (1 / p)``.

    ``p`` is a trainable scalar (Radenovic et al. 2018), initialised to ``p``; p = 1 is
    average pooling and large p approaches max pooling. Input ``[B, H, W, C]`` ->
    output ``[B, C]``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable_p: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.initial_p = float(p)
        self.eps = float(eps)
        self.trainable_p = bool(trainable_p)

    def build(self, input_shape) -> None:
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 trainable=self.trainable_p)

    def call(self, inputs):
        """Returns the pooled features [B, C]."""
        p = ops.cast(self.p, inputs.dtype)
        x = ops.power(ops.maximum(inputs, self.eps), p)
        x = ops.mean(x, axis=(1, 2))
        return ops.power(x, 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"p": self.initial_p, "eps": self.eps, "trainable_p": self.trainable_p})
        return config


@keras.saving.register_keras_serializable(package="keras_reid")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training statistics are those of the whole global batch across
    replicas (``tf.distribute``), computed in two passes.

    Keras' ``BatchNormalization(synchronized=True)`` all-reduces the sums of x and x**2 and takes
    ``E[x^2] - E[x]^2``: in float32 that cancels when a channel's mean is large against its
    spread (an untrained ResNet50's late layers), so two replicas then normalise differently
    from one device (measured: variance off by 1e-3 at mean/std 100, by 10% at 1000, where one
    device's ``tf.nn.moments`` is right to 5e-8). Here the first all-reduce gives the sum and the
    count (the mean), the second the sum of squared deviations from that mean: the moments, the
    outputs and the gradients match one device's ``tf.nn.moments`` to float32 rounding.
    With one replica (or outside ``strategy.run``) it is ``tf.nn.moments``; with a mask, Keras'
    own masked moments (per replica). ``synchronized`` is always true.
    Use :func:`keras_reid.training.batchnorm.synchronise_batchnorm` to convert built layers.
    """

    def __init__(self, **kwargs) -> None:
        kwargs["synchronized"] = True
        super().__init__(**kwargs)

    def _moments(self, inputs, mask):
        ctx = tf.distribute.get_replica_context()
        if mask is not None or ctx is None or ctx.num_replicas_in_sync == 1:
            if mask is not None:
                return super()._moments(inputs, mask)
            x = inputs if inputs.dtype in (tf.float32, tf.float64) else tf.cast(inputs, tf.float32)
            mean, variance = tf.nn.moments(x, self._reduction_axes)
            return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
        axes = self._reduction_axes
        x = inputs if inputs.dtype in (tf.float32, tf.float64) else tf.cast(inputs, tf.float32)
        local_sum = tf.reduce_sum(x, axis=axes)                                   # [C]
        local_count = tf.cast(tf.size(x), x.dtype) / tf.cast(tf.size(local_sum), x.dtype)
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.concat([local_sum, local_count[None]], axis=0))
        count = total[-1]
        mean = tf.math.divide_no_nan(total[:-1], count)
        # as tf.nn.moments: no gradient through the mean here (the deviations sum to zero)
        shape = [1] * x.shape.rank
        shape[self.axis if self.axis >= 0 else x.shape.rank + self.axis] = -1
        centred = x - tf.stop_gradient(tf.reshape(mean, shape))
        squares = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                 tf.reduce_sum(tf.square(centred), axis=axes))
        variance = tf.math.divide_no_nan(squares, count)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
