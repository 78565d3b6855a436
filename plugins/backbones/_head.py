"""The re-ID head the built-in backbones share: pooling, optional reduction, BN-neck, classifier.

Imports Keras: import it inside a backbone's ``build`` method, never at module top level.
"""
from __future__ import annotations

from typing import Any

import keras

from keras_reid.layers import GeneralizedMeanPooling2D


def global_pool(x: Any, pooling: str, name: str = "pool") -> Any:
    """Pool a feature map [B, H, W, C] to [B, C] with ``avg``, ``max`` or ``gem``; returns the tensor."""
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name=name)(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name)(x)
    if pooling == "gem":
        return GeneralizedMeanPooling2D(name=name)(x)
    raise ValueError(f"unknown pooling '{pooling}', expected avg, max or gem")


def reid_head(inputs: Any, pooled: Any, *, num_classes: int, embedding_dim: int | None,
              bn_neck: bool, dropout: float, name: str, classifier_bias: bool = False,
              classifier_std: float = 0.001) -> Any:
    """Finish a backbone: returns a functional ``keras.Model`` ``inputs -> {"embedding", "features", "logits"}``.

    ``embedding`` = pooled feature (after an optional Dense reduction to ``embedding_dim``),
    ``features`` = ``embedding`` after a BatchNormalization without bias (the BN-neck of
    Luo et al. 2019) or ``embedding`` itself without the neck, ``logits`` = a Dense
    classifier on (dropout of) ``features``, kernel drawn from N(0, ``classifier_std``), bias
    (zeros) only if ``classifier_bias`` (BoT: none, std 0.001; torchreid's ``nn.Linear``: bias,
    std 0.01). All three are float32 even under a mixed-precision policy.
    """
    x = pooled
    if embedding_dim:
        x = keras.layers.Dense(embedding_dim, name="reduction")(x)
    embedding = x
    if bn_neck:
        features = keras.layers.BatchNormalization(center=False, name="bn_neck")(embedding)
    else:
        features = embedding
    y = keras.layers.Dropout(dropout, name="dropout")(features) if dropout > 0 else features
    logits = keras.layers.Dense(
        num_classes, use_bias=classifier_bias, name="classifier",
        kernel_initializer=keras.initializers.RandomNormal(stddev=classifier_std))(y)
    outputs = {"embedding": embedding, "features": features, "logits": logits}
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        outputs = {k: keras.layers.Activation("linear", dtype="float32", name=f"{k}_float32")(v)
                   for k, v in outputs.items()}
    return keras.Model(inputs, outputs, name=name)
