"""Optimisers and learning-rate schedules for re-ID training, from the recipe's config.

The pydantic configs are imported by recipe validation, so this module imports Keras
only inside the functions; the schedule class lives in ``keras_reid.training.schedules``.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OptimizerConfig(BaseModel):
    """``optimizer:`` of a training stage.

    ``weight_decay_mode: decoupled`` (default): ``adam`` is Keras' ``AdamW`` when
    ``weight_decay`` > 0 (``w -= lr * weight_decay * w`` beside the update, like
    ``torch.optim.AdamW``) and ``Adam`` otherwise; ``sgd`` is SGD with (Nesterov) momentum and
    the same decoupled decay. ``weight_decay_mode: coupled``: the decay is an L2 term added to
    the gradient of every trainable variable (``g += weight_decay * w``), as
    ``torch.optim.Adam`` / ``SGD(weight_decay=...)`` do (``keras_reid.training.l2_optimizers``);
    ``adam`` then also follows torch's epsilon (1e-8, added after bias correction).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["adam", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0, description="base learning rate (the schedule scales it)")
    weight_decay: float = Field(5e-4, ge=0)
    weight_decay_mode: Literal["decoupled", "coupled"] = Field(
        "decoupled", description="decoupled: w -= lr * wd * w beside the update (AdamW); coupled: "
        "wd * w added to the gradient of every trainable variable (torch.optim.Adam's weight_decay, "
        "L2 regularisation)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(True, description="sgd only")
    beta_1: float = Field(0.9, ge=0, lt=1, description="adam only")
    beta_2: float = Field(0.999, ge=0, lt=1, description="adam only")
    clipnorm: float | None = Field(None, gt=0, description="clip each gradient's norm (per replica)")


class ScheduleConfig(BaseModel):
    """``schedule:`` of a training stage: linear warm-up, then constant, step or cosine decay.

    Epochs are fractional (iteration / steps per epoch). Warm-up multiplies the learning
    rate by a factor rising linearly from ``warmup_factor`` at epoch 0 to 1 at
    ``warmup_epochs``; ``step`` multiplies by ``gamma`` at every milestone epoch reached;
    ``cosine`` anneals from the base rate after warm-up to ``min_lr`` at the last epoch.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["constant", "step", "cosine"] = "step"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    milestones: list[int] = Field(default_factory=lambda: [40, 70], description="epochs (step only)")
    gamma: float = Field(0.1, gt=0, le=1, description="factor at each milestone (step only)")
    min_lr: float = Field(0.0, ge=0, description="final learning rate (cosine only)")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"got {v}, expected strictly increasing positive epochs")
        return v


def make_optimizer(config: OptimizerConfig | dict, learning_rate: Any = None) -> Any:
    """Returns the ``keras.optimizers.Optimizer`` the config describes (``AdamL2`` / ``SGDL2``
    from ``keras_reid.training.l2_optimizers`` for ``weight_decay_mode: coupled``).

    ``learning_rate`` (a float or a ``LearningRateSchedule``, e.g. from :func:`make_schedule`)
    defaults to ``config.lr``.
    """
    import keras  # deferred: Keras, recipe validation imports this module for the configs

    config = OptimizerConfig.model_validate(config) if isinstance(config, dict) else config
    lr = config.lr if learning_rate is None else learning_rate
    common = {"learning_rate": lr, "clipnorm": config.clipnorm}
    if config.weight_decay_mode == "coupled":
        from keras_reid.training.l2_optimizers import AdamL2, SGDL2  # deferred: Keras, as above

        if config.type == "sgd":
            return SGDL2(l2=config.weight_decay, momentum=config.momentum, nesterov=config.nesterov,
                         **common)
        return AdamL2(l2=config.weight_decay, beta_1=config.beta_1, beta_2=config.beta_2, **common)
    if config.type == "sgd":
        return keras.optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=config.weight_decay or None, **common)
    if config.weight_decay > 0:
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, beta_1=config.beta_1,
                                      beta_2=config.beta_2, **common)
    return keras.optimizers.Adam(beta_1=config.beta_1, beta_2=config.beta_2, **common)


def make_schedule(config: ScheduleConfig | dict, steps_per_epoch: int, base_lr: float = 3.5e-4,
                  epochs: int | None = None) -> Any:
    """Returns a serialisable ``keras.optimizers.schedules.LearningRateSchedule`` of the iteration.

    ``epochs`` (the training length) is required for ``cosine``.
    """
    config = ScheduleConfig.model_validate(config) if isinstance(config, dict) else config
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if config.type == "cosine" and not epochs:
        raise ValueError("a cosine schedule needs the number of training epochs (epochs=...)")
    from keras_reid.training.schedules import ReIDSchedule  # deferred: Keras, validation stays light

    return ReIDSchedule(
        base_lr=float(base_lr), steps_per_epoch=int(steps_per_epoch), kind=config.type,
        warmup_epochs=config.warmup_epochs, warmup_factor=config.warmup_factor,
        milestones=list(config.milestones), gamma=config.gamma, min_lr=config.min_lr,
        epochs=int(epochs) if epochs else None)

