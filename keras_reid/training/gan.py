"""``GANModel``: the Keras GAN idiom shared by the generator plugins.

A GAN is a ``keras.Model`` holding a ``generator`` and a ``discriminator`` sub-model, compiled
with two optimizers (``compile(d_optimizer=..., g_optimizer=...)``) and trained by its own
``train_step`` through the core loop (``keras_reid.training.loop``), which calls
``build_optimizers()`` inside the strategy's scope before the first step. Following the loop's
contract, ``train_step`` returns each replica's share of the global-batch value of every
scalar (per-example losses averaged with ``tf.nn.compute_average_loss``), so the loop reduces
them with SUM (``step_logs_reduction = "sum"``) and two replicas log what one device would.
``keras.metrics.Mean`` trackers (the ``metrics`` property) hold running means for ``fit()``.

Also here: :func:`gan_initializer` (N(0, 0.02), one fresh instance per layer) and
:class:`LinearDecay`, the pix2pix/CycleGAN learning-rate schedule (constant, then linear decay
to 0 over the last epochs), registered for Keras serialization so a saved optimizer reloads.
"""
from __future__ import annotations

from typing import Any, Iterable

import keras
import tensorflow as tf
from keras import ops

from keras_reid.training.precision import agree_on_finite


def gan_initializer(seed: int | None = None) -> keras.initializers.Initializer:
    """Returns a new N(0, 0.02) initializer (DCGAN/pix2pix weights).

    Call it once per layer: a Keras 3 initializer instance draws its seed once, so one
    unseeded instance shared by several layers gives every kernel of the same shape the same
    values. With ``seed=None`` the seed comes from Keras' global generator, so
    ``keras.utils.set_random_seed`` makes the weights reproducible.
    """
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02, seed=seed)


@keras.saving.register_keras_serializable(package="keras_reid")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate ``lr`` for ``total_steps - decay_steps`` steps, then linear decay to 0 at
    ``total_steps`` (and 0 after). Calling it returns the float32 rate at ``step``."""

    def __init__(self, lr: float, total_steps: int, decay_steps: int) -> None:
        if total_steps < 1 or decay_steps < 1 or decay_steps > total_steps:
            raise ValueError(f"LinearDecay needs 1 <= decay_steps <= total_steps, got decay_steps="
                             f"{decay_steps}, total_steps={total_steps}")
        self.lr = float(lr)
        self.total_steps = int(total_steps)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start = float(self.total_steps - self.decay_steps)
        frac = ops.clip((step - start) / float(self.decay_steps), 0.0, 1.0)
        return self.lr * (1.0 - frac)

    def get_config(self) -> dict:
        return {"lr": self.lr, "total_steps": self.total_steps, "decay_steps": self.decay_steps}


def _loss_scaled(optimizer: Any) -> Any:
    if (keras.mixed_precision.global_policy().name == "mixed_float16"
            and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@keras.saving.register_keras_serializable(package="keras_reid")
class GANModel(keras.Model):
    """Base class: ``generator`` and ``discriminator`` sub-models, two optimizers, loss trackers.

    Subclasses pass ``log_names`` (the scalars their ``train_step`` returns, one running-mean
    tracker each) and define ``train_step``; they may use :meth:`apply_gradients` and :meth:`track`.
    """

    step_logs_reduction = "sum"

    def __init__(self, generator: keras.Model, discriminator: keras.Model,
                 log_names: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.log_names = tuple(log_names)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.log_names}
        self.d_optimizer = None
        self.g_optimizer = None

    # ------------------------------------------------------------------ compile / optimizers
    def compile(self, d_optimizer: Any = None, g_optimizer: Any = None, **kwargs: Any) -> None:
        """Attach the discriminator's and the generator's optimizers (Adam 2e-4, beta_1 0.5 by
        default); under ``mixed_float16`` each is wrapped in a ``LossScaleOptimizer``."""
        super().compile(**kwargs)
        self.d_optimizer = _loss_scaled(keras.optimizers.get(
            d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)))
        self.g_optimizer = _loss_scaled(keras.optimizers.get(
            g_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5)))

    def build_optimizers(self) -> None:
        """Build each optimizer on its sub-model's trainable variables (call in the strategy scope)."""
        if self.d_optimizer is None or self.g_optimizer is None:
            raise ValueError(f"{type(self).__name__} is not compiled: call compile(d_optimizer=, "
                             "g_optimizer=) inside strategy.scope() first")
        if not self.d_optimizer.built:
            self.d_optimizer.build(self.discriminator.trainable_variables)
        if not self.g_optimizer.built:
            self.g_optimizer.build(self.generator.trainable_variables)

    def get_compile_config(self) -> dict | None:
        """Returns the serialised optimizers (None when not compiled)."""
        if self.d_optimizer is None:
            return None
        return {"d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
                "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer)}

    def compile_from_config(self, config: dict) -> None:
        """Recompile from :meth:`get_compile_config` (``keras.saving.load_model``); the optimizers
        are built at once so that their saved variables (iterations, Adam moments) load."""
        self.compile(d_optimizer=keras.saving.deserialize_keras_object(config["d_optimizer"]),
                     g_optimizer=keras.saving.deserialize_keras_object(config["g_optimizer"]))
        if self.built:
            self.build_optimizers()

    # ------------------------------------------------------------------ training helpers
    @property
    def metrics(self) -> list:
        """Returns the running-mean trackers, one per logged scalar."""
        return list(self.trackers.values())

    def apply_gradients(self, tape: tf.GradientTape, loss: Any, optimizer: Any,
                        variables: Iterable[Any]) -> None:
        """Differentiate the scalar ``loss`` recorded on ``tape`` and apply the gradients with
        ``optimizer``; returns None. Under a ``LossScaleOptimizer`` the backward pass starts from
        the loss scale instead of 1 (the gradient of ``scale * loss``, computed after the tape
        closed) and ``apply`` unscales and skips non-finite steps (on every replica when any replica's
        gradients are not finite, see ``keras_reid.training.precision.agree_on_finite``)."""
        variables = list(variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            seed = optimizer.scale_loss(tf.ones_like(loss))
            grads = tape.gradient(loss, variables, output_gradients=tf.cast(seed, loss.dtype))
            grads = agree_on_finite(grads)  # every replica skips an overflowing step
        else:
            grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)

    def track(self, logs: dict[str, Any]) -> dict[str, Any]:
        """Update the trackers with this replica's shares (times the replica count); returns logs."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        for name, value in logs.items():
            if name in self.trackers:
                self.trackers[name].update_state(value * replicas)
        return logs

    # ------------------------------------------------------------------ generation
    def as_graph(self, fn: Any) -> Any:
        """Returns ``fn`` (a bound method of this model) as a ``tf.function``, made once per
        model and method: generation then runs as one graph per batch instead of op by op.
        ``reduce_retracing`` keeps one graph for every batch size; Python arguments (flags)
        select a graph each. ``jit_compile`` is off: XLA on CPU slows the conv generators
        here (tools/bench_generators.py). Kept out of Keras' attribute tracking."""
        cache = self.__dict__.get("_compiled_fns")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_compiled_fns", cache)
        name = fn.__name__
        if name not in cache:
            cache[name] = tf.function(fn, reduce_retracing=True, jit_compile=False)
        return cache[name]

    # ------------------------------------------------------------------ saving
    def get_config(self) -> dict:
        """Returns the serialisable config: name and both sub-models (subclasses add theirs)."""
        return {"name": self.name, "trainable": self.trainable,
                "generator": keras.saving.serialize_keras_object(self.generator),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> "GANModel":
        """Returns the model rebuilt from :meth:`get_config` (sub-models deserialised first)."""
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"),
                                                           custom_objects=custom_objects)
        discriminator = keras.saving.deserialize_keras_object(config.pop("discriminator"),
                                                               custom_objects=custom_objects)
        return cls(generator, discriminator, **config)
