"""The compiled forward pass of a re-ID model: images -> (flip-averaged, L2-normalised) features.

Shared by feature extraction (:mod:`keras_reid.inference`) and the deploy-form timing
(:mod:`keras_reid.deploy`); imports no other keras-reid module, so both can import it at the top.
"""
from __future__ import annotations

import weakref

_FORWARD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""Compiled forward passes per model: ``{model: {(flip, image shape, dtype): tf.function}}``."""


def forward(model, flip: bool, spec, normalise: bool = True):
    """The compiled ``images -> L2-normalised features`` of ``model`` for images of ``spec``
    (any batch size): traced once per model, flip, normalisation and image shape, however many
    splits and pose-normalised sets it embeds. ``normalise=False``: the raw features (the mean
    of image and mirror with ``flip``), as torchreid's test ranks them by default."""
    import tensorflow as tf  # deferred: TensorFlow, keeps the modules that import this one light

    per_model = _FORWARD.setdefault(model, {})
    key = (bool(flip), bool(normalise), tuple(spec.shape[1:]), spec.dtype.name)
    if key not in per_model:
        @tf.function(input_signature=[spec])
        def run(images):
            f = tf.cast(model(images, training=False), tf.float32)
            if flip:
                f = (f + tf.cast(model(tf.reverse(images, axis=[2]), training=False), tf.float32)) / 2.0
            return tf.math.l2_normalize(f, axis=1, epsilon=1e-12) if normalise else f

        per_model[key] = run
    return per_model[key]
