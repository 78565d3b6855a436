"""``ReIDSchedule``: the serialisable learning-rate schedule that ``make_schedule`` returns.

Importing this module registers the class with Keras (package ``keras_reid``), so an
optimizer saved in a ``.keras`` file reloads (``keras_reid.training.reid_model`` imports it).
"""
from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_reid")
class ReIDSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then constant, step or cosine decay, of epoch = iteration / steps_per_epoch.

    ``kind``: ``constant`` (``base_lr``), ``step`` (``base_lr * gamma ** #milestones reached``)
    or ``cosine`` (``base_lr`` after warm-up annealed to ``min_lr`` at ``epochs``). During
    the first ``warmup_epochs`` the rate is multiplied by a factor rising linearly from
    ``warmup_factor`` to 1. ``keras_reid.training.optim.schedule_value`` is the same
    function in plain Python.
    """

    def __init__(self, base_lr: float, steps_per_epoch: int, kind: str = "constant",
                 warmup_epochs: float = 0.0, warmup_factor: float = 0.01,
                 milestones: list[int] | None = None, gamma: float = 0.1,
                 min_lr: float = 0.0, epochs: int | None = None) -> None:
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"unknown schedule kind '{kind}', expected constant, step or cosine")
        if kind == "cosine" and not epochs:
            raise ValueError("a cosine schedule needs the number of training epochs")
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.kind = kind
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_factor = float(warmup_factor)
        self.milestones = [int(m) for m in (milestones or [])]
        self.gamma = float(gamma)
        self.min_lr = float(min_lr)
        self.epochs = int(epochs) if epochs else None

    def __call__(self, step):
        """Returns the float32 learning rate at iteration ``step``."""
        epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.kind == "step":
            drops = ops.zeros((), "float32")
            for m in self.milestones:
                drops = drops + ops.cast(epoch >= float(m), "float32")
            lr = lr * ops.power(ops.convert_to_tensor(self.gamma, "float32"), drops)
        elif self.kind == "cosine":
            span = max(float(self.epochs) - self.warmup_epochs, 1e-12)
            progress = ops.clip((epoch - self.warmup_epochs) / span, 0.0, 1.0)
            lr = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_epochs > 0:
            ramp = self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epochs
            lr = lr * ops.where(epoch < self.warmup_epochs, ramp, 1.0)
        return lr

    def get_config(self) -> dict:
        return {"base_lr": self.base_lr, "steps_per_epoch": self.steps_per_epoch, "kind": self.kind,
                "warmup_epochs": self.warmup_epochs, "warmup_factor": self.warmup_factor,
                "milestones": self.milestones, "gamma": self.gamma, "min_lr": self.min_lr,
                "epochs": self.epochs}
