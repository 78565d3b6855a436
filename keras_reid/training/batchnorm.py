"""Re-estimate BatchNormalization statistics for the final weights ("precise BN").

BatchNormalization keeps running averages of batch means and variances with a slow momentum
(0.99 in keras.applications). After a short training, or one whose features drift quickly
(a BN-neck after a freshly trained backbone), the averages still describe early weights, and in
inference mode the features then share one large stale offset: different people get nearly the
same L2-normalised feature and retrieval collapses. Measured on the synthetic dataset, ResNet50
after 190 steps: mean cosine similarity between features of different images 0.99 in inference
mode against 0.0001 in training mode; rank-1 0.0%.

:func:`recalibrate_batchnorm` runs forward passes in training mode with a fast momentum, so the
averages match the final weights. Only the moving statistics change: no gradient is taken,
trainable weights stay as they are. Feed it the training stream itself (PK batches with the
training augmentation): those are the statistics the features were trained under. On the
synthetic quickstart data (compact CNN, 15 epochs) re-estimating over 30 augmented training
batches raised rank-1 from 22.3% to 25.9%, while 50 batches of clean training images dropped
it to 5.5%.
"""
from __future__ import annotations

from typing import Iterable

import keras
import tensorflow as tf

from keras_reid.layers import SyncBatchNormalization


def batchnorm_layers(model: keras.Layer) -> list[keras.layers.BatchNormalization]:
    """Every trainable BatchNormalization layer inside ``model`` (nested models included).

    Frozen BN layers (``trainable=False``) run in inference mode in Keras 3 and are left alone.
    """
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def recalibrate_batchnorm(model: keras.Layer, batches: Iterable, momentum: float = 0.9) -> int:
    """Update the moving mean/variance of ``model``'s BN layers from ``batches`` of images.

    With momentum m the averages forget the old statistics as m**n after n batches (0.9**50 =
    0.5%). Returns the number of batches used; the layers' own momentum is restored afterwards.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = float(momentum)
    try:
        # traced after the momentum change, so the graph uses the fast momentum
        forward = tf.function(lambda images: model(images, training=True), reduce_retracing=True)
        used = 0
        for images in batches:
            if isinstance(images, (tuple, list)):
                images = images[0]
            forward(images)
            used += 1
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m
    return used


def synchronise_batchnorm(model: keras.Layer) -> int:
    """Make every trainable BatchNormalization layer of ``model`` normalise with the statistics
    of the whole global batch across replicas, computed in two passes
    (:class:`keras_reid.layers.SyncBatchNormalization`; Keras' own ``synchronized=True`` uses
    the one-pass ``E[x^2] - E[x]^2``, which cancels in float32 for large-mean channels).

    Built layers are converted in place (their class becomes the subclass, which only changes
    how the training moments are computed; weights and configuration stay), so it works on any
    backbone, functional or subclassed. Returns the number of layers converted.
    """
    layers = batchnorm_layers(model)
    for layer in layers:
        if not isinstance(layer, SyncBatchNormalization):
            object.__setattr__(layer, "__class__", SyncBatchNormalization)
        layer.synchronized = True
    return len(layers)


def plain_batchnorm(model: keras.Layer) -> int:
    """Undo :func:`synchronise_batchnorm` (layers become plain ``keras.layers.BatchNormalization``
    with the same weights), so a saved model does not depend on how it was trained: any Keras
    process loads it without importing this package. Returns the number of layers changed."""
    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if isinstance(layer, SyncBatchNormalization)]
    for layer in layers:
        object.__setattr__(layer, "__class__", keras.layers.BatchNormalization)
        layer.synchronized = False
    return len(layers)
