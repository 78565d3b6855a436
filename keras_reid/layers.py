"""Keras layers that built-in backbones share and that Keras has no equivalent for.

Importing this module registers them for Keras serialization (package ``keras_reid``),
so a ``.keras`` file that uses them reloads after ``import keras_reid.layers``
(``keras_reid.training.reid_model.load_inference_model`` does that for you).
This module imports Keras: plugin modules import it inside their ``build`` methods.
"""
from __future__ import annotations

import keras
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
