"""``ReIDModel``: a backbone and a re-ID loss as a trainable, saveable ``keras.Model``.

The training step follows tf.distribute's conventions so the core's strategy-aware loop
(and, on one device, ``model.fit``) can drive it:

* per-example loss terms are averaged with ``tf.nn.compute_average_loss``, i.e. divided
  by the GLOBAL batch size (per-replica batch x replicas), and regularisation losses are
  divided by the number of replicas (``tf.nn.scale_regularization_loss``);
* ``train_step`` RETURNS each replica's share of the global-batch value of every scalar
  (``loss``, one entry per loss term, ``accuracy``): **reduce them across replicas with
  SUM** (``step_logs_reduction = "sum"`` tells ``keras_reid.training.loop`` so; on one
  device they are the batch values themselves);
* ``keras.metrics.Mean`` trackers (the ``metrics`` property) are updated as well, so
  ``fit()`` reports running means on a single device (and under ``MirroredStrategy``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf

from keras_reid import layers as _layers  # noqa: F401  (registers custom layers for loading)
from keras_reid.errors import ModelFileError
from keras_reid.io import atomic_path
from keras_reid.registry import REGISTRY
from keras_reid.training import l2_optimizers as _l2_optimizers  # noqa: F401  (registers AdamL2, SGDL2)
from keras_reid.training import schedules as _schedules  # noqa: F401  (registers ReIDSchedule)
from keras_reid.training.precision import agree_on_finite


def loss_spec(loss: Any) -> dict | None:
    """Returns the registry spec ``{"type": name, **params}`` of a registered loss object, else None."""
    if loss is None:
        return None
    for entry in REGISTRY.entries("loss"):
        if entry.obj is type(loss):
            config = getattr(loss, "config", None)
            params = config.model_dump(mode="json") if hasattr(config, "model_dump") else {}
            return {"type": entry.name, **params}
    return None


@keras.saving.register_keras_serializable(package="keras_reid")
class ReIDModel(keras.Model):
    """A re-ID network (``backbone``: images -> ``{"embedding", "features", "logits"}``) trained
    with ``loss`` (``(labels, outputs) -> per-example loss [B]``, optionally with ``terms``).

    ``loss`` may also be a registry spec (``{"type": "softmax_triplet", ...}``) or None
    (an inference-only model). Construct and ``compile`` it inside ``strategy.scope()``.
    """

    #: how the core loop reduces ``train_step``'s values across replicas (see the module docstring)
    step_logs_reduction = "sum"

    def __init__(self, backbone: keras.Model, loss: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(loss, (dict, str)):
            loss = REGISTRY.create("loss", loss)
        self.backbone = backbone
        self.reid_loss = loss
        names = tuple(getattr(loss, "term_names", ()) or ()) if hasattr(loss, "terms") else ()
        self.term_names: tuple[str, ...] = tuple(n for n in names if n not in ("loss", "accuracy"))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=n) for n in self.term_names]
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.built = bool(getattr(backbone, "built", False))

    # ------------------------------------------------------------------ forward
    def call(self, images: Any, training: bool | None = None) -> dict[str, Any]:
        """Returns the backbone's dict ``{"embedding", "features", "logits"}`` for images [B, H, W, 3]."""
        return self.backbone(images, training=training)

    def embed(self, images: Any) -> Any:
        """Returns the retrieval features [B, D] (post-BN-neck, inference mode) of images in [0, 255]."""
        return self.backbone(images, training=False)["features"]

    # ------------------------------------------------------------------ training
    def compile(self, optimizer: Any = "adam", **kwargs: Any) -> None:
        """Attach ``optimizer`` (built on the trainable variables right away, so call this inside
        ``strategy.scope()``); under a ``mixed_float16`` policy it is wrapped in a
        ``LossScaleOptimizer``. Extra keyword arguments go to ``keras.Model.compile``."""
        optimizer = keras.optimizers.get(optimizer)
        if (keras.mixed_precision.global_policy().name == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self) -> dict | None:
        if getattr(self, "optimizer", None) is None:
            return None
        return {"optimizer": keras.saving.serialize_keras_object(self.optimizer)}

    def compile_from_config(self, config: dict) -> None:
        optimizer = keras.saving.deserialize_keras_object(config["optimizer"])
        self.compile(optimizer=optimizer)

    @property
    def metrics(self) -> list:
        return [self.loss_tracker, *self.term_trackers, self.accuracy_tracker]

    def loss_terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Returns the named per-example loss terms [B] (a single ``loss`` term if the loss has no ``terms``)."""
        if self.reid_loss is None:
            raise ValueError("this ReIDModel has no loss (inference only); construct it with one to train")
        terms = dict(self.reid_loss.terms(labels, outputs)) if hasattr(self.reid_loss, "terms") else {}
        return terms or {"loss": self.reid_loss(labels, outputs)}

    def _step_logs(self, labels: Any, outputs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Returns (loss to minimise, logs) for one replica's batch (see the module docstring)."""
        terms = self.loss_terms(labels, outputs)
        averaged = {k: tf.nn.compute_average_loss(tf.cast(v, tf.float32)) for k, v in terms.items()}
        total = tf.add_n(list(averaged.values()))
        if self.losses:
            total = total + tf.nn.scale_regularization_loss(
                tf.add_n([tf.cast(l, tf.float32) for l in self.losses]))
        logs = {"loss": total}
        logs.update({k: v for k, v in averaged.items() if k != "loss"})
        logs["accuracy"] = tf.nn.compute_average_loss(_correct(labels, outputs["logits"]))
        return total, logs

    def _update_trackers(self, logs: Mapping[str, Any]) -> None:
        # a replica's share times the replica count: the trackers' cross-replica mean is the global value
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(logs["loss"] * replicas)
        for name, tracker in zip(self.term_names, self.term_trackers):
            if name in logs:
                tracker.update_state(logs[name] * replicas)
        self.accuracy_tracker.update_state(logs["accuracy"] * replicas)

    def train_step(self, data: Any) -> dict[str, Any]:
        """One optimisation step on ``(images, labels)``; returns this replica's share of each
        scalar (``loss``, the loss terms, ``accuracy``): sum them across replicas."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            total, logs = self._step_logs(labels, outputs)
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads = agree_on_finite(grads)  # every replica skips an overflowing step
        self.optimizer.apply(grads, variables)
        self._update_trackers(logs)
        return logs

    def test_step(self, data: Any) -> dict[str, Any]:
        """The training step's logs on ``(images, labels)`` in inference mode, without an update."""
        images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(images, training=False)
        _, logs = self._step_logs(labels, outputs)
        self._update_trackers(logs)
        return logs

    # ------------------------------------------------------------------ saving
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "loss": loss_spec(self.reid_loss),
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: Any = None) -> "ReIDModel":
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"),
                                                          custom_objects=custom_objects)
        loss = config.pop("loss", None)
        return cls(backbone, loss, **config)

    def inference_model(self, output: str = "features") -> keras.Model:
        """Returns a plain functional ``keras.Model`` images [B, H, W, 3] -> the backbone's
        ``output`` (``"features"`` [B, D] for retrieval, ``"logits"`` [B, classes] for
        closed-set classification)."""
        bb = self.backbone
        try:  # a functional backbone: keep only the layers the output needs
            outputs = bb.output
            wanted = outputs[output] if isinstance(outputs, Mapping) else None
        except (AttributeError, ValueError, KeyError, TypeError):  # e.g. a subclassed backbone
            wanted = None
        if wanted is not None:
            inputs = bb.inputs[0] if len(bb.inputs) == 1 else bb.inputs
            return keras.Model(inputs, wanted, name=f"{bb.name}_{output}")
        inputs = keras.Input(tuple(bb.inputs[0].shape[1:]), name="images")
        return keras.Model(inputs, bb(inputs, training=False)[output], name=f"{bb.name}_{output}")

    def export_inference_model(self, path: str | os.PathLike, output: str = "features") -> Path:
        """Atomically save :meth:`inference_model` (for ``output``) as a ``.keras`` file at
        ``path``; returns the path."""
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"inference models are saved as .keras files, got '{path}'")
        model = self.inference_model(output)
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
        return path


def _correct(labels: Any, logits: Any) -> Any:
    """Returns float32 [B]: 1 where the top-1 logit is the label (argmax of soft labels), else 0."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if labels.shape.rank == 2:
        target = tf.argmax(labels, axis=-1, output_type=tf.int32)
    else:
        target = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.cast(tf.equal(predicted, target), tf.float32)


def load_inference_model(path: str | os.PathLike) -> keras.Model:
    """Returns the ``keras.Model`` (images -> features) saved by ``export_inference_model``.

    Raises ``ModelFileError`` when the file is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file '{path}' does not exist; train the model first or fix the path")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelFileError(f"model file '{path}' could not be loaded ({reason}); re-export it with "
                             "ReIDModel.export_inference_model") from None
