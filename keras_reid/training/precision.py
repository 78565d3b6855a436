"""Mixed precision from the recipe: the ``precision`` setting and the Keras policy of a stage.

A recipe says ``precision: float32 | mixed_float16 | mixed_bfloat16`` at the top level (every
training stage) or in a training stage's config (that stage only). A training stage runs inside
:func:`precision_policy`, which sets Keras' global dtype policy before any layer is built and
restores the previous one afterwards, however the stage ends, so the policy never leaks into
the next stage.

What the policy does to training (the models and loops honour it, see their docstrings):

* layers compute in float16/bfloat16 and keep float32 variables; the last layers of the
  backbones (embedding, features, logits) and generators (tanh image, discriminator logits)
  are float32, and every loss is computed in float32;
* ``mixed_float16``: each optimizer is wrapped in ``keras.optimizers.LossScaleOptimizer``
  (``ReIDModel.compile``, ``GANModel.compile``); the GAN steps differentiate from the loss
  scale (``GANModel.apply_gradients``) and the optimizer unscales the gradients and skips
  steps whose gradients are not finite. ``mixed_bfloat16`` needs no loss scaling.

``mixed_bfloat16`` suits GPUs from NVIDIA Ampere on and TPUs; ``mixed_float16`` older GPUs
with tensor cores (Volta, Turing). On CPUs both run, slower than float32 on most CPUs.

NOTE for editors: recipe validation imports this module; no TensorFlow or Keras at module level.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
"""The values of the recipe's ``precision`` setting (Keras dtype policy names)."""

Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]


@contextlib.contextmanager
def precision_policy(name: str) -> Iterator[str]:
    """Set Keras' global dtype policy to ``name`` for the ``with`` block; yields the name.

    The previous global policy is restored on exit, also after an exception. Raises
    ``ValueError`` for a name that is not one of :data:`PRECISIONS`.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    import keras  # deferred: Keras, recipe validation imports this module for Precision

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def agree_on_finite(grads: list) -> list:
    """Returns ``grads``, every one made NaN on every replica when any replica's gradients are
    not finite (call it in a replica context, before ``LossScaleOptimizer.apply``).

    Keras' ``LossScaleOptimizer`` decides under ``MirroredStrategy`` whether to apply or skip a
    step from the FIRST replica's gradients alone (it assumes they were all-reduced already,
    which Keras 3 only does later, inside the inner optimizer's ``apply``). A float16 overflow on
    another replica then reaches the weights through the all-reduce and makes them NaN (measured
    here: tiny re-ID model, 2 CPU replicas). With this every replica sees the same verdict, so the
    step is skipped and the loss scale lowered, as on one device. One scalar all-reduce per step;
    with one replica the gradients are returned unchanged.
    """
    import tensorflow as tf  # deferred: TensorFlow, as above

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync <= 1:
        return grads
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(bad > 0.0, float("nan"), 0.0)
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
